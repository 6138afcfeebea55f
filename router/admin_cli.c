/*
 * admin_cli.c — see admin_cli.h. Every command: parse its arguments (2 on a usage error),
 * find Redis (from --redis or the config), run a few synchronous commands, print.
 * A new key is 256 bits from getrandom(), printed as "aor_" + base64url (43 characters):
 * the prefix makes a leaked key easy to recognise in logs and secret scanners.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/random.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include "admin_cli.h"
#include "apikey.h"
#include "config.h"
#include "redis.h"
#include "redis_tlspipe.h"
#include "tenant.h"

#define DEFAULT_CONFIG "backends.yaml"
#define DEFAULT_PREFIX "aoai:"
#define KEY_PREFIX "aor_"
#define KEY_RANDOM_BYTES 32
#define NAME_MAX_LEN 64
#define SCAN_BATCH 1000
#define LIST_MAX 1000000 /* keys listed at most: the CLI's own memory bound */
#define IO_TIMEOUT_S 5
#define ID_MIN_LEN 8      /* a key's id: the first hex digits of its SHA-256, as keys list and the access log print it */
#define STDIN_KEY_MAX 512 /* `keys revoke -`: the longest line read from stdin */

struct admin {
    const char *config_path;  /* -c given, or NULL */
    const char *redis_url;    /* --redis given, or NULL */
    const char *redis_ca;     /* --redis-ca-file given, or NULL */
    const char *prefix;       /* --prefix given, or NULL */
    const char *password_env; /* --redis-password-env given, or NULL */
    int json;                 /* --json: machine-readable output */
    struct aor_config *conf;  /* loaded when Redis is found through it, or -c was given */
    redisContext *rc;
    char where[300]; /* host:port for messages */
};

