// Tenant quotas and exact accounting (SPEC §4 429/403/headers, §6 keys and windows, §7
// aoai_router_quota_rejections_total, aoai_router_tokens_total; issue 8) against a real
// redis-server: each limit exceeded → 429 tenant_quota_exceeded with retry-after, other tenants
// unaffected, deployments allow-list / 0 / disabled → 403 for a JWT, a static key and a Redis key,
// -1 unlimited, HSET applied at once, usage hashes exactly equal to what the mock reported.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  curlStream,
  sseEvents,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  fetchMetrics,
  metricSum,
  accessLogLine,
  redisCli,
  pollUntil,
  run,
  ROUTER_BIN,
  SLOW,
  freePort,
  tempDir,
  h2Burst,
} from './lib/harness.mjs';
import path from 'node:path';
import { startOidc } from './lib/oidc.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
let seq = 0;
const rid = (what) => `it-quota-${what}-${++seq}-${Date.now()}`;
const uniq = (what) => `${what}-${Date.now().toString(36)}-${++seq}`;

const STATIC_KEY = newKey();
const STATIC_TENANT = 'static-quota';
const REDIS_KEY = newKey();
const REDIS_TENANT = 'redis-quota';
const EMB_PATH = '/openai/deployments/emb/embeddings?api-version=2024-10-21';

let east, redis, router, idp;

/** Keeps a test's requests inside one UTC minute: waits out the last 15 s of a minute. */
async function awayFromMinuteEdge() {
  const s = (Date.now() % 60000) / 1000;
  if (s > 45) await sleep((60 - s) * 1000 + 300);
}

function keyHeaders(tenantOrKey) {
  return { 'api-key': tenantOrKey };
}

/** a request of tenant T, authenticated with a JWT naming it (tid) */
async function asTenant(tenant, { body = chatBody({ max_tokens: 2 }), p = CHAT_PATH, id = rid('req'), proto = 'h1' } = {}) {
  const token = await idp.mint({ tid: tenant });
  const res = await post(router.url, p, body, { proto, headers: { authorization: `Bearer ${token}`, 'x-request-id': id } });
  res.id = id;
  return res;
}

async function hset(tenant, ...kv) {
  const r = await redisCli(redis, 'HSET', `aoai:tenant:{${tenant}}`, ...kv);
  assert.equal(r.code, 0, r.stderr);
}

async function usageHash(tenant, period) {
  const now = new Date();
  const p2 = (n) => String(n).padStart(2, '0');
  const suffix =
    period === 'month'
      ? `${now.getUTCFullYear()}${p2(now.getUTCMonth() + 1)}`
      : period === 'day'
        ? `${now.getUTCFullYear()}${p2(now.getUTCMonth() + 1)}${p2(now.getUTCDate())}`
        : `${now.getUTCFullYear()}${p2(now.getUTCMonth() + 1)}${p2(now.getUTCDate())}${p2(now.getUTCHours())}${p2(now.getUTCMinutes())}`;
  const r = await redisCli(redis, 'HGETALL', `aoai:usage:{${tenant}}:${period}:${suffix}`);
  const kv = r.stdout.split('\n');
  if (kv.at(-1) === '') kv.pop();
  const o = {};
  for (let i = 0; i + 1 < kv.length; i += 2) o[kv[i]] = Number(kv[i + 1]);
  return o;
}

function assertQuota429(res, limit, maxRetry) {
  assert.equal(res.status, 429, `expected 429 for ${limit}, got ${res.status} ${res.body}`);
  assert.equal(res.json().error.code, 'tenant_quota_exceeded', res.body);
  assert.ok(res.json().error.message.includes(limit), `the message names ${limit}: ${res.json().error.message}`);
  const ra = Number(res.headers['retry-after']);
  assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= maxRetry, `retry-after ${res.headers['retry-after']} not in 1..${maxRetry}`);
  return ra;
}

