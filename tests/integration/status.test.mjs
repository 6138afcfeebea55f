// The live status page (issue 11): GET /status (HTML, meta refresh, no script) and GET
// /status.json on the metrics listener only; the per-tenant quota gauges
// aoai_router_tenant_quota_limit / _used; metrics.max_tenants. Exact values from a real
// request path (mock regions, in-process quotas and a real redis-server), and the page as a
// real headless Chromium renders it (its DOM and a screenshot).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  get,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  freePort,
  metricSum,
  redisCli,
  pollUntil,
  run,
  tempDir,
  SLOW,
} from './lib/harness.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
// body 77 bytes with max_tokens 2 → the router reserves 19 + 2 = 21; the mock charges 5 + 2 = 7
const BODY = chatBody({ max_tokens: 2 });
const CHARGED = 7;

/** Keeps a test's requests inside one UTC minute: waits out the last 15 s of a minute. */
async function awayFromMinuteEdge() {
  const s = (Date.now() % 60000) / 1000;
  if (s > 45) await sleep((60 - s) * 1000 + 300);
}

async function statusJson(mport) {
  const r = await get(`http://127.0.0.1:${mport}`, '/status.json');
  assert.equal(r.status, 200, r.body);
  assert.match(r.headers['content-type'], /^application\/json/);
  return JSON.parse(r.body);
}

async function metricsText(mport) {
  const r = await get(`http://127.0.0.1:${mport}`, '/metrics');
  assert.equal(r.status, 200);
  return r.body;
}

