// Issue 11, the operator's view of the data plane: every access-log line names the client
// (address, method, path without its query, user agent — escaped and bounded) and, for a
// refusal, its reason in `error`; a 403 names the auth method, subject and tenant (a revoked key
// included); never a secret. And GET /openai/v1/models, /v1/models, /openai/models list the
// logical deployments in the OpenAI shape, authenticated like the data plane, so the official
// SDKs' models.list() works (OpenAI and AzureOpenAI clients).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import OpenAI, { AzureOpenAI } from 'openai';
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
  run,
  ROUTER_BIN,
  accessLogLine,
  redisCli,
  SLOW,
} from './lib/harness.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const ROUTER_ENV = { AOR_IT_BACKEND_KEY: 'backend-secret-for-surface-test' };
let seq = 0;
const rid = (what) => `ops-surface-${what.replace(/[^A-Za-z0-9]+/g, '-')}-${++seq}-${Date.now()}`;

let east, west, redis, router, open;
let key; // a key of tenant t-a
const SECRETS = [ROUTER_ENV.AOR_IT_BACKEND_KEY];

before(async () => {
  east = await startMock('eastus');
  west = await startMock('westus');
  redis = await startRedis();
  const backends = [
    backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o', 'text-embedding-3-small': 'emb' }, auth: { type: 'api_key', key_env: 'AOR_IT_BACKEND_KEY' } }),
    backendFor(west, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-west', o1: 'o1' }, auth: { type: 'api_key', key_env: 'AOR_IT_BACKEND_KEY' } }),
  ];
  router = await startRouter({
    config: {
      redis: { url: redis.url, on_failure: 'closed' },
      backends,
      auth: { mode: 'key' },
      tenants: { 't-b': { deployments: ['o1'] } },
    },
    env: ROUTER_ENV,
  });
  open = await startRouter({ config: { backends: backends.map((b) => ({ ...b, auth: undefined })), auth: { mode: 'none' } } });
  const c = await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'create', '--tenant', 't-a', '--name', 'surface']);
  assert.equal(c.code, 0, c.stderr);
  key = c.stdout.trim();
  SECRETS.push(key);
});

after(async () => {
  await stopAll(router, open, east, west, redis);
});

function assertNoSecret(line) {
  const text = JSON.stringify(line);
  for (const s of SECRETS) assert.ok(!text.includes(s), `a secret in the access log: ${text}`);
}

