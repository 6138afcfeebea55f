/*
 * upstream.c — see upstream.h. The glue follows libcurl's multi-socket contract:
 * curl tells us which sockets to watch (socket callback) and when to wake it
 * (timer callback); uv tells us when a socket is ready; we hand that back to
 * curl_multi_socket_action and collect finished transfers.
 */
#include <stdlib.h>
#include "log.h"
#include "upstream.h"

#define FREE_HANDLES_MAX 256

struct aor_upstream {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    CURL *free_handles[FREE_HANDLES_MAX];
    size_t num_free;
    int in_check; /* guards against re-entering check_done */
};

/* one per socket curl asked us to watch; freed in its uv close callback */
struct sock_watch {
    uv_poll_t poll;
    curl_socket_t fd;
    struct aor_upstream *up;
};

static void check_done(struct aor_upstream *up)
{
    CURLMsg *msg;
    int left;

    if (up->in_check)
        return;
    up->in_check = 1;
    while ((msg = curl_multi_info_read(up->multi, &left)) != NULL) {
        struct aor_upstream_xfer *xfer = NULL;
        CURLcode result;
        CURL *easy;
        if (msg->msg != CURLMSG_DONE)
            continue;
        easy = msg->easy_handle;
        result = msg->data.result;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&xfer);
        curl_multi_remove_handle(up->multi, easy);
        if (xfer != NULL && xfer->active) {
            xfer->active = 0;
            xfer->on_done(xfer, result);
        }
    }
    up->in_check = 0;
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct sock_watch *w = poll->data;
    struct aor_upstream *up = w->up;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(up->multi, w->fd, flags, &running);
    check_done(up);
}

static void on_timer(uv_timer_t *timer)
{
    struct aor_upstream *up = timer->data;
    int running;

    curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(up);
}

static void on_watch_closed(uv_handle_t *h)
{
    free(h->data);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct aor_upstream *up = userp;
    struct sock_watch *w = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (w != NULL) {
            uv_poll_stop(&w->poll);
            uv_close((uv_handle_t *)&w->poll, on_watch_closed);
            curl_multi_assign(up->multi, fd, NULL);
        }
        return 0;
    }
    if (w == NULL) {
        if ((w = malloc(sizeof(*w))) == NULL)
            return -1;
        w->fd = fd;
        w->up = up;
        if (uv_poll_init_socket(up->loop, &w->poll, fd) != 0) {
            free(w);
            return -1;
        }
        w->poll.data = w;
        curl_multi_assign(up->multi, fd, w);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&w->poll, events, on_poll);
    return 0;
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    struct aor_upstream *up = userp;

    if (timeout_ms < 0)
        uv_timer_stop(&up->timer);
    else /* 0 means "as soon as possible": curl must not be called back from inside this callback */
        uv_timer_start(&up->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

struct aor_upstream *aor_upstream_create(uv_loop_t *loop)
{
    struct aor_upstream *up = calloc(1, sizeof(*up));

    if (up == NULL)
        return NULL;
    up->loop = loop;
    if ((up->multi = curl_multi_init()) == NULL) {
        free(up);
        return NULL;
    }
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
    /* enough idle connections to keep every backend warm at high concurrency */
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, 1024L);
    return up;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void aor_upstream_destroy(struct aor_upstream *up)
{
    size_t i;

    /* the multi handle's cleanup tells on_socket to remove every watch */
    curl_multi_cleanup(up->multi);
    for (i = 0; i != up->num_free; ++i)
        curl_easy_cleanup(up->free_handles[i]);
    uv_timer_stop(&up->timer);
    uv_close((uv_handle_t *)&up->timer, on_timer_closed);
}

CURL *aor_upstream_acquire(struct aor_upstream *up)
{
    CURL *easy;

    if (up->num_free != 0) {
        easy = up->free_handles[--up->num_free];
        curl_easy_reset(easy);
    } else if ((easy = curl_easy_init()) == NULL) {
        return NULL;
    }
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    return easy;
}

void aor_upstream_release(struct aor_upstream *up, CURL *easy)
{
    if (easy == NULL)
        return;
    if (up->num_free == FREE_HANDLES_MAX) {
        curl_easy_cleanup(easy);
        return;
    }
    up->free_handles[up->num_free++] = easy;
}

int aor_upstream_start(struct aor_upstream *up, struct aor_upstream_xfer *xfer)
{
    curl_easy_setopt(xfer->easy, CURLOPT_PRIVATE, xfer);
    if (curl_multi_add_handle(up->multi, xfer->easy) != CURLM_OK)
        return -1;
    xfer->active = 1;
    return 0;
}

void aor_upstream_cancel(struct aor_upstream *up, struct aor_upstream_xfer *xfer)
{
    if (!xfer->active)
        return;
    xfer->active = 0;
    curl_multi_remove_handle(up->multi, xfer->easy);
}