before(async () => {
  east = await startMock('eastus');
  redis = await startRedis();
  idp = await startOidc({ name: 'quota-idp', algs: ['RS256'] });
  const r = await redisCli(redis, 'HSET', `aoai:key:${sha256(REDIS_KEY)}`, 'tenant', REDIS_TENANT, 'name', 'app');
  assert.equal(r.code, 0, r.stderr);
  router = await startRouter({
    config: {
      redis: { url: redis.url, on_failure: 'closed' },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb', other: 'other' } })],
      auth: {
        mode: 'jwt_or_key',
        jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: ['api://aoai-router'], tenant_claims: ['tid'] }],
        keys: { static: [{ sha256: sha256(STATIC_KEY), tenant: STATIC_TENANT }] },
      },
      tenants: { default: { tpm: 100000, rpm: 1000 }, partial: { rpm: 5 } },
    },
  });
  const ok = await pollUntil(async () => (await asTenant('warmup')).status === 200, { timeoutMs: 20000 * SLOW, intervalMs: 200 });
  assert.ok(ok, 'the IdP keys never loaded');
});

after(async () => {
  if (redis?.proc.exitCode === null) redis.proc.kill('SIGCONT');
  await stopAll(router, east, redis, idp);
});

describe('admission: 429 per limit', () => {
  it('rpm: the 4th request of a minute with rpm 3 is 429 rpm; x-ratelimit-remaining-requests counts down; other tenants unaffected', async () => {
    await awayFromMinuteEdge();
    const t = uniq('rpm');
    await hset(t, 'rpm', '3');
    const before = metricSum(await fetchMetrics(router), 'aoai_router_quota_rejections_total', { tenant: t, limit: 'rpm' });
    const seen = [];
    for (let i = 0; i < 3; ++i) {
      const r = await asTenant(t);
      assert.equal(r.status, 200, r.body);
      seen.push(r.headers['x-ratelimit-remaining-requests']);
    }
    assert.deepEqual(seen, ['2', '1', '0']);
    const r = await asTenant(t);
    const ra = assertQuota429(r, 'rpm', 60);
    assert.ok(ra <= 60 - Math.floor((Date.now() % 60000) / 1000) + 1, `retry-after ${ra} beyond the minute's end`);
    const after = metricSum(await fetchMetrics(router), 'aoai_router_quota_rejections_total', { tenant: t, limit: 'rpm' });
    assert.equal(after - before, 1);
    assert.equal((await asTenant(uniq('bystander'))).status, 200, 'another tenant is not affected');
  });

  it('requests that arrive together are admitted in order as if one by one: rpm 5, 12 streams at once → exactly 5 admitted, 7 refused rpm; tpm likewise', async () => {
    await awayFromMinuteEdge();
    const t = uniq('burst');
    await hset(t, 'rpm', '5');
    const token = await idp.mint({ tid: t });
    const h = { authorization: `Bearer ${token}` };
    const res = await h2Burst(router.url, CHAT_PATH, Array.from({ length: 12 }, () => chatBody({ max_tokens: 2 })), h);
    assert.equal(res.filter((r) => r.status === 200).length, 5, res.map((r) => r.status).join(' '));
    const refused = res.filter((r) => r.status === 429);
    assert.equal(refused.length, 7);
    for (const r of refused) assert.match(r.json().error.message, /requests per minute/);
    // the admitted ones count down 4..0, one each
    assert.deepEqual(res.filter((r) => r.status === 200).map((r) => r.headers['x-ratelimit-remaining-requests']).sort(), ['0', '1', '2', '3', '4']);
    // tpm: estimate 21 each (body 77 bytes / 4 + max_tokens 2), tpm 100 → 4 admitted (84), the 5th would be 105
    const t2 = uniq('burst-tpm');
    await hset(t2, 'tpm', '100');
    const token2 = await idp.mint({ tid: t2 });
    const res2 = await h2Burst(router.url, CHAT_PATH, Array.from({ length: 10 }, () => chatBody({ max_tokens: 2 })), { authorization: `Bearer ${token2}` });
    const ok2 = res2.filter((r) => r.status === 200);
    assert.equal(ok2.length, 4, res2.map((r) => r.status).join(' '));
    assert.deepEqual(ok2.map((r) => Number(r.headers['x-ratelimit-remaining-tokens'])).sort((a, b) => a - b), [16, 37, 58, 79]);
    for (const r of res2.filter((x) => x.status !== 200)) assert.match(r.json().error.message, /tokens per minute/);
  });

  it('tpm: reservations are the estimate, usage the actual; the request over tpm is 429 tpm', async () => {
    await awayFromMinuteEdge();
    const t = uniq('tpm');
    // body 77 bytes → estimate 19 + max_tokens 2 = 21; the mock charges 5 + 2 = 7
    await hset(t, 'tpm', '40');
    const codes = [];
    const remaining = [];
    for (let i = 0; i < 5; ++i) {
      const r = await asTenant(t);
      codes.push(r.status);
      remaining.push(r.headers['x-ratelimit-remaining-tokens']);
    }
    // 0 + 21 ≤ 40, 7 + 21 ≤ 40, 14 + 21 ≤ 40, 21 + 21 > 40
    assert.deepEqual(codes, [200, 200, 200, 429, 429]);
    // the tenant's own minute window after each reservation (40 - 21, 40 - 7 - 21, 40 - 14 - 21), never the mock's
    assert.deepEqual(remaining.slice(0, 3), ['19', '12', '5']);
    const r = await asTenant(t);
    const ra = assertQuota429(r, 'tpm', 60);
    assert.equal(metricSum(await fetchMetrics(router), 'aoai_router_quota_rejections_total', { tenant: t, limit: 'tpm' }), 3);
    assert.ok(ra <= 60 - Math.floor((Date.now() % 60000) / 1000) + 1, `retry-after ${ra} beyond the minute's end`);
    const u = await usageHash(t, 'minute');
    assert.equal(u.total_tokens, 7 * codes.filter((c) => c === 200).length, JSON.stringify(u));
    const fresh = await asTenant(uniq('tpm-fresh'));
    assert.equal(fresh.status, 200);
  });

  it('tokens_per_day: 429 day, retry-after until UTC midnight', async () => {
    const t = uniq('day');
    await hset(t, 'tokens_per_day', '25'); // 21 reserved, 7 used; then 7 + 21 > 25
    assert.equal((await asTenant(t)).status, 200);
    const r = await asTenant(t);
    assert.equal(metricSum(await fetchMetrics(router), 'aoai_router_quota_rejections_total', { tenant: t, limit: 'day' }), 1);
    const now = new Date();
    const toMidnight = Math.ceil((Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000);
    const ra = assertQuota429(r, 'tokens_per_day', 86400);
    assert.ok(Math.abs(ra - toMidnight) <= 2, `retry-after ${ra}, midnight in ${toMidnight}`);
  });

  it('tokens_per_month: 429 month, retry-after until the 1st of next month UTC', async () => {
    const t = uniq('month');
    await hset(t, 'tokens_per_month', '25');
    assert.equal((await asTenant(t)).status, 200);
    const r = await asTenant(t);
    assert.equal(metricSum(await fetchMetrics(router), 'aoai_router_quota_rejections_total', { tenant: t, limit: 'month' }), 1);
    const now = new Date();
    const toEnd = Math.ceil((Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1) - now.getTime()) / 1000);
    const ra = assertQuota429(r, 'tokens_per_month', 31 * 86400);
    assert.ok(Math.abs(ra - toEnd) <= 2, `retry-after ${ra}, month end in ${toEnd}`);
  });

  it('-1 is unlimited (over a small config default); HSET applies to the next request', async () => {
    const t = uniq('unl');
    await hset(t, 'rpm', '-1', 'tpm', '-1');
    for (let i = 0; i < 5; ++i) assert.equal((await asTenant(t)).status, 200);
    const changed = Date.now();
    await hset(t, 'rpm', '1');
    const r = await asTenant(t);
    assert.ok(Date.now() - changed < 2000);
    assertQuota429(r, 'rpm', 60);
    await hset(t, 'rpm', '-1');
    assert.equal((await asTenant(t)).status, 200);
  });
});