describe('access log', () => {
  it('a served request: client address, method, path without the query, user agent', async () => {
    const id = rid('ok');
    const res = await post(router.url, `${CHAT_PATH}&subscription-key=${encodeURIComponent(key)}`, chatBody(), {
      headers: { 'x-request-id': id, 'user-agent': 'ops-test/1.0 (linux)' },
    });
    assert.equal(res.status, 200, res.body);
    const line = await accessLogLine(router, id);
    assert.equal(line.client, '127.0.0.1');
    assert.equal(line.method, 'POST');
    assert.equal(line.path, '/openai/deployments/gpt-4o/chat/completions');
    assert.equal(line.user_agent, 'ops-test/1.0 (linux)');
    assert.equal(line.tenant, 't-a');
    assert.equal(line.auth, 'key');
    assert.equal(line.key_id, sha256(key).slice(0, 8));
    assert.equal(line.error, '');
    assertNoSecret(line);
  });

  it('a hostile user agent is escaped and cut at 256 bytes; the line stays one JSON object', async () => {
    const id = rid('ua');
    const ua = '"}\\évil\tq' + 'x'.repeat(5000);
    const res = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id, 'api-key': key, 'user-agent': ua } });
    assert.equal(res.status, 200, res.body);
    const line = await accessLogLine(router, id);
    assert.ok(line, 'no parsable line');
    assert.ok(line.user_agent.startsWith('"}\\'), line.user_agent);
    assert.ok(Buffer.byteLength(line.user_agent) <= 256 * 2, `user_agent ${line.user_agent.length} characters`);
    assert.ok(line.user_agent.endsWith('x'));
    assert.equal(router.accessLog().filter((l) => l.unparsable).length, 0, 'an unparsable line');
  });

  it('every refusal names its reason in error: 401, 403 (revoked: method and tenant named), 404, 405, 400, 404 deployment', async () => {
    const r = await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'create', '--tenant', 't-revoked']);
    const revoked = r.stdout.trim();
    SECRETS.push(revoked);
    await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'revoke', sha256(revoked)]);
    const check = async (what, send, status, want) => {
      const id = rid(what);
      const res = await send(id);
      assert.equal(res.status, status, `${what}: ${res.body}`);
      const line = await accessLogLine(router, id);
      assert.ok(line, `${what}: no line`);
      assert.equal(line.status, status, what);
      for (const [k, v] of Object.entries(want)) assert.equal(line[k], v, `${what}: ${k} = ${JSON.stringify(line[k])} in ${JSON.stringify(line)}`);
      assertNoSecret(line);
      return line;
    };
    await check('no key', (id) => post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id } }), 401, { error: 'missing_credentials', auth: 'none' });
    const unknown = `aor_${crypto.randomBytes(32).toString('base64url')}`;
    SECRETS.push(unknown);
    await check('unknown key', (id) => post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id, 'api-key': unknown } }), 401, {
      auth: 'key',
      tenant: '',
    });
    await check('revoked', (id) => post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id, 'api-key': revoked } }), 403, {
      error: 'revoked_key',
      auth: 'key',
      tenant: 't-revoked',
      key_id: sha256(revoked).slice(0, 8),
    });
    await check('unknown path', (id) => get(router.url, '/nope?subscription-key=zzz', { args: ['-H', `x-request-id: ${id}`] }), 404, {
      error: 'not_found',
      path: '/nope',
      method: 'GET',
      client: '127.0.0.1',
    });
    await check('GET on an inference path', (id) => get(router.url, CHAT_PATH, { args: ['-H', `x-request-id: ${id}`] }), 405, { error: 'method_not_allowed' });
    await check('malformed path', (id) => post(router.url, '/openai/deployments/a..b%2f/chat', chatBody(), { headers: { 'x-request-id': id } }), 400, {
      error: 'invalid_request',
    });
    await check('unknown deployment', (id) => post(router.url, '/openai/deployments/nope/chat/completions', chatBody(), { headers: { 'x-request-id': id, 'api-key': key } }), 404, {
      error: 'deployment_not_found',
      tenant: 't-a',
    });
    await check('empty body', (id) => post(router.url, CHAT_PATH, '', { headers: { 'x-request-id': id, 'api-key': key } }), 400, { error: 'invalid_request' });
  });
});

