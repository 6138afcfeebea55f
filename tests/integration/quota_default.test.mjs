// Issue 8's two fallbacks (README "Quotas and accounting"), against a real redis-server and the
// real binary:
//  - tenants.<T>.default_max_tokens: a text-generating request whose body names no completion
//    limit is estimated at body/4 + that default (only the estimate: the body goes upstream as
//    sent), with Redis and in-process; a typo in the key is a config error with the nearest name;
//  - the hash of the tenant named `default` (aoai:tenant:{default}) is the last layer: a field that
//    neither the tenant's hash nor the config names comes from it, within 2 s of an HSET on every
//    replica; garbage there counts as absent, a huge or wrongly typed key breaks nothing, Redis
//    down keeps the last copy, DEL takes the layer away within 2 s; `disabled` is not inherited.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  fetchMetrics,
  metricSum,
  redisCli,
  pollUntil,
  run,
  ROUTER_BIN,
  SLOW,
  tempDir,
  freePort,
  checkSanitizers,
} from './lib/harness.mjs';
import { startOidc } from './lib/oidc.mjs';

const EMB_PATH = '/openai/deployments/emb/embeddings?api-version=2024-10-21';
const RESP_PATH = '/openai/v1/responses';
const DEFAULT_KEY = 'aoai:tenant:{default}';
let seq = 0;
const uniq = (what) => `${what}-${Date.now().toString(36)}-${++seq}`;

let east, redis, idp;

/** Keeps a test's requests inside one UTC minute: waits out the last 15 s of a minute. */
async function awayFromMinuteEdge() {
  const s = (Date.now() % 60000) / 1000;
  if (s > 45) await sleep((60 - s) * 1000 + 300);
}

async function asTenant(router, tenant, { body = chatBody(), p = CHAT_PATH } = {}) {
  const token = await idp.mint({ tid: tenant });
  return post(router.url, p, body, { headers: { authorization: `Bearer ${token}` } });
}

async function cli(...args) {
  const r = await redisCli(redis, ...args);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

function authConfig() {
  return {
    mode: 'jwt',
    jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: ['api://aoai-router'], tenant_claims: ['tid'] }],
  };
}

async function warm(router) {
  const ok = await pollUntil(async () => (await asTenant(router, uniq('warm'))).status === 200, {
    timeoutMs: 20000 * SLOW,
    intervalMs: 200,
  });
  assert.ok(ok, 'the IdP keys never loaded');
}

before(async () => {
  east = await startMock('eastus');
  redis = await startRedis();
  idp = await startOidc({ name: 'dflt-idp', algs: ['RS256'] });
});

after(async () => {
  if (redis?.proc.exitCode === null) redis.proc.kill('SIGCONT');
  await stopAll(east, redis, idp);
});

/** two requests of one tenant, the second sent while the first waits 1.5 s at the mock */
async function overlapping(router, tenant, body) {
  await east.setBehaviour({ delay_ms: 1500 });
  try {
    const first = asTenant(router, tenant, { body });
    await sleep(400 * SLOW);
    const second = await asTenant(router, tenant, { body });
    return { first: await first, second };
  } finally {
    await east.setBehaviour({});
  }
}

