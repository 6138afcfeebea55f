// Quotas under attack and outage (issue 8): hostile values in the tenant and usage hashes,
// 200 concurrent requests of one tenant through two router processes sharing one Redis,
// Redis killed mid-load and restarted (on_failure open: nothing fails, nothing is lost;
// closed: 503), Redis SIGSTOPped (requests bounded by the command deadline), the script
// cache flushed (NOSCRIPT), a stream cut short (charged as estimated), no Redis at all.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import {
  startMock,
  startRouter,
  backendFor,
  post,
  curlStream,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  fetchMetrics,
  metricSum,
  accessLogLine,
  httpRequest,
  run,
  pollUntil,
  tempDir,
  SLOW,
} from './lib/harness.mjs';
import { startDurableRedis } from './lib/quota_redis.mjs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const TENANTS = ['hostile', 'hostile-usage', 'wrongtype', 'reset', 'leaver', 'burst', 'outage', 'stopped', 'cut', 'noscript', 'plain', 'midsettle', 'bigfield', 'edge', 'phantom', 'killswitch'];
const KEYS = Object.fromEntries(TENANTS.map((t) => [t, `aor_${crypto.randomBytes(24).toString('base64url')}`]));
let seq = 0;
const rid = (w) => `it-hq-${w}-${++seq}-${Date.now()}`;

let east, redis, routerA, routerB, closedRouter, noRedisRouter;

function cli(...args) {
  return run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--raw', ...args]);
}

function config({ onFailure = 'open', withRedis = true, tenants } = {}) {
  return {
    ...(withRedis ? { redis: { url: redis.url, on_failure: onFailure } } : {}),
    backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
    auth: { mode: 'key', keys: { static: TENANTS.map((t) => ({ sha256: sha256(KEYS[t]), tenant: t })) } },
    tenants: tenants ?? { default: { tpm: 1000000, rpm: 100000 }, hostile: { rpm: 2 } },
  };
}

function call(router, tenant, { body = chatBody({ max_tokens: 2 }), id = rid(tenant), timeoutMs } = {}) {
  return post(router.url, CHAT_PATH, body, { headers: { 'api-key': KEYS[tenant], 'x-request-id': id }, timeoutMs }).then((r) => {
    r.id = id;
    return r;
  });
}

/** Keeps a test's requests inside one UTC minute: waits out the last 15 s of a minute. */
async function awayFromMinuteEdgeHq() {
  const s = (Date.now() % 60000) / 1000;
  if (s > 45) await sleep((60 - s) * 1000 + 300);
}

function dayKey(tenant) {
  const d = new Date().toISOString().slice(0, 10).replaceAll('-', '');
  return `aoai:usage:{${tenant}}:day:${d}`;
}

async function dayUsage(tenant) {
  const r = await cli('HGETALL', dayKey(tenant));
  const kv = r.stdout.split('\n');
  if (kv.at(-1) === '') kv.pop();
  const o = {};
  for (let i = 0; i + 1 < kv.length; i += 2) o[kv[i]] = Number(kv[i + 1]);
  return o;
}

before(async () => {
  east = await startMock('eastus', { tpm: 100000000, rpm: 1000000 });
  redis = await startDurableRedis();
  routerA = await startRouter({ config: config() });
  routerB = await startRouter({ config: config() });
  closedRouter = await startRouter({ config: config({ onFailure: 'closed' }) });
  noRedisRouter = await startRouter({ config: config({ withRedis: false, tenants: { default: { tpm: 1000000, rpm: 3 } } }) });
});

after(async () => {
  await stopAll(routerA, routerB, closedRouter, noRedisRouter, east, redis);
});