describe('GET /models', () => {
  const expected = ['gpt-4o', 'text-embedding-3-small', 'o1'];

  it('the OpenAI list shape, each logical deployment once, with credentials; nothing upstream', async () => {
    const before = (await east.stats()).requests + (await west.stats()).requests;
    for (const p of ['/openai/v1/models', '/v1/models', '/openai/models?api-version=2024-10-21']) {
      const res = await get(router.url, p, { args: ['-H', `api-key: ${key}`] });
      assert.equal(res.status, 200, `${p}: ${res.body}`);
      assert.match(res.headers['content-type'], /application\/json/);
      const doc = res.json();
      assert.equal(doc.object, 'list');
      assert.deepEqual(doc.data.map((m) => m.id), expected, p);
      for (const m of doc.data) {
        assert.equal(m.object, 'model');
        assert.equal(typeof m.created, 'number');
        assert.ok(m.created > 1.6e9 && m.created < Date.now() / 1000 + 5);
        assert.equal(m.owned_by, 'aoai-router');
      }
    }
    const one = await get(router.url, '/v1/models/o1', { args: ['-H', `api-key: ${key}`] });
    assert.equal(one.status, 200);
    assert.equal(one.json().id, 'o1');
    const none = await get(router.url, '/v1/models/nope', { args: ['-H', `api-key: ${key}`] });
    assert.equal(none.status, 404);
    assert.equal(none.json().error.code, 'deployment_not_found');
    assert.equal((await east.stats()).requests + (await west.stats()).requests, before, 'a model list went upstream');
  });

  it('without credentials (auth on): 401, no names leaked', async () => {
    const res = await get(router.url, '/openai/v1/models');
    assert.equal(res.status, 401);
    assert.ok(!res.body.includes('gpt-4o'));
  });

  it('a tenant restricted to some deployments sees only those', async () => {
    const c = await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'create', '--tenant', 't-b']);
    const kb = c.stdout.trim();
    SECRETS.push(kb);
    const res = await get(router.url, '/v1/models', { args: ['-H', `api-key: ${kb}`] });
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(res.json().data.map((m) => m.id), ['o1']);
    const hidden = await get(router.url, '/v1/models/gpt-4o', { args: ['-H', `api-key: ${kb}`] });
    assert.equal(hidden.status, 404);
  });

  it('the openai SDK: OpenAI({baseURL: .../openai/v1}) and AzureOpenAI (endpoint and v1 baseURL) models.list() and retrieve()', async () => {
    const clients = [
      new OpenAI({ baseURL: `${router.url}/openai/v1`, apiKey: 'unused', defaultHeaders: { 'api-key': key }, maxRetries: 0, timeout: 30000 * SLOW }),
      new OpenAI({ baseURL: `${router.url}/v1`, apiKey: 'unused', defaultHeaders: { 'api-key': key }, maxRetries: 0, timeout: 30000 * SLOW }),
      new AzureOpenAI({ endpoint: router.url, apiKey: key, apiVersion: '2024-10-21', maxRetries: 0, timeout: 30000 * SLOW }),
      new AzureOpenAI({ baseURL: `${router.url}/openai/v1`, apiKey: key, apiVersion: 'preview', maxRetries: 0, timeout: 30000 * SLOW }),
    ];
    for (const client of clients) {
      const ids = [];
      for await (const m of client.models.list()) ids.push(m.id);
      assert.deepEqual(ids, expected, client.baseURL);
      const m = await client.models.retrieve('text-embedding-3-small');
      assert.equal(m.id, 'text-embedding-3-small');
    }
    // auth mode none: the open router lists them too
    const anon = new OpenAI({ baseURL: `${open.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const ids = [];
    for await (const m of anon.models.list()) ids.push(m.id);
    assert.deepEqual(ids, expected);
  });

  it('the model list is logged (path, tenant) and counted as no request metric', async () => {
    const id = rid('models');
    const res = await get(router.url, '/v1/models', { args: ['-H', `api-key: ${key}`, '-H', `x-request-id: ${id}`] });
    assert.equal(res.status, 200);
    const line = await accessLogLine(router, id);
    assert.equal(line.path, '/v1/models');
    assert.equal(line.tenant, 't-a');
    assert.equal(line.status, 200);
    assert.equal(line.deployment, '');
  });
});

describe('aoai_router_build_info', () => {
  it('names the version and commit --version prints', async () => {
    const v = await run(ROUTER_BIN, ['--version']);
    const m = /^aoai-router (\S+) \(commit (\S+)\)$/.exec(v.stdout.trim());
    assert.ok(m, v.stdout);
    const res = await get(open.url, '/metrics');
    assert.equal(res.status, 200);
    assert.ok(res.body.includes(`aoai_router_build_info{version="${m[1]}",commit="${m[2]}"} 1\n`), res.body.split('\n').filter((l) => l.includes('build_info')).join('\n'));
  });
});

describe('access log: a JWT refused for a missing claim (403)', () => {
  it('names auth jwt, the subject and the tenant, first and cached', async () => {
    const { startOidc } = await import('./lib/oidc.mjs');
    const idp = await startOidc({ name: 'ops-idp', algs: ['RS256'] });
    const aud = idp.claims().aud;
    const r = await startRouter({
      config: {
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'jwt', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [aud], required_claims: { roles: ['Gateway.Use'] } }] },
      },
    });
    try {
      const token = await idp.mint({ tid: 't-jwt', sub: 'user-42', roles: ['Other'] });
      for (const round of ['first', 'cached']) {
        const id = rid(`jwt403-${round}`);
        const res = await post(r.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id, authorization: `Bearer ${token}` } });
        assert.equal(res.status, 403, res.body);
        const line = await accessLogLine(r, id);
        assert.equal(line.auth, 'jwt', round);
        assert.equal(line.subject, 'user-42', round);
        assert.equal(line.tenant, 't-jwt', round);
        assert.equal(line.error, 'missing_claim', round);
        assert.ok(!JSON.stringify(line).includes(token), 'the token in the log');
      }
      // a token that fails verification names nobody
      const id = rid('jwt401');
      const bad = await post(r.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id, authorization: `Bearer ${token.slice(0, -4)}AAAA` } });
      assert.equal(bad.status, 401);
      const line = await accessLogLine(r, id);
      assert.equal(line.auth, 'jwt');
      assert.equal(line.subject, '');
      assert.equal(line.tenant, '');
    } finally {
      await stopAll(r, idp);
    }
  });
});
