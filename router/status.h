/*
 * status — the operator's live view (README "Status page"): GET /status (an HTML page that
 * refreshes itself, no script) and GET /status.json, served on the metrics listener only.
 * Built per request from what /metrics reads: the backends' runtime state (relaxed atomics),
 * the tenants' records (metrics.c: one lock held for a copy), the config generation. No I/O;
 * no lock is held while formatting. Every string from the config or a client is escaped.
 */
#ifndef AOR_STATUS_H
#define AOR_STATUS_H

#include <stddef.h>
#include <stdint.h>

struct aor_config;

#define AOR_STATUS_TOP_TENANTS 50 /* tenants shown, most tokens first */
#define AOR_STATUS_REFRESH_S 5    /* the HTML page's meta refresh */

/* the process started at `now_ms` (uptime); main thread, before any worker */
void aor_status_started(int64_t now_ms);

/**
 * The status of `conf` and the process as of `now_ms`: JSON (`html` 0) or HTML (`html` 1).
 * Returns a malloc'd string (*len set) the caller frees, or NULL on ENOMEM. Any worker thread.
 */
char *aor_status_render(const struct aor_config *conf, int64_t now_ms, int html, size_t *len);

#endif