describe('hostile values in Redis', () => {
  it('tenant hash: non-numeric, negative other than -1, 10^30, empty → absent (the config entry applies), logged, no crash', async () => {
    const values = ['abc', '-5', '1000000000000000000000000000000', '', '1e3', ' 7'];
    for (const v of values) {
      await cli('DEL', 'aoai:tenant:{hostile}');
      await cli('HSET', 'aoai:tenant:{hostile}', 'rpm', v, 'tpm', v, 'tokens_per_day', v, 'tokens_per_month', v, 'deployments', v === '' ? '' : ',,', 'disabled', v === '' ? '' : 'no');
      // tenants.hostile has rpm 2 in the config: with every Redis value ignored, that limit holds
      const minuteLeft = 60000 - (Date.now() % 60000);
      if (minuteLeft < 3000) await sleep(minuteLeft + 200);
      const key = `aoai:usage:{hostile}:minute:*`;
      const keys = (await cli('--scan', '--pattern', key)).stdout.split('\n').filter(Boolean);
      for (const k of keys) await cli('DEL', k);
      for (const k of (await cli('--scan', '--pattern', 'aoai:reserved:{hostile}:*')).stdout.split('\n').filter(Boolean)) await cli('DEL', k);
      const codes = [];
      for (let i = 0; i < 3; ++i) codes.push((await call(routerA, 'hostile')).status);
      assert.deepEqual(codes, [200, 200, 429], `value ${JSON.stringify(v)}: ${codes}`);
    }
    assert.match(routerA.stderr(), /quota hash has invalid values/);
    assert.equal((await httpRequest(`${routerA.url}/healthz`)).status, 200);
  });

  it('disabled is a kill switch that fails closed (the rule a Redis key\'s tenant gets too): only 0/false/no (any case) or empty serve; 1/true/yes/on/off/" 1"/2/maybe → 403', async () => {
    const key = 'aoai:tenant:{killswitch}';
    const outcome = {};
    for (const v of ['1', 'true', 'TRUE', 'yes', 'On', 'off', ' 1', '1 ', '2', 'maybe', '0', 'false', 'No', 'FALSE', '']) {
      await cli('DEL', key);
      await cli('HSET', key, 'disabled', v);
      const r = await call(closedRouter, 'killswitch');
      outcome[JSON.stringify(v)] = r.status;
      if (r.status === 403) assert.equal(r.json().error.message, 'the tenant is disabled');
    }
    assert.deepEqual(outcome, {
      '"1"': 403, '"true"': 403, '"TRUE"': 403, '"yes"': 403, '"On"': 403, '"off"': 403, '" 1"': 403, '"1 "': 403, '"2"': 403, '"maybe"': 403,
      '"0"': 200, '"false"': 200, '"No"': 200, '"FALSE"': 200, '""': 200,
    });
    await cli('DEL', key);
  });

  it('usage and reservation hashes with garbage counters count as 0: the usage is still written whole (a counter HINCRBY refuses starts again from the settle\'s number), never crash', async () => {
    await awayFromMinuteEdgeHq();
    const now = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 12);
    const minute = `aoai:usage:{hostile-usage}:minute:${now}`;
    await cli('DEL', minute, dayKey('hostile-usage'));
    await cli('HSET', minute, 'total_tokens', 'garbage', 'requests', '-99999999999999999999', 'prompt_tokens', '1.5',
      'completion_tokens', '9223372036854775807', 'gpt-4o:total_tokens', 'x');
    await cli('HSET', dayKey('hostile-usage'), 'prompt_tokens', '100', 'total_tokens', ' 7');
    await cli('HSET', `aoai:reserved:{hostile-usage}:${now}`, 'tokens', '1e400', 'requests', 'x');
    await cli('HSET', 'aoai:tenant:{hostile-usage}', 'tpm', '1000', 'rpm', '5');
    const r = await call(routerA, 'hostile-usage');
    assert.equal(r.status, 200, r.body);
    const u = r.json().usage;
    assert.ok(u.total_tokens > 0 && u.prompt_tokens > 0, r.body);
    const hget = async (k, f) => (await cli('HGET', k, f)).stdout.trim();
    await pollUntil(async () => (await hget(minute, 'requests')) === '1', { timeoutMs: 3000 });
    assert.equal(await hget(minute, 'total_tokens'), String(u.total_tokens));
    assert.equal(await hget(minute, 'prompt_tokens'), String(u.prompt_tokens));
    assert.equal(await hget(minute, 'completion_tokens'), String(u.completion_tokens));
    assert.equal(await hget(minute, 'gpt-4o:total_tokens'), String(u.total_tokens));
    // a valid counter keeps its count; garbage in one field does not stop the day's others
    const day = await dayUsage('hostile-usage');
    assert.equal(day.prompt_tokens, 100 + u.prompt_tokens);
    assert.equal(day.total_tokens, u.total_tokens);
    assert.equal(day.requests, 1);
    assert.ok(Number((await cli('TTL', minute)).stdout) > 0, 'the minute hash has its TTL');
    assert.doesNotMatch(routerA.stderr(), /usage for aoai:usage:\{hostile-usage\}/);
  });

  it('a usage key of the wrong type (a string): that window is refused and logged once (no retry loop), the other windows are written; when the check must read it, open admits locally and closed answers 503', async () => {
    await awayFromMinuteEdgeHq();
    await cli('SET', dayKey('wrongtype'), 'not-a-hash');
    const count = () => (routerA.stderr().match(/quota script failed: WRONGTYPE/g) ?? []).length;
    const refused = () => (routerA.stderr().match(/usage for aoai:usage:\{wrongtype\}:day:\d+ not recorded: Redis refused the write \(not a hash\)/g) ?? []).length;
    // tokens_per_day unlimited: the check never reads the day hash, only the settle writes it
    const r = await call(routerA, 'wrongtype');
    assert.equal(r.status, 200);
    await sleep(1500); // three backlog flush ticks: a refused write is not retried
    assert.equal(refused(), 1, routerA.stderr().slice(-2000));
    assert.equal(count(), 0, 'the settle ran: the minute and month windows are written');
    const now = new Date().toISOString().replace(/[-:T]/g, '');
    const total = String(r.json().usage.total_tokens);
    assert.equal((await cli('HGET', `aoai:usage:{wrongtype}:minute:${now.slice(0, 12)}`, 'total_tokens')).stdout.trim(), total);
    assert.equal((await cli('HGET', `aoai:usage:{wrongtype}:month:${now.slice(0, 6)}`, 'total_tokens')).stdout.trim(), total);
    assert.equal((await cli('GET', dayKey('wrongtype'))).stdout.trim(), 'not-a-hash', 'the operator\'s key is left alone');
    // with a day quota the reserve script reads it and fails: on_failure decides
    await cli('HSET', 'aoai:tenant:{wrongtype}', 'tokens_per_day', '1000000');
    assert.equal((await call(routerA, 'wrongtype')).status, 200);
    assert.ok(count() >= 1, routerA.stderr().slice(-2000));
    const closed = await call(closedRouter, 'wrongtype');
    assert.equal(closed.status, 503, closed.body);
    assert.equal(closed.json().error.code, 'quota_store_unavailable');
    await cli('DEL', dayKey('wrongtype'));
    assert.equal((await call(closedRouter, 'wrongtype')).status, 200);
  });
});