describe('where a quota comes from', () => {
  it('a field absent from the hash falls back to tenants.default (config), field by field; no hash at all: tenants.default', async () => {
    await awayFromMinuteEdge();
    const t = uniq('fallback');
    await hset(t, 'rpm', '5'); // tpm absent: the config's default 100000
    const r = await asTenant(t);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '4');
    assert.equal(r.headers['x-ratelimit-remaining-tokens'], String(100000 - 21));
    const none = await asTenant(uniq('nohash'));
    assert.equal(none.headers['x-ratelimit-remaining-requests'], '999');
    assert.equal(none.headers['x-ratelimit-remaining-tokens'], String(100000 - 21));
    // a tenants.<T> entry that names only rpm: its tpm is tenants.default's, not unlimited
    await redisCli(redis, 'DEL', 'aoai:tenant:{partial}');
    const partial = await asTenant('partial');
    assert.equal(partial.headers['x-ratelimit-remaining-requests'], '4');
    assert.equal(partial.headers['x-ratelimit-remaining-tokens'], String(100000 - 21));
  });

  it('a streamed answer carries the tenant\'s x-ratelimit-remaining-* too, not the backend\'s', async () => {
    await awayFromMinuteEdge();
    const t = uniq('streamhdr');
    await hset(t, 'rpm', '7', 'tpm', '5000');
    const token = await idp.mint({ tid: t });
    const body = chatBody({ max_tokens: 2, stream: true });
    const s = await curlStream(router.url, CHAT_PATH, body, { headers: { authorization: `Bearer ${token}` } }).done;
    assert.equal(s.status, 200);
    assert.equal(s.headers['x-ratelimit-remaining-requests'], '6');
    assert.equal(s.headers['x-ratelimit-remaining-tokens'], String(5000 - (Math.floor(JSON.stringify(body).length / 4) + 2)));
  });
});

