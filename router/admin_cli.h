/*
 * admin_cli — the operator commands of SPEC §2 that work on Redis (§6 keys): `keys create |
 * revoke | list`, `quota set | get`, `usage`. A short-lived process, so plain synchronous
 * hiredis. Results on stdout, problems on stderr. A subscription key is printed once by
 * `keys create` and nowhere else; Redis only ever receives its SHA-256.
 */
#ifndef AOR_ADMIN_CLI_H
#define AOR_ADMIN_CLI_H

/* 1 when `word` (argv[i] of main) starts an operator command: "keys", "quota" or "usage" */
int aor_admin_is_command(const char *word);

/**
 * Runs one operator command; argv[0] is "keys", "quota" or "usage", the rest its arguments:
 *   keys create --tenant T [--name N]     stdout: the new key (one line, shown this once);
 *                                         stderr: its sha256, tenant and name
 *   keys revoke <key-or-sha256>           sets revoked 1; exit 1 if Redis does not know it
 *   keys list [--tenant T]                tab-separated: sha256 prefix (12), tenant, name, created (UTC), revoked
 *   quota set T [--tpm N] [--rpm N] [--tokens-per-day N] [--tokens-per-month N] [--deployments a,b] [--disabled 0|1]
 *                                         N: -1 unlimited, 0 blocked, or "default" to remove the field;
 *                                         --deployments "" (or "*") removes the restriction
 *   quota get T                           each limit, and the config default where Redis has none
 *   usage T [--period minute|day|month]   the current UTC window(s) (all three without --period)
 * Redis is found through `redis_url` (--redis URL; a password may be in the URL) or else the
 * config at `config_path` (NULL: ./backends.yaml): redis.url, redis.password_env/_file, redis.prefix.
 * `--redis URL`, `-c FILE` and `--prefix P` are also accepted after the command word.
 * With --redis and no -c the prefix is "aoai:" unless --prefix says otherwise.
 * Returns the exit code: 0 done, 1 not found or Redis/config error (message on stderr), 2 usage error.
 */
int aor_admin_main(int argc, char **argv, const char *config_path, const char *redis_url);

#endif
