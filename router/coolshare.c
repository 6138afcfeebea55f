/* coolshare.c — see coolshare.h */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "balancer.h"
#include "config.h"
#include "coolshare.h"
#include "log.h"
#include "redis.h"
#include "server.h"

#define POLL_MS 1000
#define KEY_MAX 512

static void ignore_reply(void *data, const struct redisReply *reply, const char *errstr)
{
}

void aor_coolshare_publish(struct aor_worker *w, const struct aor_backend_conf *b, int64_t until_ms, int64_t now_ms)
{
    char key[KEY_MAX], until[24], ttl[24];
    const char *argv[6] = {"SET", key, until, "PX", ttl, "GT"};

    if (w->redis == NULL || until_ms <= now_ms)
        return;
    snprintf(key, sizeof(key), "%sbackend:%s:cooldown_until",
             w->conf->redis.prefix != NULL ? w->conf->redis.prefix : "aoai:", b->name);
    snprintf(until, sizeof(until), "%lld", (long long)until_ms);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(until_ms - now_ms));
    /* Redis 7 has no "GT" for SET: only the first five arguments are sent; two replicas racing
     * write their own ends, and readers keep the later one they have seen */
    aor_redis_command_argv(w->redis, ignore_reply, NULL, 5, argv, NULL);
}

static void on_cooldowns(void *data, const struct redisReply *reply, const char *errstr)
{
    struct aor_worker *w = data;
    const struct aor_config *conf = w->conf;
    size_t i;

    w->coolshare_cmd = NULL;
    if (errstr != NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != conf->num_backends ||
        w->coolshare_gen != conf->generation)
        return; /* a reload happened under the read: the next poll catches up */
    for (i = 0; i != reply->elements; ++i) {
        const struct redisReply *r = reply->element[i];
        struct aor_backend_state *st = conf->backends[i].state;
        int64_t until;
        if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 20)
            continue;
        until = strtoll(r->str, NULL, 10);
        if (until > __atomic_load_n(&st->cooldown_until_ms, __ATOMIC_RELAXED)) {
            /* another replica saw this backend answer 429 */
            __atomic_store_n(&st->cooldown_until_ms, until, __ATOMIC_RELAXED);
        }
    }
}

static void on_poll(uv_timer_t *t)
{
    struct aor_worker *w = t->data;
    const struct aor_config *conf = w->conf;
    const char **argv;
    char *keys;
    size_t i;

    if (w->coolshare_cmd != NULL || conf->num_backends == 0 || !aor_redis_is_up(w->redis))
        return;
    argv = malloc(sizeof(*argv) * (conf->num_backends + 1));
    keys = malloc(KEY_MAX * conf->num_backends);
    if (argv != NULL && keys != NULL) {
        argv[0] = "MGET";
        for (i = 0; i != conf->num_backends; ++i) {
            snprintf(keys + i * KEY_MAX, KEY_MAX, "%sbackend:%s:cooldown_until",
                     conf->redis.prefix != NULL ? conf->redis.prefix : "aoai:", conf->backends[i].name);
            argv[i + 1] = keys + i * KEY_MAX;
        }
        /* the reply is matched to this worker's config when it arrives (see on_cooldowns) */
        w->coolshare_gen = conf->generation;
        w->coolshare_cmd = aor_redis_command_argv(w->redis, on_cooldowns, w, (int)conf->num_backends + 1, argv, NULL);
    }
    free(argv);
    free(keys);
}

int aor_coolshare_start(struct aor_worker *w)
{
    if (w->redis == NULL)
        return 0;
    uv_timer_init(&w->loop, &w->coolshare_timer);
    w->coolshare_timer.data = w;
    uv_timer_start(&w->coolshare_timer, on_poll, POLL_MS, POLL_MS);
    uv_unref((uv_handle_t *)&w->coolshare_timer);
    return 0;
}

void aor_coolshare_stop(struct aor_worker *w)
{
    if (w->redis == NULL)
        return;
    if (w->coolshare_cmd != NULL) {
        aor_redis_cancel(w->coolshare_cmd);
        w->coolshare_cmd = NULL;
    }
    uv_timer_stop(&w->coolshare_timer);
    uv_close((uv_handle_t *)&w->coolshare_timer, NULL);
}