/** Chromium's serialized DOM of `url` after load (headless; root needs --no-sandbox) */
async function chromiumDom(url) {
  const r = await run(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--virtual-time-budget=2000', '--dump-dom', url],
    { timeoutMs: 45000 },
  );
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

async function chromiumScreenshot(url, file) {
  const r = await run(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--hide-scrollbars', '--window-size=1500,760', `--screenshot=${file}`, url],
    { timeoutMs: 45000 },
  );
  assert.equal(r.code, 0, r.stderr);
}

/** a table's rows from Chromium's DOM: cells as text (tags stripped, entities of the escaper decoded) */
function tableRows(dom, id) {
  const m = new RegExp(`<table id="${id}">([\\s\\S]*?)</table>`).exec(dom);
  assert.ok(m, `no table ${id} in the DOM`);
  const decode = (s) =>
    s
      .replace(/<[^>]*>/g, '')
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'")
      .replace(/&amp;/g, '&')
      .trim();
  return [...m[1].matchAll(/<tr>([\s\S]*?)<\/tr>/g)]
    .map((r) => [...r[1].matchAll(/<td[^>]*>([\s\S]*?)<\/td>/g)].map((c) => decode(c[1])))
    .filter((cells) => cells.length !== 0);
}

describe('status page: in-process quotas, five tenants, metrics.max_tenants 3', () => {
  let east, swc, router, mport;
  const keys = {};
  const TENANTS = ['alpha', 'bravo', 'charlie', 'delta', 'echo'];

  before(async () => {
    east = await startMock('eastus', { tpm: 100000, rpm: 100 });
    swc = await startMock('swedencentral', { tpm: 50000, rpm: 60 });
    mport = await freePort();
    for (const t of TENANTS) keys[t] = newKey();
    router = await startRouter({
      config: {
        metrics: { address: '127.0.0.1', port: mport, max_tenants: 3 },
        backends: [
          backendFor(east, { priority: 1, weight: 3, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(swc, { priority: 2, weight: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
        auth: { mode: 'key', keys: { static: TENANTS.map((t) => ({ sha256: sha256(keys[t]), tenant: t })) } },
        tenants: {
          alpha: { tpm: 1000, rpm: 10, tokens_per_day: 5000, tokens_per_month: -1 },
          bravo: { tpm: 25, rpm: 100 },
        },
      },
    });
  });
  after(async () => stopAll(router, east, swc));

  const as = (t) => post(router.url, CHAT_PATH, BODY, { headers: { 'api-key': keys[t] } });

  it('status.json: a 429 cools eastus until retry-after, the failover is counted, the tenant shows used / limit', async () => {
    await awayFromMinuteEdge();
    // alpha: two requests (the second fails over); bravo: one, then over its tpm 25 (7 + 21 > 25)
    assert.equal((await as('alpha')).status, 200);
    await east.setBehaviour({ status: 429, retry_after: '30', count: 1 });
    const t429 = Date.now();
    const r = await as('alpha');
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await as('bravo')).status, 200);
    assert.equal((await as('bravo')).status, 429);
    const s = await statusJson(mport);

    const [e, w] = s.backends;
    assert.deepEqual(
      { name: e.name, region: e.region, priority: e.priority, weight: e.weight, state: e.state, failovers: e.failovers },
      { name: 'eastus', region: 'eastus', priority: 1, weight: 3, state: 'cooling', failovers: 1 },
    );
    const ed = e.deployments[0];
    assert.equal(ed.deployment, 'gpt-4o');
    assert.equal(ed.state, 'cooling');
    assert.equal(ed.cooling_reason, '429');
    assert.ok(Math.abs(ed.cooling_until_ms - (t429 + 30000)) < 2000 * SLOW, `until ${ed.cooling_until_ms}, 429 at ${t429}`);
    assert.equal(ed.cooling_until, new Date(Math.floor(ed.cooling_until_ms / 1000) * 1000).toISOString().replace('.000Z', 'Z'));
    // eastus answered one request (7 tokens) and refused one: two attempts this minute, 7 tokens;
    // its 429 carried the last remaining-* headers (the mock counts the refused request too)
    assert.deepEqual(
      [ed.requests_this_minute, ed.tokens_this_minute, ed.remaining_tokens, ed.remaining_requests],
      [2, CHARGED, 100000 - CHARGED, 100 - 2],
    );
    assert.deepEqual(
      { name: w.name, priority: w.priority, weight: w.weight, state: w.state, failovers: w.failovers },
      { name: 'swedencentral', priority: 2, weight: 2, state: 'ok', failovers: 0 },
    );
    // swedencentral served alpha's second request and bravo's first
    assert.deepEqual(
      [w.deployments[0].state, w.deployments[0].requests_this_minute, w.deployments[0].tokens_this_minute],
      ['ok', 2, 2 * CHARGED],
    );
    assert.deepEqual([w.deployments[0].remaining_tokens, w.deployments[0].remaining_requests], [50000 - 2 * CHARGED, 60 - 2]);

    const alpha = s.tenants.find((t) => t.tenant === 'alpha');
    assert.deepEqual(alpha.windows, {
      tpm: { used: 2 * CHARGED, limit: 1000 },
      rpm: { used: 2, limit: 10 },
      tokens_per_day: { used: 2 * CHARGED, limit: 5000 },
      tokens_per_month: { used: 2 * CHARGED, limit: null },
    });
    assert.equal(alpha.tokens, 2 * CHARGED);
    const bravo = s.tenants.find((t) => t.tenant === 'bravo');
    assert.deepEqual(bravo.windows.tpm, { used: CHARGED, limit: 25 });
    assert.deepEqual(bravo.rejections, { tpm: 1, rpm: 0, day: 0, month: 0, deployment: 0 });
    // most tokens first
    assert.deepEqual(
      s.tenants.map((t) => t.tenant),
      ['alpha', 'bravo'],
    );
    assert.equal(s.router.version, readFileSync(path.join(import.meta.dirname, '../../CMakeLists.txt'), 'utf8').match(/VERSION (\d+\.\d+\.\d+)/)[1]);
    assert.equal(s.router.config_generation, 1);
    assert.equal(s.router.max_tenants, 3);
    assert.ok(s.router.uptime_s >= 0 && s.router.uptime_s < 120, String(s.router.uptime_s));
  });

  it('quota gauges: limit and used per window for tenants it has seen; no limit sample for unlimited', async () => {
    const m = await metricsText(mport);
    const g = (name, limit, tenant = 'alpha') => metricSum(m, name, { tenant, limit });
    assert.deepEqual(
      ['tpm', 'rpm', 'day'].map((l) => g('aoai_router_tenant_quota_limit', l)),
      [1000, 10, 5000],
    );
    assert.ok(!/aoai_router_tenant_quota_limit\{tenant="alpha",limit="month"\}/.test(m), 'unlimited has no limit sample');
    assert.deepEqual(
      ['tpm', 'rpm', 'day', 'month'].map((l) => g('aoai_router_tenant_quota_used', l)),
      [2 * CHARGED, 2, 2 * CHARGED, 2 * CHARGED],
    );
    assert.equal(g('aoai_router_tenant_quota_limit', 'tpm', 'bravo'), 25);
    assert.equal(g('aoai_router_tenant_quota_used', 'tpm', 'bravo'), CHARGED);
  });

  it('metrics.max_tenants 3: five tenants give three tenant label values, the rest "other"', async () => {
    for (const t of ['charlie', 'delta', 'echo']) assert.equal((await as(t)).status, 200);
    const m = await metricsText(mport);
    const tenants = new Set([...m.matchAll(/^aoai_router_requests_total\{tenant="([^"]*)"/gm)].map((x) => x[1]));
    assert.deepEqual([...tenants].sort(), ['alpha', 'bravo', 'charlie', 'other']);
    assert.equal(metricSum(m, 'aoai_router_requests_total', { tenant: 'other' }), 2);
    // the quota gauges never carry "other" (one tenant's quota is not another's)
    const gauged = new Set([...m.matchAll(/^aoai_router_tenant_quota_used\{tenant="([^"]*)"/gm)].map((x) => x[1]));
    assert.deepEqual([...gauged].sort(), ['alpha', 'bravo', 'charlie']);
    const s = await statusJson(mport);
    assert.equal(s.tenants_tracked, 3);
    assert.deepEqual(s.tenants.map((t) => t.tenant).sort(), ['alpha', 'bravo', 'charlie']);
  });

  it('/status in headless Chromium: both backends with their state, the tenants with used / limit; a screenshot', async () => {
    const url = `http://127.0.0.1:${mport}/status`;
    const dom = await chromiumDom(url);
    assert.match(dom, /<title>aoai-router status<\/title>/);
    assert.match(dom, /<meta http-equiv="refresh" content="5">/);
    assert.ok(!/<script/i.test(dom), 'the page has no script');
    const backends = tableRows(dom, 'backends');
    assert.equal(backends.length, 2);
    assert.deepEqual(backends[0].slice(0, 5), ['eastus', 'eastus', '1', '3', 'gpt-4o']);
    assert.match(backends[0][5], /^cooling down until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(429 from the backend\)$/);
    assert.equal(backends[0][10], '1', 'eastus: one failover');
    assert.deepEqual(backends[1].slice(0, 6), ['swedencentral', 'swedencentral', '2', '2', 'gpt-4o', 'ok']);
    const tenants = tableRows(dom, 'tenants');
    assert.deepEqual(tenants.map((r) => r[0]).slice(0, 2), ['alpha', 'bravo']);
    assert.deepEqual(tenants[0].slice(1, 6), [String(2 * CHARGED), `${2 * CHARGED} / 1000`, '2 / 10', `${2 * CHARGED} / 5000`, `${2 * CHARGED} / unlimited`]);
    assert.equal(tenants[1][6], 'tpm 1');
    assert.match(dom, /config generation <b id="generation">1<\/b>/);

    const png = path.join(tempDir('aor-it-status-'), 'status.png');
    await chromiumScreenshot(url, png);
    const bytes = readFileSync(png);
    assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
    assert.equal(bytes.readUInt32BE(16), 1500, 'width');
    assert.ok(bytes.length > 10000, `a blank page would be smaller: ${bytes.length} bytes`);
    if (process.env.AOR_STATUS_SCREENSHOT) copyFileSync(png, process.env.AOR_STATUS_SCREENSHOT);
  });

  it('/status and /status.json are 404 on the data-plane listener', async () => {
    for (const p of ['/status', '/status.json']) {
      const r = await get(router.url, p);
      assert.equal(r.status, 404, p);
      assert.equal(JSON.parse(r.body).error.code, 'not_found');
    }
  });
});

describe('status page: Redis quotas (the reserve script reports the windows)', () => {
  let east, redis, router, mport;
  const KEY = newKey();
  const TENANT = 'redis-tenant';

  before(async () => {
    east = await startMock('eastus');
    redis = await startRedis();
    mport = await freePort();
    assert.equal((await redisCli(redis, 'HSET', `aoai:key:${sha256(KEY)}`, 'tenant', TENANT, 'name', 'app')).code, 0);
    assert.equal((await redisCli(redis, 'HSET', `aoai:tenant:{${TENANT}}`, 'tpm', '500', 'rpm', '3', 'tokens_per_month', '900')).code, 0);
    router = await startRouter({
      config: {
        redis: { url: redis.url, on_failure: 'closed' },
        metrics: { address: '127.0.0.1', port: mport },
        backends: [backendFor(east)],
        auth: { mode: 'key' },
        tenants: { default: { tpm: 100000, rpm: 1000, tokens_per_day: 200000 } },
      },
    });
  });
  after(async () => stopAll(router, east, redis));

  it('used / limit from the reserve reply and the settle; the rpm rejection counted', async () => {
    await awayFromMinuteEdge();
    const as = () => post(router.url, CHAT_PATH, BODY, { headers: { 'api-key': KEY } });
    for (let i = 0; i < 3; ++i) assert.equal((await as()).status, 200);
    assert.equal((await as()).status, 429);
    const s = await statusJson(mport);
    const t = s.tenants.find((x) => x.tenant === TENANT);
    assert.ok(t, JSON.stringify(s.tenants));
    assert.deepEqual(t.windows, {
      tpm: { used: 3 * CHARGED, limit: 500 },
      rpm: { used: 3, limit: 3 },
      tokens_per_day: { used: 3 * CHARGED, limit: 200000 }, // the config's default where the hash has none
      tokens_per_month: { used: 3 * CHARGED, limit: 900 },
    });
    assert.equal(t.rejections.rpm, 1);
    // the gauges say the same; Redis holds what the mock reported
    const m = await metricsText(mport);
    assert.equal(metricSum(m, 'aoai_router_tenant_quota_used', { tenant: TENANT, limit: 'rpm' }), 3);
    assert.equal(metricSum(m, 'aoai_router_tenant_quota_limit', { tenant: TENANT, limit: 'month' }), 900);
  });

  it("another replica's cooldown (read from Redis) shows as cooling, reason 429_shared, until its exact end", async () => {
    const until = Date.now() + 20000;
    assert.equal((await redisCli(redis, 'SET', 'aoai:backend:eastus:gpt-4o:cooldown_until', String(until), 'PX', '20000')).code, 0);
    const seen = await pollUntil(
      async () => {
        const d = (await statusJson(mport)).backends[0].deployments.find((x) => x.deployment === 'gpt-4o');
        return d.state === 'cooling' ? d : undefined;
      },
      { timeoutMs: 5000 * SLOW, intervalMs: 200 },
    );
    assert.ok(seen, 'the shared cooldown never showed');
    assert.deepEqual([seen.cooling_reason, seen.cooling_until_ms], ['429_shared', until]);
    const s = await statusJson(mport);
    assert.equal(s.backends[0].state, 'cooling');
    assert.equal(s.backends[0].failovers, 0);
  });
});

describe('status page: circuit open, credential unavailable, reload', () => {
  let east, swc, router, mport, conf;

  before(async () => {
    east = await startMock('eastus');
    swc = await startMock('swedencentral');
    mport = await freePort();
    const dead = await freePort(); // nothing listens: the managed identity's token never comes
    conf = {
      metrics: { address: '127.0.0.1', port: mport },
      circuit: { failures: 1, open_ms: 30000 },
      backends: [
        backendFor(east, { priority: 1 }),
        backendFor(swc, { priority: 2 }),
        {
          name: 'keyless',
          url: east.url,
          region: 'westus',
          priority: 3,
          weight: 1,
          auth: { type: 'managed_identity', imds_endpoint: `http://127.0.0.1:${dead}/metadata/identity/oauth2/token` },
        },
      ],
    };
    router = await startRouter({ config: conf });
  });
  after(async () => stopAll(router, east, swc));

  it('a 500 opens eastus\'s circuit until open_ms; the keyless backend without a token is credential_unavailable', async () => {
    await east.setBehaviour({ status: 500, count: 1 });
    const t500 = Date.now();
    const r = await post(router.url, CHAT_PATH, BODY);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    const s = await statusJson(mport);
    const [e, w, k] = s.backends;
    assert.deepEqual([e.state, e.circuit_open, e.consecutive_failures, e.failovers], ['circuit_open', true, 1, 1]);
    assert.ok(Math.abs(e.circuit_open_until_ms - (t500 + 30000)) < 2000 * SLOW, `${e.circuit_open_until_ms} vs ${t500 + 30000}`);
    assert.equal(w.state, 'ok');
    assert.deepEqual([k.name, k.state, k.credential_available], ['keyless', 'credential_unavailable', false]);
    const dom = await chromiumDom(`http://127.0.0.1:${mport}/status`);
    const rows = tableRows(dom, 'backends');
    assert.match(rows[0][5], /^circuit open until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(1 consecutive failures\)$/);
    assert.equal(rows[2][5], 'credential unavailable');
  });

  it('SIGHUP: the generation becomes 2 and its load time moves; a refused reload changes neither', async () => {
    const before = await statusJson(mport);
    assert.equal(before.router.config_generation, 1);
    router.writeConfig({ ...conf, backends: conf.backends.slice(0, 2) });
    router.signal('SIGHUP');
    const after1 = await pollUntil(
      async () => {
        const s = await statusJson(mport);
        return s.router.config_generation === 2 ? s : undefined;
      },
      { timeoutMs: 5000 * SLOW, intervalMs: 100 },
    );
    assert.ok(after1, 'the generation never moved');
    assert.ok(after1.router.config_loaded_at_ms > before.router.config_loaded_at_ms);
    assert.equal(after1.backends.length, 2);
    router.writeConfig('listen: [ { address: 127.0.0.1, port: 1 } ]\nnot_a_key: 1\n');
    const from = router.stderr().length;
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/reload refused/, undefined, from));
    const after2 = await statusJson(mport);
    assert.equal(after2.router.config_generation, 2);
    assert.equal(after2.router.config_loaded_at_ms, after1.router.config_loaded_at_ms);
  });

  it('a reload that moves metrics: to another port: the page stays on the listener opened at start (warned), still 404 on the data plane', async () => {
    const other = await freePort();
    router.writeConfig({ ...conf, metrics: { address: '127.0.0.1', port: other } });
    const from = router.stderr().length;
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/metrics listener .* only after a restart/, undefined, from), router.stderr().slice(from));
    const s = await pollUntil(
      async () => {
        const x = await statusJson(mport);
        return x.router.config_generation === 3 ? x : undefined;
      },
      { timeoutMs: 5000 * SLOW, intervalMs: 100 },
    );
    assert.ok(s, 'the reload was not applied');
    assert.equal((await get(`http://127.0.0.1:${mport}`, '/metrics')).status, 200);
    assert.equal((await get(router.url, '/status.json')).status, 404);
    assert.equal((await get(router.url, '/metrics')).status, 404);
  });
});

describe('status page: without a metrics listener', () => {
  let east, router;
  before(async () => {
    east = await startMock('eastus');
    // max_tenants alone does not create a listener: /metrics stays on every listener
    router = await startRouter({ config: { metrics: { max_tenants: 10 }, backends: [backendFor(east)] } });
  });
  after(async () => stopAll(router, east));

  it('/status and /status.json are 404 on every listener; /metrics still served', async () => {
    assert.equal((await get(router.url, '/status')).status, 404);
    assert.equal((await get(router.url, '/status.json')).status, 404);
    assert.equal((await get(router.url, '/metrics')).status, 200);
  });
});
