/*
 * common.h — what curl_client.c and h2o_client.c share so that both put exactly the same
 * load on the backend and measure it the same way: the request body, the clocks, the
 * measurement window (warm-up excluded) and the one-line report.
 */
#ifndef CLIENTCMP_COMMON_H
#define CLIENTCMP_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>
#include <valgrind/callgrind.h>

#define CHAT_PATH "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
/* 146 bytes, the shape of a small chat completion request */
#define CHAT_BODY                                                                                                                  \
    "{\"messages\":[{\"role\":\"system\",\"content\":\"You are terse.\"},{\"role\":\"user\",\"content\":\"Say hello to the "        \
    "benchmark.\"}],\"max_tokens\":8,\"temperature\":0}"
/* the same request asking for SSE; the mock's behaviour switch decides how long the stream is */
#define CHAT_STREAM_BODY                                                                                                           \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Stream.\"}],\"stream\":true}"
/* sent as api-key; a fixed fake so that both clients send the same bytes */
#define BENCH_API_KEY "0123456789abcdef0123456789abcdef"
#define BENCH_USER_AGENT "clientcmp/1.0"

static inline uint64_t cc_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

struct cc_cpu {
    uint64_t user_us, sys_us;
};

static inline struct cc_cpu cc_cpu_now(void)
{
    struct rusage ru;
    struct cc_cpu c;
    getrusage(RUSAGE_SELF, &ru);
    c.user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec;
    c.sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;
    return c;
}

/*
 * The measurement window. cc_meter_begin() after the warm-up (connections are open by
 * then), cc_meter_end() when the run is over; under callgrind the window is exactly what
 * the "measured" dump holds (run with --collect-atstart=no).
 */
struct cc_meter {
    uint64_t t0, t1;
    struct cc_cpu c0, c1;
    uint64_t done0, done1, errors0, errors1;
    int running, finished;
};

static inline void cc_meter_begin(struct cc_meter *m, uint64_t done, uint64_t errors)
{
    CALLGRIND_ZERO_STATS;
    CALLGRIND_TOGGLE_COLLECT;
    m->running = 1;
    m->done0 = done;
    m->errors0 = errors;
    m->c0 = cc_cpu_now();
    m->t0 = cc_now_us();
}

static inline void cc_meter_end(struct cc_meter *m, uint64_t done, uint64_t errors)
{
    m->t1 = cc_now_us();
    m->c1 = cc_cpu_now();
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT("measured");
    m->done1 = done;
    m->errors1 = errors;
    m->running = 0;
    m->finished = 1;
}

static inline void cc_meter_report(const struct cc_meter *m, const char *client, const char *variant, int conc)
{
    uint64_t n = m->done1 - m->done0, us = m->t1 - m->t0;
    uint64_t user = m->c1.user_us - m->c0.user_us, sys = m->c1.sys_us - m->c0.sys_us;
    double per = n ? (double)(user + sys) / (double)n : 0;

    printf("client=%s variant=%s conc=%d requests=%llu errors=%llu secs=%.2f rps=%.0f cpu_us_per_req=%.2f user_us_per_req=%.2f "
           "sys_us_per_req=%.2f\n",
           client, variant, conc, (unsigned long long)n, (unsigned long long)(m->errors1 - m->errors0), us / 1e6,
           us ? n * 1e6 / (double)us : 0, per, n ? (double)user / n : 0, n ? (double)sys / n : 0);
    fflush(stdout);
}

#endif