describe('a tenant hash too big to carry', () => {
  it('a 2 MB field (notes, deployments, tpm) in one tenant hash: that tenant is served (invalid values absent), closed does not 503, the connection is not dropped for the others', async () => {
    const key = 'aoai:tenant:{bigfield}';
    await cli('DEL', key);
    await cli('EVAL', "redis.call('HSET', KEYS[1], 'x-notes', string.rep('n', 2000000), 'deployments', string.rep('gpt-4o,', 300000), 'tpm', string.rep('9', 2000000), 'rpm', '3')", '1', key);
    const from = closedRouter.stderr().length;
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      const [big, other] = await Promise.all([call(closedRouter, 'bigfield'), call(closedRouter, 'plain')]);
      statuses.push(big.status, other.status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200], closedRouter.stderr().slice(from, from + 2000));
    // rpm 3 (a small field beside the big ones) still holds
    const fourth = await call(closedRouter, 'bigfield');
    assert.equal(fourth.status, 429, fourth.body);
    assert.doesNotMatch(closedRouter.stderr().slice(from), /reply over|connection lost/);
    await cli('DEL', key);
  });
});

describe('a request across the UTC minute, day and month boundary', () => {
  it('reserved 1.5 s before a month ends, settled after: charged to the old windows, its reservation released; the new month starts from 0; retry-after before the boundary is 1..2', async () => {
    // the router's wall clock is shifted (LD_PRELOAD shim on clock_gettime CLOCK_REALTIME) to
    // 4 s before the next UTC month begins; deadlines and timers run on the monotonic clock
    const dir = tempDir('aor-it-clock-');
    const so = path.join(dir, 'clockshift.so');
    const src = path.join(path.dirname(fileURLToPath(import.meta.url)), 'lib', 'clockshift.c');
    const cc = await run('cc', ['-shared', '-fPIC', '-O1', '-o', so, src, '-ldl']);
    assert.equal(cc.code, 0, cc.stderr);
    const now0 = new Date();
    const boundary = Date.UTC(now0.getUTCFullYear(), now0.getUTCMonth() + 1, 1);
    const offset = boundary - 4000 - Date.now();
    const routerNow = () => Date.now() + offset;
    const waitUntil = async (t) => {
      const d = t - routerNow();
      if (d > 0) await sleep(d);
    };
    const p2 = (n) => String(n).padStart(2, '0');
    const win = (ms) => {
      const d = new Date(ms);
      const m = `${d.getUTCFullYear()}${p2(d.getUTCMonth() + 1)}`;
      return { month: m, day: `${m}${p2(d.getUTCDate())}`, minute: `${m}${p2(d.getUTCDate())}${p2(d.getUTCHours())}${p2(d.getUTCMinutes())}` };
    };
    const old = win(boundary - 1000), neu = win(boundary + 1000);
    await cli('DEL', 'aoai:tenant:{edge}');
    await cli('HSET', 'aoai:tenant:{edge}', 'tokens_per_month', '40', 'tpm', '-1', 'rpm', '-1', 'tokens_per_day', '-1');
    const router = await startRouter({
      config: config(),
      env: { LD_PRELOAD: so, AOR_TEST_REALTIME_OFFSET_MS: String(offset), ASAN_OPTIONS: `${process.env.ASAN_OPTIONS ?? 'detect_leaks=1'}:verify_asan_link_order=0` },
    });
    try {
      assert.ok(routerNow() < boundary - 1600, `the router took too long to start (${boundary - routerNow()} ms left)`);
      await east.setBehaviour({ chunk_interval_ms: 300 });
      await waitUntil(boundary - 1500);
      const id = rid('edge');
      const body = chatBody({ max_tokens: 8, stream: true }); // estimate ~ 33 of the month's 40
      const s = curlStream(router.url, CHAT_PATH, body, { headers: { 'api-key': KEYS.edge, 'x-request-id': id } });
      assert.ok(await s.waitEvents(1), 'no first event');
      await waitUntil(boundary - 1000);
      const over = await call(router, 'edge');
      assert.equal(over.status, 429, over.body);
      assert.match(over.json().error.message, /tokens_per_month/);
      const ra = Number(over.headers['retry-after']);
      assert.ok(ra >= 1 && ra <= 2, `retry-after ${over.headers['retry-after']} with the month ending in about 1 s`);
      await waitUntil(boundary + 300);
      const fresh = await call(router, 'edge');
      assert.equal(fresh.status, 200, `the new month starts from 0: ${fresh.body}`);
      const r = await s.done;
      assert.equal(r.status, 200);
      const line = await accessLogLine(router, id, 10000 * SLOW);
      assert.equal(line.usage, 'reported');
      await sleep(300);
      const h = async (k) => {
        const kv = (await cli('HGETALL', k)).stdout.split('\n');
        const o = {};
        for (let i = 0; i + 1 < kv.length; i += 2) o[kv[i]] = Number(kv[i + 1]);
        return o;
      };
      for (const [kind, w] of [['minute', old.minute], ['day', old.day], ['month', old.month]]) {
        const u = await h(`aoai:usage:{edge}:${kind}:${w}`);
        assert.equal(u.requests, 1, `${kind} ${w}: ${JSON.stringify(u)}`);
        assert.equal(u.total_tokens, line.total_tokens, `${kind} ${w}: the stream, charged to the window it was admitted in`);
      }
      for (const [kind, w] of [['minute', neu.minute], ['day', neu.day], ['month', neu.month]]) {
        const u = await h(`aoai:usage:{edge}:${kind}:${w}`);
        assert.equal(u.requests, 1, `${kind} ${w}: only the request admitted after the boundary: ${JSON.stringify(u)}`);
        assert.equal(u.total_tokens, fresh.json().usage.total_tokens);
      }
      const bucket = await h(`aoai:reserved:{edge}:${old.minute}`);
      assert.equal(bucket.tokens ?? 0, 0, `old minute's reservation left: ${JSON.stringify(bucket)}`);
      assert.equal(bucket.requests ?? 0, 0);
    } finally {
      await east.setBehaviour({});
      await stopAll(router);
    }
  });
});