void aor_admin_usage(FILE *out)
{
    fprintf(out,
            "operator commands (work on Redis, not on a running router):\n"
            "  aoai-router [global options] keys create --tenant T [--name N]\n"
            "  aoai-router [global options] keys revoke <key | sha256 | id | ->   (- reads the key from stdin)\n"
            "  aoai-router [global options] keys list [--tenant T]\n"
            "  aoai-router [global options] quota set T [--tpm N] [--rpm N] [--tokens-per-day N] [--tokens-per-month N]\n"
            "                                           [--deployments a,b] [--disabled 0|1]\n"
            "  aoai-router [global options] quota get T\n"
            "  aoai-router [global options] usage T [--period minute|day|month]\n"
            "global options (before or after the command):\n"
            "  -c, --config FILE            the config whose redis: section is used (default ./backends.yaml)\n"
            "  --redis URL                  redis[s]://[user@]host[:port][/db] instead of the config's redis.url\n"
            "  --redis-ca-file PEM          CA bundle trusted for rediss:// (default: the config's redis.ca_file, the system's)\n"
            "  --redis-password-env VAR     the Redis password from environment variable VAR (not in the URL);\n"
            "                               for Entra ID (redis.auth is not used here): --redis rediss://<object id>@host:port\n"
            "                               with VAR holding an access token for https://redis.azure.com\n"
            "  --prefix P                   key prefix in Redis (default: the config's redis.prefix, else aoai:)\n"
            "  --json                       keys list, quota get/set and usage print JSON\n"
            "  -h, --help                   this text\n"
            "the id that keys list prints is the first 8 hex digits of the key's SHA-256, the access log's key_id\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "aoai-router: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    aor_admin_usage(stderr);
    return 2;
}

int aor_admin_global_option(const char *word)
{
    static const char *const with_value[] = {"-c", "--config", "--redis", "--prefix", "--redis-ca-file", "--redis-password-env",
                                             NULL};

    for (size_t i = 0; with_value[i] != NULL; ++i) {
        size_t n = strlen(with_value[i]);
        if (strcmp(word, with_value[i]) == 0)
            return 1;
        if (strncmp(word, with_value[i], n) == 0 && word[n] == '=' && n > 2)
            return 0; /* --name=value: one word */
    }
    return strcmp(word, "--json") == 0 ? 0 : -1;
}

int aor_admin_is_command(const char *word)
{
    return word != NULL && (strcmp(word, "keys") == 0 || strcmp(word, "quota") == 0 || strcmp(word, "usage") == 0);
}

/* ---- arguments ---- */

/*
 * If argv[*i] is option `name` ("--name value" or "--name=value"), stores the value, advances *i
 * and returns 1; returns -1 when the value is missing, 0 when argv[*i] is another word.
 */
static int opt(int argc, char **argv, int *i, const char *name, const char **value)
{
    size_t n = strlen(name);

    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *value = argv[++*i];
    return 1;
}

/* the options every command accepts after its word; 1 consumed, 0 not one of them, -1 missing value */
static int common_opt(struct admin *a, int argc, char **argv, int *i)
{
    int r;

    if (strcmp(argv[*i], "--json") == 0) {
        a->json = 1;
        return 1;
    }
    if ((r = opt(argc, argv, i, "--redis-password-env", &a->password_env)) != 0)
        return r;
    if ((r = opt(argc, argv, i, "--redis-ca-file", &a->redis_ca)) != 0)
        return r;
    if ((r = opt(argc, argv, i, "--redis", &a->redis_url)) != 0)
        return r;
    if ((r = opt(argc, argv, i, "--prefix", &a->prefix)) != 0)
        return r;
    if ((r = opt(argc, argv, i, "--config", &a->config_path)) != 0)
        return r;
    return opt(argc, argv, i, "-c", &a->config_path);
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > NAME_MAX_LEN)
        return 0;
    for (size_t i = 0; i < n; ++i)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static int tenant_ok(const char *s)
{
    return s != NULL && aor_apikey_tenant_ok(s, strlen(s));
}

/* printable copy for the terminal: control bytes and non-ASCII become '?' */
static void print_clean(FILE *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; ++i)
        fputc((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?', out);
}

/* a JSON string of the printable copy (print_clean's rule), so odd bytes in Redis cannot break the output */
static json_t *json_clean(const char *s, size_t len)
{
    char *c = malloc(len + 1);
    json_t *j;

    if (c == NULL)
        return json_null();
    for (size_t i = 0; i < len; ++i)
        c[i] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    j = json_stringn(c, len);
    free(c);
    return j != NULL ? j : json_null();
}

/* an integer when the whole string is one, else the cleaned string */
static json_t *json_value(const char *s, size_t len)
{
    char buf[32], *end;
    long long v;

    if (len > 0 && len < sizeof(buf)) {
        memcpy(buf, s, len);
        buf[len] = '\0';
        errno = 0;
        v = strtoll(buf, &end, 10);
        if (errno == 0 && *end == '\0')
            return json_integer(v);
    }
    return json_clean(s, len);
}

/* prints `j` (taking it) as one JSON document on stdout */
static void json_print(json_t *j)
{
    if (j != NULL)
        json_dumpf(j, stdout, JSON_INDENT(2));
    putchar('\n');
    json_decref(j);
}

/* ---- Redis ---- */

static const char *prefix_of(const struct admin *a)
{
    if (a->prefix != NULL)
        return a->prefix;
    if (a->conf != NULL && a->conf->redis.prefix != NULL)
        return a->conf->redis.prefix;
    return DEFAULT_PREFIX;
}

static int load_config(struct admin *a, int required)
{
    const char *path = a->config_path != NULL ? a->config_path : DEFAULT_CONFIG;

    if (a->config_path == NULL && !required)
        return 0;
    /* only redis: is used: the backends' and issuers' secrets need not be in this environment */
    if ((a->conf = aor_config_load_flags(path, stderr, AOR_CONFIG_NO_SECRETS | AOR_CONFIG_REDIS_SECRET)) == NULL) {
        fprintf(stderr, "aoai-router: %s has errors%s\n", path, a->redis_url == NULL ? "; or give Redis with --redis URL" : "");
        return -1;
    }
    return 0;
}

/* the password when the URL has none: --redis-password-env, else the config's (-c or no --redis); NULL if none */
static const char *redis_password(const struct admin *a)
{
    const char *v;

    if (a->password_env != NULL) {
        if ((v = getenv(a->password_env)) == NULL || *v == '\0')
            fprintf(stderr, "aoai-router: --redis-password-env: %s is not set or empty\n", a->password_env);
        return v != NULL && *v != '\0' ? v : NULL;
    }
    return a->conf != NULL ? a->conf->redis.password : NULL;
}

static redisReply *command(struct admin *a, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;

    va_start(ap, fmt);
    r = redisvCommand(a->rc, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        fprintf(stderr, "aoai-router: redis %s: %s\n", a->where, a->rc->errstr[0] != '\0' ? a->rc->errstr : "no reply");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "aoai-router: redis %s: %s\n", a->where, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static int connect_redis(struct admin *a)
{
    struct aor_redis_url u;
    struct timeval tv = {IO_TIMEOUT_S, 0};
    const char *url, *password;
    redisReply *r;
    int ret = -1;

    if (a->redis_url == NULL || a->config_path != NULL) {
        if (load_config(a, 1) != 0)
            return -1;
    }
    url = a->redis_url != NULL ? a->redis_url : a->conf->redis.url;
    if (url == NULL) {
        fprintf(stderr, "aoai-router: %s has no redis.url; give Redis with --redis URL\n", a->conf->path);
        return -1;
    }
    if (aor_redis_url_parse(url, &u) != 0) {
        fprintf(stderr, "aoai-router: not a redis[s]://[[user]:password@]host[:port][/db] URL\n"); /* it may hold a password */
        return -1;
    }
    password = u.password;
    if (password == NULL && (password = redis_password(a)) == NULL && a->password_env != NULL)
        goto done;
    if (a->redis_url == NULL && password == NULL && a->conf->redis.cred.type != AOR_CRED_NONE) {
        /* the CLI fetches no Entra ID token itself: the operator brings one (README "Keyless Redis") */
        fprintf(stderr,
                "aoai-router: %s: redis.auth (Entra ID) is not used by the operator commands; connect as an identity "
                "allowed on the cache: --redis %s://<object id>@%s:%u%s --redis-password-env VAR, with VAR holding an access "
                "token for https://redis.azure.com (e.g. az account get-access-token --resource https://redis.azure.com "
                "--query accessToken -o tsv), or an access key\n",
                a->conf->path, u.tls ? "rediss" : "redis", u.host, (unsigned)u.port, u.db != 0 ? "/<db>" : "");
        goto done;
    }
    snprintf(a->where, sizeof(a->where), "%s:%u", u.host, (unsigned)u.port);
    if (u.tls) {
        /* hiredis 0.14 has no TLS: it talks through a socket pair to a verified TLS connection of ours */
        const char *ca = a->redis_ca != NULL ? a->redis_ca : a->conf != NULL ? a->conf->redis.ca_file : NULL;
        char err[256];
        int fd = aor_redis_tlspipe_open(u.host, u.port, ca, IO_TIMEOUT_S * 1000, err, sizeof(err));
        if (fd < 0) {
            fprintf(stderr, "aoai-router: redis %s: %s\n", a->where, err);
            goto done;
        }
        a->rc = redisConnectFd(fd);
    } else {
        a->rc = redisConnectWithTimeout(u.host, u.port, tv);
    }
    if (a->rc == NULL || a->rc->err) {
        fprintf(stderr, "aoai-router: redis %s: %s\n", a->where, a->rc != NULL ? a->rc->errstr : "out of memory");
        goto done;
    }
    redisSetTimeout(a->rc, tv);
    {
        /* hiredis 0.14 allocates whatever array size a reply announces: the bounded reader instead */
        redisReader *bounded = aor_redis_reader_create();
        if (bounded == NULL) {
            fprintf(stderr, "aoai-router: out of memory\n");
            goto done;
        }
        redisReaderFree(a->rc->reader);
        a->rc->reader = bounded;
    }
    if (password != NULL) {
        r = u.user != NULL ? command(a, "AUTH %s %s", u.user, password) : command(a, "AUTH %s", password);
        if (r == NULL)
            goto done;
        freeReplyObject(r);
    }
    if (u.db != 0) {
        if ((r = command(a, "SELECT %u", u.db)) == NULL)
            goto done;
        freeReplyObject(r);
    }
    ret = 0;
done:
    aor_redis_url_clear(&u);
    return ret;
}

/* ---- keys ---- */

static void base64url(const unsigned char *in, size_t len, char *out)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;

    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
}

static int random_bytes(unsigned char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0); /* blocks only until the pool is seeded at boot */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

static int keys_create(struct admin *a, int argc, char **argv)
{
    const char *tenant = NULL, *name = NULL;
    unsigned char raw[KEY_RANDOM_BYTES], digest[32];
    char key[AOR_APIKEY_CHECKED_LEN + 1], hex[65];
    redisReply *r;
    int ret = 1, o;

    for (int i = 2; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) == 0 && (o = opt(argc, argv, &i, "--tenant", &tenant)) == 0 &&
            (o = opt(argc, argv, &i, "--name", &name)) == 0)
            return usage_error("keys create: unexpected argument: %s", argv[i]);
        if (o < 0)
            return usage_error("keys create: %s needs a value", argv[i]);
    }
    if (tenant == NULL)
        return usage_error("keys create: --tenant is required");
    if (!tenant_ok(tenant))
        return usage_error("keys create: bad tenant name (" AOR_TENANT_NAME_RULE ")");
    if (name != NULL && !name_ok(name))
        return usage_error("keys create: bad name (1 to 64 printable ASCII characters)");
    if (connect_redis(a) != 0)
        return 1;

    if (random_bytes(raw, sizeof(raw)) != 0) {
        fprintf(stderr, "aoai-router: getrandom: %s\n", strerror(errno));
        goto done;
    }
    /* "aor_" + 43 characters + an 8-character checksum (apikey.h): the router refuses a mistyped
     * or made-up key of this format without asking Redis */
    memset(key, 0, sizeof(key));
    memcpy(key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    base64url(raw, sizeof(raw), key + sizeof(KEY_PREFIX) - 1);
    if (strlen(key) != AOR_APIKEY_LEGACY_LEN || aor_apikey_checksum(key, key + AOR_APIKEY_LEGACY_LEN) != 0 ||
        aor_apikey_check_format(key, strlen(key)) != 1 || aor_apikey_digest(key, strlen(key), digest) != 0) {
        fprintf(stderr, "aoai-router: SHA-256 failed\n");
        goto done;
    }
    aor_apikey_hex(digest, hex);
    /* HSETNX on the tenant field: a (never seen) collision cannot overwrite another key */
    if ((r = command(a, "HSETNX %skey:%s tenant %s", prefix_of(a), hex, tenant)) == NULL)
        goto done;
    if (r->type != REDIS_REPLY_INTEGER || r->integer != 1) {
        fprintf(stderr, "aoai-router: %skey:%.12s... already exists; nothing stored\n", prefix_of(a), hex);
        freeReplyObject(r);
        goto done;
    }
    freeReplyObject(r);
    r = name != NULL ? command(a, "HSET %skey:%s name %s created %lld", prefix_of(a), hex, name, (long long)time(NULL))
                     : command(a, "HSET %skey:%s created %lld", prefix_of(a), hex, (long long)time(NULL));
    if (r == NULL)
        goto done;
    freeReplyObject(r);
    printf("%s\n", key);
    fflush(stdout);
    fprintf(stderr, "sha256 %s tenant %s%s%s (the key above is shown once; only its SHA-256 is stored)\n", hex, tenant,
            name != NULL ? " name " : "", name != NULL ? name : "");
    ret = 0;
done:
    explicit_bzero(key, sizeof(key));
    explicit_bzero(raw, sizeof(raw));
    return ret;
}

/* revoked only if the hash exists: HSET alone would create an orphan hash */
static const char revoke_script[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end "
                                    "redis.call('HSET', KEYS[1], 'revoked', '1') "
                                    "return redis.call('HGET', KEYS[1], 'tenant') or ''";

/* 1 when `s` is `len` hex digits */
static int all_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; ++i)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') || (s[i] >= 'A' && s[i] <= 'F')))
            return 0;
    return 1;
}

static char *scan_pattern(const char *prefix, const char *id);

/*
 * The one Redis key hash whose SHA-256 starts with `id` (hex, lower case): SCAN over
 * <prefix>key:<id>*. 0 and `hex` set, 1 none, 2 several (message printed), -1 Redis error.
 */
static int find_by_id(struct admin *a, const char *id, char hex[65])
{
    char cursor[32] = "0", *pattern = scan_pattern(prefix_of(a), id);
    size_t plen = strlen(prefix_of(a)), found = 0;
    redisReply *r;

    if (pattern == NULL)
        return -1;
    do {
        if ((r = command(a, "SCAN %s MATCH %s COUNT %d", cursor, pattern, SCAN_BATCH)) == NULL) {
            free(pattern);
            return -1;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof(cursor)) {
            fprintf(stderr, "aoai-router: redis %s: unexpected SCAN reply\n", a->where);
            freeReplyObject(r);
            free(pattern);
            return -1;
        }
        memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
        for (size_t i = 0; i < r->element[1]->elements; ++i) {
            const redisReply *k = r->element[1]->element[i];
            if (k->type != REDIS_REPLY_STRING || k->len != plen + 4 + 64 || !all_hex(k->str + plen + 4, 64))
                continue;
            if (found++ == 0) {
                memcpy(hex, k->str + plen + 4, 64);
                hex[64] = '\0';
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    free(pattern);
    if (found > 1)
        fprintf(stderr, "aoai-router: %zu keys have an id starting with %s: give more hex digits of the SHA-256\n", found, id);
    return found == 0 ? 1 : found == 1 ? 0 : 2;
}

/* `keys revoke -`: one line from stdin (the key never lands in argv or the shell's history) */
static int read_stdin_key(char *buf, size_t cap)
{
    size_t len;

    if (fgets(buf, (int)cap, stdin) == NULL)
        return -1;
    len = strlen(buf);
    if (len == cap - 1 && buf[len - 1] != '\n')
        return -1; /* longer than any key */
    while (len > 0 && strchr(" \t\r\n", buf[len - 1]) != NULL)
        buf[--len] = '\0';
    return len != 0 ? 0 : -1;
}

static int keys_revoke(struct admin *a, int argc, char **argv)
{
    const char *what = NULL;
    unsigned char digest[32];
    char hex[65], id[65], line[STDIN_KEY_MAX];
    redisReply *r;
    int o, from_stdin = 0, by_id = 0, ret = 1;
    size_t len;

    for (int i = 2; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) < 0)
            return usage_error("keys revoke: %s needs a value", argv[i]);
        if (o > 0)
            continue;
        if (what != NULL || from_stdin || (argv[i][0] == '-' && argv[i][1] != '\0'))
            return usage_error("keys revoke: unexpected argument"); /* never echo: it may be a key */
        if (strcmp(argv[i], "-") == 0)
            from_stdin = 1;
        else
            what = argv[i];
    }
    if (from_stdin) {
        if (read_stdin_key(line, sizeof(line)) != 0) {
            explicit_bzero(line, sizeof(line));
            return usage_error("keys revoke -: expected one line on stdin: the key, its SHA-256 or its id");
        }
        what = line;
    }
    if (what == NULL)
        return usage_error("keys revoke: give the key, its SHA-256 (64 hex digits), its id (keys list) or - (stdin)");
    len = strlen(what);
    if (len == 64 && aor_apikey_unhex(what, len, digest) == 0) {
        aor_apikey_hex(digest, hex);
    } else if (len >= ID_MIN_LEN && len < 64 && all_hex(what, len)) {
        by_id = 1; /* the id keys list and the access log print (or a longer prefix of the SHA-256) */
        for (size_t i = 0; i <= len; ++i)
            id[i] = (char)(what[i] >= 'A' && what[i] <= 'F' ? what[i] + 32 : what[i]);
    } else if (aor_apikey_syntax_ok(what, len) && aor_apikey_digest(what, len, digest) == 0) {
        aor_apikey_hex(digest, hex);
    } else {
        explicit_bzero(line, sizeof(line));
        return usage_error("keys revoke: neither a key, a SHA-256 (64 hex digits) nor an id (8 or more hex digits)");
    }
    explicit_bzero(line, sizeof(line));
    if (connect_redis(a) != 0)
        return 1;
    if (by_id) {
        int f = find_by_id(a, id, hex);
        if (f == 1)
            fprintf(stderr, "aoai-router: no key with id %s in Redis (%skey:<sha256>)\n", id, prefix_of(a));
        if (f != 0)
            return 1;
    }
    if ((r = command(a, "EVAL %s 1 %skey:%s", revoke_script, prefix_of(a), hex)) == NULL)
        return 1;
    if (r->type != REDIS_REPLY_STRING) {
        if (a->conf != NULL && aor_apikey_find_static(a->conf, hex) != NULL)
            fprintf(stderr, "aoai-router: key %.8s is a static key (auth.keys.static in %s): remove it there\n", hex,
                    a->conf->path);
        else
            fprintf(stderr, "aoai-router: no key %.8s... in Redis (%skey:<sha256>)\n", hex, prefix_of(a));
        goto done;
    }
    if (a->json) {
        json_t *o2 = json_object();
        json_object_set_new(o2, "revoked", json_true());
        json_object_set_new(o2, "id", json_stringn(hex, ID_MIN_LEN));
        json_object_set_new(o2, "tenant", json_clean(r->str, r->len));
        json_print(o2);
    } else {
        printf("revoked %.8s tenant ", hex);
        print_clean(stdout, r->str, r->len);
        printf("\n");
    }
    ret = 0;
done:
    freeReplyObject(r);
    return ret;
}

struct key_row {
    char hex[65];
    char *tenant, *name, *created;
    int revoked;
};

static char *dup_reply(const redisReply *v)
{
    return v != NULL && v->type == REDIS_REPLY_STRING ? strndup(v->str, v->len) : strdup("");
}

static int row_cmp(const void *x, const void *y)
{
    const struct key_row *a = x, *b = y;
    int c = strcmp(a->tenant, b->tenant);
    long long ca = atoll(a->created), cb = atoll(b->created);

    if (c != 0)
        return c;
    if (ca != cb)
        return ca < cb ? -1 : 1;
    return strcmp(a->hex, b->hex);
}

/* the SCAN pattern for keys under `prefix` whose digest starts with `id` (hex; "" for all):
 * glob characters in the prefix are escaped */
static char *scan_pattern(const char *prefix, const char *id)
{
    size_t n = strlen(prefix), idn = strlen(id);
    char *p = malloc(2 * n + idn + sizeof("key:*")), *o = p;

    if (p == NULL)
        return NULL;
    for (size_t i = 0; i < n; ++i) {
        if (strchr("*?[]\\", prefix[i]) != NULL)
            *o++ = '\\';
        *o++ = prefix[i];
    }
    memcpy(o, "key:", 4);
    memcpy(o + 4, id, idn);
    memcpy(o + 4 + idn, "*", 2);
    return p;
}

/* `s` (unix seconds) as an ISO 8601 UTC time in buf; 0 when it is not a time */
static int format_created(const char *s, char *buf, size_t cap)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    struct tm tm;
    time_t t = (time_t)v;

    return *s != '\0' && *end == '\0' && v >= 0 && gmtime_r(&t, &tm) != NULL && strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) != 0;
}

