/*
 * redis — one asynchronous Redis connection per worker, driven by the worker's uv loop: our own
 * transport (an h2o socket, plain TCP for redis://, TLS with the certificate chain and host
 * name verified for rediss://) carrying the bytes of hiredis' RESP library (redisFormatCommand,
 * redisReader). Owns: connecting (TLS, AUTH, SELECT, PING handshake), reconnecting with
 * backoff, and a deadline on every command, which hiredis 0.14 does not have.
 * Nothing here blocks the loop: host names are resolved on libuv's thread pool.
 */
#ifndef AOR_REDIS_H
#define AOR_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

struct redisReply;
struct redisReader;
struct aor_redis;
struct aor_redis_cmd;
struct aor_cred_conf;
struct aor_cred_waitq;

/*
 * Keyless Entra ID auth (redis.auth): every connection sends `AUTH <object_id> <access token>` in
 * its handshake, the token taken from the credential's shared cache (auth/cred.h; nothing here
 * fetches one). No token yet: the attempt waits for the first one within the connect timeout; no
 * token at all (the token endpoint fails): Redis stays down (commands refused) and the next token
 * that comes connects at once. A new token (the cache refreshed it ahead of expiry) is sent as a
 * new AUTH on the live connection; a token that stopped being valid without a successor drops the
 * connection. An AUTH refused (WRONGPASS) drops the connection, is logged with Redis' words and
 * counted, and asks the cache for a fresh token once per token.
 */
struct aor_redis_entra {
    const struct aor_cred_conf *cred; /* a token type with its source attached (aor_creds_attach); only type and source are kept */
    const char *object_id;            /* the AUTH user name */
    struct aor_cred_waitq *waitq;     /* the loop's wait queue (wakes a handshake waiting for a first token); may be NULL */
};

/* errstr values given to callbacks (compare the pointers) */
extern const char aor_redis_err_timeout[];      /* no reply within the command timeout */
extern const char aor_redis_err_disconnected[]; /* the connection was lost or refused before the reply */
extern const char aor_redis_err_reply[];        /* Redis answered with an error reply: `reply` is that reply */

/*
 * Redis operations that failed, for aor_router_redis_errors_total: every command refused
 * because Redis is down, every command that failed (timeout, disconnect, error reply) and every
 * failed connection attempt. All workers add to it (relaxed atomics); read it with
 * __atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED).
 */
extern uint64_t aor_redis_errors_total;

/*
 * `reply` is hiredis' reply, valid only during the call (hiredis frees it afterwards):
 *  - errstr NULL: success, reply non-NULL (may be REDIS_REPLY_NIL);
 *  - errstr aor_redis_err_reply: reply non-NULL, REDIS_REPLY_ERROR, reply->str says why;
 *  - errstr aor_redis_err_timeout / aor_redis_err_disconnected: reply NULL.
 * The callback may issue new commands and cancel other commands; it must not destroy the
 * aor_redis. The command handle is invalid once its callback has been called.
 */
typedef void (*aor_redis_cb)(void *data, const struct redisReply *reply, const char *errstr);

/* bounds on one connection: bytes of one reply still incomplete, elements of one array reply,
 * command bytes queued and not yet written; past them the connection (or the command) is refused */
#define AOR_REDIS_MAX_REPLY_BYTES_STR "1048576"
#define AOR_REDIS_MAX_REPLY_BYTES ((size_t)1048576)
#define AOR_REDIS_MAX_ARRAY_ELEMENTS 1048576
#define AOR_REDIS_MAX_ARRAY_ELEMENTS_STR "1048576"
#define AOR_REDIS_MAX_OUTPUT_BYTES ((size_t)67108864)

/* redis[s]://[[user]:password@]host[:port][/db] — host may be [v6 address]; user and password %-decoded */
struct aor_redis_url {
    int tls;        /* rediss:// */
    char *host;     /* without brackets */
    uint16_t port;  /* default 6379 */
    unsigned db;    /* default 0 */
    char *user;     /* NULL unless given (Redis 6 ACL user) */
    char *password; /* NULL unless given */
};

/* Pure: parses `url` into `out` (all heap strings, release with aor_redis_url_clear). 0, or -1 when malformed */
int aor_redis_url_parse(const char *url, struct aor_redis_url *out);
/* frees the strings of `u` (the password is zeroed first) and resets it; safe on a zeroed struct */
void aor_redis_url_clear(struct aor_redis_url *u);

/* a hiredis reader whose array replies are bounded by AOR_REDIS_MAX_ARRAY_ELEMENTS (hiredis 0.14
 * allocates what the count says); free with redisReaderFree. NULL on ENOMEM. Any thread. */
struct redisReader *aor_redis_reader_create(void);

/**
 * Creates the connection object for `loop` and starts connecting at once. `url` as above;
 * `password` (may be NULL) overrides one in the URL. `entra` (may be NULL; copied): keyless
 * Entra ID auth instead of a password (struct aor_redis_entra); its waitq gets this object as its
 * one watcher until aor_redis_destroy (destroy it before closing the queue). For rediss:// the server's certificate
 * chain must verify against the system CA bundle or `ca_file` (PEM, may be NULL) and name the
 * URL's host (DNS name or IP address); the CA files are read once per process and `ca_file`.
 * Every command gets `command_timeout_ms` (at least 1), and so does each connection attempt
 * (TCP connect, TLS handshake, AUTH/SELECT/PING).
 *
 * Redis answers in order, so a command that outlives its timeout means the connection's reply
 * stream is stuck (a hung or SIGSTOPped server): that command and all those behind it fail with
 * aor_redis_err_timeout, the connection is dropped and rebuilt with backoff (100 ms doubling to
 * 2 s, jittered). While Redis is known to be down commands are refused synchronously, so the
 * request path never waits on a dead Redis more than once per connection.
 *
 * Returns NULL when `url` does not parse, when the CA certificates for rediss:// cannot be
 * loaded, or on ENOMEM. Never calls back before returning.
 * Loop thread only, like everything else here.
 */
