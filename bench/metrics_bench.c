/* metrics_bench — the metrics a proxied request records (the calls aor_pipeline_finish and the
 * proxy make: request, duration, tokens, GenAI tokens, upstream duration), from 1..N threads at
 * once; prints ns per request per thread and in total (bench/README.md, "Metrics per worker").
 * Usage: metrics_bench [threads, default 2] [requests per thread, default 2000000] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "metrics.h"

static long per_thread;

static void *run(void *arg)
{
    static const char *const tenants[] = {"team-a", "team-b", "team-c", "team-d"};
    long i;

    (void)arg;
    for (i = 0; i != per_thread; ++i) {
        const char *t = tenants[i & 3];
        aor_metrics_request(t, "gpt-4o", "eastus", 200);
        aor_metrics_request_duration("gpt-4o", "eastus", 0.012);
        aor_metrics_tokens(t, "gpt-4o", "eastus", 21, 12);
        aor_metrics_genai_tokens("chat", "gpt-4o", 21, 12);
        aor_metrics_upstream_duration("eastus", 0.011);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2, i;
    pthread_t *th;
    struct timespec a, b;
    double ns;

    per_thread = argc > 2 ? atol(argv[2]) : 2000000;
    if (n < 1 || per_thread < 1 || (th = calloc((size_t)n, sizeof(*th))) == NULL)
        return 2;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i != n; ++i)
        pthread_create(&th[i], NULL, run, NULL);
    for (i = 0; i != n; ++i)
        pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("%d threads x %ld requests: %.1f ns wall per request (all threads), %.1f ns per request per thread\n", n, per_thread,
           ns / ((double)n * (double)per_thread), ns / (double)per_thread);
    free(th);
    aor_metrics_free();
    return 0;
}
