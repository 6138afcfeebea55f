/*
 * admit.c — see admit.h.
 *
 * Redis layout (SPEC §6; every key of one tenant carries the hash tag {T}, so both scripts
 * touch one Cluster slot):
 *   <p>tenant:{T}                          the operator's quota hash, read by the reserve script
 *   <p>usage:{T}:minute|day|month:<window> actual usage only (requests, prompt_tokens,
 *                                          completion_tokens, total_tokens, <deployment>:total_tokens)
 *   <p>reserved:{T}:<YYYYMMDDHHMM>         reservations made in that minute and not settled yet
 *                                          (fields tokens, requests; TTL a few minutes)
 * Reservations live apart from usage so the usage hashes are exactly what the backends
 * reported. The tpm/rpm check counts the minute's usage plus the minute's reservation
 * bucket; the day and month checks add the buckets of the last minutes that belong to the
 * same day / month (a request is charged to the windows it was admitted in). A router that dies
 * between reserve and settle leaves its reservation in a bucket that expires within
 * AOR_ADMIT_MAX_BUCKETS minutes and stops counting for day/month once it is that old.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "admit.h"
#include "config.h"
#include "deftenant.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "request.h"
#include "tenant.h"
#include "server.h"

#define KEY_MAX 320
#define MINUTE_TTL_S 7200     /* 2 h */
#define DAY_TTL_S 3456000     /* 40 d */
#define MONTH_TTL_S 34560000  /* 400 d */
#define FLUSH_INTERVAL_MS 500 /* backlog flush while Redis is up */
#define FLUSH_BATCH 64        /* backlog entries written per tick and worker */
#define MAX_ESTIMATE 1000000000000LL

/* ---- scripts ------------------------------------------------------------------------- */

/* One call admits a batch: the requests of one tenant, minute and fallback quota that started
 * in the same loop iteration of a worker (see aor_admit_start), in order, exactly as that many
 * calls one after the other would.
 * KEYS: tenant hash, usage minute, usage day, usage month, reservation buckets (this minute first).
 * ARGV: fallback deployments ("*" = all), the numbers (one argument, space separated: fewer
 *       arguments to format): fallback tpm rpm day month, buckets in today, buckets in this
 *       month, bucket TTL; and the requests: "<estimate> <reservation id> =<deployment> ..."
 *       (a reservation's field r:<id> in the bucket, holding its estimate, marks it to give back;
 *       the deployment, a name of [A-Za-z0-9._-] or empty, is checked against the allow-list per
 *       request).
 * Returns one string (one reply object to read, not a dozen), a record per request then the
 * tenant hash:
 *   "<code> <what> <remaining tokens> <remaining requests> <minute tokens> <minute requests>
 *    <day tokens> <month tokens> " ... "<len1> ... <len6>\n<values>"
 * code 0 admitted (what "-"), 1 over quota (what: the limit), 2 forbidden (what: the reason);
 * the four usage numbers are the windows as that request leaves them (with its reservation when
 * admitted; -1 when forbidden); len1..len6 are the lengths of the tenant hash's six quota fields
 * (tpm, rpm, tokens_per_day, tokens_per_month, deployments, disabled), each cut to 2 KiB, -1
 * when absent, and <values> the present ones end to end: only those six, so an operator's 2 MB
 * note in the hash cannot make the reply too big for the connection (every tenant on it would
 * lose its Redis), nor HGETALL of a huge hash stall Redis. A kill switch fails closed: only
 * 0/false/no (any case) or empty leave the tenant on (as auth/apikey.c aor_apikey_flag_set).
 * Counters are written by HINCRBY: anything but 0..15 digits (someone else's garbage, a bucket
 * driven below 0) counts as 0; a window without a limit is read for the status page only, and a
 * key of the wrong type there counts as 0 instead of failing the script. A bucket gets its TTL
 * from the reserve that creates it; a bucket counter HINCRBY would refuse (someone's garbage)
 * starts again from 0 before the writes, which would otherwise stop half way: tokens reserved
 * with no r:<id> to give them back.
 * Written for redis-server's time, which caps the quota path (`redis-cli INFO commandstats`
 * under bench/quota.sh): one string.match for the numbers, HMGET where a hash gives two fields,
 * numbers handed to Redis as the strings they came as (Lua's number-to-string is a printf of a
 * double), and the reads, checks and writes shared by a batch — 17 µs a call alone before, a
 * batch of 8 ~35 µs. */
static const char reserve_lua[] =
    "local p2, p3, p4, p5, p6, p7, p8 = string.match(ARGV[2], '^(%-?%d+) (%-?%d+) (%-?%d+) (%-?%d+) (%d+) (%d+) (%d+)$')\n"
    "if not p2 then return redis.error_reply('ERR reserve: malformed numbers') end\n"
    "local ests, estr, ids, dep = {}, {}, {}, {}\n"
    "for e, id, d in string.gmatch(ARGV[3], '(%d+) (%S+) =(%S*)') do\n"
    "  ests[#ests + 1] = tonumber(e)\n"
    "  estr[#estr + 1] = e\n"
    "  ids[#ids + 1] = id\n"
    "  dep[#dep + 1] = d\n"
    "end\n"
    "if #ests == 0 then return redis.error_reply('ERR reserve: no request') end\n"
    "local v = redis.call('HMGET', KEYS[1], 'tpm', 'rpm', 'tokens_per_day', 'tokens_per_month', 'deployments', 'disabled')\n"
    "local hv\n"
    "if not (v[1] or v[2] or v[3] or v[4] or v[5] or v[6]) then\n"
    "  hv = '-1 -1 -1 -1 -1 -1\\n'\n"
    "else\n"
    "  local len, val = {}, {}\n"
    "  for i = 1, 6 do\n"
    "    local x = v[i]\n"
    "    if x then\n"
    "      x = string.sub(x, 1, 2048)\n"
    "      val[#val + 1] = x\n"
    "      len[i] = #x\n"
    "    else\n"
    "      len[i] = -1\n"
    "    end\n"
    "  end\n"
    "  hv = table.concat(len, ' ') .. '\\n' .. table.concat(val)\n"
    "end\n"
    "local fmt = '%d %s %d %d %d %d %d %d '\n"
    "local function num(x, def)\n"
    "  if x then\n"
    "    if x == '-1' then return -1 end\n"
    "    if #x >= 1 and #x <= 15 and not string.find(x, '[^0-9]') then return tonumber(x) end\n"
    "  end\n"
    "  return tonumber(def)\n"
    "end\n"
    "local tpm, rpm, day, month = num(v[1], p2), num(v[2], p3), num(v[3], p4), num(v[4], p5)\n"
    "local dis = v[6]\n"
    "if dis then\n"
    "  local l = string.lower(dis)\n"
    "  if not (l == '' or l == '0' or l == 'false' or l == 'no') then return string.rep(string.format(fmt, 2, 'disabled', -1, -1, "
    "-1, -1, -1, -1), #ests) .. hv end\n"
    "end\n"
    "if tpm == 0 or rpm == 0 or day == 0 or month == 0 then return string.rep(string.format(fmt, 2, 'zero', -1, -1, -1, -1, -1, "
    "-1), #ests) .. hv end\n"
    "local deps = ARGV[1]\n"
    "local d = v[5]\n"
    "if d then\n"
    "  d = string.gsub(d, '[ \\t]', '')\n"
    "  if #d < 1024 and string.find(d, '[^,]') and not string.find(d, '[%z\\1-\\32\\127]') then deps = d end\n"
    "end\n"
    "local allowed = {}\n"
    "local function may(x)\n"
    "  if x == '' or deps == '*' then return true end\n"
    "  if allowed[x] == nil then allowed[x] = string.find(',' .. deps .. ',', ',' .. x .. ',', 1, true) ~= nil end\n"
    "  return allowed[x]\n"
    "end\n"
    "local function hincr_ok(x)\n"
    "  return not x or x == '0' or (#x <= 18 and string.find(x, '^%-?[1-9]%d*$') ~= nil)\n"
    "end\n"
    "local function int(x)\n"
    "  if not x or #x > 15 or not string.find(x, '^%d+$') then return 0 end\n"
    "  return tonumber(x)\n"
    "end\n"
    "local nday, nmonth = tonumber(p6), tonumber(p7)\n"
    "local b = redis.call('HMGET', KEYS[5], 'tokens', 'requests')\n"
    "local bt = int(b[1])\n"
    "local rday, rmonth = 0, 0\n"
    "if nday >= 1 then rday = bt end\n"
    "if nmonth >= 1 then rmonth = bt end\n"
    "for i = 6, #KEYS do\n"
    "  local t = int(redis.call('HGET', KEYS[i], 'tokens'))\n"
    "  if i - 4 <= nday then rday = rday + t end\n"
    "  if i - 4 <= nmonth then rmonth = rmonth + t end\n"
    "end\n"
    "local m = redis.call('HMGET', KEYS[2], 'total_tokens', 'requests')\n"
    "local mt, mr = int(m[1]) + bt, int(m[2]) + int(b[2])\n"
    "local function peek(k)\n"
    "  local x = redis.pcall('HGET', k, 'total_tokens')\n"
    "  if type(x) ~= 'string' then return 0 end\n"
    "  return int(x)\n"
    "end\n"
    "local dt = (day >= 0 and int(redis.call('HGET', KEYS[3], 'total_tokens')) or peek(KEYS[3])) + rday\n"
    "local mo = (month >= 0 and int(redis.call('HGET', KEYS[4], 'total_tokens')) or peek(KEYS[4])) + rmonth\n"
    "local out, fields, addt, addn = {}, {}, 0, 0\n"
    "for i = 1, #ests do\n"
    "  local est, over = ests[i], nil\n"
    "  if not may(dep[i]) then over = 'deployment'\n"
    "  elseif month >= 0 and mo + est > month then over = 'month'\n"
    "  elseif day >= 0 and dt + est > day then over = 'day'\n"
    "  elseif tpm >= 0 and mt + est > tpm then over = 'tpm'\n"
    "  elseif rpm >= 0 and mr + 1 > rpm then over = 'rpm' end\n"
    "  if over == 'deployment' then\n"
    "    out[i] = string.format(fmt, 2, over, -1, -1, -1, -1, -1, -1)\n"
    "  elseif over then\n"
    "    out[i] = string.format(fmt, 1, over, -1, -1, mt, mr, dt, mo)\n"
    "  else\n"
    "    mt, mr, dt, mo = mt + est, mr + 1, dt + est, mo + est\n"
    "    addt, addn = addt + est, addn + 1\n"
    "    fields[#fields + 1] = 'r:' .. ids[i]\n"
    "    fields[#fields + 1] = estr[i]\n"
    "    local rt, rr = -1, -1\n"
    "    if tpm >= 0 then rt = tpm - mt end\n"
    "    if rpm >= 0 then rr = rpm - mr end\n"
    "    out[i] = string.format(fmt, 0, '-', rt, rr, mt, mr, dt, mo)\n"
    "  end\n"
    "end\n"
    "if addn > 0 then\n"
    "  if not hincr_ok(b[1]) then redis.call('HSET', KEYS[5], 'tokens', '0') end\n"
    "  if not hincr_ok(b[2]) then redis.call('HSET', KEYS[5], 'requests', '0') end\n"
    "  if redis.call('HINCRBY', KEYS[5], 'tokens', string.format('%d', addt)) == addt then redis.call('EXPIRE', KEYS[5], p8) end\n"
    "  redis.call('HINCRBY', KEYS[5], 'requests', addn)\n"
    "  redis.call('HSET', KEYS[5], unpack(fields))\n"
    "end\n"
    "return table.concat(out) .. hv\n";

