/*
 * test_tokencache.c — the verified-token cache with a hand-moved clock: hits and misses,
 * expiry at exp and at the TTL caps, refusals cached briefly, generations, the capacity bound
 * at limit+1 with LRU eviction, and a long random run checked against a naive model.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "jwt.h"
#include "tokencache.h"
#include "test.h"

#define T0_MS INT64_C(1700000000000) /* an arbitrary "now" */
#define T0_S (T0_MS / 1000)

static struct aor_tokencache_key key_of(struct aor_tokencache *c, const char *token)
{
    struct aor_tokencache_key k;

    memset(&k, 0, sizeof(k));
    CHECK_EQ_INT(aor_tokencache_key(c, token, strlen(token), &k), 0);
    return k;
}

static struct aor_tokencache_value ok_value(const char *tenant, int64_t exp)
{
    struct aor_tokencache_value v = {AOR_JWT_OK, 0, exp, tenant, "sub-1", "oid-1", "client-1"};
    return v;
}

static struct aor_tokencache_value refusal(int err)
{
    struct aor_tokencache_value v = {err, 1, 0, NULL, NULL, NULL, NULL};
    return v;
}

static int put(struct aor_tokencache *c, const char *token, const struct aor_tokencache_value *v, int64_t now_ms)
{
    struct aor_tokencache_key k = key_of(c, token);
    return aor_tokencache_put(c, &k, 1, v, now_ms);
}

static int get(struct aor_tokencache *c, const char *token, int64_t now_ms, struct aor_tokencache_value *out)
{
    struct aor_tokencache_key k = key_of(c, token);
    return aor_tokencache_get(c, &k, 1, now_ms, out);
}

static size_t count(const struct aor_tokencache *c)
{
    struct aor_tokencache_stats st;
    aor_tokencache_stats(c, &st);
    return st.count;
}

static void test_create(void)
{
    struct aor_tokencache *a = aor_tokencache_create(4), *b = aor_tokencache_create(4);
    struct aor_tokencache_key ka, ka2, kb, kc;

    CHECK(aor_tokencache_create(0) == NULL);
    CHECK(aor_tokencache_create(AOR_TOKENCACHE_MAX_CAPACITY + 1) == NULL);
    CHECK(a != NULL && b != NULL);
    ka = key_of(a, "token");
    ka2 = key_of(a, "token");
    kb = key_of(b, "token");
    kc = key_of(a, "tokeN");
    CHECK(memcmp(&ka, &ka2, sizeof(ka)) == 0);
    CHECK(memcmp(&ka, &kb, sizeof(ka)) != 0); /* salted per cache */
    CHECK(memcmp(&ka, &kc, sizeof(ka)) != 0);
    aor_tokencache_destroy(a);
    aor_tokencache_destroy(b);
    aor_tokencache_destroy(NULL);
}

