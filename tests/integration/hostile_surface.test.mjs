// The router's HTTP surface under a hostile client and a misbehaving backend (issue 6 items
// 13, 15, 16, 20; issue 7 item 3): only inference operations travel with the router's
// credential; exactly one x-request-id; empty bodies refused; hop-by-hop headers stripped
// both ways and X-Forwarded-* set by the router; a backend's 401/403/DeploymentNotFound
// fail over instead of reaching the client.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  curl,
  bodyFile,
  chatBody,
  CHAT_PATH,
  stopAll,
  fetchMetrics,
  metricSum,
  accessLogLine,
  sleep,
  SLOW,
} from './lib/harness.mjs';
import { startRawBackend, echoResponder } from './lib/hostile_surface_backend.mjs';

const KEY = 'sk-backend-secret-0123456789';
let east, swc, raw;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  raw = await startRawBackend(echoResponder());
  raw.stop = raw.close;
});

after(async () => {
  await stopAll(east, swc, raw);
});

beforeEach(async () => {
  await resetMocks(east, swc);
  raw.requests.length = 0;
  raw.setResponder(echoResponder());
});

const countOf = (list, name) => list.filter(([n]) => n === name).length;

function req(router, method, p, { proto = 'h1', body, headers = {} } = {}) {
  const a = [proto === 'h1' ? '--http1.1' : '--http2-prior-knowledge', '-X', method];
  for (const [k, v] of Object.entries(headers)) a.push('-H', `${k}: ${v}`);
  if (body !== undefined) a.push('-H', 'content-type: application/json', '--data-binary', `@${bodyFile(body)}`);
  a.push(`${router.url}${p}`);
  return curl(a);
}

describe('operations forwarded with the router credential (issue 6 item 13)', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' }, auth: { type: 'api_key', key_env: 'K' } })],
      },
      env: { K: KEY },
    });
  });
  after(() => router?.stop());

  it('files, batches, models, fine-tuning, stored responses: 404 not_found, nothing upstream', async () => {
    const cases = [
      ['GET', '/v1/files'],
      ['GET', '/openai/v1/files'],
      ['DELETE', '/openai/v1/files/file-abc'],
      ['GET', '/openai/v1/files/file-abc/content'],
      ['POST', '/openai/v1/files'],
      ['POST', '/v1/batches'],
      ['GET', '/openai/v1/batches/batch_1'],
      ['GET', '/openai/v1/models/gpt-4o/extra'], // GET /openai/v1/models is the router's own list (ops_surface.test.mjs)
      ['POST', '/openai/v1/fine_tuning/jobs'],
      ['POST', '/openai/v1/vector_stores'],
      ['POST', '/openai/v1/assistants'],
      ['GET', '/v1/responses/resp_1'],
      ['DELETE', '/v1/responses/resp_1'],
      ['POST', '/v1/responses/resp_1/cancel'],
      ['POST', '/openai/deployments/gpt-4o/files'],
      ['POST', '/openai/deployments/gpt-4o/chat/completions/extra'],
    ];
    for (const proto of ['h1', 'h2c']) {
      for (const [m, p] of cases) {
        const res = await req(router, m, p, { proto, body: m === 'POST' ? chatBody({ model: 'gpt-4o' }) : undefined });
        assert.equal(res.status, 404, `${proto} ${m} ${p}: ${res.status} ${res.body}`);
        assert.equal(res.json().error.code, 'not_found', `${m} ${p}`);
        assert.equal(countOf(res.headerList, 'x-request-id'), 1);
      }
    }
    assert.equal((await east.stats()).requests, 0);
  });

  it('another method on an inference path: 405 method_not_allowed with allow: POST', async () => {
    for (const proto of ['h1', 'h2c']) {
      for (const [m, p] of [
        ['GET', CHAT_PATH],
        ['DELETE', '/openai/deployments/gpt-4o/embeddings'],
        ['PUT', '/openai/v1/chat/completions'],
        ['GET', '/v1/responses'],
        ['PATCH', '/v1/embeddings'],
      ]) {
        const res = await req(router, m, p, { proto });
        assert.equal(res.status, 405, `${proto} ${m} ${p}: ${res.status} ${res.body}`);
        assert.equal(res.json().error.code, 'method_not_allowed');
        assert.equal(res.headers.allow, 'POST');
      }
    }
    assert.equal((await east.stats()).requests, 0);
  });

  it('inference operations still go through (deployments and v1 paths)', async () => {
    const a = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(a.status, 200, a.body);
    const b = await post(router.url, '/openai/v1/chat/completions', chatBody({ model: 'gpt-4o' }), { proto: 'h2c' });
    assert.equal(b.status, 200, b.body);
    const c = await post(router.url, '/v1/embeddings', { model: 'emb', input: 'hi' });
    assert.equal(c.status, 200, c.body);
    assert.equal((await east.stats()).requests, 3);
  });
});