/* One call settles a batch: the requests of one tenant, admission minute and deployment that
 * ended in the same loop iteration of a worker (see settle_gather), so redis-server runs the
 * usage writes once per batch instead of once per request.
 * KEYS: usage keys, then the reservation bucket when it has one, then the settle markers.
 * ARGV: deployment ('' none); the numbers (space separated): has bucket (1/0), count usage (1/0),
 *       requests, prompt, completion, total (the batch's sums), then the TTL of each usage key;
 *       the settle's id; the reservations to give back, "<estimate> <id> ..." (the bucket gives
 *       back only a reservation whose field r:<id> it still has: made, and not given back yet). A settle whose reply was lost (a
 * Redis stopped, dead or slow past the deadline) is sent again with the same id: the marker makes the one Redis ran first the only
 * one that counts. Returns 1 + 2 * (a bit per usage key that is not a hash, left alone) when applied, 0 (this id was applied
 * before); numbers not in that shape are an error reply, before anything is written. */
/* the marker lives 900 s (15 min): how long a settle's id is remembered. A usage hash gets its
 * TTL when a settle creates it (its requests counter equals this settle's): not again on every
 * write, one Redis command less per window and request (redis-server's time is what caps the
 * quota path's throughput) */
static const char settle_lua[] =
    "local hb, cu, rq, pt, ct, tt, rest = string.match(ARGV[2], '^([01]) ([01]) (%-?%d+) (%-?%d+) (%-?%d+) (%-?%d+)(.*)$')\n"
    "if not hb then return redis.error_reply('ERR settle: malformed numbers') end\n"
    "local m = KEYS[#KEYS]\n"
    "if redis.call('HSETNX', m, ARGV[3], 1) == 0 then return 0 end\n"
    "redis.call('EXPIRE', m, 900)\n"
    "local k = #KEYS - 1\n"
    "if hb == '1' then\n"
    "  local b = KEYS[k]\n"
    "  k = k - 1\n"
    "  local f, e = {}, {}\n"
    "  for est, id in string.gmatch(ARGV[4], '(%d+) (%S+)') do\n"
    "    f[#f + 1] = 'r:' .. id\n"
    "    e[#e + 1] = tonumber(est)\n"
    "  end\n"
    /* which reservations the bucket still holds; what to give back is the router's own estimate,
     * not the field's value (someone else's write must not drive the bucket below 0). A bucket
     * that is not a hash gives nothing back, and the usage is still written */
    "  local v = #f > 0 and redis.pcall('HMGET', b, 'tokens', 'requests', unpack(f))\n"
    "  if type(v) == 'table' and not v.err then\n"
    "    local n, t = 0, 0\n"
    "    for i = 1, #f do\n"
    "      if v[i + 2] then\n"
    "        n = n + 1\n"
    "        t = t + e[i]\n"
    "      end\n"
    "    end\n"
    "    if n > 0 then\n"
    /* a counter someone overwrote with what HINCRBY refuses would fail the script half way
     * (the marker set, the usage not written): it starts again from 0 */
    "      for j, c in ipairs({'tokens', 'requests'}) do\n"
    "        local x = v[j]\n"
    "        if x and x ~= '0' and not (#x <= 18 and string.find(x, '^%-?[1-9]%d*$')) then redis.call('HSET', b, c, '0') end\n"
    "      end\n"
    "      redis.call('HDEL', b, unpack(f))\n"
    "      redis.call('HINCRBY', b, 'tokens', string.format('%d', -t))\n"
    "      redis.call('HINCRBY', b, 'requests', -n)\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* the marker is set: an error now would lose the usage (Redis keeps what a script wrote
     * before it failed). A usage counter HINCRBY refuses (garbage, out of range) starts again
     * from this settle's number, as the reserve reads it as 0; a usage key that is not a hash
     * is left alone and the other windows are written: bit i of the reply's (n - 1) / 2 says
     * KEYS[i + 1] was refused */
    "local bad = 0\n"
    "if cu == '1' then\n"
    "  local ttl = {string.match(rest, '^ (%d+) ?(%d*) ?(%d*)$')}\n"
    "  local dep = ARGV[1] ~= '' and ARGV[1] .. ':total_tokens'\n"
    "  local nrq = tonumber(rq)\n"
    "  local function add(key, f, d)\n"
    "    if type(redis.pcall('HINCRBY', key, f, d)) == 'table' then redis.call('HSET', key, f, d) end\n"
    "  end\n"
    "  for i = 1, k do\n"
    "    local key = KEYS[i]\n"
    "    local r = redis.pcall('HINCRBY', key, 'requests', rq)\n"
    "    if type(r) == 'table' and string.sub(r.err, 1, 9) == 'WRONGTYPE' then\n"
    "      bad = bad + (i == 1 and 1 or i == 2 and 2 or 4)\n"
    "    else\n"
    "      if type(r) == 'table' then redis.call('HSET', key, 'requests', rq) end\n"
    "      add(key, 'prompt_tokens', pt)\n"
    "      add(key, 'completion_tokens', ct)\n"
    "      add(key, 'total_tokens', tt)\n"
    "      if dep then add(key, dep, tt) end\n"
    "      if r == nrq or type(r) == 'table' or rq == '0' then redis.call('EXPIRE', key, ttl[i]) end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 1 + 2 * bad\n";

struct script {
    const char *body;
    char sha[41];
    /* the bulk strings EVALSHA and EVAL send: "$40\r\n<sha>\r\n", "$<len>\r\n<body>\r\n" */
    char sha_bulk[48];
    size_t sha_bulk_len;
    char *body_bulk; /* NULL: out of memory at start (every call fails: Redis counts as unavailable) */
    size_t body_bulk_len;
};

static struct script reserve_script = {.body = reserve_lua}, settle_script = {.body = settle_lua};
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha1_hex(struct script *s)
{
    aor_redis_sha1_hex(s->body, s->sha); /* "" when it failed: every call goes as EVAL */
}

static void make_bulks(struct script *s)
{
    size_t len = strlen(s->body);
    char *p;

    if (s->sha[0] != '\0') {
        p = aor_redis_put_count(s->sha_bulk, '$', 40);
        memcpy(p, s->sha, 40);
        memcpy(p + 40, "\r\n", 2);
        s->sha_bulk_len = (size_t)(p + 42 - s->sha_bulk);
    }
    if ((s->body_bulk = malloc(len + 32)) == NULL)
        return;
    p = aor_redis_put_count(s->body_bulk, '$', len);
    memcpy(p, s->body, len);
    memcpy(p + len, "\r\n", 2);
    s->body_bulk_len = (size_t)(p + len + 2 - s->body_bulk);
}

static void init_shas(void)
{
    sha1_hex(&reserve_script);
    sha1_hex(&settle_script);
    make_bulks(&reserve_script);
    make_bulks(&settle_script);
}

/* ---- one script call: EVALSHA, once more as EVAL on NOSCRIPT -------------------------------- */

#define CALL_MAX_ARGS 40
/* the arena holds the arguments as RESP bulk strings ("$<len>\r\n<bytes>\r\n": 8 bytes over a
 * key's, which is under KEY_MAX). The largest call is a reserve with the longest names the config
 * allows (128-byte prefix and tenant): 4 + AOR_ADMIT_MAX_BUCKETS keys, then the deployment (64),
 * the deployments list (AOR_QUOTA_DEPLOYMENTS_MAX), 8 numbers of up to 20 characters, and
 * call_room's margin: 2048 covers those; then the batch's requests (RESERVE_MEMBERS_CAP) */
#define RESERVE_BATCH_MAX 32                          /* requests per reserve call */
#define RESERVE_MEMBERS_CAP (RESERVE_BATCH_MAX * 116) /* "<estimate, 13 digits> <id, 33> =<deployment, 64> " each */
#define CALL_ARENA ((4 + AOR_ADMIT_MAX_BUCKETS) * (KEY_MAX + 8) + 2048 + RESERVE_MEMBERS_CAP)
_Static_assert(RESERVE_MEMBERS_CAP >= RESERVE_BATCH_MAX * (13 + 1 + 33 + 2 + 64 + 1),
               "a batch's estimates, ids and deployments fit");

struct usage_delta {
    int64_t requests, prompt, completion, total;
};

/* heap-owned; freed after its callback */
struct aor_admit_call {
    struct aor_admit_call *prev, *next; /* the worker's calls in flight (freed at its teardown) */
    struct aor_redis_cmd *cmd;
    struct aor_worker *w;
    struct aor_redis *redis;
    const struct script *script;
    /* 1 when it handed `c` on (to the unsure list: another worker may own it already), else 0 */
    int (*done)(struct aor_admit_call *c, const redisReply *reply, const char *errstr);
    int retried;
    int numkeys;
    /* the arguments after the number of keys, in the arena as RESP bulk strings, end to end:
     * what goes on the wire after EVALSHA <sha> <numkeys> (or EVAL <body> <numkeys>) */
    int nargs;
    struct {
        uint32_t off, len; /* an argument's bytes in the arena */
    } arg[CALL_MAX_ARGS];
    size_t used;
    /* for the reserve: the requests it admits, in order */
    int nmembers;
    struct aor_request *members[RESERVE_BATCH_MAX];
    aor_admit_cb cb;
    /* for a settle or a backlog flush: what to keep if the write fails */
    int count_usage;
    int maybe_applied;  /* a send of it reached Redis' socket and got no reply: Redis may have run it */
    int settled_behind; /* a reserve whose members got a settle queued behind it at teardown */
    int nusage;         /* usage keys: arguments 0..nusage-1 */
    int marker_arg;     /* the argument that is the settle markers' key */
    int ttl[3];
    char deployment[65];
    struct usage_delta usage;
    char arena[CALL_ARENA]; /* the arguments' bytes; last, so only the fields above are zeroed */
};