static void test_hit_miss(void)
{
    struct aor_tokencache *c = aor_tokencache_create(16);
    struct aor_tokencache_value v = ok_value("tenant-a", T0_S + 100), out;
    struct aor_tokencache_stats st;

    CHECK_EQ_INT(get(c, "tok-a", T0_MS, &out), 0);
    CHECK_EQ_INT(put(c, "tok-a", &v, T0_MS), 0);
    memset(&out, 0, sizeof(out));
    CHECK_EQ_INT(get(c, "tok-a", T0_MS + 1, &out), 1);
    CHECK_EQ_INT(out.err, AOR_JWT_OK);
    CHECK_EQ_INT(out.issuer, 0);
    CHECK_EQ_INT(out.exp, T0_S + 100);
    CHECK_EQ_STR(out.tenant, "tenant-a");
    CHECK_EQ_STR(out.sub, "sub-1");
    CHECK_EQ_STR(out.oid, "oid-1");
    CHECK_EQ_STR(out.client_id, "client-1");
    CHECK_EQ_INT(get(c, "tok-b", T0_MS, &out), 0);
    CHECK_EQ_INT(get(c, "tok-", T0_MS, &out), 0);
    CHECK_EQ_INT(get(c, "tok-aa", T0_MS, &out), 0);

    /* NULL strings are stored as "" */
    v.tenant = NULL;
    v.client_id = "";
    CHECK_EQ_INT(put(c, "tok-b", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "tok-b", T0_MS, &out), 1);
    CHECK_EQ_STR(out.tenant, "");
    CHECK_EQ_STR(out.client_id, "");

    /* replacing an entry updates it in place of a second one */
    v = ok_value("tenant-a2", T0_S + 50);
    v.issuer = 3;
    CHECK_EQ_INT(put(c, "tok-a", &v, T0_MS), 0);
    CHECK_EQ_INT(count(c), 2);
    CHECK_EQ_INT(get(c, "tok-a", T0_MS, &out), 1);
    CHECK_EQ_STR(out.tenant, "tenant-a2");
    CHECK_EQ_INT(out.issuer, 3);

    /* the policy generation is part of the lookup: another one is a miss and drops the entry */
    {
        struct aor_tokencache_key k = key_of(c, "tok-a");
        CHECK_EQ_INT(aor_tokencache_get(c, &k, 2, T0_MS, &out), 0);
        CHECK_EQ_INT(count(c), 1);
        CHECK_EQ_INT(aor_tokencache_get(c, &k, 1, T0_MS, &out), 0);
        CHECK_EQ_INT(aor_tokencache_put(c, &k, 2, &v, T0_MS), 0);
        CHECK_EQ_INT(aor_tokencache_get(c, &k, 2, T0_MS, &out), 1);
    }

    aor_tokencache_stats(c, &st);
    CHECK_EQ_INT(st.capacity, 16);
    CHECK_EQ_INT(st.hits, 4);
    CHECK_EQ_INT(st.misses, 6);
    aor_tokencache_clear(c);
    CHECK_EQ_INT(count(c), 0);
    CHECK_EQ_INT(get(c, "tok-b", T0_MS, &out), 0);
    CHECK_EQ_INT(put(c, "tok-b", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "tok-b", T0_MS, &out), 1);
    aor_tokencache_destroy(c);
}

