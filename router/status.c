/*
 * status.c — see status.h. One pass collects a snapshot (struct view) from the config, the
 * backend state and the tenant records; the JSON (jansson) and HTML renderers read only that.
 * HTML escaping: every string from the config (backend names, regions, deployment names) or a
 * client (tenant names, though their alphabet has nothing to escape) goes through html_text().
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "backend.h"
#include "balancer.h"
#include "config.h"
#include "cred.h"
#include "metrics.h"
#include "status.h"

static int64_t started_ms;

void aor_status_started(int64_t now_ms)
{
    started_ms = now_ms;
}

/* ---- the snapshot ---------------------------------------------------------------------- */

struct dep_view {
    const char *label; /* logical name: the config's string or buf */
    char buf[AOR_BACKEND_DEPLOYMENT_NAME_MAX + 1];
    int cooling;
    int64_t cooling_until_ms;
    int shared; /* the cooldown came from another replica through Redis */
    int64_t remaining_tokens, remaining_requests, tokens_minute, requests_minute;
};

struct backend_view {
    const struct aor_backend_conf *b;
    const char *state; /* "ok", "cooling", "circuit_open", "credential_unavailable" */
    int circuit_open;
    int64_t circuit_open_until_ms;
    int consecutive_failures;
    int credential_ok;
    int64_t credential_expires_in_s; /* -1: no token credential */
    uint64_t failovers;
    struct dep_view *deps;
    size_t num_deps;
};

struct view {
    int64_t now_ms;
    struct backend_view *backends;
    size_t num_backends;
    struct aor_metrics_tenant *tenants; /* sorted, most tokens first */
    size_t num_tenants, shown_tenants;
};

static int by_tokens(const void *a, const void *b)
{
    const struct aor_metrics_tenant *x = a, *y = b;
    if (x->tokens != y->tokens)
        return x->tokens < y->tokens ? 1 : -1;
    return strcmp(x->name, y->name);
}

static void view_free(struct view *v)
{
    size_t i;

    for (i = 0; i != v->num_backends; ++i)
        free(v->backends[i].deps);
    free(v->backends);
    free(v->tenants);
}

static int view_collect(struct view *v, const struct aor_config *conf, int64_t now_ms)
{
    struct aor_backend_deployment_view *lv = NULL;
    size_t i, j, max;

    memset(v, 0, sizeof(*v));
    v->now_ms = now_ms;
    if (conf->num_backends != 0 && (v->backends = calloc(conf->num_backends, sizeof(*v->backends))) == NULL)
        return -1;
    v->num_backends = conf->num_backends;
    for (i = 0; i != conf->num_backends; ++i) {
        const struct aor_backend_conf *b = &conf->backends[i];
        struct backend_view *bv = &v->backends[i];
        size_t n, cooling = 0;

        bv->b = b;
        bv->circuit_open = aor_balancer_circuit_open(b->state, now_ms);
        bv->circuit_open_until_ms = __atomic_load_n(&b->state->circuit_open_until_ms, __ATOMIC_RELAXED);
        bv->consecutive_failures = __atomic_load_n(&b->state->consecutive_failures, __ATOMIC_RELAXED);
        bv->failovers = __atomic_load_n(&b->state->failovers, __ATOMIC_RELAXED);
        bv->credential_ok = aor_cred_usable(b);
        bv->credential_expires_in_s = -1;
        if (b->cred.stats != NULL) {
            int64_t at = __atomic_load_n(&b->cred.stats->expires_at_ms, __ATOMIC_RELAXED);
            bv->credential_expires_in_s = at > now_ms ? (at - now_ms) / 1000 : 0;
        }
        max = aor_backend_max_deployments(b);
        free(lv);
        if ((lv = calloc(max != 0 ? max : 1, sizeof(*lv))) == NULL ||
            (bv->deps = calloc(max != 0 ? max : 1, sizeof(*bv->deps))) == NULL)
            goto fail;
        n = aor_backend_list_deployments(b, lv, max);
        for (j = 0; j != n; ++j) {
            struct dep_view *d = &bv->deps[j];
            const struct aor_deployment_state *st = lv[j].state;
            if (lv[j].label == lv[j].buf) {
                memcpy(d->buf, lv[j].buf, sizeof(d->buf));
                d->label = d->buf;
            } else {
                d->label = lv[j].label;
            }
            d->cooling_until_ms = __atomic_load_n(&st->cooldown_until_ms, __ATOMIC_RELAXED);
            d->cooling = d->cooling_until_ms > now_ms;
            d->shared = __atomic_load_n(&st->cooldown_shared, __ATOMIC_RELAXED);
            d->remaining_tokens = __atomic_load_n(&st->remaining_tokens, __ATOMIC_RELAXED);
            d->remaining_requests = __atomic_load_n(&st->remaining_requests, __ATOMIC_RELAXED);
            aor_balancer_minute_sent(st, now_ms, &d->tokens_minute, &d->requests_minute);
            cooling += d->cooling;
        }
        bv->num_deps = n;
        bv->state = bv->circuit_open     ? "circuit_open"
                    : !bv->credential_ok ? "credential_unavailable"
                    : cooling != 0       ? "cooling"
                                         : "ok";
    }
    free(lv);
    v->tenants = aor_metrics_tenants(now_ms, &v->num_tenants);
    if (v->num_tenants != 0)
        qsort(v->tenants, v->num_tenants, sizeof(*v->tenants), by_tokens);
    v->shown_tenants = v->num_tenants < AOR_STATUS_TOP_TENANTS ? v->num_tenants : AOR_STATUS_TOP_TENANTS;
    return 0;
fail:
    free(lv);
    view_free(v);
    return -1;
}

