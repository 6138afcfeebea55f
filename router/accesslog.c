/* accesslog.c — see accesslog.h */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>
#include "accesslog.h"
#include "config.h"
#include "request.h"
#include "server.h"

#define BATCH_BYTES 32768
#define LINE_MAX_BYTES 4096

struct aor_accesslog {
    uv_timer_t timer;
    size_t len;
    char buf[BATCH_BYTES + LINE_MAX_BYTES];
};

void aor_accesslog_flush(struct aor_accesslog *log)
{
    size_t off = 0;

    while (off < log->len) {
        ssize_t n = write(STDOUT_FILENO, log->buf + off, log->len - off);
        if (n <= 0)
            break; /* stdout gone: the log is lost, the service is not */
        off += (size_t)n;
    }
    log->len = 0;
}

static void on_timer(uv_timer_t *t)
{
    aor_accesslog_flush(t->data);
}

struct aor_accesslog *aor_accesslog_create(uv_loop_t *loop)
{
    struct aor_accesslog *log = malloc(sizeof(*log));

    if (log == NULL)
        return NULL;
    log->len = 0;
    uv_timer_init(loop, &log->timer);
    log->timer.data = log;
    uv_timer_start(&log->timer, on_timer, 100, 100);
    uv_unref((uv_handle_t *)&log->timer);
    return log;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void aor_accesslog_destroy(struct aor_accesslog *log)
{
    aor_accesslog_flush(log);
    uv_timer_stop(&log->timer);
    uv_close((uv_handle_t *)&log->timer, on_closed);
}

static double ms_between(uint64_t from_ns, uint64_t to_ns)
{
    return from_ns == 0 || to_ns < from_ns ? 0 : (double)(to_ns - from_ns) / 1e6;
}

/* JSON string content: quotes, backslashes and control bytes escaped; bounded */
static const char *escape(const char *s, char *buf, size_t cap)
{
    size_t n = 0;

    for (; s != NULL && *s != '\0' && n + 7 < cap; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    buf[n] = '\0';
    return buf;
}

void aor_accesslog_write(struct aor_accesslog *log, const struct aor_request *ar)
{
    char tenant[2 * 260], subject[2 * 260], client_id[2 * 260];
    struct timespec now;
    struct tm tm;
    time_t secs;
    char stamp[32];
    const char *backend = ar->current >= 0 ? ar->cand_backend[ar->current]->name : "";
    uint64_t now_ns;
    int n;

    clock_gettime(CLOCK_REALTIME, &now);
    secs = now.tv_sec;
    gmtime_r(&secs, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    now_ns = aor_mono_ns();
    /* id and deployment are validated to [A-Za-z0-9._:-]; identities come from tokens: escaped */
    n = snprintf(log->buf + log->len, LINE_MAX_BYTES,
                 "{\"time\":\"%s.%03ldZ\",\"request_id\":\"%s\",\"tenant\":\"%s\",\"auth\":\"%s\",\"subject\":\"%s\","
                 "\"client_id\":\"%s\",\"key_id\":\"%s\",\"method\":\"%s\",\"deployment\":\"%s\",\"backend\":\"%s\",\"attempts\":%"
                 "u,\"status\":%d,\"stream\":%s,"
                 "\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                 "\"duration_ms\":%.3f,\"upstream_ms\":%.3f,\"ttfb_ms\":%.3f,\"error\":\"%s\"}\n",
                 stamp, now.tv_nsec / 1000000, ar->id, escape(ar->auth.tenant, tenant, sizeof(tenant)),
                 ar->auth.method != NULL ? ar->auth.method : "none", escape(ar->auth.subject, subject, sizeof(subject)),
                 escape(ar->auth.client_id, client_id, sizeof(client_id)), ar->auth.key_id, ar->method, ar->deployment, backend,
                 ar->attempts, ar->final_status, ar->stream ? "true" : "false", (long long)ar->usage.prompt,
                 (long long)ar->usage.completion, (long long)ar->usage.total, ms_between(ar->started_ns, now_ns),
                 ms_between(ar->upstream_started_ns, now_ns), ms_between(ar->started_ns, ar->first_byte_ns),
                 ar->last_error != NULL ? ar->last_error : "");
    if (n < 0 || n >= LINE_MAX_BYTES)
        return;
    log->len += (size_t)n;
    if (log->len >= BATCH_BYTES)
        aor_accesslog_flush(log);
}
