/*
 * admin_cli — the operator commands of SPEC §2 that work on Redis (§6 keys): `keys create |
 * revoke | list`, `quota set | get`, `usage`. A short-lived process, so plain synchronous
 * hiredis. Results on stdout, problems on stderr. A subscription key is printed once by
 * `keys create` and nowhere else; Redis only ever receives its SHA-256.
 */
#ifndef AOR_ADMIN_CLI_H
#define AOR_ADMIN_CLI_H

#include <stdio.h>

/* prints the operator commands and every global option they take to `out` (--help) */
void aor_admin_usage(FILE *out);

/* an operator command's global option given before the command word: 1 when `word` takes the
 * next word as its value (--redis URL), 0 when it stands alone (--json, --redis=URL), -1 not one */
int aor_admin_global_option(const char *word);

/* 1 when `word` (argv[i] of main) starts an operator command: "keys", "quota" or "usage" */
int aor_admin_is_command(const char *word);

/**
 * Runs one operator command; argv[0] is "keys", "quota" or "usage", the rest its arguments:
 *   keys create --tenant T [--name N]     stdout: the new key (one line, shown this once);
 *                                         stderr: its sha256, tenant and name
 *   keys revoke <key|sha256|id|->          sets revoked 1; exit 1 if Redis does not know it. id: 8 or more
 *                                         leading hex digits of the SHA-256 (one key must match); -: stdin
 *   keys list [--tenant T]                tab-separated: id (8 hex, the access log's key_id), tenant, name,
 *                                         created (UTC), revoked
 *   quota set T [--tpm N] [--rpm N] [--tokens-per-day N] [--tokens-per-month N] [--deployments a,b] [--disabled 0|1]
 *                                         N: -1 unlimited, 0 blocked, or "default" to remove the field;
 *                                         --deployments "" (or "*") removes the restriction
 *   quota get T                           each limit, and the config default where Redis has none
 *   usage T [--period minute|day|month]   the current UTC window(s) (all three without --period)
 * Redis is found through `redis_url` (--redis URL; a password may be in the URL) or else the
 * config at `config_path` (NULL: ./backends.yaml): redis.url, redis.password_env/_file, redis.prefix.
 * Global options (aor_admin_usage: -c, --redis, --redis-password-env, --prefix, --json) are accepted
 * anywhere after the command word; main moves those given before it to the end of argv. The config
 * is loaded without the backends' secrets (AOR_CONFIG_NO_SECRETS | AOR_CONFIG_REDIS_SECRET).
 * With --redis and no -c the prefix is "aoai:" unless --prefix says otherwise.
 * Returns the exit code: 0 done, 1 not found or Redis/config error (message on stderr), 2 usage error.
 */
int aor_admin_main(int argc, char **argv, const char *config_path, const char *redis_url);

#endif
