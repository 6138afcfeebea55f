/* quota.c — see quota.h */
#include <string.h>
#include "config.h"
#include "quota.h"

const char *aor_quota_limit_name(enum aor_quota_limit l)
{
    switch (l) {
    case AOR_LIMIT_TPM:
        return "tpm";
    case AOR_LIMIT_RPM:
        return "rpm";
    case AOR_LIMIT_DAY:
        return "day";
    case AOR_LIMIT_MONTH:
        return "month";
    case AOR_LIMIT_DEPLOYMENT:
        return "deployment";
    default:
        return "";
    }
}

int aor_quota_parse_value(const char *s, size_t len, int64_t *out)
{
    int64_t v = 0;
    size_t i;

    if (s == NULL)
        return 0;
    if (len == 2 && s[0] == '-' && s[1] == '1') {
        *out = AOR_QUOTA_UNLIMITED;
        return 1;
    }
    if (len == 0 || len > 15)
        return 0;
    for (i = 0; i != len; ++i) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static const struct aor_tenant_conf *config_tenant(const struct aor_config *conf, const char *tenant)
{
    const struct aor_tenant_conf *def = NULL;
    size_t i;

    if (conf == NULL)
        return NULL;
    for (i = 0; i != conf->num_tenants; ++i) {
        if (tenant != NULL && strcmp(conf->tenants[i].name, tenant) == 0)
            return &conf->tenants[i];
        if (strcmp(conf->tenants[i].name, "default") == 0)
            def = &conf->tenants[i];
    }
    return def;
}

/* a comma list of names into q->deployments without blanks; 0, or -1 when empty or too long */
static int set_list(struct aor_quota *q, const char *s, size_t len)
{
    size_t i, n = 0;

    for (i = 0; i != len; ++i) {
        char c = s[i];
        if (c == ' ' || c == '\t')
            continue;
        if ((unsigned char)c < 0x21 || c == 0x7f || n + 1 >= sizeof(q->deployments))
            return -1;
        q->deployments[n++] = c;
    }
    q->deployments[n] = '\0';
    for (i = 0; i != n; ++i)
        if (q->deployments[i] != ',')
            return 0;
    return -1; /* nothing but commas: no name */
}

/* `s` is `word` (ASCII letters in any case) */
static int is_word(const char *s, size_t len, const char *word)
{
    size_t i;

    if (len != strlen(word))
        return 0;
    for (i = 0; i != len; ++i) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != word[i])
            return 0;
    }
    return 1;
}