static void print_created(const char *s)
{
    char buf[32];

    if (format_created(s, buf, sizeof(buf)))
        fputs(buf, stdout);
    else
        print_clean(stdout, s, strlen(s));
}

static int keys_list(struct admin *a, int argc, char **argv)
{
    const char *tenant = NULL, *prefix;
    struct key_row *rows = NULL;
    size_t num = 0, cap = 0, plen;
    char cursor[32] = "0", *pattern = NULL;
    redisReply *r = NULL;
    int ret = 1, o;

    for (int i = 2; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) == 0 && (o = opt(argc, argv, &i, "--tenant", &tenant)) == 0)
            return usage_error("keys list: unexpected argument: %s", argv[i]);
        if (o < 0)
            return usage_error("keys list: %s needs a value", argv[i]);
    }
    if (connect_redis(a) != 0)
        return 1;
    prefix = prefix_of(a);
    plen = strlen(prefix);
    if ((pattern = scan_pattern(prefix, "")) == NULL)
        goto done;
    do {
        size_t batch_start = num, n;
        if ((r = command(a, "SCAN %s MATCH %s COUNT %d", cursor, pattern, SCAN_BATCH)) == NULL)
            goto done;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof(cursor)) {
            fprintf(stderr, "aoai-router: redis %s: unexpected SCAN reply\n", a->where);
            goto done;
        }
        memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
        /* pipelined HGETALLs for this batch of names */
        n = r->element[1]->elements;
        for (size_t i = 0; i < n; ++i) {
            const redisReply *k = r->element[1]->element[i];
            unsigned char d[32];
            if (k->type != REDIS_REPLY_STRING || k->len != plen + 4 + 64 || aor_apikey_unhex(k->str + plen + 4, 64, d) != 0)
                continue; /* not one of ours */
            if (num == LIST_MAX) {
                fprintf(stderr, "aoai-router: more than %d keys; listing stops there\n", LIST_MAX);
                break;
            }
            if (num == cap) {
                struct key_row *nr = realloc(rows, (cap = cap != 0 ? cap * 2 : 256) * sizeof(*rows));
                if (nr == NULL)
                    goto done;
                rows = nr;
            }
            memset(&rows[num], 0, sizeof(rows[num]));
            aor_apikey_hex(d, rows[num].hex);
            redisAppendCommand(a->rc, "HGETALL %b", k->str, k->len);
            ++num;
        }
        freeReplyObject(r);
        r = NULL;
        for (size_t i = batch_start; i < num; ++i) {
            const redisReply *tv = NULL, *nv = NULL, *cv = NULL, *rv = NULL;
            redisReply *h = NULL;
            if (redisGetReply(a->rc, (void **)&h) != REDIS_OK || h == NULL) {
                fprintf(stderr, "aoai-router: redis %s: %s\n", a->where, a->rc->errstr);
                num = i;
                goto done;
            }
            if (h->type == REDIS_REPLY_ARRAY) {
                for (size_t j = 0; j + 1 < h->elements; j += 2) {
                    const redisReply *f = h->element[j];
                    if (f->type != REDIS_REPLY_STRING)
                        continue;
                    if (strcmp(f->str, "tenant") == 0)
                        tv = h->element[j + 1];
                    else if (strcmp(f->str, "name") == 0)
                        nv = h->element[j + 1];
                    else if (strcmp(f->str, "created") == 0)
                        cv = h->element[j + 1];
                    else if (strcmp(f->str, "revoked") == 0)
                        rv = h->element[j + 1];
                }
            }
            rows[i].tenant = dup_reply(tv);
            rows[i].name = dup_reply(nv);
            rows[i].created = dup_reply(cv);
            rows[i].revoked = rv != NULL && rv->type == REDIS_REPLY_STRING && aor_apikey_flag_set(rv->str, rv->len);
            freeReplyObject(h);
            if (rows[i].tenant == NULL || rows[i].name == NULL || rows[i].created == NULL) {
                num = i + 1;
                goto done;
            }
        }
    } while (strcmp(cursor, "0") != 0 && num < LIST_MAX);

    if (num != 0)
        qsort(rows, num, sizeof(*rows), row_cmp);
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < num; ++i) {
            json_t *o2 = json_object();
            char when[32];
            if (tenant != NULL && strcmp(rows[i].tenant, tenant) != 0)
                continue;
            json_object_set_new(o2, "id", json_stringn(rows[i].hex, ID_MIN_LEN));
            json_object_set_new(o2, "tenant", json_clean(rows[i].tenant, strlen(rows[i].tenant)));
            json_object_set_new(o2, "name", json_clean(rows[i].name, strlen(rows[i].name)));
            json_object_set_new(o2, "created",
                                format_created(rows[i].created, when, sizeof(when))
                                    ? json_string(when)
                                    : json_clean(rows[i].created, strlen(rows[i].created)));
            json_object_set_new(o2, "revoked", json_boolean(rows[i].revoked));
            json_array_append_new(arr, o2);
        }
        json_print(arr);
        ret = 0;
        goto done;
    }
    printf("ID\tTENANT\tNAME\tCREATED\tREVOKED\n");
    for (size_t i = 0; i < num; ++i) {
        if (tenant != NULL && strcmp(rows[i].tenant, tenant) != 0)
            continue;
        printf("%.8s\t", rows[i].hex);
        print_clean(stdout, rows[i].tenant, strlen(rows[i].tenant));
        putchar('\t');
        print_clean(stdout, rows[i].name, strlen(rows[i].name));
        putchar('\t');
        print_created(rows[i].created);
        printf("\t%s\n", rows[i].revoked ? "yes" : "no");
    }
    ret = 0;
