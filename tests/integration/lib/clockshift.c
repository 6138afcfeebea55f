/* LD_PRELOAD shim for tests: CLOCK_REALTIME (and its coarse variant) read through
 * clock_gettime run AOR_TEST_REALTIME_OFFSET_MS milliseconds ahead (or behind), so a test can put
 * the router a second before a UTC minute, day and month boundary. Monotonic clocks are left
 * alone (deadlines, timers). Built by the test that uses it (cc -shared -fPIC). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    static long long offset_ms;
    static int have_offset;
    int rc;

    if (real == NULL)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    if (!have_offset) {
        const char *v = getenv("AOR_TEST_REALTIME_OFFSET_MS");
        offset_ms = v != NULL ? strtoll(v, NULL, 10) : 0;
        have_offset = 1;
    }
    rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE) && offset_ms != 0) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ms * 1000000LL;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
    }
    return rc;
}