struct aor_redis *aor_redis_create(uv_loop_t *loop, const char *url, const char *password, const char *ca_file,
                                   const struct aor_redis_entra *entra, uint64_t command_timeout_ms);

/**
 * Frees the connection. Commands still pending are dropped: their callbacks are never called
 * and their handles become invalid. Must not be called from inside a callback of this module.
 * The memory goes once the loop has run the close callbacks of its handles (run the loop until
 * it has no handles, as a worker's teardown does). NULL is a no-op.
 */
void aor_redis_destroy(struct aor_redis *r);

/**
 * A reload's `redis:` settings (SIGHUP): when the URL (redis:// ↔ rediss:// included), the
 * effective password, the Entra ID identity (token source or object id) or, for rediss://, the CA file differ from the ones in use,
 * the current connection is dropped (its pending commands fail with aor_redis_err_disconnected) and a new one is made at once with
 * the new settings; the object and its handle stay, so whoever holds `r` keeps using it. Unchanged settings: nothing happens. 0, or
 * -1 when `url` does not parse or the CA certificates cannot be loaded (the old settings stay), or on ENOMEM. Loop thread only; not
 * from inside a callback of this module.
 */
int aor_redis_reconfigure(struct aor_redis *r, const char *url, const char *password, const char *ca_file,
                          const struct aor_redis_entra *entra);

/* 1 once connected, authenticated (AUTH answered OK) and answering PING; 0 while (re)connecting, waiting for a token, or down */
int aor_redis_is_up(const struct aor_redis *r);
/* 1 when a command sent now would be queued (up, or connecting for the first time since it was) */
int aor_redis_accepting(const struct aor_redis *r);

/**
 * Sends a command (hiredis format: %s C string, %b binary as pointer + size_t, %d ...).
 * Returns a handle, or NULL when the command cannot be sent now (Redis down or reconnecting
 * after a failure, malformed format, SUBSCRIBE/MONITOR, ENOMEM); with NULL the callback is
 * never called. Otherwise the callback is called exactly once, never before this returns,
 * unless the command is cancelled or the aor_redis destroyed first.
 * During the first connection attempt (and the attempt right after a working connection
 * dropped) commands queue behind the handshake instead of being refused.
 */
struct aor_redis_cmd *aor_redis_command(struct aor_redis *r, aor_redis_cb cb, void *data, const char *fmt, ...);

/* same with arguments as (pointer, length) pairs; `argvlen` NULL means strlen() of each */
struct aor_redis_cmd *aor_redis_command_argv(struct aor_redis *r, aor_redis_cb cb, void *data, int argc, const char **argv,
                                             const size_t *argvlen);

/*
 * Same, for a caller that keeps its arguments in RESP form already: `name` is the command, and
 * the pieces of `rest` (concatenated) are its other argc - 1 arguments, each a bulk string
 * "$<len>\r\n<bytes>\r\n" (aor_redis_put_count writes the head). The caller vouches for their
 * form: they go to Redis as they are.
 */
struct aor_redis_cmd *aor_redis_command_resp(struct aor_redis *r, aor_redis_cb cb, void *data, int argc, const char *name,
                                             size_t name_len, const struct iovec *rest, size_t nrest);

/* writes `prefix` ('*' or '$'), the decimal `n` and CRLF at `p` (at most 23 bytes); returns the end */
char *aor_redis_put_count(char *p, char prefix, size_t n);

/**
 * Cancels a pending command: its callback will not be called and `cmd` becomes invalid. The
 * command itself still travels (Redis cannot unsend it); its reply is dropped when it arrives.
 * Call it from the waiting object's dispose. Not for a handle whose callback already ran; NULL
 * is a no-op.
 */
void aor_redis_cancel(struct aor_redis_cmd *cmd);

/* 1 when the pending command's bytes were handed to the socket (Redis may have run it even if
 * its reply never comes: a timeout, a lost connection), 0 when they never left the router. Valid
 * until its callback returns */
int aor_redis_cmd_sent(const struct aor_redis_cmd *cmd);

/* the SHA1 of a script's body in hex, as EVALSHA names it; "" when the digest failed (then use EVAL) */
void aor_redis_sha1_hex(const char *body, char sha[41]);

/**
 * Commands gathered by a user across a loop iteration: `fn(data)` runs just before the
 * iteration's commands are written (after the I/O callbacks, or before the loop waits), and the
 * commands it sends leave in that write. aor_redis_flush_soon makes sure such a write happens
 * in this iteration even when nothing else was sent. NULL removes the hook.
 */
void aor_redis_set_before_flush(struct aor_redis *r, void (*fn)(void *data), void *data);
void aor_redis_flush_soon(struct aor_redis *r);
/* writes the commands gathered so far at once (before the connection is torn down) */
void aor_redis_flush_now(struct aor_redis *r);

#endif
