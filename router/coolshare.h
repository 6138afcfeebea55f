/*
 * coolshare — a backend deployment's 429 cooldown shared by every router replica through
 * Redis (SPEC §5, §6 `<prefix>backend:<name>:<deployment>:cooldown_until`, unix ms, PX TTL;
 * <deployment> is the name on that backend). A worker publishes the cooldowns it starts and,
 * once a second, reads the keys of every deployment its backends have (configured ones; for a
 * backend without a map, the names it tracks now) and adopts a later end than it knows —
 * capped at limits.max_cooldown_ms from now; a value that is not a decimal unix-ms time, or
 * that lies in the past, is ignored. Without redis: nothing happens.
 */
#ifndef AOR_COOLSHARE_H
#define AOR_COOLSHARE_H

#include <stdint.h>

struct aor_worker;
struct aor_backend_conf;

/* starts the worker's poll timer (when the worker has Redis). 0 or -1 */
int aor_coolshare_start(struct aor_worker *w);
/* stops the timer and drops a pending read; before the worker's Redis is destroyed */
void aor_coolshare_stop(struct aor_worker *w);
/* tells the other replicas that `deployment` (its name on `b`) cools down until `until_ms` (fire and forget) */
void aor_coolshare_publish(struct aor_worker *w, const struct aor_backend_conf *b, const char *deployment, int64_t until_ms,
                           int64_t now_ms);

#endif
