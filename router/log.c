/* log.c — see log.h */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <sys/time.h>
#include "log.h"

int aor_log_level = AOR_LOG_INFO;

static const char *level_names[] = {"error", "warn", "info", "debug"};

void aor_log_write(enum aor_log_level level, const char *module, const char *fmt, ...)
{
    char line[1024], stamp[32];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line, sizeof(line), "%s.%03dZ %s [%s] ", stamp, (int)(tv.tv_usec / 1000), level_names[level], module);
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    /* one fputs per line: stdio locks the stream, so lines from workers do not interleave */
    fprintf(stderr, "%s\n", line);
}
