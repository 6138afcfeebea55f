/*
 * test_apikey.c — auth/apikey.c and router/redis.c.
 * Pure parts first (syntax, digest, static keys, the cache with a hand-moved clock), then an
 * end-to-end run against a real redis-server started here on a free loopback port (with a
 * password and db 3): OK / unknown / revoked / disabled tenant, single flight, cancel, revoke
 * seen within 2 s, a SIGSTOPped Redis answered UNAVAILABLE within the command timeout, a
 * killed or reset connection rebuilt, and a clean loop at the end. Without redis-server the
 * end-to-end part is skipped with a note.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>
#include <uv.h>
#include <hiredis/hiredis.h>
#include "apikey.h"
#include "config.h"
#include "redis.h"
#include "test.h"

#define PASSWORD "t3st-pa55word"

/* ---- pure ---- */

static void test_syntax(void)
{
    char buf[300];

    memset(buf, 'a', sizeof(buf));
    CHECK(!aor_apikey_syntax_ok(buf, 15));
    CHECK(aor_apikey_syntax_ok(buf, 16));
    CHECK(aor_apikey_syntax_ok(buf, 256));
    CHECK(!aor_apikey_syntax_ok(buf, 257));
    CHECK(!aor_apikey_syntax_ok(NULL, 20));
    buf[5] = ' ';
    CHECK(!aor_apikey_syntax_ok(buf, 20));
    buf[5] = 0x7f;
    CHECK(!aor_apikey_syntax_ok(buf, 20));
    buf[5] = '\0';
    CHECK(!aor_apikey_syntax_ok(buf, 20));
    buf[5] = (char)0xc3;
    CHECK(!aor_apikey_syntax_ok(buf, 20));
    buf[5] = '~';
    CHECK(aor_apikey_syntax_ok(buf, 20));
    CHECK(aor_apikey_syntax_ok("aor_Zm9vYmFyYmF6cXV4LV8xMjM0NTY3ODkwYWJjZGVmZ2g", 47));
}

static void test_digest(void)
{
    unsigned char d[32], back[32];
    char hex[65];

    CHECK_EQ_INT(aor_apikey_digest("abc", 3, d), 0);
    aor_apikey_hex(d, hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK_EQ_INT(aor_apikey_unhex(hex, 64, back), 0);
    CHECK(memcmp(d, back, 32) == 0);
    CHECK_EQ_INT(aor_apikey_unhex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", 64, back), 0);
    CHECK(memcmp(d, back, 32) == 0);
    CHECK_EQ_INT(aor_apikey_unhex(hex, 63, back), -1);
    hex[10] = 'g';
    CHECK_EQ_INT(aor_apikey_unhex(hex, 64, back), -1);
}

static void test_tenant_names(void)
{
    CHECK(aor_apikey_tenant_ok("t1", 2));
    CHECK(aor_apikey_tenant_ok("contoso.com:x@y_z-1", 19));
    CHECK(!aor_apikey_tenant_ok("contoso.com/x", 13));
    CHECK(!aor_apikey_tenant_ok("a\"b", 3));
    CHECK(!aor_apikey_tenant_ok("a\\b", 3));
    CHECK(!aor_apikey_tenant_ok("\xc3\xa9", 2));
    CHECK(!aor_apikey_tenant_ok("a\0b", 3));
    CHECK(aor_apikey_tenant_ok("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                               128));
    CHECK(!aor_apikey_tenant_ok("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                                129));
    CHECK(!aor_apikey_tenant_ok("", 0));
    CHECK(!aor_apikey_tenant_ok("a b", 3));
    CHECK(!aor_apikey_tenant_ok("a{b", 3));
    CHECK(!aor_apikey_tenant_ok("a}b", 3));
    CHECK(!aor_apikey_tenant_ok("a\nb", 3));
}

static void digest_of(const char *key, unsigned char d[32], char hex[65])
{
    if (aor_apikey_digest(key, strlen(key), d) != 0)
        abort();
    aor_apikey_hex(d, hex);
}

static struct aor_config *parse_conf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct aor_config *parse_conf(const char *fmt, ...)
{
    char *yaml = NULL;
    va_list ap;
    struct aor_config *conf;

    va_start(ap, fmt);
    if (vasprintf(&yaml, fmt, ap) < 0)
        abort();
    va_end(ap);
    conf = aor_config_parse("t.yaml", yaml, strlen(yaml), stderr);
    free(yaml);
    return conf;
}

#define STATIC_KEY "static-key-0123456789abcdef"
#define STATIC_KEY2 "another-static-key-0123456789"

static struct aor_config *static_conf(const char *redis_section)
{
    unsigned char d[32];
    char h1[65], h2[65];

    digest_of(STATIC_KEY, d, h1);
    digest_of(STATIC_KEY2, d, h2);
    return parse_conf("listen:\n  - port: 8080\n"
                      "%s"
                      "auth:\n  mode: key\n  keys:\n    static:\n      - { sha256: \"%.32s%.32s\", tenant: st1 }\n"
                      "      - { sha256: \"%s\", tenant: st2 }\n"
                      "backends:\n  - { name: b1, url: \"http://127.0.0.1:9000\" }\n",
                      redis_section, h1, h1 + 32, h2);
}

static void test_static(void)
{
    struct aor_config *conf = static_conf("");
    unsigned char d[32];
    char hex[65];
    const struct aor_static_key_conf *sk;

    CHECK(conf != NULL);
    if (conf == NULL)
        return;
    digest_of(STATIC_KEY, d, hex);
    sk = aor_apikey_find_static(conf, hex);
    CHECK(sk != NULL && strcmp(sk->tenant, "st1") == 0);
    digest_of(STATIC_KEY2, d, hex);
    sk = aor_apikey_find_static(conf, hex); /* the last entry is found too */
    CHECK(sk != NULL && strcmp(sk->tenant, "st2") == 0);
    hex[63] = hex[63] == '0' ? '1' : '0'; /* differs in the very last digit */
    CHECK(aor_apikey_find_static(conf, hex) == NULL);
    digest_of("not-a-static-key-at-all", d, hex);
    CHECK(aor_apikey_find_static(conf, hex) == NULL);
    aor_config_release(conf);
}

static void result_set(struct aor_apikey_result *r, enum aor_apikey_status st, const char *tenant, const char *name)
{
    memset(r, 0, sizeof(*r));
    r->status = st;
    snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
    snprintf(r->name, sizeof(r->name), "%s", name);
}

static void test_cache_expiry(void)
{
    struct aor_apikey_cache *c = aor_apikey_cache_create(16);
    struct aor_apikey_result in, out;
    unsigned char d[32], d2[32];
    char hex[65], tenant[AOR_APIKEY_TENANT_MAX + 1];

    digest_of("key-number-one-xxxxxxxx", d, hex);
    digest_of("key-number-two-xxxxxxxx", d2, hex);
    CHECK_EQ_INT(aor_apikey_cache_capacity(c), 16);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 1000, &out), 0);
    result_set(&in, AOR_APIKEY_OK, "t1", "primary");
    CHECK_EQ_INT(aor_apikey_cache_put(c, d, &in, 1000), 0);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 1000, &out), 1);
    CHECK_EQ_INT(out.status, AOR_APIKEY_OK);
    CHECK_EQ_STR(out.tenant, "t1");
    CHECK_EQ_STR(out.name, "primary");
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 1000 + AOR_APIKEY_TTL_MS - 1, &out), 1);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 1000 + AOR_APIKEY_TTL_MS, &out), 0); /* expired */
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 999, &out), 0);                      /* clock went back: not fresh */
    CHECK_EQ_INT(aor_apikey_cache_get(c, d2, 1000, &out), 0);

    /* expired, but still the last good answer while Redis is down */
    CHECK_EQ_INT(aor_apikey_cache_last_good(c, d, 5000, tenant), 1);
    CHECK_EQ_STR(tenant, "t1");
    CHECK_EQ_INT(aor_apikey_cache_last_good(c, d, 1000 + AOR_APIKEY_STALE_MS, tenant), 0);

    /* a newer answer replaces the old one: revoked is not a good answer */
    result_set(&in, AOR_APIKEY_REVOKED, "t1", "primary");
    CHECK_EQ_INT(aor_apikey_cache_put(c, d, &in, 3000), 0);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d, 3500, &out), 1);
    CHECK_EQ_INT(out.status, AOR_APIKEY_REVOKED);
    CHECK_EQ_INT(aor_apikey_cache_last_good(c, d, 3500, tenant), 0);
    CHECK_EQ_INT(aor_apikey_cache_count(c), 1);

    /* negative answers are cached too, with empty strings */
    result_set(&in, AOR_APIKEY_UNKNOWN, "", "");
    CHECK_EQ_INT(aor_apikey_cache_put(c, d2, &in, 3000), 0);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d2, 3999, &out), 1);
    CHECK_EQ_INT(out.status, AOR_APIKEY_UNKNOWN);
    CHECK_EQ_STR(out.tenant, "");
    CHECK_EQ_INT(aor_apikey_cache_count(c), 2);

    /* UNAVAILABLE is never stored */
    result_set(&in, AOR_APIKEY_UNAVAILABLE, "", "");
    CHECK_EQ_INT(aor_apikey_cache_put(c, d2, &in, 3100), 0);
    CHECK_EQ_INT(aor_apikey_cache_get(c, d2, 3200, &out), 1);
    CHECK_EQ_INT(out.status, AOR_APIKEY_UNKNOWN);
    aor_apikey_cache_destroy(c);
}

