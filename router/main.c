/*
 * main.c — the command line (SPEC §2). Running the gateway is server.c; the operator
 * commands (keys, quota, usage) are admin_cli.c. Options may come before or after an
 * operator command's word: those before it are moved after it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "admin_cli.h"
#include "config.h"
#include "log.h"
#include "server.h"

#define MAX_PRE_ARGS 32 /* operator-command option words before the command */

#ifndef AOR_GIT_COMMIT
#define AOR_GIT_COMMIT "unknown"
#endif

static void usage(FILE *out)
{
    fprintf(out, "usage: aoai-router [-c backends.yaml] [-v]                    run (default config: ./backends.yaml)\n"
                 "       aoai-router --check [--no-secrets] [-c backends.yaml]  validate the config, print problems as "
                 "file:line: message\n"
                 "       aoai-router --version\n"
                 "router options:\n"
                 "  -c, --config FILE   the configuration (default ./backends.yaml)\n"
                 "  --check             validate the configuration and exit: 0 valid, 1 problems (all printed)\n"
                 "  --no-secrets        with --check: check shape and references only; *_env variables need not be set,\n"
                 "                      *_file secrets, tls and token files need not exist (for CI)\n"
                 "  -v, --verbose       debug logging (also AOR_LOG_LEVEL=debug|info|warn|error)\n"
                 "  --version           print the version and git commit\n"
                 "  -h, --help          this text\n");
    aor_admin_usage(out);
}

int main(int argc, char **argv)
{
    const char *path = "backends.yaml";
    int check = 0, no_secrets = 0, path_given = 0, i;
    struct aor_config *conf;
    char *pre[MAX_PRE_ARGS]; /* operator-command options given before the command */
    int num_pre = 0;

    for (i = 1; i < argc; ++i) {
        int arity;
        if (strcmp(argv[i], "--version") == 0) {
            printf("aoai-router %s (commit %s)\n", AOR_VERSION, AOR_GIT_COMMIT);
            return 0;
        } else if (strcmp(argv[i], "--check") == 0) {
            check = 1;
        } else if (strcmp(argv[i], "--no-secrets") == 0) {
            no_secrets = 1;
        } else if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
            path_given = 1;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
            path_given = 1;
        } else if (aor_admin_is_command(argv[i])) {
            /* operator commands (keys, quota, usage) work on Redis, not on a running router */
            char **args;
            int n = 0, rc;
            for (int k = i + 1; k < argc; ++k)
                if (strcmp(argv[k], "-h") == 0 || strcmp(argv[k], "--help") == 0) { /* `keys --help`: the whole text */
                    usage(stdout);
                    return 0;
                }
            if ((args = calloc((size_t)(argc - i + num_pre + 1), sizeof(*args))) == NULL)
                return 1;
            for (int k = i; k < argc; ++k)
                args[n++] = argv[k];
            for (int k = 0; k < num_pre; ++k)
                args[n++] = pre[k];
            rc = aor_admin_main(n, args, path_given ? path : NULL, NULL);
            free(args);
            return rc;
        } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0) {
            aor_log_level = AOR_LOG_DEBUG;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if ((arity = aor_admin_global_option(argv[i])) >= 0 && i + arity < argc && num_pre + 2 <= MAX_PRE_ARGS) {
            pre[num_pre++] = argv[i];
            if (arity == 1)
                pre[num_pre++] = argv[++i];
        } else {
            fprintf(stderr, "aoai-router: unknown argument: %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (num_pre != 0) {
        fprintf(stderr, "aoai-router: --redis, --prefix and --json go with an operator command (keys, quota, usage)\n");
        usage(stderr);
        return 2;
    }
    if (no_secrets && !check) {
        fprintf(stderr, "aoai-router: --no-secrets goes with --check (a router cannot run without its secrets)\n");
        return 2;
    }
    if (getenv("AOR_LOG_LEVEL") != NULL) {
        const char *l = getenv("AOR_LOG_LEVEL");
        aor_log_level = strcmp(l, "debug") == 0   ? AOR_LOG_DEBUG
                        : strcmp(l, "warn") == 0  ? AOR_LOG_WARN
                        : strcmp(l, "error") == 0 ? AOR_LOG_ERROR
                                                  : AOR_LOG_INFO;
    }

    conf = aor_config_load_flags(path, stderr, no_secrets ? AOR_CONFIG_NO_SECRETS : 0);
    if (check) {
        if (conf == NULL)
            return 1;
        printf("%s: OK (%zu listeners, %zu backends%s)\n", path, conf->num_listeners, conf->num_backends,
               no_secrets ? "; shape and references only: secrets and files not checked" : "");
        aor_config_release(conf);
        return 0;
    }
    if (conf == NULL) {
        fprintf(stderr, "aoai-router: %s has errors; not starting\n", path);
        return 1;
    }
    return aor_server_run(conf);
}