/* unix ms as 2026-12-07T00:25:44Z (UTC; gmtime_r: no shared buffer) */
static const char *iso_time(int64_t ms, char *buf, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, cap, "%lld", (long long)ms);
    return buf;
}

static const char *const window_names[4] = {"tpm", "rpm", "tokens_per_day", "tokens_per_month"};
static const char *const rejection_names[5] = {"tpm", "rpm", "day", "month", "deployment"};

/* ---- JSON ------------------------------------------------------------------------------ */

static json_t *json_str(const char *s)
{
    json_t *j = json_string(s != NULL ? s : "");
    return j != NULL ? j : json_null(); /* not UTF-8 (libyaml gives UTF-8): null rather than a broken document */
}

static json_t *json_time(int64_t ms)
{
    char buf[40];
    return json_str(iso_time(ms, buf, sizeof(buf)));
}

static char *render_json(const struct view *v, const struct aor_config *conf, size_t *len)
{
    json_t *root = json_object(), *backends = json_array(), *tenants = json_array(), *router = json_object();
    char *out = NULL;
    size_t i, j, k;

    if (root == NULL || backends == NULL || tenants == NULL || router == NULL)
        goto exit;
    json_object_set_new(router, "version", json_str(AOR_VERSION));
    json_object_set_new(router, "commit", json_str(AOR_GIT_COMMIT));
    json_object_set_new(router, "config_generation", json_integer((json_int_t)conf->generation));
    json_object_set_new(router, "config_loaded_at", json_time(conf->loaded_at_ms));
    json_object_set_new(router, "config_loaded_at_ms", json_integer(conf->loaded_at_ms));
    json_object_set_new(router, "started_at", json_time(started_ms));
    json_object_set_new(router, "uptime_s", json_integer((v->now_ms - started_ms) / 1000));
    json_object_set_new(router, "now", json_time(v->now_ms));
    json_object_set_new(router, "now_ms", json_integer(v->now_ms));
    json_object_set_new(router, "max_tenants", json_integer(conf->metrics.max_tenants));
    json_object_set_new(root, "router", router);
    router = NULL;

    for (i = 0; i != v->num_backends; ++i) {
        const struct backend_view *bv = &v->backends[i];
        json_t *b = json_object(), *deps = json_array();
        if (b == NULL || deps == NULL) {
            json_decref(b);
            json_decref(deps);
            goto exit;
        }
        json_object_set_new(b, "name", json_str(bv->b->name));
        json_object_set_new(b, "region", bv->b->region != NULL ? json_str(bv->b->region) : json_null());
        json_object_set_new(b, "provider", json_str(bv->b->provider == AOR_PROVIDER_OPENAI ? "openai" : "azure"));
        json_object_set_new(b, "priority", json_integer(bv->b->priority));
        json_object_set_new(b, "weight", json_integer(bv->b->weight));
        json_object_set_new(b, "state", json_str(bv->state));
        json_object_set_new(b, "circuit_open", json_boolean(bv->circuit_open));
        if (bv->circuit_open) {
            json_object_set_new(b, "circuit_open_until", json_time(bv->circuit_open_until_ms));
            json_object_set_new(b, "circuit_open_until_ms", json_integer(bv->circuit_open_until_ms));
        }
        json_object_set_new(b, "consecutive_failures", json_integer(bv->consecutive_failures));
        json_object_set_new(b, "credential_available", json_boolean(bv->credential_ok));
        if (bv->credential_expires_in_s >= 0)
            json_object_set_new(b, "credential_expires_in_s", json_integer(bv->credential_expires_in_s));
        json_object_set_new(b, "failovers", json_integer((json_int_t)bv->failovers));
        for (j = 0; j != bv->num_deps; ++j) {
            const struct dep_view *d = &bv->deps[j];
            json_t *dj = json_object();
            if (dj == NULL)
                break;
            json_object_set_new(dj, "deployment", json_str(d->label));
            json_object_set_new(dj, "state", json_str(d->cooling ? "cooling" : "ok"));
            if (d->cooling) {
                json_object_set_new(dj, "cooling_until", json_time(d->cooling_until_ms));
                json_object_set_new(dj, "cooling_until_ms", json_integer(d->cooling_until_ms));
                json_object_set_new(dj, "cooling_reason", json_str(d->shared ? "429_shared" : "429"));
            }
            json_object_set_new(dj, "remaining_tokens", json_integer(d->remaining_tokens));
            json_object_set_new(dj, "remaining_requests", json_integer(d->remaining_requests));
            json_object_set_new(dj, "requests_this_minute", json_integer(d->requests_minute));
            json_object_set_new(dj, "tokens_this_minute", json_integer(d->tokens_minute));
            json_array_append_new(deps, dj);
        }
        json_object_set_new(b, "deployments", deps);
        json_array_append_new(backends, b);
    }
    json_object_set_new(root, "backends", backends);
    backends = NULL;

    for (i = 0; i != v->shown_tenants; ++i) {
        const struct aor_metrics_tenant *t = &v->tenants[i];
        json_t *tj = json_object(), *w = json_object(), *rj = json_object();
        if (tj == NULL || w == NULL || rj == NULL) {
            json_decref(tj);
            json_decref(w);
            json_decref(rj);
            goto exit;
        }
        json_object_set_new(tj, "tenant", json_str(t->name));
        json_object_set_new(tj, "tokens", json_integer((json_int_t)t->tokens));
        for (k = 0; t->have_quota && k != 4; ++k) {
            json_t *one = json_object();
            if (one == NULL)
                break;
            json_object_set_new(one, "used", json_integer(t->used[k]));
            json_object_set_new(one, "limit", t->limit[k] >= 0 ? json_integer(t->limit[k]) : json_null());
            json_object_set_new(w, window_names[k], one);
        }
        json_object_set_new(tj, "quota_known", json_boolean(t->have_quota));
        json_object_set_new(tj, "windows", w);
        for (k = 0; k != 5; ++k)
            json_object_set_new(rj, rejection_names[k], json_integer((json_int_t)t->rejections[k]));
        json_object_set_new(tj, "rejections", rj);
        json_array_append_new(tenants, tj);
    }
    json_object_set_new(root, "tenants", tenants);
    tenants = NULL;
    json_object_set_new(root, "tenants_tracked", json_integer((json_int_t)v->num_tenants));
    if ((out = json_dumps(root, JSON_INDENT(1) | JSON_ENSURE_ASCII)) != NULL)
        *len = strlen(out);
exit:
    json_decref(root);
    json_decref(backends);
    json_decref(tenants);
    json_decref(router);
    return out;
}

