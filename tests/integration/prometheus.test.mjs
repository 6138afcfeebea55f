// The dashboards, proven on a real Prometheus (issue 11): Prometheus (Debian package, no skip)
// scrapes the router's metrics listener every second; traffic goes through three tenants (static
// keys) and three backends — a 429 on the first backend fails over to the second, a tenant runs
// into its rpm quota, a wrong key is refused, streamed and non-streamed chats and embeddings, a
// keyless (managed identity) backend — in two rounds with a scrape between them so rates are not
// zero. Then every panel target of dashboards/aoai-router.json and dashboards/aoai-router-tenants.json
// (Grafana's variables substituted: $job → the router's job, $tenant/$namespace/... → .*, $__rate_interval → a window that
// covers the traffic, $__range → 5m) is evaluated through /api/v1/query and must return at
// least one sample that is a number (not NaN); so must every query variable's selector.
//
// PENDING: the tenants dashboard's usage-against-quota panels read the per-tenant quota gauges
// aoai_router_tenant_quota_limit / aoai_router_tenant_quota_used (built on another branch). A
// panel reading one of them is checked like every other as soon as the router's /metrics has
// that gauge; until then it is listed by the skipped test "pending: ..." below, never silently,
// and evaluated against synthetic gauges of the agreed shape (a second scrape job, "quota-shape",
// whose job label the real panels' $job filter would pick like any other).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { startMock, startRouter, startRedis, backendFor, chatBody, CHAT_PATH, post, stopAll, sleep, pollUntil, fetchMetrics, freePort, ROOT, SLOW } from './lib/harness.mjs';
import { startIdentity } from './lib/identity_mocks.mjs';
import { startPrometheus, dashboardQueries, substitute } from './lib/prometheus.mjs';

const DASHBOARDS = ['dashboards/aoai-router.json', 'dashboards/aoai-router-tenants.json'].map((f) => path.join(ROOT, f));
const PENDING_GAUGES = ['aoai_router_tenant_quota_limit', 'aoai_router_tenant_quota_used'];
const EMB_PATH = '/openai/deployments/emb/embeddings?api-version=2024-10-21';
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const KEYS = Object.fromEntries(['alpha', 'beta', 'gamma'].map((t) => [t, `aor_${crypto.randomBytes(24).toString('base64url')}`]));

/** a scrape target serving the agreed quota gauges for two tenants (the router does not render them yet) */
async function quotaShapeExporter() {
  const body = [
    '# TYPE aoai_router_tenant_quota_limit gauge',
    'aoai_router_tenant_quota_limit{tenant="acme",limit="tpm"} 100000',
    'aoai_router_tenant_quota_limit{tenant="acme",limit="rpm"} 100',
    'aoai_router_tenant_quota_limit{tenant="acme",limit="day"} -1',
    'aoai_router_tenant_quota_limit{tenant="blocked",limit="tpm"} 0',
    '# TYPE aoai_router_tenant_quota_used gauge',
    'aoai_router_tenant_quota_used{tenant="acme",limit="tpm"} 95000',
    'aoai_router_tenant_quota_used{tenant="acme",limit="rpm"} 10',
    'aoai_router_tenant_quota_used{tenant="acme",limit="day"} 400000',
    'aoai_router_tenant_quota_used{tenant="blocked",limit="tpm"} 0',
    '',
  ].join('\n');
  const server = http.createServer((req, res) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(body));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    stop: () => new Promise((r) => {
      server.closeAllConnections?.();
      server.close(() => r());
    }),
  };
}

