// Subscription keys (SPEC §2 `keys`, §3 auth.keys, §4 401/403/503, §6 aoai:key:<sha256>,
// §7 auth failures; issue 3): `aoai-router keys create|revoke|list` against a real
// redis-server, keys in the api-key / Ocp-Apim-Subscription-Key headers, ?subscription-key=
// and the official AzureOpenAI SDK, revocation and tenant disabling within 2 s, static keys
// without Redis, Redis stopped with on_failure: closed, and the jwt_or_key / jwt_and_key modes.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { AzureOpenAI } from 'openai';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  resetMocks,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  run,
  SLOW,
  ROUTER_BIN,
  authFailures,
  authFailureDelta,
  accessLogLine,
  redisCli,
} from './lib/harness.mjs';
import { startOidc } from './lib/oidc.mjs';

const API_VERSION = '2024-10-21';
/** SPEC §6: a revoke, a deleted key or a disabled tenant is seen within 2 s; the request itself may take a little. */
const WITHIN_MS = 2000;
const POLL_LIMIT_MS = WITHIN_MS + 1000 * SLOW;

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
let seq = 0;
const rid = (what) => `it-keys-${what}-${++seq}-${Date.now()}`;

const STATIC_KEY = newKey();
const STATIC_TENANT = 'static-tenant';
const ROUTER_ENV = { AOR_IT_BACKEND_KEY: 'backend-secret-for-keys-test' };

let east, redis, router;
const secrets = new Set([STATIC_KEY]); // every key the tests use: none may show up in router output or upstream

/** `aoai-router -c <the router's config> keys ...`, with the router's environment (as in its pod). */
function keysCli(target, ...args) {
  return run(ROUTER_BIN, ['-c', target.configPath, 'keys', ...args], { env: ROUTER_ENV });
}

/** HSET aoai:key:<sha256> as an operator would (SPEC §6). */
async function putKey(key, tenant, name = 'direct') {
  secrets.add(key);
  const r = await redisCli(redis, 'HSET', `aoai:key:${sha256(key)}`, 'tenant', tenant, 'name', name, 'created', String(Math.floor(Date.now() / 1000)));
  assert.equal(r.code, 0, r.stderr);
}

function call(target, { key, via = 'api-key', token, id = rid('req'), proto = 'h1', headers = {} } = {}) {
  const h = { 'x-request-id': id, ...headers };
  let p = CHAT_PATH;
  if (key !== undefined) {
    if (via === 'query') p = `${CHAT_PATH}&subscription-key=${encodeURIComponent(key)}`;
    else if (via === 'query-first') p = `/openai/deployments/gpt-4o/chat/completions?subscription-key=${encodeURIComponent(key)}&api-version=${API_VERSION}`;
    else h[via] = key;
  }
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  return post(target.url, p, chatBody({ max_tokens: 2 }), { proto, headers: h });
}

async function expectOk(target, opts, what) {
  const id = rid('ok');
  const res = await call(target, { ...opts, id });
  assert.equal(res.status, 200, `${what}: expected 200, got ${res.status} ${res.body}`);
  const line = await accessLogLine(target, id);
  assert.ok(line, `${what}: no access-log line`);
  return { res, line };
}

async function expectRefused(target, opts, what, { status, code, reasons }) {
  const before = await authFailures(target);
  const backendBefore = (await east.stats()).requests;
  const res = await call(target, opts);
  assert.equal(res.status, status, `${what}: expected ${status}, got ${res.status} ${res.body}`);
  assert.equal(res.json().error?.code, code, `${what}: ${res.body}`);
  const delta = authFailureDelta(before, await authFailures(target));
  if (reasons)
    assert.ok(reasons.some((r) => delta[r] >= 1), `${what}: expected auth failure reason in [${reasons}], got ${JSON.stringify(delta)}`);
  assert.equal((await east.stats()).requests, backendBefore, `${what}: reached the backend`);
  return res;
}

/**
 * Polls until a request answers `status`; then, once WITHIN_MS have passed since `changedAt`
 * (when the change was made), checks that every worker agrees (several requests in a row:
 * each worker has its own 1 s cache). Returns the milliseconds the first `status` took.
 */
