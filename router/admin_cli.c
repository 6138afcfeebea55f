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

struct admin {
    const char *config_path; /* -c given, or NULL */
    const char *redis_url;   /* --redis given, or NULL */
    const char *redis_ca;    /* --redis-ca-file given, or NULL */
    const char *prefix;      /* --prefix given, or NULL */
    struct aor_config *conf; /* loaded when Redis is found through it, or -c was given */
    redisContext *rc;
    char where[300]; /* host:port for messages */
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "aoai-router: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr,
            "\nusage: aoai-router [-c backends.yaml] [--redis URL [--redis-ca-file PEM]] keys create --tenant T [--name N]\n"
            "       aoai-router ... keys revoke <key-or-sha256>\n"
            "       aoai-router ... keys list [--tenant T]\n"
            "       aoai-router ... quota set T [--tpm N] [--rpm N] [--tokens-per-day N] [--tokens-per-month N]\n"
            "                                 [--deployments a,b] [--disabled 0|1]\n"
            "       aoai-router ... quota get T\n"
            "       aoai-router ... usage T [--period minute|day|month]\n");
    return 2;
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
    if ((a->conf = aor_config_load(path, stderr)) == NULL) {
        fprintf(stderr, "aoai-router: %s has errors%s\n", path, a->redis_url == NULL ? "; or give Redis with --redis URL" : "");
        return -1;
    }
    return 0;
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
    if (password == NULL && a->conf != NULL && a->redis_url == NULL)
        password = a->conf->redis.password;
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

static int keys_revoke(struct admin *a, int argc, char **argv)
{
    const char *what = NULL;
    unsigned char digest[32];
    char hex[65];
    redisReply *r;
    int o;

    for (int i = 2; i < argc; ++i) {
        if ((o = common_opt(a, argc, argv, &i)) < 0)
            return usage_error("keys revoke: %s needs a value", argv[i]);
        if (o > 0)
            continue;
        if (what != NULL || argv[i][0] == '-')
            return usage_error("keys revoke: unexpected argument"); /* never echo: it may be a key */
        what = argv[i];
    }
    if (what == NULL)
        return usage_error("keys revoke: give the key or its SHA-256 (64 hex digits)");
    if (aor_apikey_unhex(what, strlen(what), digest) != 0) {
        if (!aor_apikey_syntax_ok(what, strlen(what)))
            return usage_error("keys revoke: neither a key nor a SHA-256 (64 hex digits)");
        if (aor_apikey_digest(what, strlen(what), digest) != 0)
            return 1;
    }
    aor_apikey_hex(digest, hex);
    if (connect_redis(a) != 0)
        return 1;
    if ((r = command(a, "EVAL %s 1 %skey:%s", revoke_script, prefix_of(a), hex)) == NULL)
        return 1;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        if (a->conf != NULL && aor_apikey_find_static(a->conf, hex) != NULL)
            fprintf(stderr, "aoai-router: key %.12s is a static key (auth.keys.static in %s): remove it there\n", hex,
                    a->conf->path);
        else
            fprintf(stderr, "aoai-router: no key %.12s... in Redis (%skey:<sha256>)\n", hex, prefix_of(a));
        return 1;
    }
    printf("revoked %.12s tenant ", hex);
    print_clean(stdout, r->str, r->len);
    printf("\n");
    freeReplyObject(r);
    return 0;
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

/* the SCAN pattern for keys under `prefix`: glob characters in the prefix are escaped */
static char *scan_pattern(const char *prefix)
{
    size_t n = strlen(prefix);
    char *p = malloc(2 * n + sizeof("key:*")), *o = p;

    if (p == NULL)
        return NULL;
    for (size_t i = 0; i < n; ++i) {
        if (strchr("*?[]\\", prefix[i]) != NULL)
            *o++ = '\\';
        *o++ = prefix[i];
    }
    memcpy(o, "key:*", sizeof("key:*"));
    return p;
}

static void print_created(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    struct tm tm;
    time_t t = (time_t)v;
    char buf[32];

    if (*s != '\0' && *end == '\0' && v >= 0 && gmtime_r(&t, &tm) != NULL &&
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm)) {
        fputs(buf, stdout);
        return;
    }
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
    if ((pattern = scan_pattern(prefix)) == NULL)
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
    printf("SHA256\tTENANT\tNAME\tCREATED\tREVOKED\n");
    for (size_t i = 0; i < num; ++i) {
        if (tenant != NULL && strcmp(rows[i].tenant, tenant) != 0)
            continue;
        printf("%.12s\t", rows[i].hex);
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

static int quota_print(struct admin *a, const char *tenant)
{
    const struct aor_tenant_conf *tc = conf_tenant(a->conf, tenant);
    redisReply *r;

    if ((r = command(a, "HGETALL %stenant:{%s}", prefix_of(a), tenant)) == NULL)
        return 1;
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
    for (size_t p = 0; periods[p] != NULL; ++p) {
        char stamp[16];
        redisReply *r;
        if (period != NULL && strcmp(period, periods[p]) != 0)
            continue;
        strftime(stamp, sizeof(stamp), formats[p], &tm);
        if ((r = command(a, "HGETALL %susage:{%s}:%s:%s", prefix_of(a), tenant, periods[p], stamp)) == NULL)
            return 1;
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
    return 0;
}

/* ---- entry ---- */

int aor_admin_main(int argc, char **argv, const char *config_path, const char *redis_url)
{
    struct admin a = {.config_path = config_path, .redis_url = redis_url};
    int ret;

    if (argc < 1 || !aor_admin_is_command(argv[0]))
        return usage_error("unknown command");
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
