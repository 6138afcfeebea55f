/*
 * redis_tlspipe — rediss:// for the admin CLI, which speaks to Redis through hiredis' blocking
 * redisContext (hiredis 0.14 has no TLS). A TLS connection of our own, certificate chain and
 * host name verified, relayed by a thread to one end of a local socket pair; hiredis gets the
 * other end (redisConnectFd). Blocking by design: for the CLI only, never on a worker's loop.
 */
#ifndef AOR_REDIS_TLSPIPE_H
#define AOR_REDIS_TLSPIPE_H

#include <stddef.h>
#include <stdint.h>

/**
 * Connects to host:port over TCP, then TLS 1.2+ with SNI, verifying the server's chain against
 * the system CA bundle plus `ca_file` (may be NULL) and its name against `host` (DNS name or IP
 * address). Each step waits at most `timeout_ms`. Returns a socket whose bytes travel over that
 * TLS connection (a thread relays them until either side closes), or -1 with a reason in
 * err[0..errlen) (no secrets: the password is not involved here). At most 8 per process.
 */
int aor_redis_tlspipe_open(const char *host, uint16_t port, const char *ca_file, unsigned timeout_ms, char *err, size_t errlen);

/* waits for the relay threads to end: call after closing the sockets aor_redis_tlspipe_open returned */
void aor_redis_tlspipe_join_all(void);

#endif
