/*
 * curl_client.c — closed-loop load generator on libcurl's multi-socket API, driven by one
 * libuv loop the way router/upstream.c drives it (CURLMOPT_SOCKETFUNCTION → uv_poll,
 * CURLMOPT_TIMERFUNCTION → uv_timer). Keeps N transfers in flight, each POSTing a chat
 * completion, reuses easy handles and connections, and reports completed requests and its
 * own CPU time (getrusage utime+stime) per request over the measured window.
 *
 * The per-transfer cost knobs (measured in README.md); the defaults are what the router does:
 *   --no-reset       options that never change are set once per easy handle; each transfer
 *                    re-sets only URL, body, header list and private pointer
 *                    (default: curl_easy_reset + every option per transfer)
 *   --slist-shared   one header list built once and reused (default: built per request,
 *                    as the router must, since it forwards client headers)
 *   --watch-per-fd   one uv_poll per socket for the socket's whole life (open/close socket
 *                    callbacks), re-armed only when curl's wish changes, left armed across
 *                    CURL_POLL_REMOVE (default: router/upstream.c — a uv_poll allocated at
 *                    the first wish, uv_poll_start on every wish, closed on REMOVE)
 *   --no-header-cb   no CURLOPT_HEADERFUNCTION (the router needs one; shows its cost)
 *   --no-proxy-env   CURLOPT_PROXY "" : no proxy, so curl stops reading five proxy environment
 *                    variables (getenv) at every transfer
 *   --curlu          the URL given as a parsed CURLU handle (CURLOPT_CURLU) instead of a string
 *
 * Functional probes (one transfer): --stream --pause-ms M pauses the body for M ms with
 * CURL_WRITEFUNC_PAUSE after the first chunk and resumes with curl_easy_pause().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>
#include <sys/socket.h>
#include <uv.h>
#include "common.h"

#define MAX_CONC 4096
#define MAX_FD 65536

struct client;

struct slot {
    struct client *c;
    CURL *easy;
    struct curl_slist *hdrs; /* owned when per-request; NULL when the shared list is used */
    size_t body_bytes;
    int configured; /* --no-reset: constant options already set on this handle */
};

/* a socket curl asked us to watch; freed in its uv close callback */
struct watch {
    uv_poll_t poll;
    curl_socket_t fd;
    struct client *c;
    int armed;  /* events the uv_poll is started with (0 = stopped) */
    int wanted; /* events curl currently asked for (0 after CURL_POLL_REMOVE) */
};

struct client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer, run_timer;
    struct cc_meter meter;
    /* options */
    const char *url, *cafile, *resolve;
    int conc, reset, slist_per_req, watch_per_fd, header_cb, no_proxy_env, use_curlu, stream, verbose;
    long pause_ms, connect_timeout_ms, timeout_ms;
    double warm_secs, secs;
    uint64_t warm_reqs, count;
    /* state */
    CURLU *curlu;
    uint64_t started, done, errors, reqid, t_start;
    uint64_t timer_calls, timer0_calls, poll_events, timer_fires; /* how curl drives the loop, reported at the end */
    int stopping, in_check;
    struct curl_slist *shared_hdrs, *resolve_list;
    struct watch *by_fd[MAX_FD]; /* --watch-per-fd: watch of each open socket */
    struct slot slots[MAX_CONC];
    /* --pause-ms probe */
    uv_timer_t pause_timer;
    int paused_once;
    size_t bytes_at_pause;
    uint64_t pause_t0, pause_t1;
};

static void check_done(struct client *c);

/* ---- the uv <-> curl glue ------------------------------------------------------------ */

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct watch *w = poll->data;
    struct client *c = w->c;
    int flags = 0, running;

    if (c->watch_per_fd) {
        if (w->wanted == 0) {
            /* curl dropped interest (idle keep-alive connection) and we left the poll armed to
             * save the epoll_ctl pair; the peer did something, so stop now. curl's liveness check
             * at reuse time will notice a close. */
            uv_poll_stop(&w->poll);
            w->armed = 0;
            return;
        }
        events &= w->wanted;
    }
    ++c->poll_events;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(c->multi, w->fd, flags, &running);
    check_done(c);
}

