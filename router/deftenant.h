/*
 * deftenant — the last fallback layer of a tenant's quota: the hash of the tenant named
 * `default` in Redis (`<prefix>tenant:{default}`), which the reserve script cannot read for
 * another tenant (another Redis Cluster slot). Each worker keeps a parsed copy, read every
 * 500 ms on its own loop (never on a request's path), and admission fills with it the fields
 * that neither the tenant's hash nor the config names. Redis unreachable: the last copy stays.
 */
#ifndef AOR_DEFTENANT_H
#define AOR_DEFTENANT_H

struct aor_worker;
struct aor_quota_layer;

#define AOR_DEFTENANT_POLL_MS 500 /* SPEC §6: an HSET applies within 2 s on every replica */

/* starts the worker's poll (a no-op without Redis). 0, or -1 on ENOMEM. The first read goes at once */
int aor_deftenant_start(struct aor_worker *w);

/* stops it and cancels a read in flight; before the worker's Redis is destroyed. Safe when not started */
void aor_deftenant_stop(struct aor_worker *w);

/* the worker's copy of the layer, or NULL (no Redis, nothing read yet). Valid until the worker's next loop iteration */
const struct aor_quota_layer *aor_deftenant_layer(const struct aor_worker *w);

#endif
