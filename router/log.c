/* log.c — see log.h */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/time.h>
#include "log.h"

int aor_log_level = AOR_LOG_INFO;
uint64_t aor_log_dropped_total[2];
static int saved_flags[3] = {-1, -1, -1};

void aor_log_set_nonblocking(int on)
{
    int fd;

    for (fd = 1; fd <= 2; ++fd) {
        if (on) {
            int fl = fcntl(fd, F_GETFL);
            if (fl < 0)
                continue;
            saved_flags[fd] = fl;
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        } else if (saved_flags[fd] >= 0) {
            fcntl(fd, F_SETFL, saved_flags[fd]);
            saved_flags[fd] = -1;
        }
    }
}

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
    if (n < 0)
        return;
    n = (int)strnlen(line, sizeof(line) - 1);
    /* one line per call, whatever the arguments carry (a Redis error, a peer's words): a control
     * byte cannot end it early or forge the next one */
    for (int i = 0; i < n; ++i)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[n++] = '\n';
    /* one write(2) per line (≤ PIPE_BUF: lines from threads do not interleave on a pipe); on a
     * non-blocking stderr whose reader stalled the line is dropped, never waited for */
    for (int off = 0; off < n;) {
        ssize_t w = write(STDERR_FILENO, line + off, (size_t)(n - off));
        if (w > 0) {
            off += (int)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            __atomic_add_fetch(&aor_log_dropped_total[0], 1, __ATOMIC_RELAXED);
            break;
        }
    }
}

/* defined here, not in redis.c, so that every binary with metrics.c links it (see redis.h) */
uint64_t aor_redis_errors_total;