static void test_cache_bound(void)
{
    struct aor_apikey_cache *c = aor_apikey_cache_create(64);
    struct aor_apikey_result in, out;
    unsigned char hot[32], d[32];
    char key[64], hex[65];
    int hot_lost = 0;

    digest_of("the-hot-key-0000000000", hot, hex);
    result_set(&in, AOR_APIKEY_OK, "hot", "");
    aor_apikey_cache_put(c, hot, &in, 0);
    result_set(&in, AOR_APIKEY_UNKNOWN, "", "");
    for (int i = 0; i < 20000; ++i) {
        snprintf(key, sizeof(key), "flood-key-%08d", i);
        digest_of(key, d, hex);
        aor_apikey_cache_put(c, d, &in, 0);
        CHECK(aor_apikey_cache_count(c) <= 64);
        /* a key in use stays: the flood evicts the least recently used within a set */
        if (!aor_apikey_cache_get(c, hot, 10, &out) || strcmp(out.tenant, "hot") != 0)
            ++hot_lost;
    }
    CHECK_EQ_INT(hot_lost, 0);
    CHECK_EQ_INT(aor_apikey_cache_count(c), 64);
    CHECK_EQ_INT(aor_apikey_cache_capacity(c), 64);
    aor_apikey_cache_destroy(c);

    c = aor_apikey_cache_create(0);
    CHECK_EQ_INT(aor_apikey_cache_capacity(c), AOR_APIKEY_CACHE_DEFAULT);
    aor_apikey_cache_destroy(c);
    c = aor_apikey_cache_create(100); /* rounded up to sets of 8, a power of two of them */
    CHECK_EQ_INT(aor_apikey_cache_capacity(c), 128);
    aor_apikey_cache_destroy(c);
}

static void never_called(void *data, const struct aor_apikey_result *r)
{
    CHECK(!"callback of a synchronous answer");
}