describe('passthrough operations and multipart audio (issue 6 item 13)', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        passthrough: ['GET /openai/v1/models', 'DELETE /openai/v1/files/*', 'GET /openai/models'],
        backends: [backendFor(raw, { name: 'raw', deployments: { whisper: 'whisper-raw' }, auth: { type: 'api_key', key_env: 'K' } })],
      },
      env: { K: KEY },
    });
  });
  after(() => router?.stop());

  it('a listed operation is forwarded (with the router credential, not the client one)', async () => {
    for (const proto of ['h1', 'h2c']) {
      raw.requests.length = 0;
      const a = await req(router, 'GET', '/openai/v1/models?api-version=preview', { proto, headers: { 'api-key': 'client-key' } });
      assert.equal(a.status, 200, a.body);
      assert.equal(a.json().path, '/openai/v1/models?api-version=preview');
      const b = await req(router, 'DELETE', '/openai/v1/files/file-1', { proto });
      assert.equal(b.status, 200, b.body);
      assert.equal(b.json().method, 'DELETE');
      assert.equal(b.json().path, '/openai/v1/files/file-1');
      const c = await req(router, 'GET', '/openai/models?api-version=2024-10-21', { proto });
      assert.equal(c.status, 200, c.body);
      assert.equal(c.json().path, '/openai/models?api-version=2024-10-21');
      assert.equal(raw.requests.length, 3);
      for (const r of raw.requests) assert.deepEqual(r.header('api-key'), [KEY]);
    }
  });

  it('only the listed method and path: the rest stays 404/405', async () => {
    assert.equal((await req(router, 'GET', '/openai/v1/files/file-1')).status, 404);
    assert.equal((await req(router, 'GET', '/openai/v1/files')).status, 404);
    assert.equal((await req(router, 'POST', '/openai/v1/models', { body: {} })).status, 404);
    assert.equal(raw.requests.length, 0);
  });

  it('multipart audio on the deployments path is forwarded as is', async () => {
    const f = bodyFile('RIFF....WAVEfmt fake audio bytes');
    const res = await curl([
      '--http1.1',
      '-F',
      `file=@${f};type=audio/wav`,
      '-F',
      'model=whisper',
      `${router.url}/openai/deployments/whisper/audio/transcriptions?api-version=2024-10-21`,
    ]);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().path, '/openai/deployments/whisper-raw/audio/transcriptions?api-version=2024-10-21');
    assert.ok(res.json().body_len > 0);
    assert.match(raw.requests[0].header('content-type')[0], /^multipart\/form-data; boundary=/);
  });
});

describe('empty body on a data-plane POST (issue 6 item 16)', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })] } });
  });
  after(() => router?.stop());

  it('400 invalid_request, nothing upstream (h1 and h2c, deployments and v1)', async () => {
    for (const proto of ['h1', 'h2c']) {
      for (const p of [CHAT_PATH, '/openai/v1/chat/completions', '/v1/embeddings']) {
        const res = await post(router.url, p, '', { proto });
        assert.equal(res.status, 400, `${proto} ${p}: ${res.status} ${res.body}`);
        assert.equal(res.json().error.code, 'invalid_request');
      }
      // no body at all (no content-length)
      const res = await req(router, 'POST', CHAT_PATH, { proto });
      assert.equal(res.status, 400, res.body);
      assert.equal(res.json().error.code, 'invalid_request');
    }
    assert.equal((await east.stats()).requests, 0);
  });
});