async function pollStatus(target, opts, status, what, changedAt = Date.now()) {
  const t0 = changedAt;
  let last;
  const ok = await pollUntil(
    async () => {
      last = await call(target, opts);
      return last.status === status;
    },
    { timeoutMs: POLL_LIMIT_MS, intervalMs: 50 },
  );
  const took = Date.now() - t0;
  assert.ok(ok, `${what}: still ${last.status} ${last.body} after ${took} ms (expected ${status} within ${WITHIN_MS} ms)`);
  const settle = t0 + WITHIN_MS - Date.now();
  if (settle > 0) await sleep(settle);
  for (let i = 0; i < 6; ++i) {
    const r = await call(target, { ...opts, proto: i % 2 ? 'h2c' : 'h1' });
    assert.equal(r.status, status, `${what}: ${WITHIN_MS} ms after the change a request still got ${r.status} ${r.body}`);
  }
  return { took, res: last };
}

/** The upstream request the mock saw carries none of the client keys. */
async function assertNotForwarded(what) {
  const lr = (await east.stats()).last_request;
  assert.ok(lr, `${what}: the mock saw no request`);
  const dump = JSON.stringify(lr);
  for (const k of secrets) assert.ok(!dump.includes(k), `${what}: a client key reached the backend: ${dump.slice(0, 500)}`);
  assert.equal(lr.headers['ocp-apim-subscription-key'], undefined, what);
  assert.ok(!/subscription-key/i.test(String(lr.query)), `${what}: query ${lr.query}`);
  assert.equal(lr.headers.authorization, undefined, what);
}

before(async () => {
  east = await startMock('eastus');
  redis = await startRedis();
  router = await startRouter({
    config: {
      redis: { url: redis.url, on_failure: 'closed' },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' }, auth: { type: 'api_key', key_env: 'AOR_IT_BACKEND_KEY' } })],
      auth: { mode: 'key', keys: { static: [{ sha256: sha256(STATIC_KEY), tenant: STATIC_TENANT }] } },
    },
    env: ROUTER_ENV,
  });
});

after(async () => {
  // a test that failed half-way must not leave Redis stopped
  if (redis?.proc.exitCode === null) redis.proc.kill('SIGCONT');
  await stopAll(router, east, redis);
});

beforeEach(async () => {
  await resetMocks(east);
});

describe('aoai-router keys (CLI)', () => {
  let created;

  it('keys create --tenant t1 --name app1 prints a key once; Redis holds only aoai:key:<sha256>', async () => {
    const r = await keysCli(router, 'create', '--tenant', 't1', '--name', 'app1');
    assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
    assert.equal(lines.length, 1, `stdout: ${r.stdout}`);
    created = lines[0].trim();
    secrets.add(created);
    assert.match(created, /^[\x21-\x7e]{32,256}$/, 'a printable key of 32..256 characters');
    assert.ok(!r.stderr.includes(created), 'the key is printed on stderr too');
    const hex = sha256(created);
    // Redis: exactly one key hash, named by the SHA-256, with tenant and name; the key itself nowhere
    const scan = await redisCli(redis, '--scan', '--pattern', 'aoai:key:*');
    assert.deepEqual(scan.stdout.split('\n').filter(Boolean), [`aoai:key:${hex}`]);
    const fields = await redisCli(redis, 'HGETALL', `aoai:key:${hex}`);
    const kv = fields.stdout.split('\n');
    if (kv.at(-1) === '') kv.pop();
    const obj = Object.fromEntries(kv.flatMap((_, i) => (i % 2 ? [] : [[kv[i], kv[i + 1]]])));
    assert.equal(obj.tenant, 't1');
    assert.equal(obj.name, 'app1');
    assert.ok(obj.created, `created missing: ${JSON.stringify(obj)}`);
    assert.ok(!obj.revoked || obj.revoked === '0');
    await assertRedisHasNoSecret(created);
  });

  it('the created key works (api-key header): tenant t1 and the key id in the access log', async () => {
    assert.ok(created, 'no key was created');
    const { line } = await expectOk(router, { key: created }, 'created key');
    assert.equal(line.tenant, 't1');
    assert.equal(line.auth, 'key');
    assert.equal(line.key_id, sha256(created).slice(0, 8));
    await assertNotForwarded('created key');
  });

  it('keys list shows tenant, name and a digest prefix, never the key', async () => {
    const other = await keysCli(router, 'create', '--tenant', 't-other', '--name', 'second');
    assert.equal(other.code, 0, other.stderr);
    secrets.add(other.stdout.trim());
    const r = await keysCli(router, 'list');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\bt1\b/);
    assert.match(r.stdout, /\bapp1\b/);
    assert.ok(r.stdout.includes(sha256(created).slice(0, 8)), r.stdout);
    assert.match(r.stdout, /\bt-other\b/);
    for (const k of secrets) {
      assert.ok(!r.stdout.includes(k), 'keys list printed a key');
      assert.ok(!r.stderr.includes(k), 'keys list printed a key on stderr');
    }
    assert.ok(!r.stdout.includes(sha256(created)), 'keys list printed a full digest (prefixes suffice)');
    const t = await keysCli(router, 'list', '--tenant', 't1');
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /\bt1\b/);
    assert.doesNotMatch(t.stdout, /\bt-other\b/);
  });

  it('keys revoke <key>: refused with 403 within 2 s; Redis says revoked 1', async () => {
    assert.ok(created, 'no key was created');
    await expectOk(router, { key: created }, 'before the revoke');
    const r = await keysCli(router, 'revoke', created);
    const changedAt = Date.now();
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    assert.ok(!r.stdout.includes(created) && !r.stderr.includes(created), 'revoke echoed the key');
    assert.equal((await redisCli(redis, 'HGET', `aoai:key:${sha256(created)}`, 'revoked')).stdout.trim(), '1');
    const { took, res } = await pollStatus(router, { key: created }, 403, 'revoked key', changedAt);
    assert.equal(res.json().error.code, 'forbidden');
    assert.ok(took <= POLL_LIMIT_MS, `took ${took} ms`);
    await expectRefused(router, { key: created }, 'revoked key', { status: 403, code: 'forbidden', reasons: ['revoked_key'] });
    const listed = await keysCli(router, 'list', '--tenant', 't1');
    assert.match(listed.stdout, /yes|revoked|\b1\b/i, `list does not show the revocation: ${listed.stdout}`);
  });

  it('keys revoke <sha256> works too; an unknown key exits 1', async () => {
    const c = await keysCli(router, 'create', '--tenant', 't1', '--name', 'by-digest');
    assert.equal(c.code, 0, c.stderr);
    const key = c.stdout.trim();
    secrets.add(key);
    await expectOk(router, { key }, 'before the revoke');
    const r = await keysCli(router, 'revoke', sha256(key));
    const changedAt = Date.now();
    assert.equal(r.code, 0, r.stderr);
    await pollStatus(router, { key }, 403, 'revoked by digest', changedAt);
    const unknown = await keysCli(router, 'revoke', newKey());
    assert.equal(unknown.code, 1, `revoking an unknown key: exit ${unknown.code}`);
  });
});