done:
    if (r != NULL)
        freeReplyObject(r);
    for (size_t i = 0; i < num; ++i) {
        free(rows[i].tenant);
        free(rows[i].name);
        free(rows[i].created);
    }
    free(rows);
    free(pattern);
    return ret;
}

/* ---- quota ---- */

static const char *const quota_fields[] = {"tpm", "rpm", "tokens_per_day", "tokens_per_month", NULL};
static const char *const quota_options[] = {"--tpm", "--rpm", "--tokens-per-day", "--tokens-per-month", NULL};

/* an integer >= -1 (at most 10^15) */
static int limit_ok(const char *s)
{
    char *end;
    long long v;

    if (*s == '\0')
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    return errno == 0 && *end == '\0' && v >= -1 && v <= 1000000000000000LL;
}

static int deployments_ok(const char *s)
{
    const char *p = s;

    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (n == 0 || n > 256)
            return 0;
        for (size_t i = 0; i < n; ++i)
            if ((unsigned char)p[i] <= 0x20 || p[i] == 0x7f || strchr("/?#%\\", p[i]) != NULL)
                return 0;
        p += n;
        if (*p == ',' && *++p == '\0')
            return 0;
    }
    return 1;
}

static const struct aor_tenant_conf *conf_tenant(const struct aor_config *conf, const char *tenant)
{
    const struct aor_tenant_conf *dflt = NULL;

    for (size_t i = 0; conf != NULL && i < conf->num_tenants; ++i) {
        if (strcmp(conf->tenants[i].name, tenant) == 0)
            return &conf->tenants[i];
        if (strcmp(conf->tenants[i].name, "default") == 0)
            dflt = &conf->tenants[i];
    }
    return dflt;
}