function defaultMaxTokensCases(label, withRedis) {
  describe(`default_max_tokens (${label})`, () => {
    let router;
    before(async () => {
      router = await startRouter({
        config: {
          ...(withRedis ? { redis: { url: redis.url, on_failure: 'closed' } } : {}),
          backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' } })],
          auth: authConfig(),
          tenants: {
            default: { tpm: 1000, default_max_tokens: 800 },
            big: { default_max_tokens: 1000 },
            none: { default_max_tokens: 0 },
          },
        },
      });
      await warm(router);
    });
    after(async () => stopAll(router));

    it('tpm 1000, default 800: a body without max_tokens is admitted once; the second, while the first is in flight, is 429 tpm', async () => {
      await awayFromMinuteEdge();
      const { first, second } = await overlapping(router, uniq('dmt'), chatBody());
      assert.equal(first.status, 200, first.body);
      assert.equal(second.status, 429, second.body);
      assert.equal(second.json().error.code, 'tenant_quota_exceeded');
      assert.match(second.json().error.message, /tpm/);
      // the estimate reserved: 1000 - (body/4 + 800)
      const left = Number(first.headers['x-ratelimit-remaining-tokens']);
      const est = Math.floor(JSON.stringify(chatBody()).length / 4) + 800;
      assert.equal(left, 1000 - est, `remaining ${first.headers['x-ratelimit-remaining-tokens']}`);
    });

    it('with max_tokens in the body the default is not used: both overlapping requests are admitted', async () => {
      await awayFromMinuteEdge();
      const { first, second } = await overlapping(router, uniq('dmt-mt'), chatBody({ max_tokens: 5 }));
      assert.equal(first.status, 200, first.body);
      assert.equal(second.status, 200, second.body);
    });

    it('max_completion_tokens and (responses API) max_output_tokens count as the limit too', async () => {
      await awayFromMinuteEdge();
      // tenant "big": default 1000 ≥ its tpm 1000 (inherited): without a limit every request's estimate alone exceeds the tpm
      let r = await asTenant(router, 'big', { body: chatBody() });
      assert.equal(r.status, 429, r.body);
      r = await asTenant(router, 'big', { body: chatBody({ max_completion_tokens: 4 }) });
      assert.equal(r.status, 200, r.body);
      r = await asTenant(router, 'big', { p: RESP_PATH, body: { model: 'gpt-4o', input: 'hi' } });
      assert.equal(r.status, 429, r.body);
      r = await asTenant(router, 'big', { p: RESP_PATH, body: { model: 'gpt-4o', input: 'hi', max_output_tokens: 3 } });
      assert.equal(r.status, 200, r.body);
      // nothing generated: embeddings are not given a completion default
      r = await asTenant(router, 'big', { p: EMB_PATH, body: { input: 'hello' } });
      assert.equal(r.status, 200, r.body);
      // a tenant whose entry sets 0: no default (its tpm still 1000, inherited)
      r = await asTenant(router, 'none', { body: chatBody() });
      assert.equal(r.status, 200, r.body);
      assert.equal(Number(r.headers['x-ratelimit-remaining-tokens']), 1000 - Math.floor(JSON.stringify(chatBody()).length / 4));
    });
  });
}

defaultMaxTokensCases('Redis', true);
defaultMaxTokensCases('in-process, no redis:', false);

describe('default_max_tokens: operator mistakes are config errors', () => {
  async function check(tenants) {
    const dir = tempDir('aor-it-dflt-');
    const f = path.join(dir, 'backends.yaml');
    writeFileSync(
      f,
      `listen:\n  - { address: 127.0.0.1, port: ${await freePort()} }\nbackends:\n  - { name: b, url: http://127.0.0.1:9, deployments: { gpt-4o: gpt-4o } }\nauth: { mode: none }\ntenants:\n${tenants}`,
    );
    const r = await run(ROUTER_BIN, ['--check', '-c', f]);
    checkSanitizers(r.stderr);
    return r;
  }
  it('a typo names the field it resembles, at its line', async () => {
    const r = await check('  default: { tpm: 1000, default_max_token: 800 }\n');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /backends\.yaml:7: tenants\.default\.default_max_token: unknown key "default_max_token" \(did you mean "default_max_tokens"\?\)/);
  });
  it('negative, over 1000000 or not an integer: refused', async () => {
    for (const v of ['-1', '1000001', '8e2', 'lots']) {
      const r = await check(`  acme: { default_max_tokens: ${v} }\n`);
      assert.equal(r.code, 1, `${v}: ${r.stderr}`);
      assert.match(r.stderr, /tenants\.acme\.default_max_tokens: expected an integer between 0 and 1000000/);
    }
    const ok = await check('  acme: { default_max_tokens: 1000000 }\n');
    assert.equal(ok.code, 0, ok.stderr);
  });
});