describe('admission: 403 for every credential', () => {
  const creds = [
    ['JWT', async (t) => ({ authorization: `Bearer ${await idp.mint({ tid: t })}` }), () => uniq('jwt403')],
    ['static key', async () => keyHeaders(STATIC_KEY), () => STATIC_TENANT],
    ['Redis key', async () => keyHeaders(REDIS_KEY), () => REDIS_TENANT],
  ];
  for (const [what, headers, tenantOf] of creds) {
    it(`${what}: deployment not allowed, quota 0 and disabled 1 → 403 forbidden, nothing upstream`, async () => {
      const t = tenantOf();
      const call = async () =>
        post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { ...(await headers(t)), 'x-request-id': rid('f') } });
      await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
      assert.equal((await call()).status, 200, `${what} works before`);
      const cases = [
        ['deployments', 'emb,other'],
        ['tpm', '0'],
        ['rpm', '0'],
        ['tokens_per_day', '0'],
        ['tokens_per_month', '0'],
        ['disabled', '1'],
      ];
      for (const [field, value] of cases) {
        await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
        await hset(t, field, value);
        const upstreamBefore = (await east.stats()).requests;
        const r = await call();
        assert.equal(r.status, 403, `${what} ${field}=${value}: ${r.status} ${r.body}`);
        assert.equal(r.json().error.code, 'forbidden');
        assert.equal((await east.stats()).requests, upstreamBefore, `${what} ${field}=${value} reached the backend`);
      }
      await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
      await hset(t, 'deployments', 'gpt-4o, emb');
      // a Redis key's answer (with its tenant's disabled flag) is reused for up to 1 s (AOR_APIKEY_TTL_MS)
      let last;
      const ok = await pollUntil(async () => (last = await call()).status === 200, { timeoutMs: 2000 * SLOW, intervalMs: 200 });
      assert.ok(ok, `${what}: listed deployment: ${last.status} ${last.body}`);
      await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
    });
  }
});

describe('admission: 403 for a client certificate', () => {
  it('certificate (tenant cert:<CN>): deployment not allowed, tpm/rpm/day/month 0 and disabled 1 → 403 forbidden, nothing upstream', async () => {
    const dir = tempDir('aor-it-quota-mtls-');
    const ssl = async (...args) => {
      const r = await run('openssl', args);
      assert.equal(r.code, 0, r.stderr);
    };
    const f = (n) => path.join(dir, n);
    await ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=quota-it-ca', '-days', '2',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', f('ca.key'), '-out', f('ca.pem'));
    await ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost', '-days', '2',
      '-keyout', f('srv.key'), '-out', f('srv.pem'));
    await ssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=quota-cert-app', '-keyout', f('cl.key'), '-out', f('cl.csr'));
    await run('sh', ['-c', `printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=clientAuth\\n' > ${f('cl.ext')}`]);
    await ssl('x509', '-req', '-in', f('cl.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('cl.ext'), '-out', f('cl.pem'));
    const port = await freePort();
    const mtls = await startRouter({
      config: {
        listen: [{ address: '127.0.0.1', port, tls: { cert_file: f('srv.pem'), key_file: f('srv.key'), client_ca_file: f('ca.pem'), client_cert: 'optional' } }],
        redis: { url: redis.url, on_failure: 'closed' },
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' } })],
        tenants: { default: { tpm: 100000, rpm: 1000 } },
      },
    });
    try {
      const url = `https://127.0.0.1:${port}`;
      const t = 'cert:quota-cert-app';
      const call = async () => {
        const id = rid('cert');
        const r = await post(url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'x-request-id': id }, args: ['-k', '--cert', f('cl.pem'), '--key', f('cl.key')] });
        r.id = id;
        return r;
      };
      await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
      const ok = await call();
      assert.equal(ok.status, 200, `${ok.status} ${ok.body} ${ok.stderr}`);
      assert.equal((await accessLogLine(mtls, ok.id)).tenant, t);
      for (const [field, value] of [['deployments', 'emb'], ['tpm', '0'], ['rpm', '0'], ['tokens_per_day', '0'], ['tokens_per_month', '0'], ['disabled', '1']]) {
        await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
        await hset(t, field, value);
        const upstreamBefore = (await east.stats()).requests;
        const r = await call();
        assert.equal(r.status, 403, `certificate ${field}=${value}: ${r.status} ${r.body}`);
        assert.equal(r.json().error.code, 'forbidden');
        assert.equal((await east.stats()).requests, upstreamBefore, `certificate ${field}=${value} reached the backend`);
      }
      await redisCli(redis, 'DEL', `aoai:tenant:{${t}}`);
      assert.equal((await call()).status, 200, 'the hash deleted: allowed again');
    } finally {
      await stopAll(mtls);
    }
  });
});