static int has_field(const redisReply *r, const char *name)
{
    for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2)
        if (r->element[j]->type == REDIS_REPLY_STRING && strcmp(r->element[j]->str, name) == 0)
            return 1;
    return 0;
}

/*
 * quota get --json: {"tenant", "key", "limits": {field: {"value": N|null, "source": "redis"|"config"|"none"}},
 * "deployments": [..]|null, "deployments_source", "fields": {every other hash field: value}}
 */
static void quota_json(const struct admin *a, const char *tenant, const struct aor_tenant_conf *tc, const redisReply *r)
{
    json_t *o = json_object(), *limits = json_object(), *other = json_object(), *deps = json_null();
    const char *deps_source = "none";
    char key[512];

    snprintf(key, sizeof(key), "%stenant:{%s}", prefix_of(a), tenant);
    json_object_set_new(o, "tenant", json_string(tenant));
    json_object_set_new(o, "key", json_clean(key, strlen(key)));
    for (size_t q = 0; quota_fields[q] != NULL; ++q) {
        json_t *l = json_object();
        const redisReply *v = NULL;
        for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2)
            if (r->element[j]->type == REDIS_REPLY_STRING && strcmp(r->element[j]->str, quota_fields[q]) == 0)
                v = r->element[j + 1];
        if (v != NULL && v->type == REDIS_REPLY_STRING) {
            json_object_set_new(l, "value", json_value(v->str, v->len));
            json_object_set_new(l, "source", json_string("redis"));
        } else if (tc != NULL) {
            int64_t d = q == 0 ? tc->tpm : q == 1 ? tc->rpm : q == 2 ? tc->tokens_per_day : tc->tokens_per_month;
            json_object_set_new(l, "value", json_integer(d));
            json_object_set_new(l, "source", json_string("config"));
        } else {
            json_object_set_new(l, "value", json_null());
            json_object_set_new(l, "source", json_string("none"));
        }
        json_object_set_new(limits, quota_fields[q], l);
    }
    for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2) {
        const redisReply *f = r->element[j], *v = r->element[j + 1];
        int known = 0;
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        for (size_t q = 0; quota_fields[q] != NULL; ++q)
            known |= strcmp(f->str, quota_fields[q]) == 0;
        if (known)
            continue;
        if (strcmp(f->str, "deployments") == 0) {
            json_decref(deps);
            deps = json_array();
            deps_source = "redis";
            for (const char *p = v->str; *p != '\0';) {
                size_t n = strcspn(p, ",");
                json_array_append_new(deps, json_clean(p, n));
                p += n + (p[n] == ',');
            }
            continue;
        }
        {
            json_t *name = json_clean(f->str, f->len);
            if (json_string_value(name) != NULL)
                json_object_set_new(other, json_string_value(name), json_value(v->str, v->len));
            json_decref(name);
        }
    }
    if (deps_source[0] == 'n' && tc != NULL && tc->deployments != NULL) {
        json_decref(deps);
        deps = json_array();
        deps_source = "config";
        for (size_t i = 0; i < tc->num_deployments; ++i)
            json_array_append_new(deps, json_string(tc->deployments[i]));
    }
    json_object_set_new(o, "limits", limits);
    json_object_set_new(o, "deployments", deps);
    json_object_set_new(o, "deployments_source", json_string(deps_source));
    json_object_set_new(o, "fields", other);
    json_print(o);
}

