/*
 * tokencache.c — see tokencache.h.
 * Entries sit in one array of `capacity` slots, linked into an LRU list by index; an open
 * addressing index (linear probing, at most half full, backward-shift deletion so there are
 * no tombstones) maps a digest to its slot. The digest is keyed by a per-cache salt, so its
 * low bits are a fine hash and a client cannot pick tokens that pile up in one probe chain.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "jwt.h"
#include "tokencache.h"

#define NONE UINT32_MAX

struct entry {
    struct aor_tokencache_key key;
    uint64_t gen;
    int64_t expires_ms;
    int64_t exp;
    int err, issuer;
    char *strs;          /* tenant, sub, oid, client_id, each NUL-terminated, back to back */
    uint32_t prev, next; /* LRU list (most recent at head), or the free list through next */
};

struct aor_tokencache {
    struct entry *entries;
    size_t capacity, count;
    uint32_t lru_head, lru_tail, free_head;
    uint32_t *index; /* entry numbers, NONE for an empty slot */
    size_t index_mask;
    unsigned char salt[32];
    EVP_MD *md;
    EVP_MD_CTX *mdctx;
    uint64_t hits, misses, evictions;
};

static size_t home_slot(const struct aor_tokencache *c, const struct aor_tokencache_key *key)
{
    uint64_t h;

    memcpy(&h, key->digest, sizeof(h));
    return (size_t)h & c->index_mask;
}

struct aor_tokencache *aor_tokencache_create(size_t capacity)
{
    struct aor_tokencache *c;
    size_t n = 2;

    if (capacity == 0 || capacity > AOR_TOKENCACHE_MAX_CAPACITY)
        return NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return NULL;
    c->lru_head = c->lru_tail = NONE;
    while (n < capacity * 2)
        n <<= 1;
    c->capacity = capacity;
    c->index_mask = n - 1;
    c->entries = calloc(capacity, sizeof(*c->entries));
    c->index = malloc(n * sizeof(*c->index));
    c->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    c->mdctx = EVP_MD_CTX_new();
    if (c->entries == NULL || c->index == NULL || c->md == NULL || c->mdctx == NULL ||
        getrandom(c->salt, sizeof(c->salt), 0) != (ssize_t)sizeof(c->salt)) {
        aor_tokencache_destroy(c);
        return NULL;
    }
    aor_tokencache_clear(c);
    return c;
}

void aor_tokencache_destroy(struct aor_tokencache *c)
{
    if (c == NULL)
        return;
    if (c->entries != NULL)
        for (size_t i = 0; i != c->capacity; ++i)
            free(c->entries[i].strs);
    free(c->entries);
    free(c->index);
    EVP_MD_CTX_free(c->mdctx);
    EVP_MD_free(c->md);
    OPENSSL_cleanse(c->salt, sizeof(c->salt));
    free(c);
}

int aor_tokencache_key(struct aor_tokencache *c, const char *token, size_t len, struct aor_tokencache_key *key)
{
    unsigned int n = 0;

    if (EVP_DigestInit_ex(c->mdctx, c->md, NULL) != 1 || EVP_DigestUpdate(c->mdctx, c->salt, sizeof(c->salt)) != 1 ||
        EVP_DigestUpdate(c->mdctx, token, len) != 1 || EVP_DigestFinal_ex(c->mdctx, key->digest, &n) != 1 ||
        n != sizeof(key->digest))
        return -1;
    return 0;
}

/* ---- LRU list and index --------------------------------------------------------------- */

static void lru_unlink(struct aor_tokencache *c, uint32_t i)
{
    struct entry *e = &c->entries[i];

    if (e->prev != NONE)
        c->entries[e->prev].next = e->next;
    else
        c->lru_head = e->next;
    if (e->next != NONE)
        c->entries[e->next].prev = e->prev;
    else
        c->lru_tail = e->prev;
}

static void lru_push_head(struct aor_tokencache *c, uint32_t i)
{
    struct entry *e = &c->entries[i];

    e->prev = NONE;
    e->next = c->lru_head;
    if (c->lru_head != NONE)
        c->entries[c->lru_head].prev = i;
    c->lru_head = i;
    if (c->lru_tail == NONE)
        c->lru_tail = i;
}

/* the index slot holding `key`, or the empty slot where it would go (*found = 0) */
static size_t index_find(const struct aor_tokencache *c, const struct aor_tokencache_key *key, int *found)
{
    size_t s = home_slot(c, key);

    /* terminates: the index is never more than half full */
    for (;; s = (s + 1) & c->index_mask) {
        uint32_t i = c->index[s];
        if (i == NONE) {
            *found = 0;
            return s;
        }
        if (memcmp(c->entries[i].key.digest, key->digest, sizeof(key->digest)) == 0) {
            *found = 1;
            return s;
        }
    }
}

/* empties slot `s` and shifts later members of its probe run back so that lookups still find them */
static void index_delete(struct aor_tokencache *c, size_t s)
{
    size_t hole = s, j = s;

    for (;;) {
        size_t home, dist_hole, dist_j;
        j = (j + 1) & c->index_mask;
        if (c->index[j] == NONE)
            break;
        home = home_slot(c, &c->entries[c->index[j]].key);
        /* the member at j may fill the hole only if its home is not after the hole on the way to j */
        dist_hole = (hole - home) & c->index_mask;
        dist_j = (j - home) & c->index_mask;
        if (dist_hole <= dist_j) {
            c->index[hole] = c->index[j];
            hole = j;
        }
    }
    c->index[hole] = NONE;
}