describe('the tenant named default in Redis: the last fallback layer', () => {
  let routerA, routerB;

  /** a fresh tenant's first request: its x-ratelimit-remaining-requests (undefined when its rpm is unlimited) */
  async function freshRemaining(router) {
    const r = await asTenant(router, uniq('probe'), { p: EMB_PATH, body: { input: 'probe' } });
    assert.equal(r.status, 200, r.body);
    return r.headers['x-ratelimit-remaining-requests'];
  }

  /** ms until a fresh tenant's rpm is `rpm` (undefined: unlimited) on `router`; fails after 2 s (SPEC §6) */
  async function msUntil(router, rpm, since) {
    const want = rpm === undefined ? undefined : String(rpm - 1);
    const ok = await pollUntil(async () => (await freshRemaining(router)) === want, { timeoutMs: 4000 * SLOW, intervalMs: 50 });
    const ms = Date.now() - since;
    assert.ok(ok, `rpm ${rpm} never applied on ${router.url}`);
    assert.ok(ms <= 2000 * SLOW, `applied only after ${ms} ms`);
    return ms;
  }

  async function resetLayer() {
    await cli('DEL', DEFAULT_KEY);
    await msUntil(routerA, undefined, Date.now());
  }

  before(async () => {
    const config = {
      redis: { url: redis.url, on_failure: 'open' },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' } })],
      auth: authConfig(),
      tenants: { default: { tpm: 100000 }, owncfg: { rpm: 50 } },
    };
    routerA = await startRouter({ config });
    routerB = await startRouter({ config });
    await warm(routerA);
    await warm(routerB);
  });
  after(async () => stopAll(routerA, routerB));

  it('HSET rpm on tenant:{default} applies to a tenant with neither hash nor config value within 2 s on both replicas; the 3rd request of rpm 2 is 429', async () => {
    await resetLayer();
    await awayFromMinuteEdge();
    const t0 = Date.now();
    await cli('HSET', DEFAULT_KEY, 'rpm', '2');
    await msUntil(routerA, 2, t0);
    await msUntil(routerB, 2, t0);
    const t = uniq('rpm2');
    assert.equal((await asTenant(routerA, t)).status, 200);
    assert.equal((await asTenant(routerB, t)).status, 200);
    const r = await asTenant(routerA, t);
    assert.equal(r.status, 429, r.body);
    assert.match(r.json().error.message, /rpm/);
  });

  it('the poll goes as EVALSHA, not the script body every 500 ms; after SCRIPT FLUSH (NOSCRIPT) it reloads the script once and the layer still applies within 2 s', async () => {
    await resetLayer();
    const stats = async () => {
      const text = await cli('INFO', 'commandstats');
      const calls = (name) => Number((text.match(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm')) ?? [0, 0])[1]);
      return { eval: calls('eval'), evalsha: calls('evalsha') };
    };
    // no requests meanwhile: what Redis runs are the two routers' polls (2 workers each)
    const a = await stats();
    await sleep(2000);
    const b = await stats();
    assert.equal(b.eval - a.eval, 0, `EVAL sent ${b.eval - a.eval} times in 2 s`);
    assert.ok(b.evalsha - a.evalsha >= 8, `EVALSHA ${b.evalsha - a.evalsha} times in 2 s (4 workers, every 500 ms)`);
    await cli('SCRIPT', 'FLUSH');
    await awayFromMinuteEdge();
    const t0 = Date.now();
    await cli('HSET', DEFAULT_KEY, 'rpm', '3');
    await msUntil(routerA, 3, t0);
    await msUntil(routerB, 3, t0);
    const c = await stats();
    assert.ok(c.eval - b.eval >= 1 && c.eval - b.eval <= 16, `EVAL after the flush: ${c.eval - b.eval} (Redis caches a script for every connection: at most one per worker and script)`);
    await sleep(1000);
    const d = await stats();
    assert.equal(d.eval - c.eval, 0, 'EVALSHA again once the script is cached');
    await cli('DEL', DEFAULT_KEY);
  });

  it('the tenant hash, then the config, come first: own rpm 5, config tenants.owncfg rpm 50, config tenants.default tpm over the layer tpm 1', async () => {
    await resetLayer();
    await awayFromMinuteEdge();
    await cli('HSET', DEFAULT_KEY, 'rpm', '2', 'tpm', '1');
    await msUntil(routerA, 2, Date.now());
    const own = uniq('own');
    await cli('HSET', `aoai:tenant:{${own}}`, 'rpm', '5');
    let r = await asTenant(routerA, own);
    assert.equal(r.status, 200, r.body); // tpm 1 (layer) would refuse every request: the config's tpm 100000 is used
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '4');
    r = await asTenant(routerA, 'owncfg');
    assert.equal(r.status, 200, r.body);
    assert.ok(Number(r.headers['x-ratelimit-remaining-requests']) >= 40, r.headers['x-ratelimit-remaining-requests']);
    // a field garbled in the tenant's own hash falls through to the layer
    const garbled = uniq('garbled');
    await cli('HSET', `aoai:tenant:{${garbled}}`, 'rpm', 'lots');
    r = await asTenant(routerA, garbled);
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '1');
  });

  it('deployments is inherited (403 outside the list), disabled is not (other tenants served, the tenant default refused)', async () => {
    await resetLayer();
    await cli('HSET', DEFAULT_KEY, 'deployments', 'emb', 'disabled', '1', 'rpm', '1000');
    await msUntil(routerA, 1000, Date.now());
    const t = uniq('deps');
    let r = await asTenant(routerA, t);
    assert.equal(r.status, 403, r.body);
    assert.equal(r.json().error.code, 'forbidden');
    r = await asTenant(routerA, t, { p: EMB_PATH, body: { input: 'x' } });
    assert.equal(r.status, 200, r.body);
    const listed = uniq('listed');
    await cli('HSET', `aoai:tenant:{${listed}}`, 'deployments', 'gpt-4o');
    assert.equal((await asTenant(routerA, listed)).status, 200);
    r = await asTenant(routerA, 'default', { p: EMB_PATH, body: { input: 'x' } });
    assert.equal(r.status, 403, r.body); // the tenant `default` itself is disabled
  });

  it('garbage values in the default hash count as absent (logged), as for any tenant hash', async () => {
    await resetLayer();
    await cli('HSET', DEFAULT_KEY, 'rpm', 'abc', 'tpm', '-5', 'tokens_per_day', '1e3', 'deployments', ',,,');
    const from = routerA.stderr().length;
    assert.ok(await routerA.waitStderr(/tenant default: quota hash has invalid values \(mask 23/, 3000 * SLOW, from), routerA.stderr().slice(from));
    const t = uniq('garbage');
    for (let i = 0; i < 3; ++i) {
      const r = await asTenant(routerA, t);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.headers['x-ratelimit-remaining-requests'], undefined);
    }
  });

  it('a huge default hash (2 MB value, 20,000 fields) costs nothing: its valid rpm applies, no Redis error, other tenants served', async () => {
    await resetLayer();
    const errorsBefore = metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total');
    const big = 'x'.repeat(2 * 1024 * 1024);
    const lua = "for i = 1, 20000 do redis.call('HSET', KEYS[1], 'note' .. i, ARGV[1]) end redis.call('HSET', KEYS[1], 'rpm', '3') return 1";
    await cli('EVAL', lua, '1', DEFAULT_KEY, 'y'.repeat(100));
    // a 2 MB value in a field the poll reads (it would be a reply the connection refuses, were it not cut)
    const f = path.join(tempDir('aor-it-dflt-'), 'big.txt');
    writeFileSync(f, big);
    const r0 = await run('sh', ['-c', `redis-cli -h 127.0.0.1 -p ${redis.port} -x HSET '${DEFAULT_KEY}' deployments < ${f}`]);
    assert.equal(r0.code, 0, r0.stderr);
    await msUntil(routerA, 3, Date.now());
    await sleep(1500);
    const t = uniq('huge');
    const r = await asTenant(routerA, t);
    assert.equal(r.status, 200, r.body); // the 2 MB deployments is invalid: absent, every deployment allowed
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '2');
    const errorsAfter = metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total');
    assert.equal(errorsAfter, errorsBefore, 'the polls made Redis errors');
  });

  it('a string key at tenant:{default}: the layer goes (logged), no Redis error counted; back to a hash: it returns', async () => {
    await resetLayer();
    await cli('HSET', DEFAULT_KEY, 'rpm', '4');
    await msUntil(routerA, 4, Date.now());
    const from = routerA.stderr().length;
    const errorsBefore = metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total');
    await cli('DEL', DEFAULT_KEY);
    await cli('SET', DEFAULT_KEY, 'rpm=4');
    await msUntil(routerA, undefined, Date.now());
    assert.ok(await routerA.waitStderr(/the default tenant's quota key is not a hash/, 3000 * SLOW, from));
    await sleep(1200); // a few polls of the wrong type
    const errorsAfter = metricSum(await fetchMetrics(routerA), 'aoai_router_redis_errors_total');
    assert.equal(errorsAfter, errorsBefore);
    await cli('DEL', DEFAULT_KEY);
    await cli('HSET', DEFAULT_KEY, 'rpm', '4');
    await msUntil(routerA, 4, Date.now());
  });

  it('Redis down (SIGSTOP, on_failure open): the last copy stays — a new tenant admitted locally still gets rpm 2', async () => {
    await resetLayer();
    await awayFromMinuteEdge();
    await cli('HSET', DEFAULT_KEY, 'rpm', '2');
    await msUntil(routerA, 2, Date.now());
    redis.proc.kill('SIGSTOP');
    try {
      await sleep(1500); // past the command deadline: the connection is known down, polls fail
      const t = uniq('down');
      const codes = [];
      for (let i = 0; i < 3; ++i) codes.push((await asTenant(routerA, t)).status);
      assert.deepEqual(codes, [200, 200, 429]);
    } finally {
      redis.proc.kill('SIGCONT');
    }
    await pollUntil(async () => (await asTenant(routerA, uniq('up'))).headers['x-ratelimit-remaining-requests'] === '1', {
      timeoutMs: 10000 * SLOW,
      intervalMs: 200,
    });
  });

  it('DEL tenant:{default}: the fallback goes within 2 s on both replicas', async () => {
    await cli('HSET', DEFAULT_KEY, 'rpm', '7');
    await msUntil(routerA, 7, Date.now());
    await msUntil(routerB, 7, Date.now());
    const t0 = Date.now();
    await cli('DEL', DEFAULT_KEY);
    await msUntil(routerA, undefined, t0);
    await msUntil(routerB, undefined, t0);
  });
});

// The tenant:{default} poll asks only a Redis that is up: while Redis is down each worker keeps
// its last copy, and a poll refused every 500 ms would add 2 errors a second per worker to
// aoai_router_redis_errors_total (measured: 18 in 6 s on one worker before, 6 after: the
// reconnect attempts alone).
describe('the tenant:{default} poll while Redis is down', () => {
  it('adds nothing to aoai_router_redis_errors_total beyond the reconnect attempts', async () => {
    const srv = net.createServer((s) => s.destroy()); // accepts and closes: never up
    await new Promise((r) => srv.listen(0, '127.0.0.1', r));
    const mock = await startMock('dt-down');
    const router = await startRouter({
      config: { threads: 1, redis: { url: `redis://127.0.0.1:${srv.address().port}/0`, on_failure: 'open' }, backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })] },
    });
    try {
      const a = metricSum(await fetchMetrics(router), 'aoai_router_redis_errors_total');
      await sleep(6000);
      const b = metricSum(await fetchMetrics(router), 'aoai_router_redis_errors_total');
      assert.ok(b - a >= 1, 'the failed reconnects are counted');
      assert.ok(b - a <= 10, `${b - a} errors in 6 s`);
    } finally {
      await stopAll(router, mock);
      srv.close();
    }
  });
});