/* every synchronous path of aor_apikeys_lookup, without Redis */
/* issue 7.7: the key format of `keys create` carries a checksum; a wrong one costs no Redis round trip */
static void test_checksum(void)
{
    char key[AOR_APIKEY_CHECKED_LEN + 1] = "aor_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    struct aor_config *conf = static_conf("redis: { url: \"redis://127.0.0.1:1\" }\n");
    struct aor_apikeys *k = aor_apikeys_create(NULL, 0);
    struct aor_apikey_pending *p = NULL;
    struct aor_apikey_result r;
    struct aor_apikeys_stats st;

    CHECK_EQ_INT(strlen(key), AOR_APIKEY_LEGACY_LEN);
    CHECK_EQ_INT(aor_apikey_check_format(key, strlen(key)), 0); /* legacy: no checksum to check */
    CHECK_EQ_INT(aor_apikey_checksum(key, key + AOR_APIKEY_LEGACY_LEN), 0);
    key[AOR_APIKEY_CHECKED_LEN] = '\0';
    CHECK_EQ_INT(aor_apikey_check_format(key, AOR_APIKEY_CHECKED_LEN), 1);
    for (size_t i = 4; i != AOR_APIKEY_CHECKED_LEN; ++i) {
        char saved = key[i];
        key[i] = saved == 'x' ? 'y' : 'x'; /* one character mistyped anywhere */
        CHECK_EQ_INT(aor_apikey_check_format(key, AOR_APIKEY_CHECKED_LEN), -1);
        key[i] = saved;
    }
    key[0] = 'b'; /* another prefix: not this format */
    CHECK_EQ_INT(aor_apikey_check_format(key, AOR_APIKEY_CHECKED_LEN), 0);
    key[0] = 'a';
    CHECK(conf != NULL && k != NULL);
    if (conf != NULL && k != NULL) {
        key[10] ^= 1;
        /* Redis is configured but (here) has no client: a lookup would say UNAVAILABLE; a wrong
         * checksum says UNKNOWN at once */
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, key, AOR_APIKEY_CHECKED_LEN, 0, never_called, NULL, &r, &p), 1);
        CHECK_EQ_INT(r.status, AOR_APIKEY_UNKNOWN);
        key[10] ^= 1;
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, key, AOR_APIKEY_CHECKED_LEN, 0, never_called, NULL, &r, &p), 1);
        CHECK_EQ_INT(r.status, AOR_APIKEY_UNAVAILABLE);
        aor_apikeys_get_stats(k, &st);
        CHECK_EQ_INT(st.bad_checksum, 1);
    }
    aor_apikeys_destroy(k);
    aor_config_release(conf);
}

static void test_lookup_sync(void)
{
    struct aor_config *conf = static_conf("");
    struct aor_apikeys *k = aor_apikeys_create(NULL, 0);
    struct aor_apikey_pending *p = (void *)1;
    struct aor_apikey_result r;
    struct aor_apikeys_stats st;
    unsigned char d[32];
    char hex[65];

    CHECK(conf != NULL && k != NULL);
    if (conf == NULL || k == NULL)
        return;
    CHECK_EQ_INT(aor_apikeys_lookup(k, conf, "short", 5, 0, never_called, NULL, &r, &p), 1);
    CHECK(p == NULL);
    CHECK_EQ_INT(r.status, AOR_APIKEY_UNKNOWN);
    CHECK_EQ_STR(r.digest_prefix, "");

    CHECK_EQ_INT(aor_apikeys_lookup(k, conf, STATIC_KEY, strlen(STATIC_KEY), 0, never_called, NULL, &r, &p), 1);
    digest_of(STATIC_KEY, d, hex);
    CHECK_EQ_INT(r.status, AOR_APIKEY_OK);
    CHECK_EQ_INT(r.source, AOR_APIKEY_SOURCE_STATIC);
    CHECK_EQ_STR(r.tenant, "st1");
    CHECK(strlen(r.digest_prefix) == 8 && strncmp(r.digest_prefix, hex, 8) == 0);

    /* no Redis configured: only static keys exist */
    CHECK_EQ_INT(aor_apikeys_lookup(k, conf, "unknown-key-0123456789", 22, 0, never_called, NULL, &r, &p), 1);
    CHECK_EQ_INT(r.status, AOR_APIKEY_UNKNOWN);
    CHECK_EQ_STR(r.tenant, "");
    aor_apikeys_get_stats(k, &st);
    CHECK_EQ_INT(st.lookups, 3);
    CHECK_EQ_INT(st.static_hits, 1);
    CHECK_EQ_INT(st.redis_lookups, 0);
    aor_apikeys_destroy(k);
    aor_config_release(conf);

    /* Redis configured but this table has no client: UNAVAILABLE, not UNKNOWN */
    conf = static_conf("redis: { url: \"redis://127.0.0.1:1\" }\n");
    k = aor_apikeys_create(NULL, 0);
    CHECK(conf != NULL && k != NULL);
    if (conf != NULL && k != NULL) {
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, "unknown-key-0123456789", 22, 0, never_called, NULL, &r, &p), 1);
        CHECK_EQ_INT(r.status, AOR_APIKEY_UNAVAILABLE);
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, STATIC_KEY, strlen(STATIC_KEY), 0, never_called, NULL, &r, &p), 1);
        CHECK_EQ_INT(r.status, AOR_APIKEY_OK); /* static keys need no Redis */
    }
    aor_apikeys_destroy(k);
    aor_config_release(conf);
}

static void test_flags(void)
{
    CHECK(!aor_apikey_flag_set(NULL, 0));
    CHECK(!aor_apikey_flag_set("", 0));
    CHECK(!aor_apikey_flag_set("0", 1));
    CHECK(!aor_apikey_flag_set("False", 5));
    CHECK(!aor_apikey_flag_set("no", 2));
    CHECK(aor_apikey_flag_set("1", 1));
    CHECK(aor_apikey_flag_set("true", 4));
    CHECK(aor_apikey_flag_set("yes", 3));
    CHECK(aor_apikey_flag_set("2", 1)); /* anything else: yes, failing safe */
}

