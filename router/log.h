/*
 * log — the one log macro. Lines go to stderr as
 *   <iso8601> <level> [<module>] message
 * The level is checked before anything is formatted. Never pass a key, a token or
 * an Authorization value: log a SHA-256 prefix or a kid instead.
 * (The per-request access log is accesslog.h, on stdout.)
 */
#ifndef AOR_LOG_H
#define AOR_LOG_H

#include <stdint.h>

enum aor_log_level { AOR_LOG_ERROR = 0, AOR_LOG_WARN, AOR_LOG_INFO, AOR_LOG_DEBUG };

extern int aor_log_level; /* written once at start-up, before workers exist */

/* lines dropped because the reader stalled: [0] stderr log, [1] access log (relaxed atomics) */
extern uint64_t aor_log_dropped_total[2];

/**
 * 1: makes stdout and stderr non-blocking (the server: no log write may ever block a loop; a
 * line that does not fit the pipe is dropped and counted); 0: restores their flags (at exit).
 */
void aor_log_set_nonblocking(int on);

void aor_log_write(enum aor_log_level level, const char *module, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define AOR_LOG(level, module, ...)                                                                                                \
    do {                                                                                                                           \
        if ((level) <= aor_log_level)                                                                                              \
            aor_log_write((level), (module), __VA_ARGS__);                                                                         \
    } while (0)

#endif