describe('exactly one x-request-id (issue 6 item 15)', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        backends: [
          backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(raw, { name: 'raw', priority: 2, deployments: { other: 'other' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  it("the router's id once; the backend's as x-aoai-router-backend-request-id and in the access log", async () => {
    for (const proto of ['h1', 'h2c']) {
      const id = `it-surface-${proto}`;
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto, headers: { 'x-request-id': id } });
      assert.equal(res.status, 200, res.body);
      assert.equal(countOf(res.headerList, 'x-request-id'), 1, res.rawHeaders);
      assert.equal(res.headers['x-request-id'], id);
      const apim = res.headers['apim-request-id'];
      assert.match(apim ?? '', /^[0-9a-f-]{36}$/);
      assert.equal(countOf(res.headerList, 'apim-request-id'), 1);
      assert.equal(countOf(res.headerList, 'x-aoai-router-backend-request-id'), 1, res.rawHeaders);
      assert.equal(res.headers['x-aoai-router-backend-request-id'], apim);
      const line = await accessLogLine(router, id);
      assert.equal(line?.backend_request_id, apim);
      // a streamed reply too
      const s = await post(router.url, CHAT_PATH, chatBody({ stream: true }), { proto, headers: { 'x-request-id': `${id}-sse` } });
      assert.equal(s.status, 200);
      assert.equal(countOf(s.headerList, 'x-request-id'), 1, s.rawHeaders);
      assert.equal(countOf(s.headerList, 'x-aoai-router-backend-request-id'), 1);
    }
  });

  it('a backend sending two ids, or a hostile one: one header each way, the log stays JSON', async () => {
    raw.setResponder(echoResponder([['x-request-id', 'abc-1'], ['x-request-id', 'abc-2']]));
    const a = await post(router.url, '/openai/deployments/other/chat/completions', chatBody(), { headers: { 'x-request-id': 'it-two-ids' } });
    assert.equal(a.status, 200, a.body);
    assert.equal(countOf(a.headerList, 'x-request-id'), 1, a.rawHeaders);
    assert.equal(a.headers['x-request-id'], 'it-two-ids');
    assert.equal(countOf(a.headerList, 'x-aoai-router-backend-request-id'), 1, a.rawHeaders);
    assert.equal(a.headers['x-aoai-router-backend-request-id'], 'abc-1');
    assert.equal((await accessLogLine(router, 'it-two-ids'))?.backend_request_id, 'abc-1');
    // the router's id went upstream exactly once
    assert.deepEqual(raw.requests.at(-1).header('x-request-id'), ['it-two-ids']);

    raw.setResponder(echoResponder([['x-request-id', 'x"},"tenant":"admin'.padEnd(100, 'z')]]));
    const b = await post(router.url, '/openai/deployments/other/chat/completions', chatBody(), { headers: { 'x-request-id': 'it-bad-id' } });
    assert.equal(b.status, 200, b.body);
    assert.equal(countOf(b.headerList, 'x-request-id'), 1);
    assert.equal(countOf(b.headerList, 'x-aoai-router-backend-request-id'), 0, b.rawHeaders);
    const line = await accessLogLine(router, 'it-bad-id');
    assert.ok(line && !line.unparsable, 'access log line parses');
    assert.equal(line.backend_request_id, '');
    assert.equal(line.tenant, 'default');
  });

  it('error answers carry one x-request-id too', async () => {
    for (const proto of ['h1', 'h2c']) {
      const r = await post(router.url, '/openai/deployments/nope/chat/completions', chatBody(), { proto });
      assert.equal(r.status, 404);
      assert.equal(countOf(r.headerList, 'x-request-id'), 1);
    }
  });
});

describe('hop-by-hop and forwarding headers (issue 6 item 20)', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: { backends: [backendFor(raw, { name: 'raw', deployments: { 'gpt-4o': 'gpt-4o' } })] } });
  });
  after(() => router?.stop());

  const hostileRequestHeaders = {
    connection: 'keep-alive, x-client-secret, X-Other-Secret',
    'x-client-secret': '1',
    'x-other-secret': '2',
    'keep-alive': 'timeout=5',
    'proxy-foo': 'bar',
    'proxy-authorization': 'Basic Zm9vOmJhcg==',
    trailer: 'x-checksum',
    forwarded: 'for=6.6.6.6;proto=https',
    'x-forwarded-for': '6.6.6.6',
    'x-forwarded-proto': 'https',
    'x-forwarded-host': 'evil.example',
    'x-kept': 'yes',
  };

  it('request: Connection-named and hop-by-hop headers dropped, X-Forwarded-For/Proto set by the router', async () => {
    for (const proto of ['h1', 'h2c']) {
      raw.requests.length = 0;
      const headers = { ...hostileRequestHeaders };
      if (proto === 'h2c') {
        // HTTP/2 forbids connection-specific fields; curl drops them itself
        delete headers.connection;
        delete headers['keep-alive'];
      } else {
        headers.te = 'trailers, deflate';
        headers.upgrade = 'websocket';
      }
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto, headers });
      assert.equal(res.status, 200, res.body);
      const got = raw.requests[0];
      const names = got.headers.map(([n]) => n);
      // (on h2c there is no Connection header, so x-client-secret is an ordinary end-to-end header)
      const dropped = ['keep-alive', 'proxy-foo', 'proxy-authorization', 'trailer', 'te', 'upgrade', 'forwarded', 'x-forwarded-host'];
      if (proto === 'h1') dropped.push('x-client-secret', 'x-other-secret');
      for (const n of dropped) assert.ok(!names.includes(n), `${proto}: ${n} reached the backend: ${JSON.stringify(got.headers)}`);
      assert.deepEqual(got.header('x-forwarded-for'), ['127.0.0.1'], JSON.stringify(got.headers));
      assert.deepEqual(got.header('x-forwarded-proto'), ['http']);
      assert.deepEqual(got.header('x-kept'), ['yes']);
      assert.ok(got.header('connection').every((v) => !/secret/i.test(v)));
    }
  });

  it('response: headers named in the backend Connection and hop-by-hop ones do not reach the client', async () => {
    raw.setResponder(
      echoResponder([
        ['connection', 'x-secret, X-Also-Secret'],
        ['x-secret', '1'],
        ['x-also-secret', '2'],
        ['keep-alive', 'timeout=5'],
        ['proxy-foo', 'bar'],
        ['trailer', 'x-checksum'],
        ['upgrade', 'h2c'],
        ['x-kept', 'yes'],
      ]),
    );
    for (const proto of ['h1', 'h2c']) {
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto });
      assert.equal(res.status, 200, res.body);
      const names = res.headerList.map(([n]) => n);
      for (const n of ['x-secret', 'x-also-secret', 'keep-alive', 'proxy-foo', 'trailer', 'upgrade'])
        assert.ok(!names.includes(n), `${proto}: ${n} reached the client: ${res.rawHeaders}`);
      assert.equal(res.headers['x-kept'], 'yes');
      assert.ok(!/secret/i.test(res.headers.connection ?? ''), res.rawHeaders);
    }
  });
});

