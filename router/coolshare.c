/* coolshare.c — see coolshare.h */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "balancer.h"
#include "config.h"
#include "coolshare.h"
#include "log.h"
#include "redis.h"
#include "server.h"

#define POLL_MS 1000
#define KEY_MAX 512

/* a read in flight: which deployment state each key of the MGET belongs to */
struct aor_coolshare_read {
    size_t n;
    int64_t max_cooldown_ms;
    struct {
        struct aor_deployment_state *state;
        struct aor_backend_deployment_view view; /* to see whether a dynamic entry was recycled meanwhile */
    } * at;
};

static void ignore_reply(void *data, const struct redisReply *reply, const char *errstr)
{
}

static const char *prefix_of(const struct aor_config *conf)
{
    return conf->redis.prefix != NULL ? conf->redis.prefix : "aoai:";
}

/* the key of `deployment` on `backend`; 0, or -1 when it does not fit */
static int make_key(char *key, const struct aor_config *conf, const char *backend, const char *deployment)
{
    int n = snprintf(key, KEY_MAX, "%sbackend:%s:%s:cooldown_until", prefix_of(conf), backend, deployment);
    return n > 0 && n < KEY_MAX ? 0 : -1;
}

void aor_coolshare_publish(struct aor_worker *w, const struct aor_backend_conf *b, const char *deployment, int64_t until_ms,
                           int64_t now_ms)
{
    char key[KEY_MAX], until[24], ttl[24];
    const char *argv[5] = {"SET", key, until, "PX", ttl};

    if (w->redis == NULL || until_ms <= now_ms || make_key(key, w->conf, b->name, deployment) != 0)
        return;
    snprintf(until, sizeof(until), "%lld", (long long)until_ms);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(until_ms - now_ms));
    /* Redis 7 has no "GT" for SET: two replicas racing write their own ends, and readers keep
     * the later one they have seen */
    aor_redis_command_argv(w->redis, ignore_reply, NULL, 5, argv, NULL);
}

static void read_free(struct aor_coolshare_read *rd)
{
    if (rd != NULL)
        free(rd->at);
    free(rd);
}

static void on_cooldowns(void *data, const struct redisReply *reply, const char *errstr)
{
    struct aor_worker *w = data;
    struct aor_coolshare_read *rd = w->coolshare_read;
    int64_t now = aor_now_ms();
    size_t i;

    w->coolshare_cmd = NULL;
    w->coolshare_read = NULL;
    if (errstr == NULL && reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == rd->n) {
        for (i = 0; i != rd->n; ++i) {
            const struct redisReply *r = reply->element[i];
            int64_t until;
            if (r->type != REDIS_REPLY_STRING || !aor_backend_view_current(&rd->at[i].view))
                continue;
            /* another replica's word, or anyone's who can write to Redis: a decimal unix-ms time
             * in the future, at most max_cooldown_ms away; anything else is ignored */
            if ((until = aor_balancer_parse_until(r->str, r->len)) < 0)
                continue;
            aor_balancer_adopt_cooldown(rd->at[i].state, until, now, rd->max_cooldown_ms);
        }
    }
    read_free(rd);
}

static void on_poll(uv_timer_t *t)
{
    struct aor_worker *w = t->data;
    const struct aor_config *conf = w->conf;
    struct aor_coolshare_read *rd = NULL;
    struct aor_backend_deployment_view *views = NULL;
    const char **argv = NULL;
    char *keys = NULL;
    size_t i, j, max = 0, n = 0;

    if (w->coolshare_cmd != NULL || conf->num_backends == 0 || !aor_redis_is_up(w->redis))
        return;
    for (i = 0; i != conf->num_backends; ++i)
        max += aor_backend_max_deployments(&conf->backends[i]);
    if (max == 0)
        return;
    if ((rd = calloc(1, sizeof(*rd))) == NULL || (rd->at = calloc(max, sizeof(*rd->at))) == NULL ||
        (views = calloc(max, sizeof(*views))) == NULL || (argv = calloc(max + 1, sizeof(*argv))) == NULL ||
        (keys = malloc(KEY_MAX * max)) == NULL)
        goto exit;
    argv[0] = "MGET";
    for (i = 0; i != conf->num_backends; ++i) {
        const struct aor_backend_conf *b = &conf->backends[i];
        size_t k = aor_backend_list_deployments(b, views, max - n);
        for (j = 0; j != k; ++j) {
            size_t seen;
            for (seen = 0; seen != j && views[seen].state != views[j].state; ++seen)
                ;
            /* one key per deployment on the backend (two logical names may share one); the
             * overflow entry mixes names: nothing to read for it */
            if (seen != j || strcmp(views[j].name, AOR_BACKEND_OVERFLOW_NAME) == 0 ||
                make_key(keys + n * KEY_MAX, conf, b->name, views[j].name) != 0)
                continue;
            argv[n + 1] = keys + n * KEY_MAX;
            rd->at[n].state = views[j].state;
            rd->at[n].view = views[j];
            rd->at[n].view.name = rd->at[n].view.label = NULL; /* may point into `views`, freed below */
            ++n;
        }
    }
    if (n == 0)
        goto exit;
    rd->n = n;
    rd->max_cooldown_ms = (int64_t)conf->limits.max_cooldown_ms;
    /* hiredis copies the arguments: keys and argv go when this returns */
    if ((w->coolshare_cmd = aor_redis_command_argv(w->redis, on_cooldowns, w, (int)n + 1, argv, NULL)) != NULL) {
        w->coolshare_read = rd;
        rd = NULL;
    }
exit:
    read_free(rd);
    free(views);
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
    read_free(w->coolshare_read);
    w->coolshare_read = NULL;
    uv_timer_stop(&w->coolshare_timer);
    uv_close((uv_handle_t *)&w->coolshare_timer, NULL);
}
