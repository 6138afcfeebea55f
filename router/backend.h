/*
 * backend — the process-wide table of backend runtime state (struct aor_backend_state),
 * one entry per backend name, kept across reloads so a cooldown or an open circuit
 * survives a SIGHUP. Entries are created at config load (main thread) and live until exit.
 */
#ifndef AOR_BACKEND_H
#define AOR_BACKEND_H

#include "balancer.h"
#include "config.h"

/* sets conf->backends[i].state for every backend, creating entries for new names. 0 or -1 (ENOMEM) */
int aor_backend_attach(struct aor_config *conf);

/* frees the table (at exit, after every worker stopped) */
void aor_backend_table_free(void);

#endif
