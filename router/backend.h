/*
 * backend — the process-wide table of backend runtime state, kept across reloads:
 * per backend name its circuit (struct aor_backend_state), and per deployment on it
 * (the name that backend knows it by) its cooldown and headroom (struct
 * aor_deployment_state). Entries live until exit, so a request may keep a pointer
 * to one across a reload. A backend with a deployments map has one entry per
 * configured name; one without (serves any name) tracks at most
 * AOR_BACKEND_MAX_DYNAMIC names at once, recycling idle ones, and counts the rest
 * together under AOR_BACKEND_OVERFLOW_NAME.
 */
#ifndef AOR_BACKEND_H
#define AOR_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "balancer.h"
#include "config.h"

#define AOR_BACKEND_MAX_DYNAMIC 64
#define AOR_BACKEND_OVERFLOW_NAME "*" /* never a valid deployment name */
#define AOR_BACKEND_DEPLOYMENT_NAME_MAX 64

/**
 * Gives `conf` its runtime state (main thread, at load and at each reload): sets
 * conf->backends[i].state and every deployments[j].state, creating entries for new names.
 * A backend whose connection-relevant configuration (url, provider, deployments map,
 * credential) differs from what the previous attach saw under that name starts afresh:
 * circuit closed, cooldowns and headroom forgotten. Every cooldown is cut to at most
 * now + limits.max_cooldown_ms. Returns 0 or -1 (ENOMEM).
 */
int aor_backend_attach(struct aor_config *conf, int64_t now_ms);

/**
 * Where logical deployment `logical` (`len` bytes) goes on `b`: returns NULL when b does not
 * serve it; aor_config_deployment_unchanged when b has no map (the name is used as is);
 * else the configured upstream name. On success *dep is that deployment's state, held for
 * the caller until aor_backend_deployment_release(). Any worker thread.
 */
const char *aor_backend_route(const struct aor_backend_conf *b, const char *logical, size_t len, int64_t now_ms,
                              struct aor_deployment_state **dep);

/* the caller is done with a state from aor_backend_route(); NULL is a no-op */
void aor_backend_deployment_release(struct aor_deployment_state *dep, int64_t now_ms);

/* one deployment of a backend as listed by aor_backend_list_deployments() */
struct aor_backend_deployment_view {
    struct aor_deployment_state *state;
    const char *name;  /* the name on the backend (Redis keys): the config's string, or `buf` */
    const char *label; /* the logical name (metric labels): the config's string, or `buf` */
    uint64_t instance; /* changes when a dynamic entry is recycled for another name */
    char buf[AOR_BACKEND_DEPLOYMENT_NAME_MAX + 1];
};

/* at most this many views for b */
size_t aor_backend_max_deployments(const struct aor_backend_conf *b);

/**
 * Lists b's deployments into `out` (capacity `max`): one per entry of its deployments map (two
 * logical names for one upstream deployment share a state: two views, same `state`); for a
 * backend without a map, the names it tracks now, plus the overflow entry once used. Returns
 * how many were written. Configured names stay valid while the caller holds the config.
 */
size_t aor_backend_list_deployments(const struct aor_backend_conf *b, struct aor_backend_deployment_view *out, size_t max);

/* 1 while `view` still describes the entry it was listed from (a dynamic entry was not recycled) */
int aor_backend_view_current(const struct aor_backend_deployment_view *view);

/* frees the table (at exit, after every worker stopped) */
void aor_backend_table_free(void);

#endif