static int quota_print(struct admin *a, const char *tenant)
{
    const struct aor_tenant_conf *tc = conf_tenant(a->conf, tenant);
    redisReply *r;

    if ((r = command(a, "HGETALL %stenant:{%s}", prefix_of(a), tenant)) == NULL)
        return 1;
    if (a->json) {
        quota_json(a, tenant, tc, r);
        freeReplyObject(r);
        return 0;
    }
    printf("tenant %s (%stenant:{%s})\n", tenant, prefix_of(a), tenant);
    for (size_t q = 0; quota_fields[q] != NULL; ++q) {
        const redisReply *v = NULL;
        for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2)
            if (r->element[j]->type == REDIS_REPLY_STRING && strcmp(r->element[j]->str, quota_fields[q]) == 0)
                v = r->element[j + 1];
        printf("  %-17s ", quota_fields[q]);
        if (v != NULL && v->type == REDIS_REPLY_STRING) {
            print_clean(stdout, v->str, v->len);
            printf("\n");
        } else if (tc != NULL) {
            int64_t d = q == 0 ? tc->tpm : q == 1 ? tc->rpm : q == 2 ? tc->tokens_per_day : tc->tokens_per_month;
            printf("%lld (config tenants.%s)\n", (long long)d, tc->name);
        } else {
            printf("(not set: config default)\n");
        }
    }
    /* everything else in the hash, as is */
    for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2) {
        const redisReply *f = r->element[j], *v = r->element[j + 1];
        int known = 0;
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        for (size_t q = 0; quota_fields[q] != NULL; ++q)
            known |= strcmp(f->str, quota_fields[q]) == 0;
        if (known)
            continue;
        printf("  ");
        print_clean(stdout, f->str, f->len);
        printf("%*s", f->len < 18 ? (int)(18 - f->len) : 1, "");
        print_clean(stdout, v->str, v->len);
        printf("\n");
    }
    if (tc != NULL && tc->deployments != NULL && !has_field(r, "deployments")) {
        printf("  %-17s ", "deployments");
        for (size_t i = 0; i < tc->num_deployments; ++i)
            printf("%s%s", i != 0 ? "," : "", tc->deployments[i]);
        printf(" (config tenants.%s)\n", tc->name);
    }
    freeReplyObject(r);
    return 0;
}

