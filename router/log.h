/*
 * log — the one log macro. Lines go to stderr as
 *   <iso8601> <level> [<module>] message
 * The level is checked before anything is formatted. Never pass a key, a token or
 * an Authorization value: log a SHA-256 prefix or a kid instead.
 * (The per-request access log is accesslog.h, on stdout.)
 */
#ifndef AOR_LOG_H
#define AOR_LOG_H

enum aor_log_level { AOR_LOG_ERROR = 0, AOR_LOG_WARN, AOR_LOG_INFO, AOR_LOG_DEBUG };

extern int aor_log_level; /* written once at start-up, before workers exist */

void aor_log_write(enum aor_log_level level, const char *module, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define AOR_LOG(level, module, ...)                                                                                                \
    do {                                                                                                                           \
        if ((level) <= aor_log_level)                                                                                              \
            aor_log_write((level), (module), __VA_ARGS__);                                                                         \
    } while (0)

#endif