/* ---- HTML ------------------------------------------------------------------------------ */

struct out {
    char *buf;
    size_t len, cap;
    int failed;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->failed)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = (o->cap + n) * 2;
        char *b = realloc(o->buf, cap);
        if (b == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

static void __attribute__((format(printf, 2, 3))) putf(struct out *o, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        o->failed = 1; /* only numbers and fixed words come through here */
        return;
    }
    put(o, tmp, (size_t)n);
}

/* `s` as HTML text or attribute value: & < > " ' escaped */
static void html_text(struct out *o, const char *s)
{
    const char *run = s;

    for (; s != NULL && *s != '\0'; ++s) {
        const char *rep = NULL;
        switch (*s) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#39;";
            break;
        default:
            continue;
        }
        put(o, run, (size_t)(s - run));
        put(o, rep, strlen(rep));
        run = s + 1;
    }
    if (s != NULL)
        put(o, run, (size_t)(s - run));
}

static void html_num(struct out *o, int64_t v)
{
    if (v < 0)
        PUTS(o, "&ndash;");
    else
        putf(o, "%lld", (long long)v);
}

static void html_td_text(struct out *o, const char *s)
{
    PUTS(o, "<td>");
    html_text(o, s);
    PUTS(o, "</td>");
}

static void html_td_num(struct out *o, int64_t v)
{
    PUTS(o, "<td class=n>");
    html_num(o, v);
    PUTS(o, "</td>");
}