describe('dashboards on a real Prometheus', () => {
  let east, swc, west, id, redis, router, prom, metricsText, t0, shape;
  let sent = 0;
  let quotaRejected = 0; // one per round, or two: a minute boundary may fall inside a round

  async function req(tenant, p, body, expect) {
    const r = await post(router.url, p, body, { headers: { 'api-key': KEYS[tenant] ?? 'aor_not-a-key' } });
    ++sent;
    if (expect) assert.equal(r.status, expect, `${tenant} ${p}: ${r.status} ${r.body}`);
    return r;
  }

  async function traffic() {
    for (const t of ['alpha', 'beta']) {
      await req(t, CHAT_PATH, chatBody({ max_tokens: 4 }), 200);
      await req(t, CHAT_PATH, chatBody({ max_tokens: 3, stream: true }), 200);
      await req(t, CHAT_PATH, chatBody({ max_tokens: 2, stream: true, stream_options: { include_usage: true } }), 200);
      await req(t, EMB_PATH, { input: 'some text to embed' }, 200);
    }
    // a 429 on eastus: the request fails over to swedencentral (priority 2)
    await east.setBehaviour({ status: 429, retry_after: '1', count: 1 });
    const r = await req('beta', CHAT_PATH, chatBody({ max_tokens: 2 }), 200);
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    await req('alpha', CHAT_PATH, chatBody({ max_tokens: 2, stream: true }), 200); // eastus cools down: swedencentral streams
    // gamma's rpm is 2: its third request in the minute is refused
    for (let i = 0; i < 3; i++) {
      const g = await req('gamma', CHAT_PATH, chatBody({ max_tokens: 2 }));
      if (g.status === 429 && /tenant_quota_exceeded/.test(g.body)) ++quotaRejected;
      else assert.equal(g.status, 200, g.body);
    }
    await req('nobody', CHAT_PATH, chatBody(), 401);
  }

  /** waits until Prometheus' last scrape has every request sent so far */
  async function scraped() {
    const ok = await pollUntil(
      async () => {
        const r = await prom.query('sum(aoai_router_requests_total{job="aoai-router"})');
        return r.length === 1 && Number(r[0].value[1]) === sent;
      },
      { timeoutMs: 15000 * SLOW, intervalMs: 200 },
    );
    assert.ok(ok, `Prometheus never saw the ${sent} requests sent`);
  }

  before(async () => {
    [east, swc, west] = await Promise.all([startMock('eastus'), startMock('swedencentral'), startMock('westus')]);
    id = await startIdentity({});
    redis = await startRedis();
    const mport = await freePort();
    const deployments = { 'gpt-4o': 'gpt-4o', emb: 'emb3' };
    router = await startRouter({
      config: {
        metrics: { address: '127.0.0.1', port: mport },
        redis: { url: redis.url, on_failure: 'closed' },
        auth: { mode: 'key', keys: { static: Object.entries(KEYS).map(([tenant, k]) => ({ sha256: sha256(k), tenant })) } },
        tenants: { default: { tpm: 100000, rpm: 1000 }, gamma: { tpm: 100000, rpm: 2 } },
        backends: [
          backendFor(east, { priority: 1, deployments }),
          backendFor(swc, { priority: 2, deployments }),
          // keyless: its credential series (expiry, refresh failures) exist
          backendFor(west, { priority: 3, deployments, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }),
        ],
      },
    });
    router.metricsUrl = `http://127.0.0.1:${mport}`;
    shape = await quotaShapeExporter();
    prom = await startPrometheus({
      targets: [`127.0.0.1:${mport}`],
      ruleFiles: [path.join(ROOT, 'deploy/prometheus/alerts.yml')],
      extraJobs: [{ job: 'quota-shape', targets: [`127.0.0.1:${shape.port}`] }],
    });
    t0 = Date.now();
    await traffic();
    await scraped();
    await traffic();
    await scraped();
    await sleep(1200); // one more scrape: gauges that changed late (cooldown over) have two samples
    metricsText = await fetchMetrics(router.metricsUrl);
  });
  after(async () => {
    await stopAll(prom, router, redis, east, swc, west, id, shape);
  });

  it('Prometheus scrapes the metrics listener (target up) and loaded the alert rules', async () => {
    const targets = (await prom.targets()).filter((t) => t.labels.job === 'aoai-router');
    assert.equal(targets.length, 1);
    assert.equal(targets[0].health, 'up', targets[0].lastError);
    assert.equal(targets[0].labels.namespace, 'it');
    const rules = (await prom.rules()).flatMap((g) => g.rules.map((r) => r.name));
    assert.ok(rules.includes('AoaiRouterHighErrorRatio') && rules.includes('AoaiRouterTenantNearQuota'), rules.join(', '));
    // the traffic is what the test sent: failover, quota rejection, auth failure, streams
    const one = async (e) => Number((await prom.query(e))[0]?.value[1]);
    assert.equal(await one('sum(aoai_router_failovers_total{backend="eastus",reason="429"})'), 2);
    assert.ok(quotaRejected >= 1);
    assert.equal(await one('sum(aoai_router_quota_rejections_total{tenant="gamma",limit="rpm"})'), quotaRejected);
    assert.equal(await one('sum(aoai_router_auth_failures_total)'), 2);
    assert.equal(await one('sum(aoai_router_time_to_first_byte_seconds_count)'), 10);
    assert.equal(await one('count(count by (tenant) (aoai_router_tokens_total))'), 3);
  });

  const pendingPanels = [];
  const pendingTargets = [];

  for (const file of DASHBOARDS) {
    it(`every panel target of ${path.basename(file)} returns data`, async () => {
      const { targets, variables } = dashboardQueries(file);
      assert.ok(targets.length >= 15, `only ${targets.length} targets`);
      const rate = `${Math.ceil((Date.now() - t0) / 1000) + 5}s`; // covers both rounds of traffic
      const empty = [];
      let checked = 0;
      for (const t of [...targets, ...variables]) {
        const pending = PENDING_GAUGES.filter((g) => t.expr.includes(g) && !new RegExp(`^# TYPE ${g} `, 'm').test(metricsText));
        if (pending.length) pendingTargets.push(t);
        if (pending.length) {
          pendingPanels.push(`${t.dashboard}: "${t.panel}" ${t.refId} (${pending.join(', ')})`);
          continue;
        }
        const expr = substitute(t.expr, { rate, range: '5m', job: 'aoai-router' }); // the router's job, not quota-shape
        const res = await prom.query(expr);
        ++checked;
        const numbers = res.filter((s) => !Number.isNaN(Number((s.value ?? s.values?.at(-1))[1])));
        if (numbers.length === 0) empty.push(`${t.dashboard}: ${t.panel ? `panel "${t.panel}" ${t.refId}` : `variable $${t.variable}`}: ${res.length ? 'only NaN' : 'no data'}\n    ${expr}`);
      }
      assert.deepEqual(empty, [], `${empty.length} of ${checked} queries show nothing`);
    });
  }

  it('the check itself: a panel on a series that does not exist, or a quantile over no traffic, shows nothing', async () => {
    assert.deepEqual(await prom.query('sum(rate(aoai_router_no_such_series_total[10s]))'), []);
    const nan = await prom.query('histogram_quantile(0.95, sum by (le) (rate(aoai_router_request_duration_seconds_bucket{backend="westus"}[10s])))');
    assert.ok(nan.every((s) => Number.isNaN(Number(s.value[1]))), JSON.stringify(nan)); // westus (priority 3) served nothing
  });

  it('the quota panels work on gauges of the agreed shape (synthetic job "quota-shape")', async () => {
    const quotaTargets = dashboardQueries(DASHBOARDS[1]).targets.filter((t) => PENDING_GAUGES.some((g) => t.expr.includes(g)));
    assert.ok(quotaTargets.length >= 5);
    const ok = await pollUntil(async () => (await prom.query('aoai_router_tenant_quota_used{job="quota-shape"}')).length === 4, { timeoutMs: 10000 * SLOW });
    assert.ok(ok, 'quota-shape never scraped');
    const values = {};
    for (const t of quotaTargets) {
      const res = await prom.query(substitute(t.expr, { rate: '10s', range: '5m', job: 'quota-shape' }));
      assert.ok(res.some((s) => !Number.isNaN(Number(s.value[1]))), `"${t.panel}" ${t.refId}: nothing on the agreed gauges\n    ${t.expr}`);
      values[`${t.panel} ${t.refId}`] = Object.fromEntries(res.map((s) => [`${s.metric.tenant ?? ''}/${s.metric.limit ?? ''}`, Number(s.value[1])]));
    }
    // acme: tpm 95 % used, rpm 10 %, day unlimited (-1); blocked: tpm 0 (blocked)
    assert.deepEqual(values['Tenants above 90 % of a quota A'], { '/': 1 });
    assert.deepEqual(values['Usage of each quota window (% of the limit) A'], { 'acme/tpm': 95, 'acme/rpm': 10 });
    assert.deepEqual(values['Remaining tokens per tenant (minute, day, month) A'], { 'acme/tpm': 5000 });
    assert.deepEqual(values['Top 10 tenants closest to a quota A'], { 'acme/': 95 });
    assert.equal(values['Quota and usage per tenant A']['blocked/tpm'], 0);
    assert.equal(values['Quota and usage per tenant A']['acme/day'], -1);
  });

  it('pending: the tenants dashboard\'s quota panels (aoai_router_tenant_quota_limit/_used not in this build)', (t) => {
    const missing = PENDING_GAUGES.filter((g) => !new RegExp(`^# TYPE ${g} `, 'm').test(metricsText));
    if (missing.length === 0) {
      assert.deepEqual(pendingPanels, [], 'the gauges exist: every panel was checked above');
      return;
    }
    assert.ok(pendingPanels.length > 0);
    t.skip(`not checked until the router renders ${missing.join(', ')}: ${pendingPanels.join('; ')}`);
  });
});