/* removes entry number i, whose index slot is s */
static void remove_entry(struct aor_tokencache *c, uint32_t i, size_t s)
{
    struct entry *e = &c->entries[i];

    index_delete(c, s);
    lru_unlink(c, i);
    free(e->strs);
    memset(e, 0, sizeof(*e));
    e->next = c->free_head;
    c->free_head = i;
    --c->count;
}

static void remove_key(struct aor_tokencache *c, uint32_t i)
{
    int found;
    size_t s = index_find(c, &c->entries[i].key, &found);

    if (found) /* always: every listed entry is indexed */
        remove_entry(c, i, s);
}

/* ---- the API --------------------------------------------------------------------------- */

int aor_tokencache_get(struct aor_tokencache *c, const struct aor_tokencache_key *key, uint64_t gen, int64_t now_ms,
                       struct aor_tokencache_value *out)
{
    int found;
    size_t s = index_find(c, key, &found);
    struct entry *e;
    uint32_t i;

    if (!found) {
        ++c->misses;
        return 0;
    }
    i = c->index[s];
    e = &c->entries[i];
    if (e->gen != gen || now_ms >= e->expires_ms) {
        remove_entry(c, i, s);
        ++c->misses;
        return 0;
    }
    lru_unlink(c, i);
    lru_push_head(c, i);
    out->err = e->err;
    out->issuer = e->issuer;
    out->exp = e->exp;
    out->tenant = e->strs;
    out->sub = out->tenant + strlen(out->tenant) + 1;
    out->oid = out->sub + strlen(out->sub) + 1;
    out->client_id = out->oid + strlen(out->oid) + 1;
    ++c->hits;
    return 1;
}

static int64_t expiry(const struct aor_tokencache_value *v, int64_t now_ms)
{
    int64_t cap = now_ms + AOR_TOKENCACHE_MAX_TTL_MS, exp_ms;

    switch (v->err) {
    case AOR_JWT_OK:
        if (v->exp >= INT64_MAX / 1000)
            return cap;
        exp_ms = v->exp <= 0 ? 0 : v->exp * 1000;
        return exp_ms < cap ? exp_ms : cap;
    case AOR_JWT_E_INTERNAL: /* nothing was decided */
        return now_ms;
    case AOR_JWT_E_UNKNOWN_KID:
        return now_ms + AOR_TOKENCACHE_UNKNOWN_KID_TTL_MS;
    default:
        return now_ms + AOR_TOKENCACHE_NEGATIVE_TTL_MS;
    }
}

int aor_tokencache_put(struct aor_tokencache *c, const struct aor_tokencache_key *key, uint64_t gen,
                       const struct aor_tokencache_value *v, int64_t now_ms)
{
    const char *parts[4] = {v->tenant, v->sub, v->oid, v->client_id};
    size_t lens[4], total = 0, k, s;
    int64_t expires = expiry(v, now_ms);
    struct entry *e;
    char *strs, *p;
    uint32_t i;
    int found;

    if (v->err > 0 || v->err < AOR_JWT_E_LAST || expires <= now_ms)
        return 1;
    for (k = 0; k != 4; ++k) {
        if (parts[k] == NULL)
            parts[k] = "";
        if ((lens[k] = strlen(parts[k])) >= AOR_JWT_ID_MAX)
            return 1;
        total += lens[k] + 1;
    }
    if ((strs = malloc(total)) == NULL)
        return -1;
    for (p = strs, k = 0; k != 4; ++k) {
        memcpy(p, parts[k], lens[k] + 1);
        p += lens[k] + 1;
    }

    s = index_find(c, key, &found);
    if (found) {
        remove_entry(c, c->index[s], s);
    } else if (c->count == c->capacity) {
        remove_key(c, c->lru_tail);
        ++c->evictions;
    }
    /* removals may have shifted the probe run: look again for the free slot */
    s = index_find(c, key, &found);
    i = c->free_head;
    e = &c->entries[i];
    c->free_head = e->next;
    e->key = *key;
    e->gen = gen;
    e->expires_ms = expires;
    e->exp = v->err == AOR_JWT_OK ? v->exp : 0;
    e->err = v->err;
    e->issuer = v->issuer;
    e->strs = strs;
    c->index[s] = i;
    lru_push_head(c, i);
    ++c->count;
    return 0;
}

void aor_tokencache_clear(struct aor_tokencache *c)
{
    size_t i;

    for (i = 0; i != c->capacity; ++i) {
        free(c->entries[i].strs);
        memset(&c->entries[i], 0, sizeof(c->entries[i]));
        c->entries[i].next = i + 1 != c->capacity ? (uint32_t)(i + 1) : NONE;
    }
    for (i = 0; i <= c->index_mask; ++i)
        c->index[i] = NONE;
    c->free_head = 0;
    c->lru_head = c->lru_tail = NONE;
    c->count = 0;
}

void aor_tokencache_stats(const struct aor_tokencache *c, struct aor_tokencache_stats *st)
{
    st->count = c->count;
    st->capacity = c->capacity;
    st->hits = c->hits;
    st->misses = c->misses;
    st->evictions = c->evictions;
}