async function assertRedisHasNoSecret(secret) {
  const all = (await redisCli(redis, '--scan')).stdout.split('\n').filter(Boolean);
  for (const k of all) {
    assert.ok(!k.includes(secret), `a Redis key name holds the secret: ${k}`);
    const type = (await redisCli(redis, 'TYPE', k)).stdout.trim();
    const dump =
      type === 'hash'
        ? (await redisCli(redis, 'HGETALL', k)).stdout
        : type === 'string'
          ? (await redisCli(redis, 'GET', k)).stdout
          : type === 'set'
            ? (await redisCli(redis, 'SMEMBERS', k)).stdout
            : type === 'list'
              ? (await redisCli(redis, 'LRANGE', k, '0', '-1')).stdout
              : type === 'zset'
                ? (await redisCli(redis, 'ZRANGE', k, '0', '-1')).stdout
                : '';
    assert.ok(!dump.includes(secret), `Redis ${k} holds the key`);
  }
}

describe('subscription keys on requests (mode key, Redis)', () => {
  const KEY = newKey();

  before(async () => {
    await putKey(KEY, 't2', 'operator-key');
  });

  for (const [via, proto] of [
    ['api-key', 'h1'],
    ['api-key', 'h2c'],
    ['Ocp-Apim-Subscription-Key', 'h1'],
    ['ocp-apim-subscription-key', 'h2c'],
    ['query', 'h1'],
    ['query-first', 'h2c'],
  ]) {
    it(`key via ${via} (${proto}): 200, tenant t2, the key not forwarded`, async () => {
      const { line } = await expectOk(router, { key: KEY, via, proto }, via);
      assert.equal(line.tenant, 't2');
      assert.equal(line.auth, 'key');
      assert.equal(line.key_id, sha256(KEY).slice(0, 8));
      await assertNotForwarded(via);
      const lr = (await east.stats()).last_request;
      assert.equal(lr.headers['api-key'], 'backend-secret-for-keys-test', 'the backend gets its own key');
      assert.match(String(lr.query), /api-version=2024-10-21/);
    });
  }

  it('the official AzureOpenAI SDK with apiKey = the subscription key', async () => {
    const client = new AzureOpenAI({ endpoint: router.url, apiKey: KEY, apiVersion: API_VERSION, deployment: 'gpt-4o', maxRetries: 0, timeout: 30000 * SLOW });
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })
      .withResponse();
    assert.equal(data.choices[0].message.content, 'word0 word1 word2');
    const line = await accessLogLine(router, response.headers.get('x-request-id'));
    assert.equal(line?.tenant, 't2');
    await assertNotForwarded('sdk');
    // a wrong key through the SDK: its AuthenticationError (401)
    const bad = new AzureOpenAI({ endpoint: router.url, apiKey: newKey(), apiVersion: API_VERSION, deployment: 'gpt-4o', maxRetries: 0 });
    await assert.rejects(bad.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }), (e) => {
      assert.equal(e.status, 401);
      assert.equal(e.code ?? e.error?.code, 'unauthorized');
      return true;
    });
  });

  it('no key, an unknown key, a malformed key: 401 unauthorized', async () => {
    await expectRefused(router, {}, 'no key', { status: 401, code: 'unauthorized', reasons: ['missing_credentials'] });
    await expectRefused(router, { key: newKey() }, 'unknown key', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    await expectRefused(router, { key: 'short' }, 'too short', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    await expectRefused(router, { key: 'x'.repeat(300) }, 'too long', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    await expectRefused(router, { key: sha256(KEY) }, 'the digest instead of the key', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    await expectRefused(router, { key: KEY.slice(0, -1) }, 'the key minus one character', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    // a bearer token is no subscription key in mode key
    await expectRefused(router, { token: KEY }, 'key as a bearer token', { status: 401, code: 'unauthorized' });
  });

  it('a tenant may hold several active keys (primary and secondary)', async () => {
    const primary = newKey();
    const secondary = newKey();
    await putKey(primary, 't-rot', 'primary');
    await putKey(secondary, 't-rot', 'secondary');
    for (const key of [primary, secondary, primary]) {
      const { line } = await expectOk(router, { key }, 'rotation pair');
      assert.equal(line.tenant, 't-rot');
      assert.equal(line.key_id, sha256(key).slice(0, 8));
    }
  });

  it('a static key (auth.keys.static) works next to Redis', async () => {
    const { line } = await expectOk(router, { key: STATIC_KEY }, 'static key');
    assert.equal(line.tenant, STATIC_TENANT);
    assert.equal(line.key_id, sha256(STATIC_KEY).slice(0, 8));
    await assertNotForwarded('static key');
  });

  it('revoked 1 set by an operator (HSET): 403 within 2 s', async () => {
    const key = newKey();
    await putKey(key, 't3');
    await expectOk(router, { key }, 'before');
    assert.equal((await redisCli(redis, 'HSET', `aoai:key:${sha256(key)}`, 'revoked', '1')).code, 0);
    const changedAt = Date.now();
    await pollStatus(router, { key }, 403, 'revoked by HSET', changedAt);
    await expectRefused(router, { key }, 'revoked by HSET', { status: 403, code: 'forbidden', reasons: ['revoked_key'] });
  });

  it('deleting the key hash: 401 within 2 s', async () => {
    const key = newKey();
    await putKey(key, 't3');
    await expectOk(router, { key }, 'before');
    assert.equal((await redisCli(redis, 'DEL', `aoai:key:${sha256(key)}`)).stdout.trim(), '1');
    const changedAt = Date.now();
    await pollStatus(router, { key }, 401, 'deleted key', changedAt);
    await expectRefused(router, { key }, 'deleted key', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
  });

  it('HSET aoai:tenant:{t4} disabled 1: 403 within 2 s; HDEL: admitted again', async () => {
    const key = newKey();
    await putKey(key, 't4');
    await expectOk(router, { key }, 'before');
    assert.equal((await redisCli(redis, 'HSET', 'aoai:tenant:{t4}', 'disabled', '1')).code, 0);
    const changedAt = Date.now();
    const { res } = await pollStatus(router, { key }, 403, 'tenant disabled', changedAt);
    assert.equal(res.json().error.code, 'forbidden');
    await expectRefused(router, { key }, 'tenant disabled', { status: 403, code: 'forbidden', reasons: ['tenant_disabled'] });
    assert.equal((await redisCli(redis, 'HDEL', 'aoai:tenant:{t4}', 'disabled')).code, 0);
    const enabledAt = Date.now();
    await pollStatus(router, { key }, 200, 'tenant enabled again', enabledAt);
  });

  it('a key never appears in router stdout or stderr', async () => {
    await sleep(100);
    for (const k of secrets) {
      assert.ok(!router.stdout().includes(k), 'a subscription key is in stdout');
      assert.ok(!router.stderr().includes(k), 'a subscription key is in stderr');
    }
  });

  it('Redis stopped (SIGSTOP), on_failure: closed: 503 quota_store_unavailable for an unseen key', async () => {
    const unseen = newKey();
    await putKey(unseen, 't5');
    const before = await authFailures(router);
    redis.proc.kill('SIGSTOP');
    let res;
    try {
      res = await call(router, { key: unseen });
    } finally {
      redis.proc.kill('SIGCONT');
    }
    assert.equal(res.status, 503, res.body);
    assert.equal(res.json().error.code, 'quota_store_unavailable');
    const delta = authFailureDelta(before, await authFailures(router));
    assert.ok(Object.keys(delta).length >= 1, `no auth failure counted: ${JSON.stringify(delta)}`);
    // Redis is back: the key is known
    const ok = await pollUntil(async () => (await call(router, { key: unseen })).status === 200, { timeoutMs: 15000 * SLOW, intervalMs: 200 });
    assert.ok(ok, 'the key never worked after Redis came back');
  });
});

describe('Redis stopped with on_failure: open', () => {
  let openRouter;
  const SEEN = newKey();
  const UNSEEN = newKey();

  before(async () => {
    await putKey(SEEN, 't-open');
    await putKey(UNSEEN, 't-open');
    openRouter = await startRouter({
      config: {
        threads: 1,
        redis: { url: redis.url, on_failure: 'open' },
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'key' },
      },
    });
  });

  after(async () => {
    if (redis.proc.exitCode === null) redis.proc.kill('SIGCONT');
    await stopAll(openRouter);
  });

  it('a key seen recently keeps its tenant; an unseen key is not admitted', async () => {
    await expectOk(openRouter, { key: SEEN }, 'before');
    redis.proc.kill('SIGSTOP');
    let seen, unseen;
    try {
      await sleep(1200); // past the 1 s answer cache
      seen = await call(openRouter, { key: SEEN });
      unseen = await call(openRouter, { key: UNSEEN });
    } finally {
      redis.proc.kill('SIGCONT');
    }
    assert.equal(seen.status, 200, `a recently seen key while Redis is down (open): ${seen.status} ${seen.body}`);
    assert.notEqual(unseen.status, 200, 'a key never seen was admitted without Redis');
    assert.ok([401, 503].includes(unseen.status), `unseen key: ${unseen.status} ${unseen.body}`);
  });
});

describe('static keys without Redis', () => {
  let bare;

  before(async () => {
    bare = await startRouter({
      config: {
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: {
          mode: 'key',
          keys: { headers: ['api-key', 'x-custom-key'], static: [{ sha256: sha256(STATIC_KEY).toUpperCase(), tenant: STATIC_TENANT }] },
        },
      },
    });
  });

  after(async () => {
    await stopAll(bare);
  });

  it('the static key admits (header, custom header, query); its tenant is in the access log', async () => {
    for (const via of ['api-key', 'x-custom-key', 'query']) {
      const { line } = await expectOk(bare, { key: STATIC_KEY, via }, via);
      assert.equal(line.tenant, STATIC_TENANT);
      assert.equal(line.auth, 'key');
      await assertNotForwarded(via);
    }
  });

  it('an unknown key is refused with 401; a header not in keys.headers is ignored', async () => {
    await expectRefused(bare, { key: newKey() }, 'unknown', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    await expectRefused(bare, { key: STATIC_KEY, via: 'Ocp-Apim-Subscription-Key' }, 'unlisted header', {
      status: 401,
      code: 'unauthorized',
      reasons: ['missing_credentials'],
    });
  });
});

describe('jwt_or_key and jwt_and_key', () => {
  let idp, orRouter, andRouter;
  const AUD = 'api://aoai-router';
  const T_KEY = newKey(); // Redis key of tenant "shared"
  const OTHER_KEY = newKey(); // Redis key of tenant "other"
  const REVOKED = newKey();

  before(async () => {
    idp = await startOidc({ name: 'idp-keys', algs: ['ES256'] });
    await putKey(T_KEY, 'shared');
    await putKey(OTHER_KEY, 'other');
    await putKey(REVOKED, 'shared');
    await redisCli(redis, 'HSET', `aoai:key:${sha256(REVOKED)}`, 'revoked', '1');
    const jwt = [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD] }];
    const backends = [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })];
    orRouter = await startRouter({ config: { redis: { url: redis.url }, backends, auth: { mode: 'jwt_or_key', jwt } } });
    andRouter = await startRouter({ config: { redis: { url: redis.url }, backends, auth: { mode: 'jwt_and_key', jwt } } });
    for (const r of [orRouter, andRouter]) {
      const ok = await pollUntil(
        async () => (await call(r, { token: await idp.mint({ tid: 'shared' }, { alg: 'ES256' }), key: T_KEY })).status === 200,
        { timeoutMs: 20000 * SLOW, intervalMs: 200 },
      );
      assert.ok(ok, `router never accepted a token\n${r.stderr().slice(-2000)}`);
    }
  });

  after(async () => {
    await stopAll(orRouter, andRouter, idp);
  });

  it('jwt_or_key: a token alone, or a key alone, admits', async () => {
    let { line } = await expectOk(orRouter, { token: await idp.mint({ tid: 'tok-tenant' }, { alg: 'ES256' }) }, 'token');
    assert.equal(line.tenant, 'tok-tenant');
    assert.equal(line.auth, 'jwt');
    ({ line } = await expectOk(orRouter, { key: T_KEY }, 'key'));
    assert.equal(line.tenant, 'shared');
    assert.equal(line.auth, 'key');
    await assertNotForwarded('jwt_or_key');
  });

  it('jwt_or_key: neither is 401 with a Bearer challenge; a bad token is not rescued by a good key', async () => {
    const res = await expectRefused(orRouter, {}, 'neither', { status: 401, code: 'unauthorized', reasons: ['missing_credentials'] });
    assert.match(res.headers['www-authenticate'] ?? '', /^Bearer\b/);
    const expired = await idp.mint({ tid: 'shared', iat: Math.floor(Date.now() / 1000) - 7200, exp: Math.floor(Date.now() / 1000) - 3600 }, { alg: 'ES256' });
    const r2 = await expectRefused(orRouter, { token: expired, key: T_KEY }, 'expired token + key', { status: 401, code: 'unauthorized', reasons: ['expired'] });
    assert.match(r2.headers['www-authenticate'] ?? '', /^Bearer error="invalid_token"/);
  });

  it('jwt_and_key: token and key of the same tenant: 200 (auth jwt+key)', async () => {
    const { line } = await expectOk(andRouter, { token: await idp.mint({ tid: 'shared' }, { alg: 'ES256' }), key: T_KEY }, 'both');
    assert.equal(line.tenant, 'shared');
    assert.equal(line.auth, 'jwt+key');
    assert.equal(line.key_id, sha256(T_KEY).slice(0, 8));
    await assertNotForwarded('jwt_and_key');
  });

  it('jwt_and_key: different tenants: the key names the tenant (SPEC §3; 403 only with same_tenant, hostile_auth)', async () => {
    const { line } = await expectOk(andRouter, { token: await idp.mint({ tid: 'shared' }, { alg: 'ES256' }), key: OTHER_KEY }, 'mismatch');
    assert.equal(line.auth, 'jwt+key');
    assert.equal(line.tenant, 'other');
  });

  it('jwt_and_key: one of them missing: 401', async () => {
    const token = await idp.mint({ tid: 'shared' }, { alg: 'ES256' });
    await expectRefused(andRouter, { token }, 'token only', { status: 401, code: 'unauthorized', reasons: ['missing_credentials'] });
    const r2 = await expectRefused(andRouter, { key: T_KEY }, 'key only', { status: 401, code: 'unauthorized', reasons: ['missing_credentials'] });
    assert.match(r2.headers['www-authenticate'] ?? '', /^Bearer\b/);
  });

  it('jwt_and_key: a good token with a revoked or unknown key, a bad token with a good key', async () => {
    const token = await idp.mint({ tid: 'shared' }, { alg: 'ES256' });
    await expectRefused(andRouter, { token, key: REVOKED }, 'revoked key', { status: 403, code: 'forbidden', reasons: ['revoked_key'] });
    await expectRefused(andRouter, { token, key: newKey() }, 'unknown key', { status: 401, code: 'unauthorized', reasons: ['unknown_key'] });
    const [h, p, s] = token.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url')), tid: 'other' })).toString('base64url')}.${s}`;
    await expectRefused(andRouter, { token: forged, key: OTHER_KEY }, 'forged token', { status: 401, code: 'unauthorized', reasons: ['bad_signature'] });
  });
});