static void on_watch_closed(uv_handle_t *h)
{
    free(h->data);
}

static struct watch *watch_new(struct client *c, curl_socket_t fd)
{
    struct watch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->fd = fd;
    w->c = c;
    if (uv_poll_init_socket(c->loop, &w->poll, fd) != 0) {
        free(w);
        return NULL;
    }
    w->poll.data = w;
    return w;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct client *c = userp;
    struct watch *w = socketp;
    int events = 0;

    (void)easy;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;

    if (c->watch_per_fd) {
        if (fd < 0 || fd >= MAX_FD || (w = c->by_fd[fd]) == NULL)
            return what == CURL_POLL_REMOVE ? 0 : -1; /* every socket comes from on_open_socket */
        w->wanted = what == CURL_POLL_REMOVE ? 0 : events;
        /* uv_poll_start is an epoll_ctl DEL + ADD even when nothing changes: only re-arm on change,
         * and keep the poll armed across REMOVE (see on_poll) */
        if (w->wanted != 0 && w->wanted != w->armed) {
            uv_poll_start(&w->poll, w->wanted, on_poll);
            w->armed = w->wanted;
        }
        return 0;
    }

    /* router/upstream.c's way */
    if (what == CURL_POLL_REMOVE) {
        if (w != NULL) {
            uv_poll_stop(&w->poll);
            uv_close((uv_handle_t *)&w->poll, on_watch_closed);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (w == NULL) {
        if ((w = watch_new(c, fd)) == NULL)
            return -1;
        curl_multi_assign(c->multi, fd, w);
    }
    uv_poll_start(&w->poll, events, on_poll);
    return 0;
}

static curl_socket_t on_open_socket(void *userp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    struct client *c = userp;
    curl_socket_t fd;
    struct watch *w;

    (void)purpose;
    if ((fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol)) < 0)
        return CURL_SOCKET_BAD;
    if (fd >= MAX_FD || (w = watch_new(c, fd)) == NULL) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    c->by_fd[fd] = w;
    return fd;
}

static int on_close_socket(void *userp, curl_socket_t fd)
{
    struct client *c = userp;
    struct watch *w = fd >= 0 && fd < MAX_FD ? c->by_fd[fd] : NULL;

    if (w != NULL) {
        /* stop before close(2): libuv must not poll a closed descriptor */
        uv_poll_stop(&w->poll);
        uv_close((uv_handle_t *)&w->poll, on_watch_closed);
        c->by_fd[fd] = NULL;
    }
    return close(fd);
}

static void on_curl_timer(uv_timer_t *timer)
{
    struct client *c = timer->data;
    int running;

    ++c->timer_fires;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    struct client *c = userp;

    (void)multi;
    ++c->timer_calls;
    if (timeout_ms == 0)
        ++c->timer0_calls;
    if (timeout_ms < 0)
        uv_timer_stop(&c->curl_timer);
    else /* 0 = as soon as possible; curl must not be re-entered from here */
        uv_timer_start(&c->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- one transfer -------------------------------------------------------------------- */

static size_t on_header(char *buf, size_t size, size_t n, void *userp)
{
    /* a proxy looks at every header line; the cost measured is curl parsing it and calling us */
    (void)buf;
    (void)userp;
    return size * n;
}

static void on_pause_timer(uv_timer_t *t)
{
    struct slot *s = t->data;
    s->c->pause_t1 = cc_now_us();
    curl_easy_pause(s->easy, CURLPAUSE_CONT);
}

static size_t on_body(char *buf, size_t size, size_t n, void *userp)
{
    struct slot *s = userp;
    struct client *c = s->c;

    (void)buf;
    if (c->pause_ms > 0 && !c->paused_once) {
        /* the body chunk is kept by curl and delivered again after curl_easy_pause(CONT) */
        c->paused_once = 1;
        c->bytes_at_pause = s->body_bytes;
        c->pause_t0 = cc_now_us();
        c->pause_timer.data = s;
        uv_timer_start(&c->pause_timer, on_pause_timer, (uint64_t)c->pause_ms, 0);
        return CURL_WRITEFUNC_PAUSE;
    }
    s->body_bytes += size * n;
    return size * n;
}

static struct curl_slist *build_headers(struct client *c, uint64_t id)
{
    struct curl_slist *l = NULL, *n;
    char line[64];
    static const char *const fixed[] = {"Content-Type: application/json", "User-Agent: " BENCH_USER_AGENT, "Expect:", "Accept:",
                                        "api-key: " BENCH_API_KEY, NULL};
    size_t i;

    (void)c;
    snprintf(line, sizeof(line), "x-request-id: %016llx", (unsigned long long)id);
    if ((l = curl_slist_append(NULL, line)) == NULL)
        return NULL;
    for (i = 0; fixed[i] != NULL; ++i) {
        if ((n = curl_slist_append(l, fixed[i])) == NULL) {
            curl_slist_free_all(l);
            return NULL;
        }
        l = n;
    }
    return l;
}

/* the options that are the same for every transfer */
static void set_constant_options(struct client *c, struct slot *s)
{
    CURL *e = s->easy;

    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (c->header_cb) {
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->cafile != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cafile);
    if (c->resolve_list != NULL)
        curl_easy_setopt(e, CURLOPT_RESOLVE, c->resolve_list);
    if (c->watch_per_fd) {
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
    }
    if (c->no_proxy_env)
        curl_easy_setopt(e, CURLOPT_PROXY, "");
    if (c->verbose)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
}

static int start_one(struct client *c, struct slot *s)
{
    const char *body = c->stream ? CHAT_STREAM_BODY : CHAT_BODY;

    if (s->easy == NULL && (s->easy = curl_easy_init()) == NULL)
        return -1;
    if (c->reset) {
        curl_easy_reset(s->easy);
        set_constant_options(c, s);
    } else if (!s->configured) {
        set_constant_options(c, s);
        s->configured = 1;
    }
    /* what changes per request in a proxy: target URL, body, header list, owner */
    if (c->use_curlu)
        curl_easy_setopt(s->easy, CURLOPT_CURLU, c->curlu);
    else
        curl_easy_setopt(s->easy, CURLOPT_URL, c->url);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    if (c->slist_per_req) {
        if ((s->hdrs = build_headers(c, ++c->reqid)) == NULL)
            return -1;
        curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->hdrs);
    } else {
        curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, c->shared_hdrs);
    }
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
    s->body_bytes = 0;
    if (curl_multi_add_handle(c->multi, s->easy) != CURLM_OK)
        return -1;
    ++c->started;
    return 0;
}

static int want_more(struct client *c)
{
    if (c->stopping)
        return 0;
    if (c->count != 0 && c->started >= c->warm_reqs + c->count)
        return 0;
    return 1;
}

static void stop(struct client *c)
{
    if (c->meter.running)
        cc_meter_end(&c->meter, c->done, c->errors);
    c->stopping = 1;
    uv_stop(c->loop);
}

static void on_run_timer(uv_timer_t *t)
{
    struct client *c = t->data;

    if (!c->meter.running && !c->meter.finished) {
        cc_meter_begin(&c->meter, c->done, c->errors);
        uv_timer_start(&c->run_timer, on_run_timer, (uint64_t)(c->secs * 1000), 0);
        return;
    }
    stop(c);
}

static void finish_one(struct client *c, struct slot *s, CURLcode result)
{
    long status = 0;

    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    if (result != CURLE_OK || status != 200) {
        ++c->errors;
        if (c->errors <= 5)
            fprintf(stderr, "curl_client: transfer failed: %s, status %ld\n", curl_easy_strerror(result), status);
    }
    ++c->done;
    if (c->pause_ms > 0 || c->count == 1)
        fprintf(stderr, "curl_client: status %ld, %zu body bytes, result %s, after %.0f ms\n", status, s->body_bytes,
                curl_easy_strerror(result), (cc_now_us() - c->t_start) / 1000.0);
    if (s->hdrs != NULL) {
        curl_slist_free_all(s->hdrs);
        s->hdrs = NULL;
    }
    /* the window: after warm_reqs completions (count mode) */
    if (c->count != 0) {
        if (!c->meter.running && !c->meter.finished && c->done >= c->warm_reqs)
            cc_meter_begin(&c->meter, c->done, c->errors);
        if (c->meter.running && c->done - c->meter.done0 >= c->count) {
            stop(c);
            return;
        }
    }
    if (want_more(c) && start_one(c, s) != 0) {
        fprintf(stderr, "curl_client: cannot start a transfer\n");
        stop(c);
    }
}

static void check_done(struct client *c)
{
    CURLMsg *msg;
    int left;

    if (c->in_check)
        return;
    c->in_check = 1;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        struct slot *s = NULL;
        CURLcode result;
        if (msg->msg != CURLMSG_DONE)
            continue;
        result = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        curl_multi_remove_handle(c->multi, msg->easy_handle);
        finish_one(c, s, result);
    }
    c->in_check = 0;
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: curl_client [-p PORT | -u URL] [-c CONC] [-d SECS] [-w WARM_SECS] [-n COUNT] [-W WARM_REQS]\n"
            "                   [--no-reset] [--slist-shared] [--watch-per-fd] [--no-header-cb] [--no-proxy-env] [--curlu]\n"
            "                   [--connect-timeout MS] [--timeout MS] [--cafile FILE] [--resolve HOST:PORT:ADDR]\n"
            "                   [--stream] [--pause-ms MS] [-v]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct client cl;
    struct client *c = &cl;
    static char urlbuf[256];
    int port = 19101, i, opt;
    char variant[160];
    enum { O_NORESET = 256, O_SLIST, O_WATCH, O_NOHDR, O_NOPROXY, O_CURLU, O_CTO, O_TO, O_CAFILE, O_RESOLVE, O_STREAM, O_PAUSE };
    static const struct option longopts[] = {{"no-reset", no_argument, NULL, O_NORESET},
                                             {"slist-shared", no_argument, NULL, O_SLIST},
                                             {"watch-per-fd", no_argument, NULL, O_WATCH},
                                             {"no-header-cb", no_argument, NULL, O_NOHDR},
                                             {"no-proxy-env", no_argument, NULL, O_NOPROXY},
                                             {"curlu", no_argument, NULL, O_CURLU},
                                             {"connect-timeout", required_argument, NULL, O_CTO},
                                             {"timeout", required_argument, NULL, O_TO},
                                             {"cafile", required_argument, NULL, O_CAFILE},
                                             {"resolve", required_argument, NULL, O_RESOLVE},
                                             {"stream", no_argument, NULL, O_STREAM},
                                             {"pause-ms", required_argument, NULL, O_PAUSE},
                                             {NULL, 0, NULL, 0}};