static void test_url(void)
{
    struct aor_redis_url u;

    CHECK_EQ_INT(aor_redis_url_parse("redis://127.0.0.1:6380/2", &u), 0);
    CHECK_EQ_STR(u.host, "127.0.0.1");
    CHECK_EQ_INT(u.port, 6380);
    CHECK_EQ_INT(u.db, 2);
    CHECK(u.user == NULL && u.password == NULL);
    aor_redis_url_clear(&u);
    CHECK_EQ_INT(aor_redis_url_parse("redis://redis.svc", &u), 0);
    CHECK_EQ_STR(u.host, "redis.svc");
    CHECK_EQ_INT(u.port, 6379);
    CHECK_EQ_INT(u.db, 0);
    aor_redis_url_clear(&u);
    CHECK_EQ_INT(aor_redis_url_parse("redis://:p%40ss@h:1/", &u), 0);
    CHECK_EQ_STR(u.password, "p@ss");
    CHECK(u.user == NULL);
    CHECK_EQ_INT(u.db, 0);
    aor_redis_url_clear(&u);
    CHECK_EQ_INT(aor_redis_url_parse("redis://alice:secret@[::1]:7000/15", &u), 0);
    CHECK_EQ_STR(u.user, "alice");
    CHECK_EQ_STR(u.password, "secret");
    CHECK_EQ_STR(u.host, "::1");
    CHECK_EQ_INT(u.port, 7000);
    CHECK_EQ_INT(u.db, 15);
    CHECK(!u.tls);
    aor_redis_url_clear(&u);
    /* rediss:// (TLS): same shape, the flag set */
    CHECK_EQ_INT(aor_redis_url_parse("rediss://myredis.redis.cache.windows.net:6380/1", &u), 0);
    CHECK(u.tls);
    CHECK_EQ_STR(u.host, "myredis.redis.cache.windows.net");
    CHECK_EQ_INT(u.port, 6380);
    CHECK_EQ_INT(u.db, 1);
    aor_redis_url_clear(&u);
    CHECK_EQ_INT(aor_redis_url_parse("rediss://", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redisss://h", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("rediss:/h", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("http://h", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://h:0", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://h:65536", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://h:12x", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://h/x", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://:%zz@h", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://:%4@h", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://[::1", &u), -1);
    CHECK_EQ_INT(aor_redis_url_parse("redis://h o", &u), -1);
    CHECK(u.host == NULL && u.password == NULL);
}

/* ---- end to end, with a real redis-server ---- */

static uv_loop_t loop;
static pid_t redis_pid;
static int redis_port;

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static redisContext *sync_connect(int port, int quiet)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    redisReply *r;

    if (c == NULL || c->err)
        goto fail;
    if ((r = redisCommand(c, "AUTH %s", PASSWORD)) == NULL || r->type == REDIS_REPLY_ERROR) {
        if (r != NULL)
            freeReplyObject(r);
        goto fail;
    }
    freeReplyObject(r);
    if ((r = redisCommand(c, "SELECT 3")) == NULL)
        goto fail;
    freeReplyObject(r);
    return c;
fail:
    if (!quiet)
        fprintf(stderr, "cannot reach redis on %d\n", port);
    if (c != NULL)
        redisFree(c);
    return NULL;
}

static void redis_do(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;

    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    CHECK(r != NULL && r->type != REDIS_REPLY_ERROR);
    if (r != NULL)
        freeReplyObject(r);
}

static int start_redis(void)
{
    char port[16];
    redisContext *c = NULL;

    redis_port = free_port();
    snprintf(port, sizeof(port), "%d", redis_port);
    if ((redis_pid = fork()) < 0)
        abort();
    if (redis_pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--requirepass", PASSWORD, "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && c == NULL; ++i) {
        int status;
        if (waitpid(redis_pid, &status, WNOHANG) == redis_pid) {
            redis_pid = 0;
            return -1;
        }
        usleep(50000);
        c = sync_connect(redis_port, 1);
    }
    if (c == NULL)
        return -1;
    redisFree(c);
    return 0;
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static int timed_out;
static void on_run_timeout(uv_timer_t *t)
{
    timed_out = 1;
    /* UV_RUN_ONCE runs due timers first and then still waits for I/O, up to the next timer: with
     * a stopped Redis that is a command's deadline (20 s in test_backpressure), and a loop time
     * cached before a slow stretch makes this timer due at once. uv_stop makes that wait 0 */
    uv_stop(t->loop);
}

/* runs the loop until *flag or `ms` elapsed; returns *flag */
static int run_until(const int *flag, uint64_t ms)
{
    uv_timer_t t;

    timed_out = 0;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_run_timeout, ms, 0);
    while ((flag == NULL || !*flag) && !timed_out)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return flag != NULL && *flag;
}

static int is_up_flag(struct aor_redis *r, uint64_t ms)
{
    uint64_t start = uv_now(&loop);
    while (!aor_redis_is_up(r) && uv_now(&loop) - start < ms)
        run_until(NULL, 10);
    return aor_redis_is_up(r);
}

struct waiter {
    int calls;
    struct aor_apikey_result res;
};

static void on_result(void *data, const struct aor_apikey_result *r)
{
    struct waiter *w = data;
    ++w->calls;
    w->res = *r;
}

static struct aor_apikey_result lookup(struct aor_apikeys *k, const struct aor_config *conf, const char *key, int *was_sync)
{
    struct waiter w = {0};
    struct aor_apikey_pending *p;
    struct aor_apikey_result res;

    uv_update_time(&loop);
    if (aor_apikeys_lookup(k, conf, key, strlen(key), (int64_t)uv_now(&loop), on_result, &w, &res, &p)) {
        CHECK(p == NULL);
        if (was_sync != NULL)
            *was_sync = 1;
        return res;
    }
    if (was_sync != NULL)
        *was_sync = 0;
    CHECK(p != NULL);
    CHECK_EQ_INT(w.calls, 0); /* never before return */
    run_until(&w.calls, 5000);
    CHECK_EQ_INT(w.calls, 1);
    return w.res;
}

struct cmd_waiter {
    int calls;
    const char *err;
    int type;
    long long integer;
};

static void on_cmd(void *data, const struct redisReply *reply, const char *errstr)
{
    struct cmd_waiter *w = data;
    ++w->calls;
    w->err = errstr;
    w->type = reply != NULL ? reply->type : -1;
    w->integer = reply != NULL ? reply->integer : 0;
    CHECK((reply == NULL) == (errstr == aor_redis_err_timeout || errstr == aor_redis_err_disconnected));
}

/* ---- a fake Redis on the test's own loop: answers PING, then resets the connection (RST) ---- */

struct fake_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    char buf[256];
    int closing;
};

static int fake_accepted;

static void fake_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void fake_tcp_closed(uv_handle_t *h)
{
    struct fake_conn *fc = h->data;
    uv_close((uv_handle_t *)&fc->timer, fake_timer_closed);
}

static void fake_reset(uv_timer_t *t)
{
    struct fake_conn *fc = t->data;
    struct linger lg = {1, 0};
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&fc->tcp, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)); /* close() now sends RST */
    uv_close((uv_handle_t *)&fc->tcp, fake_tcp_closed);
}

static void fake_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    struct fake_conn *fc = h->data;
    *buf = uv_buf_init(fc->buf, sizeof(fc->buf));
}

static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct fake_conn *fc = s->data;
    static char pong[] = "+PONG\r\n";
    uv_buf_t out = uv_buf_init(pong, sizeof(pong) - 1);

    if (n <= 0 || fc->closing)
        return;
    if (memmem(buf->base, (size_t)n, "PING", 4) != NULL) {
        uv_write(&fc->wr, s, &out, 1, NULL);
        fc->closing = 1;
        uv_timer_start(&fc->timer, fake_reset, 50, 0);
    }
}