describe('one quota across replicas', () => {
  it('two router processes, 200 concurrent requests of one tenant, rpm 50: at most 50 admitted; usage = what the backend reported', async () => {
    const minuteLeft = 60000 - (Date.now() % 60000);
    if (minuteLeft < 15000) await sleep(minuteLeft + 300);
    await cli('HSET', 'aoai:tenant:{burst}', 'rpm', '50');
    const before = await dayUsage('burst');
    const agentA = new http.Agent({ keepAlive: true, maxSockets: 50 });
    const agentB = new http.Agent({ keepAlive: true, maxSockets: 50 });
    const body = chatBody({ max_tokens: 2 });
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        httpRequest(`${(i % 2 ? routerA : routerB).url}${CHAT_PATH}`, {
          method: 'POST',
          body,
          agent: i % 2 ? agentA : agentB,
          headers: { 'api-key': KEYS.burst },
          timeoutMs: 30000 * SLOW,
        }),
      ),
    );
    agentA.destroy();
    agentB.destroy();
    const ok = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status === 429);
    assert.equal(ok.length + limited.length, 200, `other statuses: ${[...new Set(results.map((r) => r.status))]}`);
    assert.ok(ok.length <= 50, `${ok.length} admitted with rpm 50`);
    assert.ok(ok.length >= 45, `only ${ok.length} admitted: the quota should be usable`);
    for (const r of limited) assert.equal(r.json().error.code, 'tenant_quota_exceeded');
    await sleep(300);
    const after = await dayUsage('burst');
    const reported = ok.reduce((s, r) => s + r.json().usage.total_tokens, 0);
    assert.equal((after.total_tokens ?? 0) - (before.total_tokens ?? 0), reported);
    assert.equal((after.requests ?? 0) - (before.requests ?? 0), ok.length);
  });
});