static const char html_head[] = "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\n"
                                "<meta name=viewport content=\"width=device-width, initial-scale=1\">\n"
                                "<title>aoai-router status</title>\n"
                                "<style>\n"
                                "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\n"
                                "h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\n"
                                "table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\n"
                                "th,td{padding:.3em .7em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}\n"
                                "th{background:#f0f0f0;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
                                ".ok{color:#176c2e;font-weight:600}.cooling{color:#9a6700;font-weight:600}\n"
                                ".circuit_open,.credential_unavailable,.over{color:#b42318;font-weight:600}\n"
                                ".meta{color:#555}.meta b{color:#222}\n"
                                "</style>\n";

/* "used / limit" of one window, marked when at or above 90 % */
static void html_window(struct out *o, const struct aor_metrics_tenant *t, int k)
{
    if (!t->have_quota) {
        PUTS(o, "<td class=n>&ndash;</td>");
        return;
    }
    if (t->limit[k] > 0 && t->used[k] * 10 >= t->limit[k] * 9)
        PUTS(o, "<td class=\"n over\">");
    else
        PUTS(o, "<td class=n>");
    putf(o, "%lld / ", (long long)t->used[k]);
    if (t->limit[k] < 0)
        PUTS(o, "unlimited");
    else
        putf(o, "%lld", (long long)t->limit[k]);
    PUTS(o, "</td>");
}