_Static_assert(AOR_QUOTA_DEPLOYMENTS_MAX + 64 + 8 * 21 + 48 + 5 * 26 <= 2048, "CALL_ARENA's room after the keys");

#define CALL_CACHE 64 /* finished calls kept per worker for reuse: no malloc of ~5 KB twice per request */

/*
 * The key arguments a call starts with are the same for every request of one tenant in one
 * minute (the tenant hash, the window hashes, the reservation buckets, the settle markers): each
 * worker keeps them as RESP for the last tenants seen, so most calls copy them whole instead of
 * building a dozen keys.
 */
#define KEYS_CACHE 16         /* blocks per worker and kind, direct-mapped by tenant */
#define KEYS_CACHE_BYTES 1536 /* a block larger than this is built every time */

enum key_kind { KEYS_RESERVE, KEYS_SETTLE, KEYS_KINDS };

struct key_block {
    uint64_t generation; /* of the config they were built with (prefix, number of buckets); 0 = empty */
    int64_t minute_id;
    char tenant[AOR_TENANT_NAME_MAX + 1];
    int nargs, nday, nmonth; /* nday/nmonth: buckets of the reserve that count for today / this month */
    size_t len;
    struct {
        uint32_t off, len;
    } arg[16];
    char bytes[KEYS_CACHE_BYTES];
};

/*
 * Settles gathered in one loop iteration: one group per tenant, admission minute and deployment,
 * sent as one settle call just before the worker's Redis commands are written (router/redis.c's
 * before-flush hook) or when it is full. The call is built as the group opens (keys and
 * deployment); the sums, the id and the reservation ids are added when it leaves.
 */
#define SETTLE_GROUPS 8                        /* open groups per worker; a ninth evicts (sends) one */
#define SETTLE_BATCH_MAX 32                    /* requests per settle call */
#define SETTLE_IDS_CAP (SETTLE_BATCH_MAX * 56) /* "<estimate> <reservation id> " each */

struct settle_group {
    struct aor_admit_call *c; /* NULL: free */
    uint64_t generation;
    int64_t minute_id;
    char tenant[AOR_TENANT_NAME_MAX + 1];
    int members;
    size_t ids_len;
    char ids[SETTLE_IDS_CAP];
};

_Static_assert(5 * (KEY_MAX + 8) + 64 + 9 * 21 + 48 + SETTLE_IDS_CAP + 9 * 26 <= CALL_ARENA,
               "CALL_ARENA holds a full settle batch");

/*
 * Reserves gathered in one loop iteration, the same way: one group per tenant, minute and
 * fallback quota (config generation and tenant:{default}'s layer), sent as one call just before
 * the iteration's Redis write. The call is built as the group opens; the requests' estimates,
 * ids and deployments are added as they come. Nothing waits longer than it did: the write
 * happens in the same iteration as before. Groups leave in the order they opened, and all of
 * them whenever one must leave early (full, or a ninth needs its slot): a request never
 * overtakes an earlier one of its tenant.
 */
#define RESERVE_GROUPS 8

struct reserve_group {
    struct aor_admit_call *c; /* NULL: free */
    uint64_t opened;          /* the worker's count of groups opened: the order they leave in */
    uint64_t generation;
    int64_t minute_id;
    int64_t fallback[4];
    char deps[AOR_QUOTA_DEPLOYMENTS_MAX]; /* the fallback deployments list ("*": all) */
    char tenant[AOR_TENANT_NAME_MAX + 1];
    size_t members_len;
    char members[RESERVE_MEMBERS_CAP];
};

struct aor_admit_worker {
    uv_timer_t timer;
    struct reserve_group rgroups[RESERVE_GROUPS];
    uint64_t rgroups_opened;
    struct settle_group groups[SETTLE_GROUPS];
    unsigned next_evict;
    struct aor_admit_call *calls; /* in flight */
    struct aor_admit_call *spare; /* finished, for reuse (linked through next) */
    unsigned num_spare;
    struct key_block keys[KEYS_KINDS][KEYS_CACHE];
};

/* gives a call back: to the worker's spares, or to the heap */
static void call_free(struct aor_admit_call *c)
{
    struct aor_admit_worker *aw = c->w->admit;

    if (aw != NULL && aw->num_spare < CALL_CACHE) {
        c->next = aw->spare;
        aw->spare = c;
        ++aw->num_spare;
        return;
    }
    free(c);
}

/* room for an argument of `len` bytes: its head, its bytes and CRLF */
static char *call_room(struct aor_admit_call *c, size_t len)
{
    char *p;

    if (c->nargs == CALL_MAX_ARGS || len > sizeof(c->arena) || c->used + len + 26 > sizeof(c->arena))
        return NULL;
    p = aor_redis_put_count(c->arena + c->used, '$', len);
    c->arg[c->nargs].off = (uint32_t)(p - c->arena);
    c->arg[c->nargs].len = (uint32_t)len;
    return p;
}

/* the argument whose bytes end at `p` is complete */
static void call_commit(struct aor_admit_call *c, char *p)
{
    *p++ = '\r';
    *p++ = '\n';
    c->used = (size_t)(p - c->arena);
    ++c->nargs;
}

static int call_arg(struct aor_admit_call *c, const char *s, size_t len)
{
    char *p = call_room(c, len);

    if (p == NULL)
        return -1;
    memcpy(p, s, len);
    call_commit(c, p + len);
    return 0;
}

/* argument `i` as a C string in `buf` (KEY_MAX bytes); cut if longer */
static const char *call_arg_str(const struct aor_admit_call *c, int i, char *buf)
{
    size_t len = i < c->nargs ? c->arg[i].len : 0;

    if (len >= KEY_MAX)
        len = KEY_MAX - 1;
    memcpy(buf, c->arena + c->arg[i < c->nargs ? i : 0].off, len);
    buf[len] = '\0';
    return buf;
}

/* writes `v` in decimal at `p` (at most 20 characters); returns the end */
static char *put_dec(char *p, uint64_t v)
{
    char tmp[24], *q = tmp + sizeof(tmp);

    do
        *--q = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    memcpy(p, q, (size_t)(tmp + sizeof(tmp) - q));
    return p + (tmp + sizeof(tmp) - q);
}

/* one argument holding `n` decimal integers separated by spaces */
static int call_nums(struct aor_admit_call *c, const int64_t *v, size_t n)
{
    char buf[CALL_MAX_ARGS * 21], *p = buf;
    size_t i;

    /* two digits a step: quotas and TTLs are long numbers, and this runs twice a request */
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                "8081828384858687888990919293949596979899";

    for (i = 0; i != n && i != CALL_MAX_ARGS; ++i) {
        char tmp[24], *q = tmp + sizeof(tmp);
        uint64_t u = v[i] < 0 ? (uint64_t)0 - (uint64_t)v[i] : (uint64_t)v[i];
        while (u >= 100) {
            q -= 2;
            memcpy(q, pairs + u % 100 * 2, 2);
            u /= 100;
        }
        if (u >= 10) {
            q -= 2;
            memcpy(q, pairs + u * 2, 2);
        } else {
            *--q = (char)('0' + u);
        }
        if (v[i] < 0)
            *--q = '-';
        if (i != 0)
            *p++ = ' ';
        memcpy(p, q, (size_t)(tmp + sizeof(tmp) - q));
        p += tmp + sizeof(tmp) - q;
    }
    return call_arg(c, buf, (size_t)(p - buf));
}

/* what every key of one tenant starts with: `<prefix><type>{<tenant>}` */
struct key_parts {
    const char *prefix, *tenant;
    size_t prefix_len, tenant_len;
};

/* an argument `<prefix><type>{<tenant>}<tail><window>`, e.g. type "usage:", tail ":minute:" */
static int call_key(struct aor_admit_call *c, const struct key_parts *k, const char *type, size_t type_len, const char *tail,
                    size_t tail_len, const char *window)
{
    size_t wlen = strlen(window), n = k->prefix_len + type_len + 1 + k->tenant_len + 1 + tail_len + wlen;
    char *p;

    if (n >= KEY_MAX || (p = call_room(c, n)) == NULL)
        return -1;
    memcpy(p, k->prefix, k->prefix_len);
    p += k->prefix_len;
    memcpy(p, type, type_len);
    p += type_len;
    *p++ = '{';
    memcpy(p, k->tenant, k->tenant_len);
    p += k->tenant_len;
    *p++ = '}';
    memcpy(p, tail, tail_len);
    p += tail_len;
    memcpy(p, window, wlen);
    call_commit(c, p + wlen);
    return 0;
}

#define CALL_KEY(c, k, type, tail, window) call_key((c), (k), (type), sizeof(type) - 1, (tail), sizeof(tail) - 1, (window))

/* the worker's block for `tenant` and `kind` (maybe another tenant's, or empty); NULL without a cache */
static struct key_block *key_block_of(struct aor_worker *w, enum key_kind kind, const char *tenant)
{
    uint32_t h = 2166136261u;

    if (w->admit == NULL)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)tenant; *p != '\0'; ++p)
        h = (h ^ *p) * 16777619u;
    return &w->admit->keys[kind][h % KEYS_CACHE];
}

/* 1 when `kb` holds the keys of `tenant` in that minute under that config: they are now `c`'s first arguments */
static int keys_from_block(struct aor_admit_call *c, const struct key_block *kb, uint64_t generation, int64_t minute_id,
                           const char *tenant)
{
    if (kb == NULL || kb->generation != generation || kb->minute_id != minute_id || c->nargs != 0 ||
        strcmp(kb->tenant, tenant) != 0)
        return 0;
    memcpy(c->arena, kb->bytes, kb->len);
    memcpy(c->arg, kb->arg, (size_t)kb->nargs * sizeof(c->arg[0]));
    c->used = kb->len;
    c->nargs = kb->nargs;
    return 1;
}