describe('Redis outage', () => {
  it('SCRIPT FLUSH: the next admission reloads the script (NOSCRIPT) and succeeds', async () => {
    assert.equal((await call(routerA, 'noscript')).status, 200);
    await cli('SCRIPT', 'FLUSH');
    const r = await call(routerA, 'noscript');
    assert.equal(r.status, 200, r.body);
    await sleep(100);
    assert.equal((await dayUsage('noscript')).requests, 2);
  });

  it('the client leaves while its reservation is on the way: the reservation is given back when the reply comes', async () => {
    // h2c: the router notices the client's going at once (HTTP/1.1 is not read while a request runs)
    const sleeping = cli('DEBUG', 'SLEEP', '0.6'); // Redis answers late, within the 1 s deadline
    await sleep(50);
    const r = await post(routerA.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { proto: 'h2c', headers: { 'api-key': KEYS.leaver }, args: ['--max-time', '0.25'] });
    assert.notEqual(r.status, 200, 'the client was meant to give up first');
    await sleeping;
    await sleep(300);
    const keys = (await cli('--scan', '--pattern', 'aoai:reserved:{leaver}:*')).stdout.split('\n').filter(Boolean);
    assert.ok(keys.length >= 1, 'the reservation reached Redis');
    for (const k of keys) {
      assert.equal(Number((await cli('HGET', k, 'tokens')).stdout), 0, `${k} still holds tokens`);
      assert.equal(Number((await cli('HGET', k, 'requests')).stdout), 0, `${k} still holds a request`);
    }
    assert.equal((await dayUsage('leaver')).requests ?? 0, 0);
    assert.equal((await call(routerA, 'leaver')).status, 200);
  });

  it('killed mid-load and restarted: open → no request fails, usage exact (a settle whose reply died with Redis is sent again and counts once); closed → 503 quota_store_unavailable', async () => {
    const before = await dayUsage('outage');
    const errorsBefore = metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total');
    let stop = false;
    const results = [];
    const closedStatuses = [];
    const loop = async (router) => {
      while (!stop) {
        const t0 = Date.now();
        const r = await call(router, 'outage', { timeoutMs: 10000 * SLOW });
        r.took = Date.now() - t0;
        results.push(r);
      }
    };
    const loops = [loop(routerA), loop(routerA), loop(routerB), loop(routerB)];
    await sleep(700);
    await redis.kill();
    await sleep(300);
    closedStatuses.push(await call(closedRouter, 'outage'));
    await sleep(900);
    await redis.restart();
    await sleep(800);
    stop = true;
    await Promise.all(loops);
    const failed = results.filter((r) => r.status !== 200);
    assert.equal(failed.length, 0, `failed during the outage: ${failed.slice(0, 3).map((r) => `${r.status} ${r.took} ms ${r.body} ${r.stderr}`)}`);
    const slowest = Math.max(...results.map((r) => r.took));
    assert.ok(slowest < 3000 * SLOW, `a request was held ${slowest} ms (Redis command deadline 1 s)`);
    assert.ok(results.length > 20, `only ${results.length} requests ran`);
    assert.equal(closedStatuses[0].status, 503, closedStatuses[0].body);
    assert.equal(closedStatuses[0].json().error.code, 'quota_store_unavailable');
    const reported = results.reduce((s, r) => s + r.json().usage.total_tokens, 0);
    // the backlog is written once Redis is back (flush every 0.5 s). Nothing may be lost; a settle
    // whose reply was lost with the connection (Redis applied it — the append-only file has it —
    // then died) is sent again with its id, and its marker makes that a no-op: exact (README)
    let after, recorded, stableSince = 0, last = -1;
    const ok = await pollUntil(
      async () => {
        after = await dayUsage('outage');
        recorded = (after.total_tokens ?? 0) - (before.total_tokens ?? 0);
        if (recorded !== last) (last = recorded), (stableSince = Date.now());
        return recorded >= reported && Date.now() - stableSince > 1500;
      },
      { timeoutMs: 10000 * SLOW, intervalMs: 200 },
    );
    assert.ok(ok, `usage after the restart ${recorded}, backend reported ${reported}: usage lost`);
    assert.equal(recorded, reported, `usage after the restart ${recorded}, backend reported ${reported}`);
    assert.equal((after.requests ?? 0) - (before.requests ?? 0), results.length, 'requests recorded = requests served');
    assert.ok(metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total') > errorsBefore, 'redis errors counted');
  });

  it('SIGSTOPped mid-settle, then resumed: the settle Redis finally runs and the retry of it count once (usage exact, reservation released)', async () => {
    // The settle goes out on a connection that still looks up; Redis is stopped, so no reply
    // comes: the router gives up after the 1 s deadline and must write it again later. Redis,
    // resumed, also runs the original from its socket buffer. Counted once, not twice.
    // one answered request first: both scripts are cached in Redis (as in any running system)
    assert.equal((await call(routerA, 'midsettle')).status, 200);
    await sleep(200);
    const before = await dayUsage('midsettle');
    await east.setBehaviour({ chunk_interval_ms: 100 });
    try {
      const id = rid('midsettle');
      const s = curlStream(routerA.url, CHAT_PATH, chatBody({ max_tokens: 6, stream: true }), { headers: { 'api-key': KEYS.midsettle, 'x-request-id': id } });
      assert.ok(await s.waitEvents(1), 'no first event');
      redis.proc.kill('SIGSTOP');
      const r = await s.done;
      assert.equal(r.status, 200);
      const line = await accessLogLine(routerA, id, 10000 * SLOW);
      assert.equal(line.usage, 'reported', JSON.stringify(line));
      await sleep(1600); // the settle's deadline (1 s) passes while Redis is stopped
    } finally {
      redis.proc.kill('SIGCONT');
      await east.setBehaviour({});
    }
    const line = routerA.accessLog().findLast((l) => l.request_id?.startsWith('it-hq-midsettle'));
    let after, last = null, stableSince = 0;
    const ok = await pollUntil(
      async () => {
        after = await dayUsage('midsettle');
        const cur = JSON.stringify(after);
        if (cur !== last) (last = cur), (stableSince = Date.now());
        return (after.requests ?? 0) > (before.requests ?? 0) && Date.now() - stableSince > 2000;
      },
      { timeoutMs: 15000 * SLOW, intervalMs: 200 },
    );
    assert.ok(ok, `usage never recorded: ${JSON.stringify(after)}`);
    assert.equal((after.requests ?? 0) - (before.requests ?? 0), 1, `requests: ${JSON.stringify({ before, after })}`);
    assert.equal((after.total_tokens ?? 0) - (before.total_tokens ?? 0), line.total_tokens, `total: ${JSON.stringify({ before, after, line })}`);
    const reserved = (await cli('--scan', '--pattern', 'aoai:reserved:{midsettle}:*')).stdout.split('\n').filter(Boolean);
    for (const k of reserved) {
      const h = (await cli('HGETALL', k)).stdout.split('\n');
      for (let i = 0; i + 1 < h.length; i += 2) if (/^(tokens|requests)$/.test(h[i])) assert.equal(Number(h[i + 1]), 0, `${k} ${h[i]}=${h[i + 1]}`);
    }
  });

  it('SIGSTOPped while a reserve is on its way (open: admitted locally), resumed: the reservation Redis then makes is released, no phantom tokens block the tenant', async () => {
    await awayFromMinuteEdgeHq();
    assert.equal((await call(routerA, 'phantom')).status, 200); // scripts cached
    await cli('HSET', 'aoai:tenant:{phantom}', 'tpm', '1000', 'rpm', '-1');
    const big = chatBody({ max_tokens: 600 }); // estimate ~ 630 of the tpm's 1000
    redis.proc.kill('SIGSTOP');
    let r;
    try {
      r = await call(routerA, 'phantom', { body: big, timeoutMs: 15000 });
      assert.equal(r.status, 200, r.body); // open: admitted on the local counters after the 1 s deadline
    } finally {
      redis.proc.kill('SIGCONT');
    }
    // Redis runs the reserve it had in its socket buffer: a reservation nobody settles unless
    // the router gives it back
    const sum = async () => {
      let t = 0;
      for (const k of (await cli('--scan', '--pattern', 'aoai:reserved:{phantom}:*')).stdout.split('\n').filter(Boolean))
        t += Number((await cli('HGET', k, 'tokens')).stdout.trim() || 0);
      return t;
    };
    const drained = await pollUntil(async () => (await sum()) === 0, { timeoutMs: 5000 * SLOW, intervalMs: 200 });
    assert.ok(drained, `reserved tokens left: ${await sum()}`);
    const next = await call(routerA, 'phantom', { body: big });
    assert.equal(next.status, 200, `a phantom reservation blocks the tenant: ${next.body}`);
  });

  it('SIGSTOPped: open answers, closed refuses, neither holds a request beyond the command deadline', async () => {
    redis.proc.kill('SIGSTOP');
    try {
      const t0 = Date.now();
      const [open, closed] = await Promise.all([call(routerA, 'stopped', { timeoutMs: 15000 }), call(closedRouter, 'stopped', { timeoutMs: 15000 })]);
      const took = Date.now() - t0;
      assert.equal(open.status, 200, open.body);
      assert.equal(closed.status, 503, closed.body);
      assert.ok(took < 2500 * SLOW, `held ${took} ms`);
      // while it stays stopped, later requests do not wait again
      const t1 = Date.now();
      assert.equal((await call(routerA, 'stopped')).status, 200);
      assert.ok(Date.now() - t1 < 1000 * SLOW, `second request held ${Date.now() - t1} ms`);
    } finally {
      redis.proc.kill('SIGCONT');
    }
  });
});

describe('streams and no Redis', () => {
  it('a stream the backend breaks off (reset after 3 words) is charged as estimated too', async () => {
    await east.setBehaviour({ reset_after_chunks: 3, chunk_interval_ms: 100 }); // paced: the first events reach the client before the break
    try {
      const id = rid('reset');
      const s = await curlStream(routerA.url, CHAT_PATH, chatBody({ max_tokens: 10, stream: true }), {
        headers: { 'api-key': KEYS.reset, 'x-request-id': id },
      }).done;
      assert.ok(s.body.includes('word0'), s.body);
      const line = await accessLogLine(routerA, id, 10000 * SLOW);
      assert.equal(line.usage, 'estimated');
      assert.equal(line.completion_tokens, 3);
      await sleep(200);
      const day = await dayUsage('reset');
      assert.equal(day.total_tokens, line.total_tokens, JSON.stringify(day));
      assert.equal(day.completion_tokens, 3);
    } finally {
      await east.setBehaviour({});
    }
  });

  it('a stream the client cuts short is charged prompt estimate + content events relayed; access log usage "estimated"', async () => {
    await east.setBehaviour({ chunk_interval_ms: 150 });
    try {
      const id = rid('cut');
      const s = curlStream(routerA.url, CHAT_PATH, chatBody({ max_tokens: 15, stream: true }), { headers: { 'api-key': KEYS.cut, 'x-request-id': id } });
      assert.ok(await s.waitEvents(4), 'the stream did not start');
      s.abort();
      await s.done;
      const line = await accessLogLine(routerA, id, 10000 * SLOW);
      assert.ok(line, 'no access-log line');
      assert.equal(line.usage, 'estimated');
      assert.ok(line.completion_tokens >= 3 && line.completion_tokens < 15, `completion ${line.completion_tokens}`);
      await sleep(200);
      const day = await dayUsage('cut');
      assert.equal(day.total_tokens, line.total_tokens, JSON.stringify(day));
      assert.equal(day.requests, 1);
    } finally {
      await east.setBehaviour({});
    }
  });

  it('without redis: the config quota holds in-process (rpm 3 → the 4th is 429 with retry-after)', async () => {
    const minuteLeft = 60000 - (Date.now() % 60000);
    if (minuteLeft < 5000) await sleep(minuteLeft + 200);
    const codes = [];
    let last;
    for (let i = 0; i < 4; ++i) codes.push((last = await call(noRedisRouter, 'plain')).status);
    assert.deepEqual(codes, [200, 200, 200, 429]);
    assert.equal(last.json().error.code, 'tenant_quota_exceeded');
    assert.ok(Number(last.headers['retry-after']) >= 1);
  });
});