describe('accounting: usage hashes equal what the backend reported', () => {
  it('chat (JSON), chat streamed with and without include_usage, embeddings: day hash = sums; per-deployment fields', async () => {
    const t = uniq('acct');
    const token = await idp.mint({ tid: t });
    const h = { authorization: `Bearer ${token}` };
    let prompt = 0,
      completion = 0,
      chatTotal = 0,
      embTotal = 0;
    // JSON chat
    for (let i = 0; i < 3; ++i) {
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 3 + i }), { headers: h });
      assert.equal(r.status, 200, r.body);
      const u = r.json().usage;
      prompt += u.prompt_tokens;
      completion += u.completion_tokens;
      chatTotal += u.total_tokens;
    }
    // streamed with include_usage: the client gets the usage chunk
    const s1 = await curlStream(router.url, CHAT_PATH, chatBody({ max_tokens: 4, stream: true, stream_options: { include_usage: true } }), {
      headers: h,
    }).done;
    const ev1 = sseEvents(s1.body).map((e) => e.data);
    const withUsage = ev1.filter((e) => e !== '[DONE]' && JSON.parse(e).usage);
    assert.equal(withUsage.length, 1, 'the client asked for the usage chunk and got it');
    const u1 = JSON.parse(withUsage[0]).usage;
    prompt += u1.prompt_tokens;
    completion += u1.completion_tokens;
    chatTotal += u1.total_tokens;
    // streamed without include_usage: the mock's rule (same body as above without stream_options) gives the numbers
    const s2 = await curlStream(router.url, CHAT_PATH, chatBody({ max_tokens: 5, stream: true }), { headers: h }).done;
    const ev2 = sseEvents(s2.body).map((e) => e.data);
    assert.ok(ev2.length >= 3, s2.body);
    for (const e of ev2) {
      if (e === '[DONE]') continue;
      const j = JSON.parse(e);
      assert.ok(!(j.usage && j.choices?.length === 0), `a usage-only chunk the client did not ask for: ${e}`);
    }
    assert.ok(!s2.body.includes('"usage"'), `the client did not ask for usage and sees none: ${s2.body}`);
    assert.equal(ev2.length, 1 + 5 + 1 + 1, 'role, 5 words, finish, [DONE]: the stream as the client asked for it');
    prompt += u1.prompt_tokens;
    completion += 5;
    chatTotal += u1.prompt_tokens + 5;
    // embeddings
    const e = await post(router.url, EMB_PATH, { input: ['one two three', 'four five'] }, { headers: h });
    assert.equal(e.status, 200, e.body);
    prompt += e.json().usage.prompt_tokens;
    embTotal += e.json().usage.total_tokens;
    await sleep(200);
    const day = await usageHash(t, 'day');
    assert.equal(day.requests, 6, JSON.stringify(day));
    assert.equal(day.prompt_tokens, prompt, JSON.stringify(day));
    assert.equal(day.completion_tokens, completion, JSON.stringify(day));
    assert.equal(day.total_tokens, chatTotal + embTotal, JSON.stringify(day));
    assert.equal(day['gpt-4o:total_tokens'], chatTotal);
    assert.equal(day['emb:total_tokens'], embTotal);
    const month = await usageHash(t, 'month');
    assert.deepEqual(month, day);
    // the operator's view: `aoai-router --redis URL usage T --period day` shows the same hash
    const cliOut = await run(ROUTER_BIN, ['--redis', redis.url, 'usage', t, '--period', 'day']);
    assert.equal(cliOut.code, 0, cliOut.stderr);
    assert.match(cliOut.stdout, new RegExp(`total_tokens\\D+${chatTotal + embTotal}\\b`), cliOut.stdout);
    const ttl = await redisCli(redis, 'TTL', `aoai:usage:{${t}}:day:${Object.keys(day).length ? new Date().toISOString().slice(0, 10).replaceAll('-', '') : ''}`);
    assert.ok(Number(ttl.stdout) > 39 * 86400 && Number(ttl.stdout) <= 40 * 86400, `day TTL ${ttl.stdout}`);
    // no reservation left over
    const scan = await redisCli(redis, '--scan', '--pattern', `aoai:reserved:{${t}}:*`);
    for (const k of scan.stdout.split('\n').filter(Boolean)) {
      const r = await redisCli(redis, 'HGET', k, 'tokens');
      assert.equal(Number(r.stdout), 0, `${k} still holds a reservation`);
    }
    // tokens_total from the same numbers
    const m = await fetchMetrics(router);
    assert.equal(metricSum(m, 'aoai_router_tokens_total', { tenant: t, type: 'prompt' }), prompt);
    assert.equal(metricSum(m, 'aoai_router_tokens_total', { tenant: t, type: 'completion' }), completion);
  });

  it('an embeddings answer over the 4 MiB buffer is relayed whole and still counted exactly', async () => {
    const t = uniq('bigemb');
    const input = Array.from({ length: 40000 }, (_, i) => `w${i % 97}`);
    const r = await asTenant(t, { p: EMB_PATH, body: { input } });
    assert.equal(r.status, 200, r.body.slice(0, 300));
    assert.ok(r.body.length > 4 * 1024 * 1024, `reply of ${r.body.length} bytes is not over the buffer limit`);
    const reported = r.json().usage;
    await sleep(100);
    const day = await usageHash(t, 'day');
    assert.equal(day.prompt_tokens, reported.prompt_tokens, JSON.stringify(day));
    assert.equal(day.total_tokens, reported.total_tokens, JSON.stringify(day));
    assert.equal(day['emb:total_tokens'], reported.total_tokens);
    const line = await accessLogLine(router, r.id);
    assert.equal(line.total_tokens, reported.total_tokens);
  });

  it('responses API (input_tokens/output_tokens), JSON and streamed: usage hash = what the mock reported', async () => {
    const t = uniq('resp');
    const r1 = await asTenant(t, { p: '/openai/v1/responses', body: { model: 'gpt-4o', input: 'tell me a story please', max_output_tokens: 4 } });
    assert.equal(r1.status, 200, r1.body);
    const u1 = r1.json().usage;
    const token = await idp.mint({ tid: t });
    const s = await curlStream(router.url, '/openai/v1/responses', { model: 'gpt-4o', input: [{ role: 'user', content: 'hi there' }], max_output_tokens: 3, stream: true }, {
      headers: { authorization: `Bearer ${token}` },
    }).done;
    assert.equal(s.status, 200, s.body);
    const completed = sseEvents(s.body)
      .map((e) => JSON.parse(e.data))
      .find((e) => e.type === 'response.completed');
    const u2 = completed.response.usage;
    await sleep(100);
    const day = await usageHash(t, 'day');
    assert.equal(day.requests, 2);
    assert.equal(day.prompt_tokens, u1.input_tokens + u2.input_tokens, JSON.stringify(day));
    assert.equal(day.completion_tokens, u1.output_tokens + u2.output_tokens, JSON.stringify(day));
    assert.equal(day.total_tokens, u1.total_tokens + u2.total_tokens, JSON.stringify(day));
  });

  it('a refused answer (backend 400) releases the reservation and counts nothing', async () => {
    const t = uniq('rel');
    await east.setBehaviour({ status: 400, count: 1 });
    const r = await asTenant(t);
    assert.equal(r.status, 400, r.body);
    await sleep(100);
    const day = await usageHash(t, 'day');
    assert.equal(day.total_tokens ?? 0, 0, JSON.stringify(day));
    const scan = await redisCli(redis, '--scan', '--pattern', `aoai:reserved:{${t}}:*`);
    const buckets = scan.stdout.split('\n').filter(Boolean);
    assert.ok(buckets.length >= 1, 'the reservation made no bucket');
    for (const k of buckets) {
      assert.equal(Number((await redisCli(redis, 'HGET', k, 'requests')).stdout), 0, `${k} still holds a reservation`);
      // the reserve that creates a bucket gives it its TTL (the internal keys never outlive their use)
      const ttl = Number((await redisCli(redis, 'TTL', k)).stdout);
      assert.ok(ttl > 0 && ttl <= 360, `${k} TTL ${ttl}`);
    }
    const markers = (await redisCli(redis, '--scan', '--pattern', `aoai:settled:{${t}}:*`)).stdout.split('\n').filter(Boolean);
    assert.ok(markers.length >= 1, 'the settle left no marker');
    for (const k of markers) {
      const ttl = Number((await redisCli(redis, 'TTL', k)).stdout);
      assert.ok(ttl > 0 && ttl <= 900, `${k} TTL ${ttl}`);
    }
  });

  it('settles of one loop iteration leave as one call per tenant, minute and deployment: 12 tenants x 2 deployments x 20 at once (more groups and more requests than a batch holds) counted exactly', async () => {
    await awayFromMinuteEdge();
    const tenants = Array.from({ length: 12 }, (_, i) => uniq(`batch${i}`));
    const deps = ['gpt-4o', 'other'];
    const tokens = await Promise.all(tenants.map((t) => idp.mint({ tid: t })));
    const calls = async () => Number(/cmdstat_evalsha:calls=(\d+)/.exec((await redisCli(redis, 'INFO', 'commandstats')).stdout)?.[1] ?? 0);
    const before = await calls();
    const jobs = [];
    for (let i = 0; i < tenants.length; ++i)
      for (const d of deps)
        for (let k = 0; k < 20; ++k)
          jobs.push(
            post(router.url, `/openai/deployments/${d}/chat/completions?api-version=2024-10-21`, chatBody({ max_tokens: 1 + (k % 4) }), {
              headers: { authorization: `Bearer ${tokens[i]}` },
            }).then((r) => ({ t: tenants[i], d, r })),
          );
    const done = await Promise.all(jobs);
    const want = {};
    for (const { t, d, r } of done) {
      assert.equal(r.status, 200, r.body);
      const u = r.json().usage;
      const w = (want[t] ??= { requests: 0, prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, 'gpt-4o:total_tokens': 0, 'other:total_tokens': 0 });
      w.requests += 1;
      w.prompt_tokens += u.prompt_tokens;
      w.completion_tokens += u.completion_tokens;
      w.total_tokens += u.total_tokens;
      w[`${d}:total_tokens`] += u.total_tokens;
    }
    await sleep(200);
    for (const t of tenants) {
      assert.deepEqual(await usageHash(t, 'minute'), want[t], `minute usage of ${t}`);
      assert.deepEqual(await usageHash(t, 'day'), want[t], `day usage of ${t}`);
      for (const k of (await redisCli(redis, '--scan', '--pattern', `aoai:reserved:{${t}}:*`)).stdout.split('\n').filter(Boolean)) {
        assert.equal(Number((await redisCli(redis, 'HGET', k, 'tokens')).stdout), 0, `${k} still holds tokens`);
        assert.equal(Number((await redisCli(redis, 'HGET', k, 'requests')).stdout), 0, `${k} still holds requests`);
        assert.equal(Number((await redisCli(redis, 'HLEN', k)).stdout), 2, `${k} still holds reservations`);
      }
    }
    // 480 reserves, one call each; the settles went out in fewer calls than requests
    const settles = (await calls()) - before - jobs.length;
    assert.ok(settles >= 24 && settles < jobs.length, `${settles} settle calls for ${jobs.length} requests`);
  });

  it('access log line of an admitted request carries usage "reported"', async () => {
    const r = await asTenant(uniq('log'));
    assert.equal(r.status, 200);
    const line = await accessLogLine(router, r.id);
    assert.equal(line.usage, 'reported');
    assert.ok(line.total_tokens > 0);
  });
});