    c->conc = 64;
    c->secs = 10;
    c->warm_secs = 1;
    c->warm_reqs = 1000;
    c->reset = 1;
    c->slist_per_req = 1;
    c->header_cb = 1;
    c->connect_timeout_ms = 5000;
    c->timeout_ms = 60000;
    while ((opt = getopt_long(argc, argv, "p:u:c:d:w:n:W:v", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'u': c->url = optarg; break;
        case 'c': c->conc = atoi(optarg); break;
        case 'd': c->secs = atof(optarg); break;
        case 'w': c->warm_secs = atof(optarg); break;
        case 'n': c->count = strtoull(optarg, NULL, 10); break;
        case 'W': c->warm_reqs = strtoull(optarg, NULL, 10); break;
        case 'v': c->verbose = 1; break;
        case O_NORESET: c->reset = 0; break;
        case O_SLIST: c->slist_per_req = 0; break;
        case O_WATCH: c->watch_per_fd = 1; break;
        case O_NOHDR: c->header_cb = 0; break;
        case O_NOPROXY: c->no_proxy_env = 1; break;
        case O_CURLU: c->use_curlu = 1; break;
        case O_CTO: c->connect_timeout_ms = atol(optarg); break;
        case O_TO: c->timeout_ms = atol(optarg); break;
        case O_CAFILE: c->cafile = optarg; break;
        case O_RESOLVE: c->resolve = optarg; break;
        case O_STREAM: c->stream = 1; break;
        case O_PAUSE: c->pause_ms = atol(optarg); break;
        default: usage();
        }
    }
    if (c->conc < 1 || c->conc > MAX_CONC)
        usage();
    if (c->url == NULL) {
        snprintf(urlbuf, sizeof(urlbuf), "http://127.0.0.1:%d" CHAT_PATH, port);
        c->url = urlbuf;
    }
    if (c->count == 1 || c->pause_ms > 0) { /* functional probe: one transfer, no warm-up */
        c->conc = 1;
        c->count = 1;
        c->warm_reqs = 0;
    }
    if (c->count == 0)
        c->warm_reqs = 0;
    snprintf(variant, sizeof(variant), "%s,%s,%s%s", c->reset ? "reset" : "noreset", c->slist_per_req ? "slist-per-req" : "slist-shared",
             c->watch_per_fd ? "watch-per-fd" : "watch-per-add", c->header_cb ? "" : ",no-header-cb");
    if (c->no_proxy_env)
        strcat(variant, ",no-proxy-env");
    if (c->use_curlu)
        strcat(variant, ",curlu");

    curl_global_init(CURL_GLOBAL_DEFAULT);
    c->loop = uv_default_loop();
    c->multi = curl_multi_init();
    uv_timer_init(c->loop, &c->curl_timer);
    c->curl_timer.data = c;
    uv_timer_init(c->loop, &c->run_timer);
    c->run_timer.data = c;
    uv_timer_init(c->loop, &c->pause_timer);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 1024L);
    if (c->use_curlu && ((c->curlu = curl_url()) == NULL || curl_url_set(c->curlu, CURLUPART_URL, c->url, 0) != CURLUE_OK)) {
        fprintf(stderr, "curl_client: bad URL\n");
        return 2;
    }
    if (c->resolve != NULL)
        c->resolve_list = curl_slist_append(NULL, c->resolve);
    if (!c->slist_per_req)
        c->shared_hdrs = build_headers(c, 1);