describe('backend 401/403/404 (issue 7 item 3)', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        limits: { max_attempts: 2 },
        circuit: { failures: 100, open_ms: 60000 },
        backends: [
          backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  const metric = async (reason, backend) =>
    metricSum(await fetchMetrics(router), 'aoai_router_failovers_total', backend ? { reason, backend } : { reason });

  it('401 and 403 fail over (reason credential), logged with the backend name', async () => {
    for (const status of [401, 403]) {
      await resetMocks(east, swc);
      const before = await metric('credential', 'eastus');
      await east.setBehaviour({ status, count: 1 });
      const res = await post(router.url, CHAT_PATH, chatBody());
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
      assert.equal((await east.stats()).requests, 1);
      assert.equal(await metric('credential', 'eastus'), before + 1);
    }
    assert.ok(await router.waitStderr(/eastus.*(credential|401|403)/), router.stderr());
  });

  it("404 DeploymentNotFound fails over (reason not_found); another 404 and a 400 pass through", async () => {
    const before = await metric('not_found', 'eastus');
    await east.setBehaviour({ status: 404, count: 1 });
    const res = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal(await metric('not_found', 'eastus'), before + 1);
    assert.ok(await router.waitStderr(/eastus.*(DeploymentNotFound|not_found)/), router.stderr());

    await resetMocks(east, swc);
    await east.setBehaviour({ status: 404, count: 1, body: '{"error":{"code":"NotFound","message":"no such file"}}' });
    const other = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(other.status, 404, other.body);
    assert.equal(other.json().error.code, 'NotFound');
    assert.equal(other.headers['x-aoai-router-backend'], 'eastus');
    assert.equal((await swc.stats()).requests, 0);

    await east.setBehaviour({ status: 400, count: 1 });
    const bad = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(bad.status, 400);
    assert.equal((await swc.stats()).requests, 0);
  });

  it('every attempt 401 or DeploymentNotFound: 502 backend_error', async () => {
    await east.setBehaviour({ status: 401 });
    await swc.setBehaviour({ status: 404 });
    const res = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(res.status, 502, res.body);
    assert.equal(res.json().error.code, 'backend_error');
    assert.equal(res.headers['x-aoai-router-backend'], undefined);
  });
});

describe("backend 401s count against its circuit (issue 7 item 3)", () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        circuit: { failures: 2, open_ms: 60000 },
        backends: [
          backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  it('two 401s open the circuit: the next request goes straight to the secondary', async () => {
    await east.setBehaviour({ status: 401 });
    for (let i = 0; i < 2; ++i) assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 200);
    await resetMocks(east, swc);
    const res = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await east.stats()).requests, 0, 'the circuit of eastus is open');
  });
});

void sleep;
void SLOW;
