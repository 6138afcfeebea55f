/*
 * main.c — the command line (SPEC §2). Running the gateway is server.c; the
 * operator commands (keys, quota, usage) arrive with their issues.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "admin_cli.h"
#include "config.h"
#include "log.h"
#include "server.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: aoai-router [-c backends.yaml]          run (default config: ./backends.yaml)\n"
                 "       aoai-router --check [-c backends.yaml]  validate the config, print problems as file:line: message\n"
                 "       aoai-router --version\n"
                 "       aoai-router [-c backends.yaml | --redis URL] keys create --tenant T [--name N]\n"
                 "       aoai-router [-c backends.yaml | --redis URL] keys revoke <key-or-sha256>\n"
                 "       aoai-router [-c backends.yaml | --redis URL] keys list [--tenant T]\n"
                 "       aoai-router [-c backends.yaml | --redis URL] quota set T [--tpm N] [--rpm N] [--tokens-per-day N]\n"
                 "                   [--tokens-per-month N] [--deployments a,b]\n"
                 "       aoai-router [-c backends.yaml | --redis URL] quota get T\n"
                 "       aoai-router [-c backends.yaml | --redis URL] usage T [--period minute|day|month]\n");
}

int main(int argc, char **argv)
{
    const char *path = "backends.yaml", *redis_url = NULL;
    int check = 0, path_given = 0, i;
    struct aor_config *conf;

    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("aoai-router %s\n", AOR_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--check") == 0) {
            check = 1;
        } else if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
            path_given = 1;
        } else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc) {
            redis_url = argv[++i];
        } else if (aor_admin_is_command(argv[i])) {
            /* operator commands (keys, quota, usage) work on Redis, not on a running router */
            return aor_admin_main(argc - i, argv + i, path_given ? path : NULL, redis_url);
        } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0) {
            aor_log_level = AOR_LOG_DEBUG;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "aoai-router: unknown argument: %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (getenv("AOR_LOG_LEVEL") != NULL) {
        const char *l = getenv("AOR_LOG_LEVEL");
        aor_log_level = strcmp(l, "debug") == 0   ? AOR_LOG_DEBUG
                        : strcmp(l, "warn") == 0  ? AOR_LOG_WARN
                        : strcmp(l, "error") == 0 ? AOR_LOG_ERROR
                                                  : AOR_LOG_INFO;
    }

    conf = aor_config_load(path, stderr);
    if (check) {
        if (conf == NULL)
            return 1;
        printf("%s: OK (%zu listeners, %zu backends)\n", path, conf->num_listeners, conf->num_backends);
        aor_config_release(conf);
        return 0;
    }
    if (conf == NULL) {
        fprintf(stderr, "aoai-router: %s has errors; not starting\n", path);
        return 1;
    }
    return aor_server_run(conf);
}