unsigned aor_quota_resolve(const struct aor_config *conf, const char *tenant, const struct aor_quota_fields *f, struct aor_quota *q)
{
    const struct aor_tenant_conf *t = config_tenant(conf, tenant);
    unsigned bad = 0;
    size_t i;

    q->tpm = t != NULL ? t->tpm : AOR_QUOTA_UNLIMITED;
    q->rpm = t != NULL ? t->rpm : AOR_QUOTA_UNLIMITED;
    q->day = t != NULL ? t->tokens_per_day : AOR_QUOTA_UNLIMITED;
    q->month = t != NULL ? t->tokens_per_month : AOR_QUOTA_UNLIMITED;
    q->disabled = 0;
    q->all_deployments = 1;
    q->deployments[0] = '\0';
    q->unset = 31u & ~(t != NULL ? t->named : 0u);
    if (t != NULL && t->deployments != NULL) {
        size_t n = 0;
        for (i = 0; i != t->num_deployments; ++i) {
            size_t l = strlen(t->deployments[i]);
            if (n + l + 2 > sizeof(q->deployments))
                break;
            if (n != 0)
                q->deployments[n++] = ',';
            memcpy(q->deployments + n, t->deployments[i], l);
            n += l;
        }
        q->deployments[n] = '\0';
        q->all_deployments = 0;
        q->unset &= ~16u;
    }
    if (f == NULL)
        return 0;
#define FIELD(name, dst, bit)                                                                                                      \
    if (f->name != NULL) {                                                                                                         \
        if (aor_quota_parse_value(f->name, f->name##_len, &q->dst))                                                                \
            q->unset &= ~(unsigned)bit;                                                                                            \
        else                                                                                                                       \
            bad |= bit;                                                                                                            \
    }
    FIELD(tpm, tpm, 1)
    FIELD(rpm, rpm, 2)
    FIELD(day, day, 4)
    FIELD(month, month, 8)
#undef FIELD
    if (f->deployments != NULL) {
        struct aor_quota saved = *q;
        if (set_list(q, f->deployments, f->deployments_len) == 0) {
            q->all_deployments = 0;
            q->unset &= ~16u;
        } else {
            memcpy(q->deployments, saved.deployments, sizeof(q->deployments));
            bad |= 16;
        }
    }
    if (f->disabled != NULL) {
        /* a kill switch fails closed, the rule of aor_apikey_flag_set: anything but empty, 0, false, no disables */
        if (is_word(f->disabled, f->disabled_len, "") || is_word(f->disabled, f->disabled_len, "0") ||
            is_word(f->disabled, f->disabled_len, "false") || is_word(f->disabled, f->disabled_len, "no")) {
            q->disabled = 0;
        } else {
            q->disabled = 1;
            if (!is_word(f->disabled, f->disabled_len, "1") && !is_word(f->disabled, f->disabled_len, "true") &&
                !is_word(f->disabled, f->disabled_len, "yes") && !is_word(f->disabled, f->disabled_len, "on"))
                bad |= 32;
        }
    }
    return bad;
}

unsigned aor_quota_layer_parse(const struct aor_quota_fields *f, struct aor_quota_layer *out)
{
    struct aor_quota q;
    unsigned bad = 0;

    memset(out, 0, sizeof(*out));
    if (f == NULL)
        return 0;
#define FIELD(name, bit)                                                                                                           \
    if (f->name != NULL) {                                                                                                         \
        if (aor_quota_parse_value(f->name, f->name##_len, &out->name))                                                             \
            out->have |= bit;                                                                                                      \
        else                                                                                                                       \
            bad |= bit;                                                                                                            \
    }
    FIELD(tpm, 1)
    FIELD(rpm, 2)
    FIELD(day, 4)
    FIELD(month, 8)
#undef FIELD
    if (f->deployments != NULL) {
        if (set_list(&q, f->deployments, f->deployments_len) == 0) {
            memcpy(out->deployments, q.deployments, sizeof(out->deployments));
            out->have |= 16;
        } else {
            bad |= 16;
        }
    }
    return bad;
}

void aor_quota_fill(struct aor_quota *q, const struct aor_quota_layer *d)
{
    unsigned give;

    if (d == NULL || (give = q->unset & d->have) == 0)
        return;
    if (give & 1)
        q->tpm = d->tpm;
    if (give & 2)
        q->rpm = d->rpm;
    if (give & 4)
        q->day = d->day;
    if (give & 8)
        q->month = d->month;
    if (give & 16) {
        memcpy(q->deployments, d->deployments, sizeof(q->deployments));
        q->all_deployments = 0;
    }
    q->unset &= ~give;
}

void aor_quota_limits(const struct aor_quota *q, const struct aor_quota_layer *d, int64_t out[4])
{
    unsigned give = d != NULL ? q->unset & d->have : 0;

    out[0] = give & 1 ? d->tpm : q->tpm;
    out[1] = give & 2 ? d->rpm : q->rpm;
    out[2] = give & 4 ? d->day : q->day;
    out[3] = give & 8 ? d->month : q->month;
}

int64_t aor_quota_default_max_tokens(const struct aor_config *conf, const char *tenant)
{
    const struct aor_tenant_conf *t = config_tenant(conf, tenant);
    return t != NULL ? t->default_max_tokens : 0;
}

int aor_quota_deployment_allowed(const struct aor_quota *q, const char *deployment)
{
    size_t dl = strlen(deployment);
    const char *p = q->deployments;

    if (q->all_deployments || dl == 0)
        return 1;
    while (*p != '\0') {
        const char *e = strchr(p, ',');
        size_t l = e != NULL ? (size_t)(e - p) : strlen(p);
        if (l == dl && memcmp(p, deployment, dl) == 0)
            return 1;
        if (e == NULL)
            break;
        p = e + 1;
    }
    return 0;
}

enum aor_quota_limit aor_quota_forbidden(const struct aor_quota *q, const char *deployment)
{
    if (q->disabled || q->tpm == 0 || q->rpm == 0 || q->day == 0 || q->month == 0 || !aor_quota_deployment_allowed(q, deployment))
        return AOR_LIMIT_DEPLOYMENT;
    return AOR_LIMIT_NONE;
}

/* days since 1970-01-01 of a civil date (proleptic Gregorian), and back */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t era;
    unsigned doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_digits(char *p, int64_t v, int n)
{
    while (n-- > 0) {
        p[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

void aor_quota_windows(int64_t now_ms, struct aor_quota_windows *w)
{
    /* every request asks for this minute and its reserved buckets' past minutes: a few entries
     * per thread, keyed by the minute, spare the calendar arithmetic (~1,100 instructions a
     * request under load, callgrind) */
    static __thread struct {
        int64_t key; /* minute_id + 1; 0 = empty */
        struct aor_quota_windows w;
    } cache[4];
    int64_t secs = now_ms >= 0 ? now_ms / 1000 : 0, days = secs / 86400, y;
    unsigned m, d, hh = (unsigned)(secs % 86400 / 3600), mm = (unsigned)(secs % 3600 / 60);
    size_t slot = (size_t)(secs / 60) % 4;

    if (cache[slot].key == secs / 60 + 1) {
        *w = cache[slot].w;
        return;
    }

    civil_from_days(days, &y, &m, &d);
    put_digits(w->minute, y, 4);
    put_digits(w->minute + 4, m, 2);
    put_digits(w->minute + 6, d, 2);
    put_digits(w->minute + 8, hh, 2);
    put_digits(w->minute + 10, mm, 2);
    w->minute[12] = '\0';
    memcpy(w->day, w->minute, 8);
    w->day[8] = '\0';
    memcpy(w->month, w->minute, 6);
    w->month[6] = '\0';
    w->minute_id = secs / 60;
    w->day_id = days;
    w->month_id = y * 12 + (m - 1);
    w->minute_end_ms = (w->minute_id + 1) * 60000;
    w->day_end_ms = (days + 1) * 86400000;
    w->month_end_ms = days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) * 86400000;
    cache[slot].key = w->minute_id + 1;
    cache[slot].w = *w;
}

int64_t aor_quota_retry_after(int64_t now_ms, int64_t end_ms)
{
    int64_t s = end_ms > now_ms ? (end_ms - now_ms + 999) / 1000 : 1;
    return s < 1 ? 1 : s;
}

static void roll(struct aor_quota_counters *c, const struct aor_quota_windows *w)
{
    if (c->minute_id != w->minute_id) {
        c->minute_id = w->minute_id;
        c->minute_tokens = c->minute_requests = 0;
    }
    if (c->day_id != w->day_id) {
        c->day_id = w->day_id;
        c->day_tokens = 0;
    }
    if (c->month_id != w->month_id) {
        c->month_id = w->month_id;
        c->month_tokens = 0;
    }
}

enum aor_quota_limit aor_quota_local_reserve(struct aor_quota_counters *c, const struct aor_quota *q,
                                             const struct aor_quota_windows *w, int64_t now_ms, int64_t estimate,
                                             int64_t *remaining_tokens, int64_t *remaining_requests, int64_t *retry_after_s)
{
    enum aor_quota_limit l = AOR_LIMIT_NONE;
    int64_t end = 0;

    if (estimate < 0)
        estimate = 0;
    roll(c, w);
    /* the longest window first: its end is when the request can pass at the earliest */
    if (q->month >= 0 && c->month_tokens + estimate > q->month)
        l = AOR_LIMIT_MONTH, end = w->month_end_ms;
    else if (q->day >= 0 && c->day_tokens + estimate > q->day)
        l = AOR_LIMIT_DAY, end = w->day_end_ms;
    else if (q->tpm >= 0 && c->minute_tokens + estimate > q->tpm)
        l = AOR_LIMIT_TPM, end = w->minute_end_ms;
    else if (q->rpm >= 0 && c->minute_requests + 1 > q->rpm)
        l = AOR_LIMIT_RPM, end = w->minute_end_ms;
    if (l != AOR_LIMIT_NONE) {
        *retry_after_s = aor_quota_retry_after(now_ms, end);
        return l;
    }
    c->minute_tokens += estimate;
    c->minute_requests += 1;
    c->day_tokens += estimate;
    c->month_tokens += estimate;
    *remaining_tokens = q->tpm >= 0 ? q->tpm - c->minute_tokens : -1;
    *remaining_requests = q->rpm >= 0 ? q->rpm - c->minute_requests : -1;
    return AOR_LIMIT_NONE;
}

void aor_quota_local_settle(struct aor_quota_counters *c, const struct aor_quota_windows *at, int64_t estimate, int64_t actual)
{
    int64_t delta = actual < 0 ? -estimate : actual - estimate;

    if (estimate < 0)
        estimate = 0, delta = actual < 0 ? 0 : actual;
    if (c->minute_id == at->minute_id) {
        c->minute_tokens += delta;
        if (actual < 0)
            c->minute_requests -= 1;
    }
    if (c->day_id == at->day_id)
        c->day_tokens += delta;
    if (c->month_id == at->month_id)
        c->month_tokens += delta;
}
