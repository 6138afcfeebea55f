/*
 * admit — the admit and account stages (SPEC §6): a request's token estimate is reserved
 * against its tenant's tpm/rpm/day/month atomically in Redis (one Lua script through EVALSHA,
 * reloaded on NOSCRIPT) and, after the answer, replaced by the usage the backend reported
 * (or released). Without Redis, and while Redis is unreachable with `on_failure: open`, the
 * same rules run on in-process counters with the tenant's last-known quota, and usage that
 * could not be written waits in a bounded buffer, aggregated per key, until Redis returns.
 * The window math and the parsing of quota hashes are in quota.c (pure).
 */
#ifndef AOR_ADMIT_H
#define AOR_ADMIT_H

#include <stdint.h>
#include "quota.h"

struct aor_request;
struct aor_worker;
struct aor_admit_call;

#define AOR_ADMIT_MAX_BUCKETS 10     /* minutes of reservations a day/month check looks back at */
#define AOR_ADMIT_BACKLOG_MAX 4096   /* usage keys waiting for Redis, per process; more are dropped and logged */
#define AOR_ADMIT_LOCAL_TENANTS 4096 /* tenants with in-process counters; more share one entry */

/* what the admit stage decided and reserved for one request (embedded in struct aor_request) */
struct aor_admission {
    struct aor_admit_call *call; /* the reservation script in flight, NULL when none */
    enum { AOR_ADMIT_NONE, AOR_ADMIT_REDIS, AOR_ADMIT_LOCAL } reserved;
    int refused;                                  /* 1: `error` / `message` / `retry_after_s` say why */
    int error;                                    /* enum aor_error */
    const char *message;                          /* static */
    int64_t retry_after_s;                        /* > 0: send retry-after */
    int64_t estimate;                             /* tokens reserved */
    int64_t remaining_tokens, remaining_requests; /* the tenant's minute window after this reservation; -1 unlimited/unknown */
    struct aor_quota_windows win;                 /* the windows the reservation (and the usage) belong to */
    int usage_estimated;                          /* the charge is an estimate (a stream cut short) */
    struct aor_metrics_tenant_ref *metrics;       /* the tenant's status record (metrics.h), NULL when none */
    int maybe_reserved;                           /* the reserve script's reply was lost: Redis may hold the reservation */
    char reservation_id[40];                      /* the reservation's field in its bucket (r:<id>) */
};

typedef void (*aor_admit_cb)(struct aor_request *ar);

/*
 * The admit stage for an authenticated request (ar->tenant, ar->deployment, ar->estimate
 * set). Returns 1 when decided before returning (the outcome in ar->adm: refused or not);
 * 0 when a Redis reply is awaited: `cb` is then called exactly once, later, even if the client
 * has left meanwhile (ar->req NULL: the reservation has been given back already). While
 * ar->adm.call is not NULL the request must not be freed.
 */
int aor_admit_start(struct aor_request *ar, aor_admit_cb cb);

/*
 * The account stage: replaces the reservation by the request's usage (ar->usage when found;
 * for a 2xx stream cut short: the prompt estimate plus the content events relayed, marking
 * ar->adm.usage_estimated and setting ar->usage to it), or releases it when the request got
 * no successful answer. Idempotent; fire and forget (a failed write goes to the backlog).
 */
void aor_admit_settle(struct aor_request *ar);

/* per worker: the backlog flush timer (with Redis). 0 or -1; stop before the worker's Redis goes.
 * Stop first gives what waits for Redis (backlog, settles of unknown outcome, calls in flight)
 * up to AOR_ADMIT_STOP_FLUSH_MS to be written while Redis is up */
int aor_admit_worker_start(struct aor_worker *w);
void aor_admit_worker_stop(struct aor_worker *w);

#define AOR_ADMIT_STOP_FLUSH_MS 2000

/* the worker starts closing its client connections (the drain is over): each reservation still
 * awaited gets a settle queued behind it, so a reservation Redis makes late is given back */
void aor_admit_teardown(struct aor_worker *w);

/* at process exit, after every worker stopped: logs each usage delta Redis never took (one
 * ERROR line per key and deployment, with its numbers, for an operator to reconcile) and frees them */
void aor_admit_report_unwritten(void);

/* usage deltas waiting for Redis (for tests and logs) */
size_t aor_admit_backlog_size(void);

#endif