static int quota_cmd(struct admin *a, int argc, char **argv)
{
    const char *tenant = NULL, *values[4] = {NULL}, *deployments = NULL, *disabled = NULL;
    int set, o, any = 0;
    redisReply *r;

    if (argc < 2 || (strcmp(argv[1], "set") != 0 && strcmp(argv[1], "get") != 0))
        return usage_error("quota: expected set or get");
    set = strcmp(argv[1], "set") == 0;
    for (int i = 2; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) != 0) {
            if (o < 0)
                return usage_error("quota: %s needs a value", argv[i]);
            continue;
        }
        if (set) {
            int matched = 0;
            for (size_t q = 0; quota_options[q] != NULL && !matched; ++q)
                if ((o = opt(argc, argv, &i, quota_options[q], &values[q])) != 0) {
                    if (o < 0)
                        return usage_error("quota set: %s needs a value", argv[i]);
                    if (strcmp(values[q], "default") != 0 && !limit_ok(values[q]))
                        return usage_error("quota set: %s: expected -1 (unlimited), 0 (blocked), a positive number or default",
                                           quota_options[q]);
                    matched = any = 1;
                }
            if (matched)
                continue;
            if ((o = opt(argc, argv, &i, "--deployments", &deployments)) != 0) {
                if (o < 0)
                    return usage_error("quota set: %s needs a value", argv[i]);
                if (deployments[0] != '\0' && strcmp(deployments, "*") != 0 && !deployments_ok(deployments))
                    return usage_error("quota set: --deployments: expected a comma list of deployment names");
                any = 1;
                continue;
            }
            if ((o = opt(argc, argv, &i, "--disabled", &disabled)) != 0) {
                if (o < 0 || (strcmp(disabled, "0") != 0 && strcmp(disabled, "1") != 0))
                    return usage_error("quota set: --disabled takes 0 or 1");
                any = 1;
                continue;
            }
        }
        if (argv[i][0] == '-' || tenant != NULL)
            return usage_error("quota: unexpected argument: %s", argv[i]);
        tenant = argv[i];
    }
    if (tenant == NULL)
        return usage_error("quota: give the tenant");
    if (!tenant_ok(tenant))
        return usage_error("quota: bad tenant name (" AOR_TENANT_NAME_RULE ")");
    if (set && !any)
        return usage_error("quota set: nothing to set");
    if (connect_redis(a) != 0)
        return 1;
    if (set) {
        for (size_t q = 0; quota_fields[q] != NULL; ++q) {
            if (values[q] == NULL)
                continue;
            r = strcmp(values[q], "default") == 0
                    ? command(a, "HDEL %stenant:{%s} %s", prefix_of(a), tenant, quota_fields[q])
                    : command(a, "HSET %stenant:{%s} %s %lld", prefix_of(a), tenant, quota_fields[q], strtoll(values[q], NULL, 10));
            if (r == NULL)
                return 1;
            freeReplyObject(r);
        }
        if (deployments != NULL) {
            r = deployments[0] == '\0' || strcmp(deployments, "*") == 0
                    ? command(a, "HDEL %stenant:{%s} deployments", prefix_of(a), tenant)
                    : command(a, "HSET %stenant:{%s} deployments %s", prefix_of(a), tenant, deployments);
            if (r == NULL)
                return 1;
            freeReplyObject(r);
        }
        if (disabled != NULL) {
            if ((r = command(a, "HSET %stenant:{%s} disabled %s", prefix_of(a), tenant, disabled)) == NULL)
                return 1;
            freeReplyObject(r);
        }
    }
    return quota_print(a, tenant);
}