/* keeps `c`'s arguments so far (its keys) in `kb` for the next requests */
static void keys_to_block(struct key_block *kb, const struct aor_admit_call *c, uint64_t generation, int64_t minute_id,
                          const char *tenant, int nday, int nmonth)
{
    size_t tl = strlen(tenant);

    if (kb == NULL || c->used > sizeof(kb->bytes) || (size_t)c->nargs > sizeof(kb->arg) / sizeof(kb->arg[0]) ||
        tl >= sizeof(kb->tenant))
        return;
    memcpy(kb->bytes, c->arena, c->used);
    memcpy(kb->arg, c->arg, (size_t)c->nargs * sizeof(c->arg[0]));
    memcpy(kb->tenant, tenant, tl + 1);
    kb->len = c->used;
    kb->nargs = c->nargs;
    kb->generation = generation;
    kb->minute_id = minute_id;
    kb->nday = nday;
    kb->nmonth = nmonth;
}

static struct aor_admit_call *call_new(struct aor_worker *w, const struct script *s)
{
    struct aor_admit_call *c;

    if (w->admit != NULL && w->admit->spare != NULL) {
        c = w->admit->spare;
        w->admit->spare = c->next;
        --w->admit->num_spare;
    } else if ((c = malloc(sizeof(*c))) == NULL) {
        return NULL;
    }
    memset(c, 0, offsetof(struct aor_admit_call, arena));
    pthread_once(&sha_once, init_shas);
    c->w = w;
    c->redis = w->redis;
    c->script = s;
    return c;
}

static void call_set_numkeys(struct aor_admit_call *c, int n)
{
    c->numkeys = n;
}

static void on_call_reply(void *data, const struct redisReply *reply, const char *errstr);

static int call_send(struct aor_admit_call *c)
{
    int eval = c->script->sha[0] == '\0' || c->retried;
    char nk[8], *p = nk;
    struct iovec rest[3];

    if (c->script->body_bulk == NULL || c->numkeys < 0 || c->numkeys > 99)
        return -1;
    *p++ = '$';
    *p++ = c->numkeys < 10 ? '1' : '2';
    *p++ = '\r';
    *p++ = '\n';
    if (c->numkeys >= 10)
        *p++ = (char)('0' + c->numkeys / 10);
    *p++ = (char)('0' + c->numkeys % 10);
    *p++ = '\r';
    *p++ = '\n';
    rest[0].iov_base = eval ? c->script->body_bulk : (char *)c->script->sha_bulk;
    rest[0].iov_len = eval ? c->script->body_bulk_len : c->script->sha_bulk_len;
    rest[1].iov_base = nk;
    rest[1].iov_len = (size_t)(p - nk);
    rest[2].iov_base = c->arena;
    rest[2].iov_len = c->used;
    if ((c->cmd = aor_redis_command_resp(c->redis, on_call_reply, c, 3 + c->nargs, eval ? "EVAL" : "EVALSHA", eval ? 4 : 7, rest,
                                         3)) == NULL)
        return -1;
    if (c->prev == NULL && c->w->admit != NULL && c->w->admit->calls != c) {
        c->next = c->w->admit->calls;
        if (c->next != NULL)
            c->next->prev = c;
        c->w->admit->calls = c;
    }
    return 0;
}

static void call_unlink(struct aor_admit_call *c)
{
    if (c->w->admit == NULL)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else if (c->w->admit->calls == c)
        c->w->admit->calls = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void on_call_reply(void *data, const struct redisReply *reply, const char *errstr)
{
    struct aor_admit_call *c = data;

    if ((errstr == aor_redis_err_timeout || errstr == aor_redis_err_disconnected) && aor_redis_cmd_sent(c->cmd))
        c->maybe_applied = 1;
    c->cmd = NULL;
    if (errstr == aor_redis_err_reply && !c->retried && reply != NULL && reply->str != NULL &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* a restarted or flushed Redis: send the body once, which also caches it there */
        c->retried = 1;
        if (call_send(c) == 0)
            return;
        errstr = aor_redis_err_disconnected;
        reply = NULL;
    }
    call_unlink(c);
    if (errstr == aor_redis_err_reply)
        AOR_LOG(AOR_LOG_WARN, "admit", "quota script failed: %s", reply != NULL && reply->str != NULL ? reply->str : "-");
    if (!c->done(c, reply, errstr)) /* else `c` is no longer ours to touch */
        call_free(c);
}

/* ---- in-process counters and last-known quotas ---------------------------------------------- */

struct local_entry {
    char tenant[AOR_TENANT_NAME_MAX + 1]; /* "" = free slot */
    int have_quota;                       /* `q` is what Redis last said */
    struct aor_quota q;
    uint64_t hash_fnv;        /* of the tenant hash last seen (log bad values once per change; `q` holds while it is the same) */
    uint64_t conf_generation; /* of the config `q` was resolved with */
    struct aor_quota_counters c;
};

static pthread_mutex_t local_lock = PTHREAD_MUTEX_INITIALIZER;
static struct local_entry *local_table; /* AOR_ADMIT_LOCAL_TENANTS + 1 entries; the last is shared by overflow tenants */

static uint64_t fnv(const void *p, size_t len, uint64_t h)
{
    const unsigned char *s = p;
    size_t i;

    for (i = 0; i != len; ++i)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* under local_lock; NULL only on ENOMEM */
static struct local_entry *local_find(const char *tenant)
{
    size_t len = strlen(tenant), i, k;

    if (local_table == NULL && (local_table = calloc(AOR_ADMIT_LOCAL_TENANTS + 1, sizeof(*local_table))) == NULL)
        return NULL;
    i = (size_t)(fnv(tenant, len, 0xcbf29ce484222325ull) % AOR_ADMIT_LOCAL_TENANTS);
    for (k = 0; k != AOR_ADMIT_LOCAL_TENANTS; ++k, i = (i + 1) % AOR_ADMIT_LOCAL_TENANTS) {
        struct local_entry *e = &local_table[i];
        if (e->tenant[0] == '\0') {
            memcpy(e->tenant, tenant, len < AOR_TENANT_NAME_MAX ? len : AOR_TENANT_NAME_MAX);
            return e;
        }
        if (strcmp(e->tenant, tenant) == 0)
            return e;
    }
    return &local_table[AOR_ADMIT_LOCAL_TENANTS];
}

static const char *const limit_messages[] = {
    [AOR_LIMIT_TPM] = "tenant quota exceeded: tokens per minute (tpm)",
    [AOR_LIMIT_RPM] = "tenant quota exceeded: requests per minute (rpm)",
    [AOR_LIMIT_DAY] = "tenant quota exceeded: tokens per day (tokens_per_day)",
    [AOR_LIMIT_MONTH] = "tenant quota exceeded: tokens per month (tokens_per_month)",
};

static void refuse_quota(struct aor_request *ar, enum aor_quota_limit l, int64_t retry_after_s)
{
    ar->adm.refused = 1;
    ar->adm.error = AOR_ERR_TENANT_QUOTA_EXCEEDED;
    ar->adm.message = limit_messages[l];
    ar->adm.retry_after_s = retry_after_s < 1 ? 1 : retry_after_s;
    aor_metrics_quota_rejection(ar->tenant, aor_quota_limit_name(l));
}

static void refuse_forbidden(struct aor_request *ar, const char *why)
{
    ar->adm.refused = 1;
    ar->adm.error = AOR_ERR_FORBIDDEN;
    ar->adm.message = strcmp(why, "disabled") == 0 ? "the tenant is disabled"
                      : strcmp(why, "zero") == 0   ? "the tenant's quota is 0 (blocked)"
                                                   : "the tenant may not use this deployment";
    aor_metrics_quota_rejection(ar->tenant, "deployment");
}

/* the status page's and the gauges' view of the tenant's quota and windows */
static void publish_usage(struct aor_request *ar, const struct aor_quota *q, const int64_t used[4])
{
    int64_t limit[4];
    aor_quota_limits(q, aor_deftenant_layer(ar->worker), limit); /* with tenant:{default}'s where nothing else names one */
    ar->adm.metrics = aor_metrics_tenant_quota(ar->tenant, limit, used, &ar->adm.win);
}

/* the admit decision on in-process counters: without Redis, or with Redis unreachable (open) */
static void local_admit(struct aor_request *ar, int64_t now)
{
    struct aor_admission *a = &ar->adm;
    struct local_entry *e;
    struct aor_quota q;
    enum aor_quota_limit l;
    int64_t retry = 0, used[4];

    pthread_mutex_lock(&local_lock);
    if ((e = local_find(ar->tenant)) == NULL) {
        pthread_mutex_unlock(&local_lock);
        a->refused = 1;
        a->error = AOR_ERR_QUOTA_STORE_UNAVAILABLE;
        a->message = "out of memory";
        return;
    }
    if (e->have_quota && ar->worker->redis != NULL && e != &local_table[AOR_ADMIT_LOCAL_TENANTS])
        q = e->q;
    else
        aor_quota_resolve(ar->conf, ar->tenant, NULL, &q);
    aor_quota_fill(&q, aor_deftenant_layer(ar->worker)); /* what neither hash nor config names: tenant:{default}'s */
    if (aor_quota_forbidden(&q, ar->deployment) != AOR_LIMIT_NONE) {
        pthread_mutex_unlock(&local_lock);
        refuse_forbidden(ar, q.disabled ? "disabled" : !aor_quota_deployment_allowed(&q, ar->deployment) ? "deployment" : "zero");
        return;
    }
    l = aor_quota_local_reserve(&e->c, &q, &a->win, now, a->estimate, &a->remaining_tokens, &a->remaining_requests, &retry);
    used[0] = e->c.minute_tokens;
    used[1] = e->c.minute_requests;
    used[2] = e->c.day_tokens;
    used[3] = e->c.month_tokens;
    pthread_mutex_unlock(&local_lock);
    if (e != &local_table[AOR_ADMIT_LOCAL_TENANTS]) /* the shared overflow entry's counters are nobody's */
        publish_usage(ar, &q, used);
    if (l != AOR_LIMIT_NONE) {
        refuse_quota(ar, l, retry);
        return;
    }
    a->reserved = AOR_ADMIT_LOCAL;
}

/* Redis could not be asked: `on_failure` decides */
static void store_unavailable(struct aor_request *ar, int64_t now)
{
    if (ar->conf->redis.fail_closed) {
        ar->adm.refused = 1;
        ar->adm.error = AOR_ERR_QUOTA_STORE_UNAVAILABLE;
        ar->adm.message = "the quota store (Redis) is unavailable";
        return;
    }
    local_admit(ar, now);
}

struct reserve_reply;
static int remember_quota(struct aor_request *ar, const struct reserve_reply *rr, struct aor_quota *out);

/* ---- the backlog: usage Redis did not take, aggregated per key ------------------------------ */

static uint64_t process_nonce;

static void init_nonce(void)
{
    if (RAND_bytes((unsigned char *)&process_nonce, sizeof(process_nonce)) != 1)
        process_nonce = (uint64_t)aor_now_ms() * 0x9e3779b97f4a7c15ull; /* never: the DRBG is seeded at start */
}

struct backlog_entry {
    char key[KEY_MAX];
    char marker[KEY_MAX]; /* the settle markers' key of the tenant (same Cluster slot) */
    char deployment[65];
    int ttl;
    struct usage_delta u;
};

static pthread_mutex_t backlog_lock = PTHREAD_MUTEX_INITIALIZER;
static struct backlog_entry *backlog;
static size_t backlog_len;
static uint64_t backlog_dropped;

static void backlog_add(const char *key, const char *marker, const char *deployment, int ttl, const struct usage_delta *u)
{
    size_t i;

    pthread_mutex_lock(&backlog_lock);
    for (i = 0; i != backlog_len; ++i)
        if (strcmp(backlog[i].key, key) == 0 && strcmp(backlog[i].deployment, deployment) == 0)
            break;
    if (i == backlog_len) {
        if (backlog == NULL)
            backlog = calloc(AOR_ADMIT_BACKLOG_MAX, sizeof(*backlog));
        if (backlog == NULL || backlog_len == AOR_ADMIT_BACKLOG_MAX) {
            if (backlog_dropped++ % 1000 == 0)
                AOR_LOG(AOR_LOG_ERROR, "admit", "usage backlog full (%d keys): usage for %s dropped (%llu so far)",
                        AOR_ADMIT_BACKLOG_MAX, key, (unsigned long long)backlog_dropped);
            pthread_mutex_unlock(&backlog_lock);
            return;
        }
        memset(&backlog[i], 0, sizeof(backlog[i]));
        snprintf(backlog[i].key, sizeof(backlog[i].key), "%s", key);
        snprintf(backlog[i].marker, sizeof(backlog[i].marker), "%s", marker);
        snprintf(backlog[i].deployment, sizeof(backlog[i].deployment), "%s", deployment);
        backlog[i].ttl = ttl;
        ++backlog_len;
    }
    backlog[i].u.requests += u->requests;
    backlog[i].u.prompt += u->prompt;
    backlog[i].u.completion += u->completion;
    backlog[i].u.total += u->total;
    pthread_mutex_unlock(&backlog_lock);
}

size_t aor_admit_backlog_size(void)
{
    size_t n;

    pthread_mutex_lock(&backlog_lock);
    n = backlog_len;
    pthread_mutex_unlock(&backlog_lock);
    return n;
}

/* a settle or flush that Redis did not take: its usage waits in the backlog */
static void keep_usage(struct aor_admit_call *c)
{
    int i;

    if (!c->count_usage)
        return;
    char key[KEY_MAX], marker[KEY_MAX];

    for (i = 0; i != c->nusage; ++i)
        backlog_add(call_arg_str(c, i, key), call_arg_str(c, c->marker_arg, marker), c->deployment, c->ttl[i], &c->usage);
}

/*
 * Settles whose outcome is unknown: sent, and then the reply timed out or the connection
 * dropped. Redis may have run one (a stopped Redis runs what waits in its socket buffer when it
 * resumes) or not. Each is kept whole and sent again, with its id, once Redis is back: the
 * marker its script sets makes the second run a no-op. Bounded; beyond it the usage goes to
 * the backlog (at-least-once: may count twice).
 */
#define UNSURE_MAX 1024
static pthread_mutex_t unsure_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aor_admit_call *unsure_head;
static size_t unsure_len;

/* takes `c` into the unsure list and returns 1 (`c` is no longer the caller's: another worker
 * may send it at once); when full, puts its usage in the backlog and returns 0 */
static int keep_unsure(struct aor_admit_call *c)
{
    pthread_mutex_lock(&unsure_lock);
    if (unsure_len < UNSURE_MAX) {
        c->prev = NULL;
        c->next = unsure_head;
        unsure_head = c;
        ++unsure_len;
        c = NULL;
    }
    pthread_mutex_unlock(&unsure_lock);
    if (c == NULL)
        return 1;
    keep_usage(c);
    return 0;
}

static struct aor_admit_call *unsure_take(void)
{
    struct aor_admit_call *c;

    pthread_mutex_lock(&unsure_lock);
    if ((c = unsure_head) != NULL) {
        unsure_head = c->next;
        --unsure_len;
        c->next = NULL;
    }
    pthread_mutex_unlock(&unsure_lock);
    return c;
}

static size_t unsure_size(void)
{
    size_t n;

    pthread_mutex_lock(&unsure_lock);
    n = unsure_len;
    pthread_mutex_unlock(&unsure_lock);
    return n;
}

/* a settle id unique across processes and restarts: a random process nonce and a counter */
static size_t make_id(char *buf, size_t cap)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    static uint64_t counter;
    uint64_t n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);

    static const char hex[] = "0123456789abcdef";
    char tmp[34], *p = tmp + sizeof(tmp);
    size_t len;

    pthread_once(&once, init_nonce);
    /* "%016llx.%llx" written by hand: twice a request, and printf is the costliest part of it */
    do
        *--p = hex[n & 0xf];
    while ((n >>= 4) != 0);
    *--p = '.';
    for (int i = 0; i != 16; ++i)
        *--p = hex[process_nonce >> (4 * i) & 0xf];
    len = (size_t)(tmp + sizeof(tmp) - p);
    if (len >= cap)
        return 0;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return len;
}