static char *render_html(const struct view *v, const struct aor_config *conf, size_t *len)
{
    struct out o = {malloc(16384), 0, 16384, 0};
    char t1[40], t2[40], t3[40];
    size_t i, j;
    int64_t up = (v->now_ms - started_ms) / 1000;

    if (o.buf == NULL)
        return NULL;
    o.buf[0] = '\0';
    PUTS(&o, html_head);
    putf(&o, "<meta http-equiv=refresh content=\"%d\">\n</head><body>\n", AOR_STATUS_REFRESH_S);
    PUTS(&o, "<h1>aoai-router status</h1>\n<p class=meta>");
    putf(&o, "version <b>%s</b> (", AOR_VERSION);
    html_text(&o, AOR_GIT_COMMIT);
    putf(&o,
         ") &middot; up <b id=uptime>%lldd %02lldh %02lldm %02llds</b> &middot; config generation <b id=generation>%llu</b> "
         "loaded <b>%s</b> &middot; now %s &middot; refreshes every %d s</p>\n",
         (long long)(up / 86400), (long long)(up % 86400 / 3600), (long long)(up % 3600 / 60), (long long)(up % 60),
         (unsigned long long)conf->generation, iso_time(conf->loaded_at_ms, t1, sizeof(t1)), iso_time(v->now_ms, t2, sizeof(t2)),
         AOR_STATUS_REFRESH_S);

    PUTS(&o, "<h2>Backends</h2>\n<table id=backends>\n<tr><th>backend</th><th>region</th><th>priority</th><th>weight</th>"
             "<th>deployment</th><th>state</th><th>remaining tokens</th><th>remaining requests</th>"
             "<th>requests this minute</th><th>tokens this minute</th><th>failovers</th></tr>\n");
    for (i = 0; i != v->num_backends; ++i) {
        const struct backend_view *bv = &v->backends[i];
        size_t rows = bv->num_deps != 0 ? bv->num_deps : 1;
        for (j = 0; j != rows; ++j) {
            const struct dep_view *d = bv->num_deps != 0 ? &bv->deps[j] : NULL;
            const char *state = bv->circuit_open          ? "circuit_open"
                                : !bv->credential_ok      ? "credential_unavailable"
                                : d != NULL && d->cooling ? "cooling"
                                                          : "ok";
            PUTS(&o, "<tr>");
            html_td_text(&o, bv->b->name);
            html_td_text(&o, bv->b->region != NULL ? bv->b->region : "");
            html_td_num(&o, bv->b->priority);
            html_td_num(&o, bv->b->weight);
            html_td_text(&o, d != NULL ? d->label : "");
            putf(&o, "<td class=%s>", state);
            if (strcmp(state, "circuit_open") == 0)
                putf(&o, "circuit open until %s (%d consecutive failures)", iso_time(bv->circuit_open_until_ms, t3, sizeof(t3)),
                     bv->consecutive_failures);
            else if (strcmp(state, "credential_unavailable") == 0)
                PUTS(&o, "credential unavailable");
            else if (strcmp(state, "cooling") == 0)
                putf(&o, "cooling down until %s (%s)", iso_time(d->cooling_until_ms, t3, sizeof(t3)),
                     d->shared ? "429 seen by another replica" : "429 from the backend");
            else
                PUTS(&o, "ok");
            PUTS(&o, "</td>");
            html_td_num(&o, d != NULL ? d->remaining_tokens : -1);
            html_td_num(&o, d != NULL ? d->remaining_requests : -1);
            html_td_num(&o, d != NULL ? d->requests_minute : -1);
            html_td_num(&o, d != NULL ? d->tokens_minute : -1);
            html_td_num(&o, (int64_t)bv->failovers);
            PUTS(&o, "</tr>\n");
        }
    }
    PUTS(&o, "</table>\n");

    putf(&o,
         "<h2>Tenants</h2>\n<p class=meta>%zu of %zu tracked tenants, most tokens first (at most %d shown; after "
         "metrics.max_tenants = %u tenants, the rest count as &quot;other&quot;)</p>\n",
         v->shown_tenants, v->num_tenants, AOR_STATUS_TOP_TENANTS, conf->metrics.max_tenants);
    PUTS(&o, "<table id=tenants>\n<tr><th>tenant</th><th>tokens</th><th>tpm (this minute)</th><th>rpm (this minute)</th>"
             "<th>tokens today</th><th>tokens this month</th><th>rejections</th></tr>\n");
    for (i = 0; i != v->shown_tenants; ++i) {
        const struct aor_metrics_tenant *t = &v->tenants[i];
        uint64_t rej = 0;
        int k, first = 1;
        PUTS(&o, "<tr>");
        html_td_text(&o, t->name);
        html_td_num(&o, (int64_t)t->tokens);
        for (k = 0; k != 4; ++k)
            html_window(&o, t, k);
        PUTS(&o, "<td>");
        for (k = 0; k != 5; ++k) {
            rej += t->rejections[k];
            if (t->rejections[k] != 0) {
                putf(&o, "%s%s %llu", first ? "" : ", ", rejection_names[k], (unsigned long long)t->rejections[k]);
                first = 0;
            }
        }
        if (rej == 0)
            PUTS(&o, "0");
        PUTS(&o, "</td></tr>\n");
    }
    PUTS(&o, "</table>\n<p class=meta>Also: <a href=\"/status.json\">/status.json</a> &middot; "
             "<a href=\"/metrics\">/metrics</a></p>\n</body></html>\n");
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}

char *aor_status_render(const struct aor_config *conf, int64_t now_ms, int html, size_t *len)
{
    struct view v;
    char *out;

    if (view_collect(&v, conf, now_ms) != 0)
        return NULL;
    out = html ? render_html(&v, conf, len) : render_json(&v, conf, len);
    view_free(&v);
    return out;
}
