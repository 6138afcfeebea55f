// Outside review of the quota hot path (one-string reserve reply, RESP key arguments, key-block
// cache, deferred Redis flush, tenant:{default} layer, default_max_tokens): attacks through the
// router binary with a real redis-server.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  redisCli,
  freePort,
  fetchMetrics,
  metricSum,
  bodyFile,
  h2load,
  sleep,
} from './lib/harness.mjs';

const sha = (s) => crypto.createHash('sha256').update(s).digest('hex');

// The config accepts limits up to INT64_MAX (config.c get_int), the reserve script gets them as
// the fallback and prints the remaining headroom with %d into its one-string reply; the parser
// (read_int) takes at most 18 digits. A config limit of 10^18 must not turn every admission of
// the tenant into "unexpected reply from the reserve script" (503 with on_failure closed).
describe('config limits near the int64 range through the one-string reserve reply', () => {
  let mock, redis, router;
  const KEY = { big: 'aor_review_hot_big_0123456789abcdef', max: 'aor_review_hot_max_0123456789abcdef' };

  before(async () => {
    mock = await startMock('rqh-big');
    redis = await startRedis();
    const port = await freePort();
    router = await startRouter({
      config: `listen:\n  - { address: 127.0.0.1, port: ${port} }\nthreads: 1\n` +
        `redis: { url: ${redis.url}, on_failure: closed }\n` +
        `auth: { mode: key, keys: { static: [ { sha256: "${sha(KEY.big)}", tenant: big }, { sha256: "${sha(KEY.max)}", tenant: max } ] } }\n` +
        `tenants:\n  big: { tpm: 1000000000000000000, rpm: 1000000000000000000 }\n` +
        `  max: { tpm: 9223372036854775807, rpm: 9223372036854775807, tokens_per_day: 9223372036854775807 }\n` +
        `backends:\n  - { name: rqh-big, url: ${mock.url}, priority: 1, weight: 1, deployments: { gpt-4o: gpt-4o } }\n`,
      port,
    });
  });
  after(async () => {
    await stopAll(router, mock, redis);
  });

  for (const t of ['big', 'max']) {
    it(`tenant ${t}: admitted (200), remaining headers are non-negative numbers`, async () => {
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEY[t] } });
      assert.equal(r.status, 200, `${r.status} ${r.body}`);
      for (const h of ['x-ratelimit-remaining-tokens', 'x-ratelimit-remaining-requests']) {
        assert.match(r.headers[h] ?? '', /^\d+$/, `${h}: ${r.headers[h]}`);
      }
      assert.doesNotMatch(router.stderr(), /unexpected reply from the reserve script/);
    });
  }
});

// remember_quota skips re-resolving the tenant hash while its FNV-64 and the config generation
// are unchanged: a value flipped back and forth, and a reload changing tenants.default, must show
// at once in the decision and in the quota gauges (never the previous resolution).
describe('the FNV-keyed quota resolution never serves a stale quota', () => {
  let mock, redis, router;
  const KEY = 'aor_review_hot_fnv_0123456789abcdef';
  const config = (tpm) => ({
    threads: 1,
    redis: { url: redis.url, on_failure: 'closed' },
    auth: { mode: 'key', keys: { static: [{ sha256: sha(KEY), tenant: 'fnv' }] } },
    tenants: { default: { tpm, rpm: 1000 } },
    backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })],
  });
  const send = (max) => post(router.url, CHAT_PATH, chatBody({ max_tokens: max }), { headers: { 'api-key': KEY } });
  const limit = async (which) => metricSum(await fetchMetrics(router), 'aoai_router_tenant_quota_limit', { tenant: 'fnv', limit: which });

  before(async () => {
    mock = await startMock('rqh-fnv');
    redis = await startRedis();
    router = await startRouter({ config: config(100000) });
  });
  after(async () => {
    await stopAll(router, mock, redis);
  });

  it('HSET tpm 50 / 100000 / 50 / DEL: each answer and gauge follows the hash', async () => {
    for (const [tpm, status, gauge] of [
      ['50', 429, 50],
      ['100000', 200, 100000],
      ['50', 429, 50],
      ['100000', 200, 100000],
      [null, 200, 100000], // DEL: the config's default again
    ]) {
      if (tpm === null) await redisCli(redis, 'HDEL', 'aoai:tenant:{fnv}', 'tpm');
      else await redisCli(redis, 'HSET', 'aoai:tenant:{fnv}', 'tpm', tpm);
      const r = await send(200);
      assert.equal(r.status, status, `tpm ${tpm}: ${r.status} ${r.body}`);
      assert.equal(await limit('tpm'), gauge, `tpm ${tpm}: gauge`);
    }
  });

  it('a reload changing tenants.default.tpm (hash unchanged): the gauge follows at the next request', async () => {
    await redisCli(redis, 'HSET', 'aoai:tenant:{fnv}', 'rpm', '1000');
    assert.equal((await send(5)).status, 200);
    assert.equal(await limit('tpm'), 100000);
    const from = router.stderr().length;
    router.writeConfig(config(7777));
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/reloaded/, 10000, from), 'reloaded');
    assert.equal((await send(5)).status, 200);
    assert.equal(await limit('tpm'), 7777);
  });
});