static int call_id(struct aor_admit_call *c)
{
    char buf[40];
    size_t len = make_id(buf, sizeof(buf));

    return call_arg(c, buf, len);
}

/* an error reply Redis gives before running anything, for a while (loading its data, a replica
 * during a failover, a script running too long, a cluster resharding): try again later */
static int transient_error(const redisReply *reply)
{
    static const char *const words[] = {"LOADING", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"};
    size_t i, l;

    if (reply == NULL || reply->str == NULL)
        return 0;
    for (i = 0; i != sizeof(words) / sizeof(words[0]); ++i)
        if (reply->len > (l = strlen(words[i])) && memcmp(reply->str, words[i], l) == 0 && reply->str[l] == ' ')
            return 1;
    return 0;
}

/* a usage write Redis refused, with its numbers: it is not tried again, so an operator may add them */
static void log_refused(struct aor_admit_call *c, int i, const char *why)
{
    char key[KEY_MAX];

    AOR_LOG(AOR_LOG_ERROR, "admit",
            "usage for %s not recorded: Redis refused the write%s: deployment \"%s\" requests %lld prompt_tokens %lld "
            "completion_tokens %lld total_tokens %lld",
            call_arg_str(c, i, key), why, c->deployment, (long long)c->usage.requests, (long long)c->usage.prompt,
            (long long)c->usage.completion, (long long)c->usage.total);
}

static int on_settled(struct aor_admit_call *c, const redisReply *reply, const char *errstr)
{
    if (errstr == aor_redis_err_reply && transient_error(reply)) {
        /* not run (or, if it was, its marker makes the second run a no-op): sent again with its id */
        return keep_unsure(c);
    }
    if (errstr == aor_redis_err_reply) {
        /* Redis refused the script (a key of the wrong type, say): trying again would fail again
         * (router/redis.c counts the error in aoai_router_redis_errors_total) */
        for (int i = 0; c->count_usage && i != c->nusage; ++i)
            log_refused(c, i, "");
    } else if (errstr != NULL) {
        return keep_unsure(c); /* sent, no reply: Redis may have run it */
    } else if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer > 1 && c->count_usage) {
        /* applied, but these usage keys are not hashes: the other windows were written */
        for (int i = 0; i != c->nusage; ++i)
            if ((reply->integer - 1) / 2 >> i & 1)
                log_refused(c, i, " (not a hash)");
    }
    return 0;
}

/* adds the arguments after the deployment to a settle call: the numbers, its id, the reservations */
static int settle_args(struct aor_admit_call *c, int has_bucket, const char *ids, size_t ids_len)
{
    int64_t n[6 + 3] = {has_bucket, c->count_usage, c->usage.requests, c->usage.prompt, c->usage.completion, c->usage.total};
    int i;

    for (i = 0; i != c->nusage; ++i)
        n[6 + i] = c->ttl[i];
    if (call_nums(c, n, 6 + (size_t)c->nusage) != 0 || call_id(c) != 0 || call_arg(c, ids, ids_len) != 0)
        return -1;
    return 0;
}

static void flush_backlog(struct aor_worker *w)
{
    struct backlog_entry batch[FLUSH_BATCH];
    size_t n = 0, i;

    pthread_mutex_lock(&backlog_lock);
    while (n != FLUSH_BATCH && backlog_len != 0) {
        batch[n++] = backlog[backlog_len - 1];
        --backlog_len;
    }
    pthread_mutex_unlock(&backlog_lock);
    for (i = 0; i != n; ++i) {
        struct aor_admit_call *c = call_new(w, &settle_script);
        if (c != NULL) {
            c->done = on_settled;
            c->count_usage = 1;
            c->nusage = 1;
            c->ttl[0] = batch[i].ttl;
            c->usage = batch[i].u;
            snprintf(c->deployment, sizeof(c->deployment), "%s", batch[i].deployment);
            call_set_numkeys(c, 2);
            c->marker_arg = 1;
            if (call_arg(c, batch[i].key, strlen(batch[i].key)) == 0 &&
                call_arg(c, batch[i].marker, strlen(batch[i].marker)) == 0 &&
                call_arg(c, c->deployment, strlen(c->deployment)) == 0 && settle_args(c, 0, "", 0) == 0 && call_send(c) == 0)
                continue;
            call_free(c);
        }
        backlog_add(batch[i].key, batch[i].marker, batch[i].deployment, batch[i].ttl, &batch[i].u);
    }
}

/* sends the settles of unknown outcome again, with their ids, on this worker's connection */
static void flush_unsure(struct aor_worker *w)
{
    struct aor_admit_call *c;
    int n = 0;

    while (n++ != FLUSH_BATCH && (c = unsure_take()) != NULL) {
        c->w = w;
        c->redis = w->redis;
        c->prev = c->next = NULL;
        if (call_send(c) != 0) {
            if (!keep_unsure(c))
                call_free(c);
            break;
        }
    }
}