    c->t_start = cc_now_us();
    for (i = 0; i != c->conc; ++i) {
        c->slots[i].c = c;
        if (start_one(c, &c->slots[i]) != 0) {
            fprintf(stderr, "curl_client: cannot start a transfer\n");
            return 1;
        }
    }
    if (c->count == 0) /* timed: warm-up, then the window */
        uv_timer_start(&c->run_timer, on_run_timer, (uint64_t)(c->warm_secs * 1000), 0);
    else if (c->warm_reqs == 0)
        cc_meter_begin(&c->meter, 0, 0);
    uv_run(c->loop, UV_RUN_DEFAULT);

    if (c->meter.finished) {
        cc_meter_report(&c->meter, "curl", variant, c->conc);
        fprintf(stderr,
                "curl_client: over the whole run, %llu transfers: curl set its timer %llu times (%llu with 0 ms), the timer fired "
                "%llu times, %llu socket events\n",
                (unsigned long long)c->done, (unsigned long long)c->timer_calls, (unsigned long long)c->timer0_calls,
                (unsigned long long)c->timer_fires, (unsigned long long)c->poll_events);
    }

    /* teardown: transfers still in flight are abandoned */
    for (i = 0; i != c->conc; ++i) {
        if (c->slots[i].easy != NULL) {
            curl_multi_remove_handle(c->multi, c->slots[i].easy);
            curl_easy_cleanup(c->slots[i].easy);
        }
        curl_slist_free_all(c->slots[i].hdrs);
    }
    curl_multi_cleanup(c->multi);
    curl_slist_free_all(c->shared_hdrs);
    curl_slist_free_all(c->resolve_list);
    if (c->curlu != NULL)
        curl_url_cleanup(c->curlu);
    uv_close((uv_handle_t *)&c->curl_timer, NULL);
    uv_close((uv_handle_t *)&c->run_timer, NULL);
    uv_close((uv_handle_t *)&c->pause_timer, NULL);
    uv_run(c->loop, UV_RUN_DEFAULT);
    if (c->pause_ms > 0 && c->pause_t1 != 0)
        fprintf(stderr, "curl_client: paused at %zu bytes for %.1f ms, then resumed\n", c->bytes_at_pause,
                (c->pause_t1 - c->pause_t0) / 1000.0);
    else if (c->pause_ms > 0)
        fprintf(stderr, "curl_client: paused at %zu bytes, never resumed: the transfer ended first\n", c->bytes_at_pause);
    curl_global_cleanup();
    return c->errors != 0 && c->done == c->errors ? 1 : 0;
}