static void fake_connection(uv_stream_t *server, int status)
{
    struct fake_conn *fc = calloc(1, sizeof(*fc));

    uv_tcp_init(&loop, &fc->tcp);
    uv_timer_init(&loop, &fc->timer);
    fc->tcp.data = fc->timer.data = fc;
    if (status != 0 || uv_accept(server, (uv_stream_t *)&fc->tcp) != 0) {
        uv_close((uv_handle_t *)&fc->tcp, fake_tcp_closed);
        return;
    }
    ++fake_accepted;
    uv_read_start((uv_stream_t *)&fc->tcp, fake_alloc, fake_read);
}

/* a reset on an idle connection is noticed at once (libuv reports it as a poll error) and the connection rebuilt */
static void test_reset(void)
{
    uv_tcp_t server;
    struct sockaddr_in a;
    int port = free_port();
    char url[64];
    struct aor_redis *r;

    uv_ip4_addr("127.0.0.1", port, &a);
    uv_tcp_init(&loop, &server);
    CHECK_EQ_INT(uv_tcp_bind(&server, (const struct sockaddr *)&a, 0), 0);
    CHECK_EQ_INT(uv_listen((uv_stream_t *)&server, 16, fake_connection), 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    fake_accepted = 0;
    r = aor_redis_create(&loop, url, NULL, NULL, NULL, 1000);
    CHECK(is_up_flag(r, 1000));
    /* reset after 50 ms, noticed at once, rebuilt after the flap backoff (a connection lost within 2 s of its handshake:
     * 100 ms doubling, ±25 %), reset again ...: at least 3 connections in 1 s, and no tight reconnect loop */
    run_until(NULL, 1000);
    CHECK(fake_accepted >= 3);
    CHECK(fake_accepted <= 8);
    fprintf(stderr, "reset: %d connections in 1000 ms\n", fake_accepted);
    aor_redis_destroy(r);
    uv_close((uv_handle_t *)&server, NULL);
    run_until(NULL, 20);
}

#define KEY_OK "aor_test-key-ok-0123456789"
#define KEY_OK2 "aor_test-key-ok2-0123456789"
#define KEY_REVOKED "aor_test-key-revoked-0123456789"
#define KEY_DISABLED "aor_test-key-disabled-0123456789"
#define KEY_UNKNOWN "aor_test-key-unknown-0123456789"
#define KEY_NOTENANT "aor_test-key-notenant-0123456789"
#define KEY_WRONGTYPE "aor_test-key-wrongtype-0123456789"

static void seed(redisContext *c)
{
    unsigned char d[32];
    char hex[65];

    redis_do(c, "FLUSHDB");
    digest_of(KEY_OK, d, hex);
    redis_do(c, "HSET aoai:key:%s tenant t1 name primary created 1700000000", hex);
    digest_of(KEY_OK2, d, hex);
    redis_do(c, "HSET aoai:key:%s tenant t1 name secondary created 1700000001 revoked 0", hex);
    digest_of(KEY_REVOKED, d, hex);
    redis_do(c, "HSET aoai:key:%s tenant t1 name old created 1600000000 revoked 1", hex);
    digest_of(KEY_DISABLED, d, hex);
    redis_do(c, "HSET aoai:key:%s tenant t2 name k created 1700000000", hex);
    redis_do(c, "HSET aoai:tenant:{t2} disabled 1 tpm 100");
    redis_do(c, "HSET aoai:tenant:{t1} disabled 0 tpm 100");
    digest_of(KEY_NOTENANT, d, hex);
    redis_do(c, "HSET aoai:key:%s name orphan", hex);
    digest_of(KEY_WRONGTYPE, d, hex);
    redis_do(c, "SET aoai:key:%s x", hex);
}

static void test_redis_api(struct aor_redis *r)
{
    struct cmd_waiter w = {0}, w2 = {0}, w3 = {0};
    const char *argv[] = {"SET", "bin", "a\0b"};
    const size_t lens[] = {3, 3, 3};
    struct aor_redis_cmd *cmd;

    /* binary-safe argv */
    CHECK(aor_redis_command_argv(r, on_cmd, &w, 3, argv, lens) != NULL);
    run_until(&w.calls, 2000);
    CHECK(w.calls == 1 && w.err == NULL && w.type == REDIS_REPLY_STATUS);
    memset(&w, 0, sizeof(w));
    CHECK(aor_redis_command(r, on_cmd, &w, "STRLEN %s", "bin") != NULL);
    run_until(&w.calls, 2000);
    CHECK(w.calls == 1 && w.err == NULL && w.type == REDIS_REPLY_INTEGER && w.integer == 3);

    /* an error reply is a reply, flagged */
    memset(&w, 0, sizeof(w));
    CHECK(aor_redis_command(r, on_cmd, &w, "HGET onlyonearg") != NULL);
    run_until(&w.calls, 2000);
    CHECK(w.calls == 1 && w.err == aor_redis_err_reply && w.type == REDIS_REPLY_ERROR);

    /* refused synchronously: these would change the connection's protocol */
    CHECK(aor_redis_command(r, on_cmd, &w, "SUBSCRIBE ch") == NULL);
    CHECK(aor_redis_command(r, on_cmd, &w, "monitor") == NULL);

    /* cancel: the reply is dropped, the callback never runs; the others still do, in order */
    memset(&w, 0, sizeof(w));
    CHECK(aor_redis_command(r, on_cmd, &w, "PING") != NULL);
    cmd = aor_redis_command(r, on_cmd, &w2, "PING");
    CHECK(cmd != NULL);
    CHECK(aor_redis_command(r, on_cmd, &w3, "PING") != NULL);
    aor_redis_cancel(cmd);
    run_until(&w3.calls, 2000);
    CHECK(w.calls == 1 && w2.calls == 0 && w3.calls == 1);
}

struct bulk_waiter {
    int calls, ok;
};

static void on_bulk_set(void *data, const struct redisReply *reply, const char *errstr)
{
    struct bulk_waiter *w = data;
    (void)errstr;
    w->ok += reply != NULL && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0;
    ++w->calls;
}

#define BULK_N 160
#define BULK_LEN 65536

/*
 * More output than the kernel's socket buffers hold while Redis is stopped (10 MB): the first
 * bytes go straight to the socket (uv_try_write), the rest through h2o's write once the buffer is
 * full, the commands after it wait for that write. When Redis resumes, every command arrives
 * whole and in order: each answer OK, each value readable back byte for byte.
 */
static void test_backpressure(const char *url, redisContext *sc)
{
    static char value[BULK_LEN];
    struct aor_redis *r = aor_redis_create(&loop, url, PASSWORD, NULL, NULL, 20000);
    struct bulk_waiter w = {0, 0};
    char key[32];
    int i;

    CHECK(is_up_flag(r, 3000));
    CHECK_EQ_INT(kill(redis_pid, SIGSTOP), 0);
    for (i = 0; i != BULK_N; ++i) {
        memset(value, 'a' + i % 26, sizeof(value));
        snprintf(key, sizeof(key), "bp:%d", i);
        if (i % 2 == 0) {
            const char *argv[] = {"SET", key, value};
            const size_t lens[] = {3, strlen(key), sizeof(value)};
            CHECK(aor_redis_command_argv(r, on_bulk_set, &w, 3, argv, lens) != NULL);
        } else {
            /* the same through the RESP form admit.c uses */
            static char rest[2 * 32 + BULK_LEN + 64];
            char *p = aor_redis_put_count(rest, '$', strlen(key));
            struct iovec iov;
            memcpy(p, key, strlen(key));
            p += strlen(key);
            memcpy(p, "\r\n", 2);
            p = aor_redis_put_count(p + 2, '$', sizeof(value));
            memcpy(p, value, sizeof(value));
            memcpy(p + sizeof(value), "\r\n", 2);
            iov.iov_base = rest;
            iov.iov_len = (size_t)(p + sizeof(value) + 2 - rest);
            CHECK(aor_redis_command_resp(r, on_bulk_set, &w, 3, "SET", 3, &iov, 1) != NULL);
        }
        if (i % 16 == 15)
            run_until(NULL, 5); /* flushed in several loop iterations: some while a write is in flight */
    }
    run_until(NULL, 300);
    CHECK_EQ_INT(w.calls, 0);
    CHECK_EQ_INT(kill(redis_pid, SIGCONT), 0);
    {
        uint64_t start = uv_now(&loop);
        while (w.calls != BULK_N && uv_now(&loop) - start < 15000)
            run_until(NULL, 20);
    }
    CHECK_EQ_INT(w.calls, BULK_N);
    CHECK_EQ_INT(w.ok, BULK_N);
    for (i = 0; i < BULK_N; i += 7) {
        redisReply *rep = redisCommand(sc, "GET bp:%d", i);
        int same = rep != NULL && rep->type == REDIS_REPLY_STRING && rep->len == BULK_LEN;
        for (size_t j = 0; same && j != BULK_LEN; ++j)
            same = rep->str[j] == 'a' + i % 26;
        CHECK(same);
        if (rep != NULL)
            freeReplyObject(rep);
    }
    aor_redis_destroy(r);
    run_until(NULL, 20);
}

static void test_e2e(void)
{
    char url[128], yaml_redis[160];
    struct aor_config *conf;
    struct aor_redis *r;
    struct aor_apikeys *k;
    struct aor_apikey_result res;
    struct aor_apikeys_stats st;
    redisContext *c;
    int sync;
    uint64_t t0, errors0;
    unsigned char d[32];
    char hex[65];

    if (start_redis() != 0) {
        fprintf(stderr, "test_apikey: no redis-server, end-to-end part skipped\n");
        return;
    }
    c = sync_connect(redis_port, 0);
    seed(c);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/3", redis_port);
    snprintf(yaml_redis, sizeof(yaml_redis), "redis: { url: \"%s\" }\n", url);
    conf = static_conf(yaml_redis);
    CHECK(conf != NULL);
    uv_loop_init(&loop);

    /* wrong password: never up, and after the first failure commands are refused at once */
    r = aor_redis_create(&loop, url, "wrong", NULL, NULL, 200);
    CHECK(r != NULL);
    CHECK(!is_up_flag(r, 300));
    CHECK(aor_redis_command(r, on_cmd, NULL, "PING") == NULL);
    aor_redis_destroy(r);

    /* nothing listening: same */
    {
        char dead[64];
        snprintf(dead, sizeof(dead), "redis://127.0.0.1:%d", free_port());
        errors0 = __atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED);
        r = aor_redis_create(&loop, dead, NULL, NULL, NULL, 200);
        CHECK(!is_up_flag(r, 300));
        CHECK(__atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED) > errors0);
        aor_redis_destroy(r);
    }

    /* a host name goes through the resolver; destroy with commands pending drops them */
    {
        char named[128];
        struct cmd_waiter w = {0};
        snprintf(named, sizeof(named), "redis://localhost:%d/3", redis_port);
        r = aor_redis_create(&loop, named, PASSWORD, NULL, NULL, 1000);
        CHECK(is_up_flag(r, 3000));
        CHECK(aor_redis_command(r, on_cmd, &w, "PING") != NULL);
        aor_redis_destroy(r);
        run_until(NULL, 50);
        CHECK_EQ_INT(w.calls, 0);
    }
    /* destroy while the name is still being resolved */
    r = aor_redis_create(&loop, "redis://localhost:1", NULL, NULL, NULL, 100);
    aor_redis_destroy(r);

    test_reset();

    r = aor_redis_create(&loop, url, PASSWORD, NULL, NULL, 200);
    k = aor_apikeys_create(r, 0);
    /* commands queue behind the handshake of the first connection */
    {
        struct cmd_waiter w = {0};
        CHECK(!aor_redis_is_up(r));
        CHECK(aor_redis_command(r, on_cmd, &w, "PING") != NULL);
        run_until(&w.calls, 2000);
        CHECK(w.calls == 1 && w.err == NULL);
    }
    CHECK(is_up_flag(r, 2000));
    test_redis_api(r);
    test_backpressure(url, c);

    res = lookup(k, conf, KEY_OK, &sync);
    CHECK_EQ_INT(sync, 0);
    CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    CHECK_EQ_INT(res.source, AOR_APIKEY_SOURCE_REDIS);
    CHECK_EQ_STR(res.tenant, "t1");
    CHECK_EQ_STR(res.name, "primary");
    digest_of(KEY_OK, d, hex);
    CHECK(strncmp(res.digest_prefix, hex, 8) == 0 && res.digest_prefix[8] == '\0');
    res = lookup(k, conf, KEY_OK, &sync); /* cached */
    CHECK_EQ_INT(sync, 1);
    CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    CHECK_EQ_INT(res.source, AOR_APIKEY_SOURCE_CACHE);
    CHECK_EQ_STR(res.tenant, "t1");
    CHECK_EQ_STR(res.name, "primary");

    res = lookup(k, conf, KEY_OK2, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    CHECK_EQ_STR(res.name, "secondary");
    res = lookup(k, conf, KEY_UNKNOWN, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_UNKNOWN);
    CHECK_EQ_STR(res.tenant, "");
    res = lookup(k, conf, KEY_UNKNOWN, &sync); /* negative answers are cached too */
    CHECK_EQ_INT(sync, 1);
    CHECK_EQ_INT(res.status, AOR_APIKEY_UNKNOWN);
    res = lookup(k, conf, KEY_REVOKED, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_REVOKED);
    CHECK_EQ_STR(res.tenant, "t1");
    res = lookup(k, conf, KEY_DISABLED, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_TENANT_DISABLED);
    CHECK_EQ_STR(res.tenant, "t2");
    res = lookup(k, conf, KEY_NOTENANT, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_UNKNOWN);
    res = lookup(k, conf, KEY_WRONGTYPE, NULL);
    CHECK_EQ_INT(res.status, AOR_APIKEY_UNKNOWN);
    res = lookup(k, conf, STATIC_KEY2, &sync);
    CHECK(sync == 1 && res.status == AOR_APIKEY_OK && res.source == AOR_APIKEY_SOURCE_STATIC);
    CHECK_EQ_STR(res.tenant, "st2");
    res = lookup(k, conf, "bad key with spaces", &sync);
    CHECK(sync == 1 && res.status == AOR_APIKEY_UNKNOWN);

    /* single flight: three concurrent lookups of one key, one round trip; a cancelled one is not called */
    {
        struct waiter w1 = {0}, w2 = {0}, w3 = {0};
        struct aor_apikey_pending *p1, *p2, *p3;
        struct aor_apikeys_stats before;
        int64_t now;

        run_until(NULL, AOR_APIKEY_TTL_MS + 50); /* let the cached answers expire */
        now = (int64_t)uv_now(&loop);
        aor_apikeys_get_stats(k, &before);
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, KEY_OK, strlen(KEY_OK), now, on_result, &w1, &res, &p1), 0);
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, KEY_OK, strlen(KEY_OK), now, on_result, &w2, &res, &p2), 0);
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, KEY_OK, strlen(KEY_OK), now, on_result, &w3, &res, &p3), 0);
        aor_apikeys_cancel(p2);
        run_until(&w3.calls, 2000);
        CHECK(w1.calls == 1 && w2.calls == 0 && w3.calls == 1);
        CHECK(w1.res.status == AOR_APIKEY_OK && w3.res.status == AOR_APIKEY_OK);
        CHECK_EQ_STR(w3.res.tenant, "t1");
        aor_apikeys_get_stats(k, &st);
        CHECK_EQ_INT(st.redis_lookups - before.redis_lookups, 1);
        CHECK_EQ_INT(st.shared_lookups - before.shared_lookups, 2);

        /* a lookup cancelled alone: its flight still fills the cache */
        memset(&w1, 0, sizeof(w1));
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, KEY_OK2, strlen(KEY_OK2), now + AOR_APIKEY_TTL_MS, on_result, &w1, &res, &p1), 0);
        aor_apikeys_cancel(p1);
        run_until(NULL, 100);
        CHECK_EQ_INT(w1.calls, 0);
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, KEY_OK2, strlen(KEY_OK2), now + AOR_APIKEY_TTL_MS, never_called, NULL, &res, &p1),
                     1);
        CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    }

    /* the hot path: many requests in a second, Redis read about once */
    {
        struct aor_apikeys_stats before;
        aor_apikeys_get_stats(k, &before);
        t0 = uv_now(&loop);
        for (int i = 0; i < 200; ++i) {
            res = lookup(k, conf, KEY_OK, NULL);
            CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
            run_until(NULL, 5);
        }
        aor_apikeys_get_stats(k, &st);
        /* about one read per TTL: the 200 lookups span a few TTLs */
        CHECK(st.redis_lookups - before.redis_lookups <= (uv_now(&loop) - t0) / AOR_APIKEY_TTL_MS + 2);
        fprintf(stderr, "hot path: %llu lookups over %llu ms, %llu Redis reads\n",
                (unsigned long long)(st.lookups - before.lookups), (unsigned long long)(uv_now(&loop) - t0),
                (unsigned long long)(st.redis_lookups - before.redis_lookups));
    }

    /* issue 7.7: keys without a checksum share AOR_APIKEY_MAX_UNCHECKED_FLIGHTS round trips in
     * flight; beyond them BUSY at once, and a checksummed key still gets its lookup */
    {
        enum { N = AOR_APIKEY_MAX_UNCHECKED_FLIGHTS + 16 };
        static struct waiter ws[N + 1];
        static struct aor_apikey_pending *ps[N + 1];
        char keys[N + 1][AOR_APIKEY_CHECKED_LEN + 1];
        int pending = 0, busy = 0;
        int64_t now = (int64_t)uv_now(&loop);

        memset(ws, 0, sizeof(ws));
        for (int i = 0; i != N; ++i) {
            snprintf(keys[i], sizeof(keys[i]), "legacy-random-key-%08d-xxxxxxxxxx", i);
            if (aor_apikeys_lookup(k, conf, keys[i], strlen(keys[i]), now, on_result, &ws[i], &res, &ps[i]) == 0)
                ++pending;
            else if (res.status == AOR_APIKEY_BUSY)
                ++busy;
        }
        CHECK_EQ_INT(pending, AOR_APIKEY_MAX_UNCHECKED_FLIGHTS);
        CHECK_EQ_INT(busy, N - AOR_APIKEY_MAX_UNCHECKED_FLIGHTS);
        snprintf(keys[N], sizeof(keys[N]), "aor_%043d", 7);
        CHECK_EQ_INT(aor_apikey_checksum(keys[N], keys[N] + AOR_APIKEY_LEGACY_LEN), 0);
        keys[N][AOR_APIKEY_CHECKED_LEN] = '\0';
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, keys[N], AOR_APIKEY_CHECKED_LEN, now, on_result, &ws[N], &res, &ps[N]), 0);
        run_until(&ws[N].calls, 2000);
        CHECK_EQ_INT(ws[N].res.status, AOR_APIKEY_UNKNOWN);
        for (int i = 0; i != N; ++i)
            if (ws[i].calls == 0 && ps[i] != NULL && i < AOR_APIKEY_MAX_UNCHECKED_FLIGHTS)
                run_until(&ws[i].calls, 2000);
        /* once answered, the budget is free again */
        CHECK_EQ_INT(aor_apikeys_lookup(k, conf, keys[N - 1], strlen(keys[N - 1]), now, on_result, &ws[N - 1], &res, &ps[N - 1]),
                     0);
        run_until(&ws[N - 1].calls, 2000);
    }

    /* a revoke (and a tenant disable) is seen within 2 s while the key is used continuously */
    {
        const char *what[] = {"revoke", "disable"};
        for (int pass = 0; pass < 2; ++pass) {
            uint64_t seen = 0;
            res = lookup(k, conf, pass == 0 ? KEY_OK : KEY_OK2, NULL);
            CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
            if (pass == 0) {
                digest_of(KEY_OK, d, hex);
                redis_do(c, "HSET aoai:key:%s revoked 1", hex);
            } else {
                redis_do(c, "HSET aoai:tenant:{t1} disabled 1");
            }
            uv_update_time(&loop);
            t0 = uv_now(&loop);
            while (uv_now(&loop) - t0 < 3000) {
                res = lookup(k, conf, pass == 0 ? KEY_OK : KEY_OK2, NULL);
                if (res.status != AOR_APIKEY_OK) {
                    seen = uv_now(&loop) - t0;
                    break;
                }
                run_until(NULL, 20);
            }
            CHECK_EQ_INT(res.status, pass == 0 ? AOR_APIKEY_REVOKED : AOR_APIKEY_TENANT_DISABLED);
            CHECK(seen < 2000);
            fprintf(stderr, "%s seen after %llu ms\n", what[pass], (unsigned long long)seen);
        }
        digest_of(KEY_OK, d, hex);
        redis_do(c, "HDEL aoai:key:%s revoked", hex);
        redis_do(c, "HSET aoai:tenant:{t1} disabled 0");
    }

    /* a connection killed by the server is rebuilt at once */
    {
        errors0 = __atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED);
        redis_do(c, "CLIENT KILL TYPE normal SKIPME yes");
        run_until(NULL, 100);
        CHECK(is_up_flag(r, 1000));
        CHECK(__atomic_load_n(&aor_redis_errors_total, __ATOMIC_RELAXED) > errors0);
        run_until(NULL, AOR_APIKEY_TTL_MS + 50);
        res = lookup(k, conf, KEY_OK, NULL);
        CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    }

    /* a hung Redis (SIGSTOP): UNAVAILABLE within the command timeout (200 ms), then at once */
    {
        struct cmd_waiter w = {0};
        run_until(NULL, AOR_APIKEY_TTL_MS + 50);
        kill(redis_pid, SIGSTOP);
        uv_update_time(&loop);
        t0 = uv_now(&loop);
        res = lookup(k, conf, KEY_OK, &sync);
        CHECK_EQ_INT(sync, 0);
        CHECK_EQ_INT(res.status, AOR_APIKEY_UNAVAILABLE);
        CHECK_EQ_STR(res.tenant, "t1"); /* the last good answer, for on_failure: open */
        CHECK(uv_now(&loop) - t0 >= 190 && uv_now(&loop) - t0 < 600);
        fprintf(stderr, "hung redis: UNAVAILABLE after %llu ms\n", (unsigned long long)(uv_now(&loop) - t0));
        CHECK(!aor_redis_is_up(r));
        res = lookup(k, conf, KEY_OK2, &sync); /* known down: answered without waiting */
        CHECK_EQ_INT(sync, 1);
        CHECK_EQ_INT(res.status, AOR_APIKEY_UNAVAILABLE);
        CHECK(aor_redis_command(r, on_cmd, &w, "PING") == NULL);
        run_until(NULL, 700); /* reconnect attempts time out on the handshake */
        CHECK(!aor_redis_is_up(r));
        kill(redis_pid, SIGCONT);
        CHECK(is_up_flag(r, 3000));
        res = lookup(k, conf, KEY_OK, NULL);
        CHECK_EQ_INT(res.status, AOR_APIKEY_OK);
    }

    /* a command cancelled while Redis hangs, then the timeout: tombstone freed, nothing called */
    {
        struct cmd_waiter w = {0}, w2 = {0};
        struct aor_redis_cmd *cmd;
        kill(redis_pid, SIGSTOP);
        cmd = aor_redis_command(r, on_cmd, &w, "PING");
        CHECK(cmd != NULL);
        CHECK(aor_redis_command(r, on_cmd, &w2, "PING") != NULL);
        aor_redis_cancel(cmd);
        run_until(&w2.calls, 1000);
        CHECK(w.calls == 0 && w2.calls == 1 && w2.err == aor_redis_err_timeout);
        kill(redis_pid, SIGCONT);
        CHECK(is_up_flag(r, 3000));
    }

    /* Redis gone: the pending command fails with DISCONNECTED, later lookups are UNAVAILABLE */
    {
        struct cmd_waiter w = {0};
        struct aor_apikey_pending *p;
        redisFree(c);
        c = NULL;
        CHECK(aor_redis_command(r, on_cmd, &w, "BLPOP nolist 0.15") != NULL); /* the server holds it */
        run_until(NULL, 20);
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
        run_until(&w.calls, 1000);
        CHECK(w.calls == 1 && w.err == aor_redis_err_disconnected);
        run_until(NULL, 200);
        res = lookup(k, conf, KEY_UNKNOWN "x", &sync);
        CHECK(res.status == AOR_APIKEY_UNAVAILABLE);
        /* a lookup pending when everything is torn down: no callback, no leak */
        uv_update_time(&loop);
        aor_apikeys_lookup(k, conf, KEY_OK, strlen(KEY_OK), (int64_t)uv_now(&loop) + 100000, never_called, NULL, &res, &p);
    }

    aor_apikeys_destroy(k);
    aor_redis_destroy(r);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0); /* every handle closed */
    aor_config_release(conf);
    if (c != NULL)
        redisFree(c);
    stop_redis();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_syntax();
    test_digest();
    test_tenant_names();
    test_static();
    test_cache_expiry();
    test_cache_bound();
    test_checksum();
    test_lookup_sync();
    test_flags();
    test_url();
    test_e2e();
    stop_redis();
    return aor_test_done("test_apikey");
}
