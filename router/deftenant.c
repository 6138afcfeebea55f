/* deftenant.c — see deftenant.h */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "config.h"
#include "deftenant.h"
#include "log.h"
#include "quota.h"
#include "redis.h"
#include "server.h"

#define KEY_MAX 300

/*
 * KEYS: the default tenant's hash. Returns its five inheritable fields (nil when absent), each
 * cut to 2 KiB as the reserve script does — a valid value is shorter, and an operator's 2 MB
 * value must not make a reply the connection refuses — or 0 when the key is not a hash (a plain
 * HMGET would answer WRONGTYPE, an error every poll in aoai_router_redis_errors_total).
 */
static const char poll_lua[] = "local v = redis.pcall('HMGET', KEYS[1], 'tpm', 'rpm', 'tokens_per_day', 'tokens_per_month', "
                               "'deployments')\n"
                               "if type(v) ~= 'table' or v['err'] then return 0 end\n"
                               "for i = 1, 5 do\n"
                               "  if v[i] then v[i] = string.sub(v[i], 1, 2048) end\n"
                               "end\n"
                               "return v\n";

/* the poll goes as EVALSHA (every 500 ms per worker and replica: not the script's body each
 * time); a Redis that lost its script cache answers NOSCRIPT once, and that poll is sent again as
 * EVAL, which caches it there */
static char poll_sha[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void init_sha(void)
{
    aor_redis_sha1_hex(poll_lua, poll_sha);
}

struct aor_deftenant {
    uv_timer_t timer;
    struct aor_worker *w;
    struct aor_redis_cmd *cmd; /* the read in flight, NULL when none */
    struct aor_quota_layer layer;
    int have;        /* a read has answered */
    int use_eval;    /* the last EVALSHA was answered NOSCRIPT: the next read sends the body */
    uint64_t logged; /* fingerprint of the last reply logged as invalid (worker 0 logs, once per change) */
};

static uint64_t fnv(const void *p, size_t len, uint64_t h)
{
    const unsigned char *b = p;
    while (len-- != 0)
        h = (h ^ *b++) * 0x100000001b3ull;
    return h;
}

static void send_poll(struct aor_deftenant *d);

static void on_reply(void *data, const struct redisReply *reply, const char *errstr)
{
    struct aor_deftenant *d = data;
    struct aor_quota_fields f;
    uint64_t sum = 0xcbf29ce484222325ull;
    unsigned bad;

    d->cmd = NULL;
    if (errstr == aor_redis_err_reply && reply != NULL && reply->str != NULL && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        !d->use_eval) {
        d->use_eval = 1;
        send_poll(d); /* at once, as EVAL */
        return;
    }
    d->use_eval = 0;
    if (errstr != NULL || reply == NULL)
        return; /* Redis down, slow or refusing: the last copy stays */
    memset(&f, 0, sizeof(f));
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
        const char **val[5] = {&f.tpm, &f.rpm, &f.day, &f.month, &f.deployments};
        size_t *len[5] = {&f.tpm_len, &f.rpm_len, &f.day_len, &f.month_len, &f.deployments_len};
        for (size_t i = 0; i != 5; ++i) {
            const struct redisReply *e = reply->element[i];
            if (e->type != REDIS_REPLY_STRING)
                continue;
            *val[i] = e->str;
            *len[i] = e->len;
            sum = fnv(&i, sizeof(i), sum);
            sum = fnv(e->str, e->len, sum);
        }
    } else if (reply->type == REDIS_REPLY_INTEGER) {
        /* the key is not a hash: as if there were none (the tenant `default` itself fails its admissions) */
        sum = 1;
        if (d->w->id == 0 && d->logged != sum)
            AOR_LOG(AOR_LOG_WARN, "quota",
                    "the default tenant's quota key is not a hash: no fallback from it until it is one (tenant:{default})");
    } else {
        return; /* not what the script returns: keep the last copy */
    }
    bad = aor_quota_layer_parse(&f, &d->layer);
    if (bad != 0 && d->w->id == 0 && d->logged != sum)
        AOR_LOG(AOR_LOG_WARN, "quota",
                "tenant default: quota hash has invalid values (mask %u: 1 tpm, 2 rpm, 4 tokens_per_day, 8 tokens_per_month, "
                "16 deployments); they count as absent for the fallback too",
                bad);
    d->logged = bad != 0 || sum == 1 ? sum : 0;
    d->have = 1;
}

static void send_poll(struct aor_deftenant *d)
{
    struct aor_worker *w = d->w;
    const char *prefix = w->conf->redis.prefix != NULL ? w->conf->redis.prefix : "aoai:";
    char key[KEY_MAX];
    const char *argv[4] = {"EVAL", poll_lua, "1", key};
    size_t pl = strlen(prefix);

    /* while Redis is down the last copy stays; asking would only count an error every tick
     * (aoai_router_redis_errors_total), as the cooldown poll does not */
    if (d->cmd != NULL || w->redis == NULL || !aor_redis_is_up(w->redis) || pl + sizeof("tenant:{default}") > sizeof(key))
        return;
    memcpy(key, prefix, pl);
    memcpy(key + pl, "tenant:{default}", sizeof("tenant:{default}"));
    pthread_once(&sha_once, init_sha);
    if (!d->use_eval && poll_sha[0] != '\0') {
        argv[0] = "EVALSHA";
        argv[1] = poll_sha;
    }
    d->cmd = aor_redis_command_argv(w->redis, on_reply, d, 4, argv, NULL);
}

static void on_poll(uv_timer_t *t)
{
    send_poll(t->data);
}

int aor_deftenant_start(struct aor_worker *w)
{
    struct aor_deftenant *d;

    if (w->redis == NULL)
        return 0;
    if ((d = calloc(1, sizeof(*d))) == NULL)
        return -1;
    d->w = w;
    uv_timer_init(&w->loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, on_poll, 0, AOR_DEFTENANT_POLL_MS);
    uv_unref((uv_handle_t *)&d->timer);
    w->deftenant = d;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void aor_deftenant_stop(struct aor_worker *w)
{
    struct aor_deftenant *d = w->deftenant;

    if (d == NULL)
        return;
    aor_redis_cancel(d->cmd);
    d->cmd = NULL;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_closed);
    w->deftenant = NULL;
}

const struct aor_quota_layer *aor_deftenant_layer(const struct aor_worker *w)
{
    return w->deftenant != NULL && w->deftenant->have ? &w->deftenant->layer : NULL;
}