static void test_expiry(void)
{
    struct aor_tokencache *c = aor_tokencache_create(16);
    struct aor_tokencache_value v, out;
    char longstr[AOR_JWT_ID_MAX + 1];

    /* a success lives until the token's exp... */
    v = ok_value("t", T0_S + 100);
    CHECK_EQ_INT(put(c, "exp100", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "exp100", (T0_S + 100) * 1000 - 1, &out), 1);
    CHECK_EQ_INT(get(c, "exp100", (T0_S + 100) * 1000, &out), 0);
    CHECK_EQ_INT(count(c), 0); /* dropped on the expired lookup */

    /* ...but never longer than the cap */
    v = ok_value("t", T0_S + 3600);
    CHECK_EQ_INT(put(c, "exp3600", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "exp3600", T0_MS + AOR_TOKENCACHE_MAX_TTL_MS - 1, &out), 1);
    CHECK_EQ_INT(get(c, "exp3600", T0_MS + AOR_TOKENCACHE_MAX_TTL_MS, &out), 0);
    v = ok_value("t", INT64_MAX);
    CHECK_EQ_INT(put(c, "expmax", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "expmax", T0_MS + AOR_TOKENCACHE_MAX_TTL_MS - 1, &out), 1);
    CHECK_EQ_INT(get(c, "expmax", T0_MS + AOR_TOKENCACHE_MAX_TTL_MS, &out), 0);

    /* an expired success is not stored at all */
    v = ok_value("t", T0_S);
    CHECK_EQ_INT(put(c, "expired", &v, T0_MS), 1);
    v = ok_value("t", -5);
    CHECK_EQ_INT(put(c, "negative-exp", &v, T0_MS), 1);
    CHECK_EQ_INT(get(c, "expired", T0_MS - 10, &out), 0);

    /* refusals: briefly; an unknown kid more briefly; an internal error not at all */
    v = refusal(AOR_JWT_E_SIGNATURE);
    CHECK_EQ_INT(put(c, "bad-sig", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "bad-sig", T0_MS + AOR_TOKENCACHE_NEGATIVE_TTL_MS - 1, &out), 1);
    CHECK_EQ_INT(out.err, AOR_JWT_E_SIGNATURE);
    CHECK_EQ_INT(out.issuer, 1);
    CHECK_EQ_INT(out.exp, 0);
    CHECK_EQ_STR(out.tenant, "");
    CHECK_EQ_INT(get(c, "bad-sig", T0_MS + AOR_TOKENCACHE_NEGATIVE_TTL_MS, &out), 0);
    v = refusal(AOR_JWT_E_MISSING_CLAIM);
    CHECK_EQ_INT(put(c, "no-role", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "no-role", T0_MS + 4000, &out), 1);
    CHECK_EQ_INT(aor_jwt_http_status(out.err), 403);
    v = refusal(AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(put(c, "new-kid", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "new-kid", T0_MS + AOR_TOKENCACHE_UNKNOWN_KID_TTL_MS - 1, &out), 1);
    CHECK_EQ_INT(get(c, "new-kid", T0_MS + AOR_TOKENCACHE_UNKNOWN_KID_TTL_MS, &out), 0);
    v = refusal(AOR_JWT_E_INTERNAL);
    CHECK_EQ_INT(put(c, "internal", &v, T0_MS), 1);
    CHECK_EQ_INT(get(c, "internal", T0_MS, &out), 0);
    v = refusal(1);
    CHECK_EQ_INT(put(c, "not-a-code", &v, T0_MS), 1);
    v = refusal(AOR_JWT_E_LAST - 1);
    CHECK_EQ_INT(put(c, "not-a-code", &v, T0_MS), 1);

    /* identity strings at the limit and one over */
    memset(longstr, 'x', sizeof(longstr));
    longstr[AOR_JWT_ID_MAX - 1] = '\0';
    v = ok_value(longstr, T0_S + 10);
    CHECK_EQ_INT(put(c, "long-ok", &v, T0_MS), 0);
    CHECK_EQ_INT(get(c, "long-ok", T0_MS, &out), 1);
    CHECK_EQ_INT(strlen(out.tenant), AOR_JWT_ID_MAX - 1);
    CHECK_EQ_STR(out.sub, "sub-1");
    longstr[AOR_JWT_ID_MAX - 1] = 'x';
    longstr[AOR_JWT_ID_MAX] = '\0';
    v = ok_value("t", T0_S + 10);
    v.client_id = longstr;
    CHECK_EQ_INT(put(c, "long-bad", &v, T0_MS), 1);
    CHECK_EQ_INT(get(c, "long-bad", T0_MS, &out), 0);
    aor_tokencache_destroy(c);
}

static void test_capacity(void)
{
    enum { CAP = 8 };
    struct aor_tokencache *c = aor_tokencache_create(CAP);
    struct aor_tokencache_value v, out;
    struct aor_tokencache_stats st;
    char tok[32], tenant[32];
    int i;

    for (i = 0; i != CAP; ++i) {
        snprintf(tok, sizeof(tok), "token-%d", i);
        snprintf(tenant, sizeof(tenant), "tenant-%d", i);
        v = ok_value(tenant, T0_S + 100);
        CHECK_EQ_INT(put(c, tok, &v, T0_MS), 0);
    }
    CHECK_EQ_INT(count(c), CAP);
    /* touch token-0: token-1 is now the least recently used */
    CHECK_EQ_INT(get(c, "token-0", T0_MS, &out), 1);
    v = ok_value("tenant-8", T0_S + 100);
    CHECK_EQ_INT(put(c, "token-8", &v, T0_MS), 0); /* limit + 1 */
    aor_tokencache_stats(c, &st);
    CHECK_EQ_INT(st.count, CAP);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK_EQ_INT(get(c, "token-1", T0_MS, &out), 0);
    for (i = 0; i != CAP + 1; ++i) {
        if (i == 1)
            continue;
        snprintf(tok, sizeof(tok), "token-%d", i);
        snprintf(tenant, sizeof(tenant), "tenant-%d", i);
        CHECK_EQ_INT(get(c, tok, T0_MS, &out), 1);
        CHECK_EQ_STR(out.tenant, tenant);
    }
    /* many more: never above the bound */
    for (i = 100; i != 1100; ++i) {
        snprintf(tok, sizeof(tok), "token-%d", i);
        v = ok_value("x", T0_S + 100);
        CHECK_EQ_INT(put(c, tok, &v, T0_MS), 0);
    }
    aor_tokencache_stats(c, &st);
    CHECK_EQ_INT(st.count, CAP);
    CHECK_EQ_INT(st.evictions, 1 + 1000);
    aor_tokencache_destroy(c);
}

/* distinct tokens, full cache at the default capacity: every lookup returns its own result */
static void test_no_collision(void)
{
    enum { N = AOR_TOKENCACHE_DEFAULT_CAPACITY };
    struct aor_tokencache *c = aor_tokencache_create(N);
    struct aor_tokencache_value v, out;
    char tok[64], tenant[32];
    int i, bad = 0;

    for (i = 0; i != N; ++i) {
        /* near-identical tokens: one byte apart */
        snprintf(tok, sizeof(tok), "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIx%06d.sig", i);
        snprintf(tenant, sizeof(tenant), "t%d", i);
        v = ok_value(tenant, T0_S + 100);
        v.issuer = i % 7;
        if (put(c, tok, &v, T0_MS) != 0)
            ++bad;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(count(c), N);
    for (i = 0; i != N; ++i) {
        snprintf(tok, sizeof(tok), "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIx%06d.sig", i);
        snprintf(tenant, sizeof(tenant), "t%d", i);
        if (get(c, tok, T0_MS, &out) != 1 || strcmp(out.tenant, tenant) != 0 || out.issuer != i % 7)
            ++bad;
    }
    CHECK_EQ_INT(bad, 0);
    aor_tokencache_destroy(c);
}

/* ---- a random run against a naive model (exercises backward-shift deletion) ------------ */

struct model_entry {
    int present;
    uint64_t gen;
    int64_t expires;
    uint64_t used; /* LRU stamp */
    int tenant;
};

static uint64_t rng_state = 0x1234567887654321ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}

static void test_random_model(void)
{
    enum { CAP = 64, TOKENS = 200, OPS = 200000 };
    struct aor_tokencache *c = aor_tokencache_create(CAP);
    static struct model_entry m[TOKENS];
    struct aor_tokencache_key keys[TOKENS];
    struct aor_tokencache_value v, out;
    int64_t now = T0_MS;
    uint64_t stamp = 0;
    size_t present = 0;
    char tok[32], tenant[32];
    int i, op, mismatches = 0;

    for (i = 0; i != TOKENS; ++i) {
        snprintf(tok, sizeof(tok), "tok%d", i);
        keys[i] = key_of(c, tok);
    }
    for (op = 0; op != OPS; ++op) {
        int t = (int)(rnd() % TOKENS);
        uint64_t gen = 1 + (rnd() % 16 == 0);
        now += rnd() % 50;
        if (rnd() % 2 == 0) {
            int64_t exp_s = now / 1000 + (int64_t)(rnd() % 20) - 2;
            int64_t expires = exp_s * 1000;
            int rc;
            if (expires > now + AOR_TOKENCACHE_MAX_TTL_MS)
                expires = now + AOR_TOKENCACHE_MAX_TTL_MS;
            snprintf(tenant, sizeof(tenant), "%d", op);
            v = ok_value(tenant, exp_s);
            rc = aor_tokencache_put(c, &keys[t], gen, &v, now);
            if (expires <= now) {
                mismatches += rc != 1;
                continue;
            }
            mismatches += rc != 0;
            if (m[t].present) {
                m[t].present = 0;
                --present;
            } else if (present == CAP) {
                int lru = -1;
                for (i = 0; i != TOKENS; ++i)
                    if (m[i].present && (lru < 0 || m[i].used < m[lru].used))
                        lru = i;
                m[lru].present = 0;
                --present;
            }
            m[t].present = 1;
            m[t].gen = gen;
            m[t].expires = expires;
            m[t].used = ++stamp;
            m[t].tenant = op;
            ++present;
        } else {
            int hit = aor_tokencache_get(c, &keys[t], gen, now, &out);
            int want = m[t].present && m[t].gen == gen && now < m[t].expires;
            if (m[t].present && !want) {
                m[t].present = 0;
                --present;
            }
            if (hit != want) {
                ++mismatches;
                continue;
            }
            if (hit) {
                m[t].used = ++stamp;
                snprintf(tenant, sizeof(tenant), "%d", m[t].tenant);
                mismatches += strcmp(out.tenant, tenant) != 0;
            }
        }
        if (count(c) != present)
            ++mismatches;
    }
    CHECK_EQ_INT(mismatches, 0);
    aor_tokencache_destroy(c);
}

int main(void)
{
    test_create();
    test_hit_miss();
    test_expiry();
    test_capacity();
    test_no_collision();
    test_random_model();
    return aor_test_done("test_tokencache");
}