static void on_flush_timer(uv_timer_t *t)
{
    struct aor_worker *w = t->data;

    if (!aor_redis_is_up(w->redis))
        return;
    if (unsure_size() != 0)
        flush_unsure(w);
    if (aor_admit_backlog_size() != 0)
        flush_backlog(w);
}

static void admit_flush(void *data);

int aor_admit_worker_start(struct aor_worker *w)
{
    if (w->redis == NULL)
        return 0;
    if ((w->admit = calloc(1, sizeof(*w->admit))) == NULL)
        return -1;
    aor_redis_set_before_flush(w->redis, admit_flush, w);
    uv_timer_init(&w->loop, &w->admit->timer);
    w->admit->timer.data = w;
    uv_timer_start(&w->admit->timer, on_flush_timer, FLUSH_INTERVAL_MS, FLUSH_INTERVAL_MS);
    uv_unref((uv_handle_t *)&w->admit->timer);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_stop_guard(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* the client connections are gone: while Redis is up, the calls in flight get their replies and
 * the backlog and the settles of unknown outcome are written, for up to AOR_ADMIT_STOP_FLUSH_MS
 * (a restart after an outage would otherwise lose what waits) */
static void stop_flush(struct aor_worker *w)
{
    uv_timer_t guard;
    int expired = 0, rounds = 0;

    uv_timer_init(&w->loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_stop_guard, AOR_ADMIT_STOP_FLUSH_MS, 0);
    while (!expired) {
        if (w->admit->calls == NULL) {
            /* a round that sends nothing (Redis away, out of memory) ends it */
            if (!aor_redis_is_up(w->redis) || (unsure_size() == 0 && aor_admit_backlog_size() == 0) || rounds++ == 64)
                break;
            flush_unsure(w);
            flush_backlog(w);
            if (w->admit->calls == NULL)
                break;
        }
        uv_run(&w->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
}

/* a reserve call whose reply is not awaited any more: its requests are gone with their connections */
static void drop_reserve(struct aor_admit_call *c)
{
    call_unlink(c);
    aor_redis_cancel(c->cmd);
    c->cmd = NULL;
    for (int i = 0; i != c->nmembers; ++i) {
        c->members[i]->adm.call = NULL;
        if (c->members[i]->req == NULL)
            c->cb(c->members[i]);
    }
    free(c);
}

/* reservations still awaited (the drain ended before Redis answered): Redis may make them yet;
 * a settle queued behind each on the same connection, written now, gives it back when it does */
static void settle_behind_reserves(struct aor_worker *w)
{
    admit_flush(w); /* gathered, not sent yet: they join the calls in flight below */
    for (struct aor_admit_call *c = w->admit->calls; c != NULL; c = c->next) {
        if (c->nmembers == 0 || c->settled_behind)
            continue;
        c->settled_behind = 1;
        for (int i = 0; i != c->nmembers; ++i) {
            c->members[i]->adm.maybe_reserved = 1;
            aor_admit_settle(c->members[i]);
        }
    }
    admit_flush(w);
    aor_redis_flush_now(w->redis);
}

void aor_admit_teardown(struct aor_worker *w)
{
    /* before the client connections close: a request waiting on its reserve keeps its connection
     * up to the command deadline, and a timeout drops the Redis connection the settle needs */
    if (w->admit != NULL)
        settle_behind_reserves(w);
}

void aor_admit_worker_stop(struct aor_worker *w)
{
    struct aor_admit_call *c, *next;

    if (w->admit == NULL)
        return;
    settle_behind_reserves(w);
    for (c = w->admit->calls; c != NULL; c = next) {
        next = c->next;
        if (c->nmembers != 0)
            drop_reserve(c);
    }
    stop_flush(w);
    admit_flush(w);
    aor_redis_flush_now(w->redis); /* what the socket takes now (plain TCP); the rest is lost with the connection */
    aor_redis_set_before_flush(w->redis, NULL, NULL);
    /* settles still in flight: sent again later, with their ids (the process may flush them from another
     * worker), or reported at exit */
    while ((c = w->admit->calls) != NULL) {
        if (c->nmembers != 0) {
            drop_reserve(c);
            continue;
        }
        call_unlink(c);
        c->maybe_applied |= aor_redis_cmd_sent(c->cmd);
        aor_redis_cancel(c->cmd);
        c->cmd = NULL;
        if (!keep_unsure(c))
            free(c);
    }
    while (w->admit->spare != NULL) {
        c = w->admit->spare;
        w->admit->spare = c->next;
        free(c);
    }
    uv_timer_stop(&w->admit->timer);
    w->admit->timer.data = w->admit;
    uv_close((uv_handle_t *)&w->admit->timer, on_timer_closed);
    w->admit = NULL;
}

static void report_usage(const char *what, const char *key, const char *deployment, const struct usage_delta *u)
{
    /* the deployment quoted ("" none): a name may be "-" but never holds a quote */
    AOR_LOG(AOR_LOG_ERROR, "admit",
            "usage %s: key %s deployment \"%s\" requests %lld prompt_tokens %lld completion_tokens %lld total_tokens %lld", what,
            key, deployment, (long long)u->requests, (long long)u->prompt, (long long)u->completion, (long long)u->total);
}

void aor_admit_report_unwritten(void)
{
    struct aor_admit_call *c;
    char key[KEY_MAX];
    size_t i;

    pthread_mutex_lock(&backlog_lock);
    for (i = 0; i != backlog_len; ++i)
        report_usage("not recorded at exit", backlog[i].key, backlog[i].deployment, &backlog[i].u);
    free(backlog);
    backlog = NULL;
    backlog_len = 0;
    pthread_mutex_unlock(&backlog_lock);
    /* kept whole for a re-send: sent and never confirmed (Redis may have applied them), or never
     * sent (kept for the reservation they give back) */
    while ((c = unsure_take()) != NULL) {
        for (int j = 0; c->count_usage && j != c->nusage; ++j)
            report_usage(c->maybe_applied ? "perhaps not recorded (sent, never confirmed) at exit" : "not recorded at exit",
                         call_arg_str(c, j, key), c->deployment, &c->usage);
        free(c);
    }
}

/* ---- keys ------------------------------------------------------------------------------------ */

static const char *prefix_of(const struct aor_config *conf)
{
    return conf->redis.prefix != NULL ? conf->redis.prefix : "aoai:";
}

static void key_parts_of(const struct aor_request *ar, struct key_parts *k)
{
    k->prefix = prefix_of(ar->conf);
    k->prefix_len = strlen(k->prefix);
    k->tenant = ar->tenant;
    k->tenant_len = strlen(ar->tenant);
}

/* the usage keys of the three windows */
static int add_usage_keys(struct aor_admit_call *c, const struct key_parts *k, const struct aor_quota_windows *win)
{
    return CALL_KEY(c, k, "usage:", ":minute:", win->minute) != 0 || CALL_KEY(c, k, "usage:", ":day:", win->day) != 0 ||
                   CALL_KEY(c, k, "usage:", ":month:", win->month) != 0
               ? -1
               : 0;
}

/* reservation buckets looked back at: enough to cover the longest request */
static int num_buckets(const struct aor_config *conf)
{
    uint64_t longest = conf->limits.connect_timeout_ms + conf->limits.upstream_timeout_ms;
    uint64_t n = (longest + 59999) / 60000 + 1;
    return n > AOR_ADMIT_MAX_BUCKETS ? AOR_ADMIT_MAX_BUCKETS : (int)n;
}

/* ---- the admit stage -------------------------------------------------------------------- */

/* a fallback limit as the reserve script gets it: at most AOR_QUOTA_MAX_VALUE (-1 unlimited stays) */
static int64_t script_limit(int64_t v)
{
    return v > AOR_QUOTA_MAX_VALUE ? AOR_QUOTA_MAX_VALUE : v;
}

/* the reserve script's answer, read from its one string (see reserve_lua) */
struct reserve_record {
    int64_t code, remaining_tokens, remaining_requests, used[4];
    const char *what;
    size_t what_len;
};

struct reserve_reply {
    int nrec;
    struct reserve_record rec[RESERVE_BATCH_MAX];
    const char *quota; /* "<len1> ... <len6>\n<values>": the tenant hash as the script saw it */
    size_t quota_len;
    struct aor_quota_fields f;
};

/* a decimal integer (optional '-') ending at a blank or a newline; advances *p past the separator */
static int read_int(const char **p, const char *end, char sep, int64_t *out)
{
    const char *s = *p;
    int neg = 0;
    uint64_t v = 0;

    if (s != end && *s == '-') {
        neg = 1;
        ++s;
    }
    if (s == end || *s < '0' || *s > '9')
        return -1;
    for (; s != end && *s >= '0' && *s <= '9'; ++s) {
        if (v > 99999999999999999ull) /* 18 digits: the script's numbers are far smaller */
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (s == end || *s != sep)
        return -1;
    *p = s + 1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* 0, or -1 when `s` is not what the script answers for `nrec` requests */
static int parse_reserve_reply(const char *s, size_t len, int nrec, struct reserve_reply *r)
{
    const char *p = s, *end = s + len, *v;
    int64_t flen[6];
    size_t total = 0;
    int i, k;

    if (nrec < 1 || nrec > RESERVE_BATCH_MAX)
        return -1;
    r->nrec = nrec;
    for (k = 0; k != nrec; ++k) {
        struct reserve_record *rec = &r->rec[k];
        if (read_int(&p, end, ' ', &rec->code) != 0 || rec->code < 0 || rec->code > 2)
            return -1;
        rec->what = p;
        while (p != end && *p != ' ')
            ++p;
        if (p == end || (rec->what_len = (size_t)(p - rec->what)) == 0)
            return -1;
        ++p;
        if (read_int(&p, end, ' ', &rec->remaining_tokens) != 0 || read_int(&p, end, ' ', &rec->remaining_requests) != 0)
            return -1;
        for (i = 0; i != 4; ++i)
            if (read_int(&p, end, ' ', &rec->used[i]) != 0)
                return -1;
    }
    r->quota = p;
    for (i = 0; i != 6; ++i) {
        if (read_int(&p, end, i == 5 ? '\n' : ' ', &flen[i]) != 0 || flen[i] < -1 || flen[i] > 2048)
            return -1;
        total += flen[i] < 0 ? 0 : (size_t)flen[i];
    }
    if ((size_t)(end - p) != total)
        return -1;
    r->quota_len = (size_t)(end - r->quota);
    memset(&r->f, 0, sizeof(r->f));
    v = p;
#define F(i, field)                                                                                                                \
    if (flen[i] >= 0) {                                                                                                            \
        r->f.field = v;                                                                                                            \
        r->f.field##_len = (size_t)flen[i];                                                                                        \
        v += flen[i];                                                                                                              \
    }
    F(0, tpm)
    F(1, rpm)
    F(2, day)
    F(3, month)
    F(4, deployments)
    F(5, disabled)
#undef F
    return 0;
}

/*
 * The quota the tenant hash in a reserve reply resolves to. Each replica remembers it as the
 * tenant's last-known quota for outages, with a checksum of the hash: while the hash and the
 * config stay the same (nearly always), the fields are not parsed again. Logs bad values once
 * per change of the hash.
 */
static int remember_quota(struct aor_request *ar, const struct reserve_reply *rr, struct aor_quota *out)
{
    uint64_t sum = fnv(rr->quota, rr->quota_len, 0xcbf29ce484222325ull), gen = ar->conf->generation;
    struct local_entry *e;
    struct aor_quota q;
    unsigned bad;

    pthread_mutex_lock(&local_lock);
    /* the shared overflow entry keeps counters only: one tenant's quota is not another's */
    if ((e = local_find(ar->tenant)) != NULL && e != &local_table[AOR_ADMIT_LOCAL_TENANTS] && e->have_quota && e->hash_fnv == sum &&
        e->conf_generation == gen) {
        *out = e->q;
        pthread_mutex_unlock(&local_lock);
        return 1;
    }
    pthread_mutex_unlock(&local_lock);
    bad = aor_quota_resolve(ar->conf, ar->tenant, &rr->f, &q);
    pthread_mutex_lock(&local_lock);
    if ((e = local_find(ar->tenant)) != NULL && e != &local_table[AOR_ADMIT_LOCAL_TENANTS]) {
        if (bad != 0 && e->hash_fnv != sum)
            AOR_LOG(AOR_LOG_WARN, "admit",
                    "%s: tenant %s: quota hash has invalid values (mask %u: 1 tpm, 2 rpm, 4 tokens_per_day, 8 tokens_per_month, "
                    "16 deployments, 32 disabled); they count as absent (an odd disabled counts as 1)",
                    ar->id, ar->tenant, bad);
        e->hash_fnv = sum;
        e->conf_generation = gen;
        e->q = q;
        e->have_quota = 1;
    }
    pthread_mutex_unlock(&local_lock);
    *out = q;
    return 1;
}

static int what_is(const struct reserve_record *r, const char *word)
{
    return r->what_len == strlen(word) && memcmp(r->what, word, r->what_len) == 0;
}

/* one request's outcome from its record in a reserve reply */
static void apply_record(struct aor_request *ar, const struct reserve_record *rec, const struct aor_quota *q, int64_t now)
{
    struct aor_admission *a = &ar->adm;

    if (rec->code != 2)
        publish_usage(ar, q, rec->used);
    if (rec->code == 0) {
        a->reserved = AOR_ADMIT_REDIS;
        a->remaining_tokens = rec->remaining_tokens;
        a->remaining_requests = rec->remaining_requests;
    } else if (rec->code == 1) {
        enum aor_quota_limit l = what_is(rec, "tpm")   ? AOR_LIMIT_TPM
                                 : what_is(rec, "rpm") ? AOR_LIMIT_RPM
                                 : what_is(rec, "day") ? AOR_LIMIT_DAY
                                                       : AOR_LIMIT_MONTH;
        int64_t end = l == AOR_LIMIT_DAY ? a->win.day_end_ms : l == AOR_LIMIT_MONTH ? a->win.month_end_ms : a->win.minute_end_ms;
        refuse_quota(ar, l, aor_quota_retry_after(now, end));
    } else {
        refuse_forbidden(ar, what_is(rec, "disabled") ? "disabled" : what_is(rec, "zero") ? "zero" : "deployment");
    }
}

/* the reserve call's end: each request, in order, gets its outcome and its callback */
static int on_reserved(struct aor_admit_call *c, const redisReply *reply, const char *errstr)
{
    int64_t now = aor_now_ms();
    struct reserve_reply *rr = NULL;
    struct aor_quota q;
    int i;

    if (errstr == NULL && reply != NULL && reply->type == REDIS_REPLY_STRING && (rr = malloc(sizeof(*rr))) != NULL &&
        parse_reserve_reply(reply->str, reply->len, c->nmembers, rr) != 0) {
        free(rr);
        rr = NULL;
    }
    if (errstr == NULL && rr == NULL && c->nmembers != 0)
        AOR_LOG(AOR_LOG_WARN, "admit", "%s: unexpected reply from the reserve script", c->members[0]->id);
    if (rr != NULL && c->nmembers != 0)
        remember_quota(c->members[0], rr, &q); /* one tenant and config for the whole batch */
    for (i = 0; i != c->nmembers; ++i) {
        struct aor_request *ar = c->members[i];
        ar->adm.call = NULL;
        /* sent, and no reply: Redis may run it yet (a stopped Redis resumed): the settle gives it back */
        if (errstr == aor_redis_err_timeout || errstr == aor_redis_err_disconnected)
            ar->adm.maybe_reserved = 1;
        if (rr != NULL)
            apply_record(ar, &rr->rec[i], &q, now);
        else if (ar->req != NULL)
            store_unavailable(ar, now);
        if (ar->req == NULL)
            aor_admit_settle(ar); /* the client left meanwhile: give the reservation back */
        c->cb(ar);
    }
    free(rr);
    return 0;
}

/* not sent: the reserve call could not join Redis' output (down, or over its bound) */
static const char reserve_not_sent[] = "not sent";

/* sends the group's call with its requests; on failure each request is decided without Redis */
static void rgroup_send(struct reserve_group *g)
{
    struct aor_admit_call *c = g->c;

    g->c = NULL;
    if (call_arg(c, g->members, g->members_len) == 0 && call_send(c) == 0)
        return;
    on_reserved(c, NULL, reserve_not_sent);
    call_free(c);
}

/* sends every open group, oldest first */
static void rgroups_send_all(struct aor_admit_worker *aw)
{
    for (;;) {
        struct reserve_group *oldest = NULL;
        for (int i = 0; i != RESERVE_GROUPS; ++i)
            if (aw->rgroups[i].c != NULL && (oldest == NULL || aw->rgroups[i].opened < oldest->opened))
                oldest = &aw->rgroups[i];
        if (oldest == NULL)
            return;
        rgroup_send(oldest);
    }
}

/* the reserve call of a new group for `ar`: its keys, fallback and numbers written */
static struct aor_admit_call *reserve_call_new(struct aor_request *ar, const struct aor_quota *fallback, const char *deps,
                                               int64_t now)
{
    struct aor_admission *a = &ar->adm;
    struct aor_worker *w = ar->worker;
    struct aor_quota_windows past;
    struct aor_admit_call *c;
    struct key_parts k;
    struct key_block *kb;
    int nb = num_buckets(ar->conf), nday = 0, nmonth = 0, i;

    if ((c = call_new(w, &reserve_script)) == NULL)
        return NULL;
    c->done = on_reserved;
    call_set_numkeys(c, 4 + nb);
    kb = key_block_of(w, KEYS_RESERVE, ar->tenant);
    if (keys_from_block(c, kb, ar->conf->generation, a->win.minute_id, ar->tenant)) {
        nday = kb->nday;
        nmonth = kb->nmonth;
    } else {
        key_parts_of(ar, &k);
        if (CALL_KEY(c, &k, "tenant:", "", "") != 0 || add_usage_keys(c, &k, &a->win) != 0)
            goto fail;
        for (i = 0; i != nb; ++i) {
            aor_quota_windows(now - (int64_t)i * 60000, &past);
            if (CALL_KEY(c, &k, "reserved:", ":", past.minute) != 0)
                goto fail;
            nday += past.day_id == a->win.day_id;
            nmonth += past.month_id == a->win.month_id;
        }
        keys_to_block(kb, c, ar->conf->generation, a->win.minute_id, ar->tenant, nday, nmonth);
    }
    {
        /* the config takes limits up to INT64_MAX, but the script computes in Lua's doubles and
         * prints the headroom with %d into a reply whose numbers read_int takes to 18 digits:
         * a limit above the 15 digits a hash may hold is that many (still beyond any use) */
        int64_t n[7] = {script_limit(fallback->tpm),
                        script_limit(fallback->rpm),
                        script_limit(fallback->day),
                        script_limit(fallback->month),
                        nday,
                        nmonth,
                        nb * 60 + 120};
        if (call_arg(c, deps, strlen(deps)) != 0 || call_nums(c, n, 7) != 0)
            goto fail;
    }
    return c;
fail:
    call_free(c);
    return NULL;
}

/* the open group `ar` joins (same tenant, minute, config, fallback and callback), or NULL */
static struct reserve_group *rgroup_find(struct aor_admit_worker *aw, const struct aor_request *ar, const int64_t fb[4],
                                         const char *deps, aor_admit_cb cb, struct reserve_group **free_g)
{
    int i;

    *free_g = NULL;
    for (i = 0; i != RESERVE_GROUPS; ++i) {
        struct reserve_group *g = &aw->rgroups[i];
        if (g->c == NULL) {
            if (*free_g == NULL)
                *free_g = g;
        } else if (g->generation == ar->conf->generation && g->minute_id == ar->adm.win.minute_id && g->c->cb == cb &&
                   memcmp(g->fallback, fb, sizeof(g->fallback)) == 0 && strcmp(g->tenant, ar->tenant) == 0 &&
                   strcmp(g->deps, deps) == 0) {
            return g;
        }
    }
    return NULL;
}

int aor_admit_start(struct aor_request *ar, aor_admit_cb cb)
{
    struct aor_admission *a = &ar->adm;
    struct aor_worker *w = ar->worker;
    struct aor_admit_worker *aw = w->admit;
    int64_t now = aor_now_ms(), fb[4];
    struct aor_quota fallback;
    struct reserve_group one, *g = NULL, *free_g;
    const char *deps;
    char *p;
    size_t dl;

    a->remaining_tokens = a->remaining_requests = -1;
    a->estimate = ar->estimate < 0 ? 0 : ar->estimate > MAX_ESTIMATE ? MAX_ESTIMATE : ar->estimate;
    a->estimate += ar->estimate_default; /* 0..AOR_TENANT_MAX_DEFAULT_MAX_TOKENS (pipeline.c) */
    aor_quota_windows(now, &a->win);
    if (ar->tenant == NULL)
        ar->tenant = "default";
    if (w->redis == NULL) {
        local_admit(ar, now);
        return 1;
    }
    aor_quota_resolve(ar->conf, ar->tenant, NULL, &fallback);
    aor_quota_fill(&fallback, aor_deftenant_layer(w)); /* what the config does not name: tenant:{default}'s */
    deps = fallback.all_deployments ? "*" : fallback.deployments;
    fb[0] = fallback.tpm;
    fb[1] = fallback.rpm;
    fb[2] = fallback.day;
    fb[3] = fallback.month;
    /* a Redis that takes no command now (down, reconnecting after failures) decides at once */
    dl = strlen(ar->deployment);
    if (dl != 0 && !aor_route_valid_name(ar->deployment, dl)) { /* never: routes.c and pipeline.c let only such names through */
        store_unavailable(ar, now);
        return 1;
    }
    if (aw != NULL && aor_redis_accepting(w->redis) && strlen(ar->tenant) < sizeof(g->tenant) && strlen(deps) < sizeof(g->deps)) {
        if ((g = rgroup_find(aw, ar, fb, deps, cb, &free_g)) == NULL && (g = free_g) == NULL) {
            /* a ninth group: every open one leaves, in the order they opened */
            rgroups_send_all(aw);
            g = &aw->rgroups[0];
        }
    } else {
        one.c = NULL;
        g = &one;
    }
    if (g->c == NULL) {
        if ((g->c = reserve_call_new(ar, &fallback, deps, now)) == NULL) {
            store_unavailable(ar, now);
            return 1;
        }
        g->c->cb = cb;
        g->generation = ar->conf->generation;
        g->minute_id = a->win.minute_id;
        memcpy(g->fallback, fb, sizeof(fb));
        if (g != &one) {
            snprintf(g->tenant, sizeof(g->tenant), "%s", ar->tenant);
            snprintf(g->deps, sizeof(g->deps), "%s", deps);
            g->opened = ++aw->rgroups_opened;
        }
        g->members_len = 0;
    }
    /* "<estimate> <id> =<deployment> " */
    p = put_dec(g->members + g->members_len, (uint64_t)a->estimate);
    *p++ = ' ';
    {
        size_t idl = make_id(a->reservation_id, sizeof(a->reservation_id));
        memcpy(p, a->reservation_id, idl);
        p += idl;
        *p++ = ' ';
        *p++ = '=';
        memcpy(p, ar->deployment, dl);
        p += dl;
        *p++ = ' ';
    }
    g->members_len = (size_t)(p - g->members);
    g->c->members[g->c->nmembers++] = ar;
    a->call = g->c;
    if (g == &one) {
        struct aor_admit_call *c = g->c;
        if (call_arg(c, g->members, g->members_len) == 0 && call_send(c) == 0)
            return 0;
        a->call = NULL;
        call_free(c);
        store_unavailable(ar, now);
        return 1;
    }
    if (g->c->nmembers == RESERVE_BATCH_MAX)
        rgroups_send_all(aw); /* this one and, before it, any older one (of this tenant too) */
    else
        aor_redis_flush_soon(w->redis);
    return 0;
}

/* ---- the account stage ------------------------------------------------------------------ */

/* ---- settles, gathered per loop iteration ---------------------------------------------------- */

/* sends the group's call with its numbers, its id and the reservations to give back; frees the group */
static void group_send(struct settle_group *g)
{
    struct aor_admit_call *c = g->c;

    g->c = NULL;
    if (settle_args(c, 1, g->ids, g->ids_len) != 0) { /* never: the arena holds a full batch */
        keep_usage(c);
        call_free(c);
        return;
    }
    if (call_send(c) == 0)
        return;
    /* Redis is down: the usage waits for it; with reservations to give back, the whole call */
    if (g->ids_len != 0) {
        if (!keep_unsure(c))
            call_free(c);
        return;
    }
    keep_usage(c);
    call_free(c);
}

/* router/redis.c's before-flush hook: the reserves and settles of this loop iteration join its write */
static void admit_flush(void *data)
{
    struct aor_worker *w = data;
    int i;

    if (w->admit == NULL)
        return;
    rgroups_send_all(w->admit);
    for (i = 0; i != SETTLE_GROUPS; ++i)
        if (w->admit->groups[i].c != NULL)
            group_send(&w->admit->groups[i]);
}

/* a settle call for `ar`'s tenant, admission minute and deployment: its keys and deployment written */
static struct aor_admit_call *settle_call_new(struct aor_request *ar)
{
    const struct aor_admission *a = &ar->adm;
    struct aor_admit_call *c = call_new(ar->worker, &settle_script);
    struct key_block *kb;
    struct key_parts k;
    size_t l;

    if (c == NULL)
        return NULL;
    c->done = on_settled;
    c->nusage = 3;
    c->ttl[0] = MINUTE_TTL_S;
    c->ttl[1] = DAY_TTL_S;
    c->ttl[2] = MONTH_TTL_S;
    l = strnlen(ar->deployment, sizeof(c->deployment) - 1);
    memcpy(c->deployment, ar->deployment, l);
    c->deployment[l] = '\0';
    call_set_numkeys(c, 5);
    c->marker_arg = 4;
    kb = key_block_of(ar->worker, KEYS_SETTLE, ar->tenant);
    if (!keys_from_block(c, kb, ar->conf->generation, a->win.minute_id, ar->tenant)) {
        key_parts_of(ar, &k);
        if (add_usage_keys(c, &k, &a->win) != 0 || CALL_KEY(c, &k, "reserved:", ":", a->win.minute) != 0 ||
            CALL_KEY(c, &k, "settled:", ":", a->win.minute) != 0)
            goto fail;
        keys_to_block(kb, c, ar->conf->generation, a->win.minute_id, ar->tenant, 0, 0);
    }
    if (call_arg(c, c->deployment, l) != 0)
        goto fail;
    return c;
fail:
    call_free(c);
    return NULL;
}

/*
 * Adds a finished request to its worker's group of settles (tenant, admission minute,
 * deployment): the group leaves as one call just before the worker's Redis commands of this loop
 * iteration are written, or at once when full. Without a worker's admit state (stopping), alone
 * and at once.
 */
static void settle_gather(struct aor_request *ar, int count, int bucket, const struct usage_delta *u)
{
    struct aor_admit_worker *aw = ar->worker->admit;
    const struct aor_admission *a = &ar->adm;
    size_t dl = strnlen(ar->deployment, sizeof(((struct aor_admit_call *)NULL)->deployment) - 1), il;
    struct settle_group one, *g = NULL, *free_g = NULL;
    int i;

    if (aw != NULL) {
        for (i = 0; i != SETTLE_GROUPS && g == NULL; ++i) {
            struct settle_group *x = &aw->groups[i];
            if (x->c == NULL) {
                if (free_g == NULL)
                    free_g = x;
            } else if (x->generation == ar->conf->generation && x->minute_id == a->win.minute_id &&
                       strcmp(x->tenant, ar->tenant) == 0 && strlen(x->c->deployment) == dl &&
                       memcmp(x->c->deployment, ar->deployment, dl) == 0) {
                g = x;
            }
        }
        if (g == NULL && (g = free_g) == NULL) {
            g = &aw->groups[aw->next_evict++ % SETTLE_GROUPS];
            group_send(g);
        }
    } else {
        one.c = NULL;
        g = &one;
    }
    if (g->c == NULL) {
        if ((g->c = settle_call_new(ar)) == NULL)
            return; /* out of memory: this request's usage is not written */
        g->generation = ar->conf->generation;
        g->minute_id = a->win.minute_id;
        snprintf(g->tenant, sizeof(g->tenant), "%s", ar->tenant);
        g->members = 0;
        g->ids_len = 0;
    }
    if (bucket && (il = strnlen(a->reservation_id, sizeof(a->reservation_id))) != 0 && il < sizeof(a->reservation_id)) {
        char *p = put_dec(g->ids + g->ids_len, (uint64_t)a->estimate);
        *p++ = ' ';
        memcpy(p, a->reservation_id, il);
        p += il;
        *p++ = ' ';
        g->ids_len = (size_t)(p - g->ids);
    }
    if (count) {
        g->c->count_usage = 1;
        g->c->usage.requests += u->requests;
        g->c->usage.prompt += u->prompt;
        g->c->usage.completion += u->completion;
        g->c->usage.total += u->total;
    }
    if (g == &one || ++g->members == SETTLE_BATCH_MAX)
        group_send(g);
    else
        aor_redis_flush_soon(ar->worker->redis);
}

void aor_admit_settle(struct aor_request *ar)
{
    struct aor_admission *a = &ar->adm;
    int reserved = a->reserved;
    struct usage_delta u = {0, 0, 0, 0};
    int count = 0, bucket;

    if (reserved == AOR_ADMIT_NONE && !a->maybe_reserved)
        return;
    /* a reservation to give back in Redis: made there, or perhaps made (its reply was lost) */
    bucket = reserved == AOR_ADMIT_REDIS || a->maybe_reserved;
    a->reserved = AOR_ADMIT_NONE;
    a->maybe_reserved = 0;
    if (ar->usage.found) {
        count = 1;
    } else if (ar->sse.usage.found) {
        ar->usage = ar->sse.usage;
        count = 1;
    } else if (ar->started && ar->status >= 200 && ar->status < 300) {
        if (ar->mode == AOR_MODE_STREAM) {
            /* a stream without usage (cut short, or the client's stream_options turned it off):
             * the prompt as estimated plus a token per content event relayed */
            ar->usage.prompt = (int64_t)ar->body_len / 4;
            ar->usage.completion = ar->sse.content_events;
            ar->usage.total = ar->usage.prompt + ar->usage.completion;
            ar->usage.found = 1;
            a->usage_estimated = 1;
        }
        count = 1; /* answered: the request counts, with what it is known to have cost */
    }
    if (count) {
        u.requests = 1;
        u.prompt = ar->usage.prompt;
        u.completion = ar->usage.completion;
        u.total = ar->usage.total;
    }
    aor_metrics_tenant_settle(a->metrics, &a->win, a->estimate, count ? u.total : -1);
    if (reserved == AOR_ADMIT_LOCAL) {
        pthread_mutex_lock(&local_lock);
        struct local_entry *e = local_find(ar->tenant);
        if (e != NULL)
            aor_quota_local_settle(&e->c, &a->win, a->estimate, count ? u.total : -1);
        pthread_mutex_unlock(&local_lock);
    }
    if (ar->worker->redis == NULL || (!count && !bucket))
        return;
    settle_gather(ar, count, bucket, &u);
}