/* ---- usage ---- */

static int usage_cmd(struct admin *a, int argc, char **argv)
{
    static const char *const periods[] = {"minute", "day", "month", NULL};
    static const char *const formats[] = {"%Y%m%d%H%M", "%Y%m%d", "%Y%m"};
    const char *tenant = NULL, *period = NULL;
    time_t now = time(NULL);
    struct tm tm;
    json_t *windows = NULL;
    int o;

    for (int i = 1; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) == 0 && (o = opt(argc, argv, &i, "--period", &period)) == 0) {
            if (argv[i][0] == '-' || tenant != NULL)
                return usage_error("usage: unexpected argument: %s", argv[i]);
            tenant = argv[i];
            continue;
        }
        if (o < 0)
            return usage_error("usage: %s needs a value", argv[i]);
    }
    if (tenant == NULL)
        return usage_error("usage: give the tenant");
    if (!tenant_ok(tenant))
        return usage_error("usage: bad tenant name (" AOR_TENANT_NAME_RULE ")");
    if (period != NULL && strcmp(period, "minute") != 0 && strcmp(period, "day") != 0 && strcmp(period, "month") != 0)
        return usage_error("usage: --period is minute, day or month, not %s", period);
    if (connect_redis(a) != 0)
        return 1;
    gmtime_r(&now, &tm);
    if (a->json)
        windows = json_array();
    for (size_t p = 0; periods[p] != NULL; ++p) {
        char stamp[16];
        redisReply *r;
        if (period != NULL && strcmp(period, periods[p]) != 0)
            continue;
        strftime(stamp, sizeof(stamp), formats[p], &tm);
        if ((r = command(a, "HGETALL %susage:{%s}:%s:%s", prefix_of(a), tenant, periods[p], stamp)) == NULL) {
            json_decref(windows);
            return 1;
        }
        if (windows != NULL) {
            json_t *w = json_object(), *fields = json_object();
            char key[512];
            snprintf(key, sizeof(key), "%susage:{%s}:%s:%s", prefix_of(a), tenant, periods[p], stamp);
            json_object_set_new(w, "period", json_string(periods[p]));
            json_object_set_new(w, "window", json_string(stamp));
            json_object_set_new(w, "key", json_clean(key, strlen(key)));
            for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2) {
                const redisReply *f = r->element[j], *v = r->element[j + 1];
                json_t *name;
                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                    continue;
                name = json_clean(f->str, f->len);
                if (json_string_value(name) != NULL)
                    json_object_set_new(fields, json_string_value(name), json_value(v->str, v->len));
                json_decref(name);
            }
            json_object_set_new(w, "usage", fields);
            json_array_append_new(windows, w);
            freeReplyObject(r);
            continue;
        }
        printf("%s %s (%susage:{%s}:%s:%s)%s\n", periods[p], stamp, prefix_of(a), tenant, periods[p], stamp,
               r->type == REDIS_REPLY_ARRAY && r->elements != 0 ? "" : ": no usage recorded");
        for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements; j += 2) {
            const redisReply *f = r->element[j], *v = r->element[j + 1];
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            printf("  ");
            print_clean(stdout, f->str, f->len);
            printf("%*s", f->len < 32 ? (int)(32 - f->len) : 1, "");
            print_clean(stdout, v->str, v->len);
            printf("\n");
        }
        freeReplyObject(r);
    }
    if (windows != NULL) {
        json_t *doc = json_object();
        json_object_set_new(doc, "tenant", json_string(tenant));
        json_object_set_new(doc, "windows", windows);
        json_print(doc);
    }
    return 0;
}

/* ---- entry ---- */

int aor_admin_main(int argc, char **argv, const char *config_path, const char *redis_url)
{
    struct admin a = {.config_path = config_path, .redis_url = redis_url};
    int ret;

    if (argc < 1 || !aor_admin_is_command(argv[0]))
        return usage_error("unknown command");
    for (int i = 1; i < argc; ++i)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            aor_admin_usage(stdout);
            return 0;
        }
    if (strcmp(argv[0], "keys") == 0) {
        if (argc < 2)
            ret = usage_error("keys: expected create, revoke or list");
        else if (strcmp(argv[1], "create") == 0)
            ret = keys_create(&a, argc, argv);
        else if (strcmp(argv[1], "revoke") == 0)
            ret = keys_revoke(&a, argc, argv);
        else if (strcmp(argv[1], "list") == 0)
            ret = keys_list(&a, argc, argv);
        else
            ret = usage_error("keys: expected create, revoke or list, not %s", argv[1]);
    } else if (strcmp(argv[0], "quota") == 0) {
        ret = quota_cmd(&a, argc, argv);
    } else {
        ret = usage_cmd(&a, argc, argv);
    }
    if (a.rc != NULL)
        redisFree(a.rc);
    aor_redis_tlspipe_join_all(); /* the TLS relay (rediss://) ends once hiredis closed its socket */
    aor_config_release(a.conf);
    return ret;
}