// The reserve's arguments now live in the call's arena as RESP bulk strings (8 bytes of head and
// CRLF each instead of a NUL): the longest names the config allows — a 128-byte prefix, a
// 128-byte tenant, 10 reservation buckets (upstream_timeout_ms 10 min) — and a tenant's long
// deployments list must still fit, or every admission of that tenant fails (503 when closed).
describe('the longest keys the config allows fit the reserve call', () => {
  let mock, redis, router;
  const PREFIX = `${'p'.repeat(127)}-`; // 128 bytes (no ':': the harness writes YAML unquoted)
  const TENANT = `${'t'.repeat(120)}.tenant1`; // 128 bytes
  const LONGDEP = Array.from({ length: 4 }, (_, i) => `${'d'.repeat(240)}-${i}`); // 4 × 242 bytes
  const KEYS = { plain: 'aor_review_hot_long_plain_0123456789', deps: 'aor_review_hot_long_deps_01234567890' };

  before(async () => {
    mock = await startMock('rqh-long');
    redis = await startRedis();
    router = await startRouter({
      config: {
        threads: 1,
        limits: { upstream_timeout_ms: 600000 },
        redis: { url: redis.url, on_failure: 'closed', prefix: PREFIX },
        auth: {
          mode: 'key',
          keys: {
            static: [
              { sha256: sha(KEYS.plain), tenant: TENANT },
              { sha256: sha(KEYS.deps), tenant: `${TENANT.slice(0, 127)}2` },
            ],
          },
        },
        tenants: { default: { tpm: 100000, rpm: 1000 }, [`${TENANT.slice(0, 127)}2`]: { deployments: [...LONGDEP, 'gpt-4o'] } },
        backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
  });
  after(async () => {
    await stopAll(router, mock, redis);
  });

  for (const which of ['plain', 'deps']) {
    it(`128-byte prefix and tenant, 10 buckets${which === 'deps' ? ', a 1 KB deployments list' : ''}: admitted and counted`, async () => {
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEYS[which] } });
      assert.equal(r.status, 200, `${r.status} ${r.body}`);
      assert.match(r.headers['x-ratelimit-remaining-tokens'] ?? '', /^\d+$/);
      const tenant = which === 'plain' ? TENANT : `${TENANT.slice(0, 127)}2`;
      const keys = (await redisCli(redis, '--scan', '--pattern', `${PREFIX}usage:{${tenant}}:minute:*`)).stdout.trim();
      assert.ok(keys.length > 0, 'usage written under the long prefix');
    });
  }
});

// A tenant hash's `deployments` list with a blank after a comma ("a, b"): router/quota.c keeps
// the list without blanks (valid), so the reserve script must hold the tenant to it too, not
// take it for invalid and fall back to "all deployments".
describe('a deployments list with blanks restricts the tenant in the reserve script too', () => {
  let mock, redis, router;
  const KEY = 'aor_review_hot_deps_0123456789abcdef';

  before(async () => {
    mock = await startMock('rqh-deps');
    redis = await startRedis();
    router = await startRouter({
      config: {
        threads: 1,
        redis: { url: redis.url, on_failure: 'closed' },
        auth: { mode: 'key', keys: { static: [{ sha256: sha(KEY), tenant: 'blanks' }] } },
        tenants: { default: { tpm: 100000, rpm: 1000 } },
        backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o', 'text-embedding-3-small': 'emb3' } })],
      },
    });
  });
  after(async () => {
    await stopAll(router, mock, redis);
  });

  for (const list of ['text-embedding-3-small, other', 'other,\ttext-embedding-3-small', ' text-embedding-3-small ']) {
    it(`deployments ${JSON.stringify(list)}: gpt-4o is 403 deployment`, async () => {
      await redisCli(redis, 'HSET', 'aoai:tenant:{blanks}', 'deployments', list);
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEY } });
      assert.equal(r.status, 403, `${r.status} ${r.body}`);
      assert.equal(r.json().error.code, 'forbidden');
    });
  }
});

// Deferred flush, recycled command structs and the key-block cache under reloads that move the
// router between two Redis servers and two prefixes while 32 streams keep requests in flight:
// nothing crashes (the ASan build reports use-after-free of a recycled command or call) and every
// request is answered.
describe('reloads switching Redis and prefix under load', () => {
  let mock, r1, r2, router;
  const config = (redis, prefix) => ({
    threads: 2,
    redis: { url: redis.url, on_failure: 'open', prefix },
    tenants: { default: { tpm: -1, rpm: -1 } },
    backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })],
  });

  before(async () => {
    mock = await startMock('rqh-reload');
    r1 = await startRedis();
    r2 = await startRedis();
    router = await startRouter({ config: config(r1, 'one.') });
  });
  after(async () => {
    await stopAll(router, mock, r1, r2);
  });

  it('20 reloads in 4 s under h2c load: all answered 2xx, each Redis used with its prefix', async () => {
    const body = bodyFile(chatBody({ max_tokens: 5 }));
    const load = h2load(['-n', '6000', '-c', '4', '-m', '8', '-d', body, '-H', 'content-type: application/json', `${router.url}${CHAT_PATH}`]);
    for (let i = 0; i < 20; i++) {
      await sleep(200);
      router.writeConfig(i % 2 === 0 ? config(r2, 'two.') : config(r1, 'one.'));
      router.signal('SIGHUP');
    }
    const res = await load;
    assert.equal(res.requests.succeeded, 6000, res.output);
    assert.equal(res.status['2xx'], 6000, res.output);
    for (const [redis, prefix] of [[r1, 'one.'], [r2, 'two.']]) {
      const keys = (await redisCli(redis, '--scan')).stdout.split('\n').filter(Boolean);
      assert.ok(keys.length > 0);
      // a settle of a request admitted before a switch goes to the Redis of the moment with its
      // own config's prefix (as before this change: base 7e0d01a does the same), so the other
      // prefix's usage keys may appear; each Redis holds its own prefix's reservations
      assert.ok(keys.some((k) => k.startsWith(`${prefix}reserved:`)), `${prefix}: ${keys.join(' ')}`);
    }
    // still serving after the storm
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }));
    assert.equal(r.status, 200, r.body);
  });
});
