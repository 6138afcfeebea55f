// The data plane over HTTP/1.1 and h2c: routing to the preferred backend, request ids,
// deployment mapping, the OpenAI-style paths, credentials, SPEC §4 errors, keep-alive.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  get,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  SLOW,
} from './lib/harness.mjs';

const MOCK_TPM = 987654321; // distinctive: the backend's x-ratelimit-remaining-tokens is near this
const MOCK_RPM = 55555;
const MAX_BODY = 1024;
const SECRET = `sk-it-${Math.random().toString(16).slice(2)}${Date.now().toString(16)}`;

let east, swc, router;

before(async () => {
  east = await startMock('eastus', { tpm: MOCK_TPM, rpm: MOCK_RPM });
  swc = await startMock('swedencentral', { tpm: MOCK_TPM, rpm: MOCK_RPM });
  router = await startRouter({
    config: {
      limits: { max_body_bytes: MAX_BODY, upstream_timeout_ms: 30000 * SLOW, max_attempts: 3 },
      backends: [
        backendFor(east, {
          priority: 1,
          deployments: { 'gpt-4o': 'gpt-4o-east', 'gpt-4o-mini': 'mini-east' },
          auth: { type: 'api_key', key_env: 'AOR_IT_EAST_KEY' },
        }),
        backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
      ],
    },
    env: { AOR_IT_EAST_KEY: SECRET },
  });
});

after(async () => {
  await stopAll(router, east, swc);
});

beforeEach(async () => {
  await resetMocks(east, swc);
});

function assertNoBackendRatelimit(res) {
  // SPEC §5: the backend's x-ratelimit-remaining-* are not passed through. The router may
  // add the tenant's own headers (SPEC §4) — those cannot carry the mock's numbers.
  const tok = res.headers['x-ratelimit-remaining-tokens'];
  if (tok !== undefined) {
    const n = Number(tok);
    assert.ok(!(n > MOCK_TPM - 1000000 && n <= MOCK_TPM), `backend x-ratelimit-remaining-tokens leaked: ${tok}`);
  }
  const req = res.headers['x-ratelimit-remaining-requests'];
  if (req !== undefined) {
    const n = Number(req);
    assert.ok(!(n > MOCK_RPM - 1000 && n <= MOCK_RPM), `backend x-ratelimit-remaining-requests leaked: ${req}`);
  }
}

describe('chat completion through the router', () => {
  for (const proto of ['h1', 'h2c']) {
    it(`${proto}: 200 from the priority-1 backend with usage and a request id`, async () => {
      const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 4 }), { proto });
      assert.equal(res.exitCode, 0, res.stderr);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.httpVersion, proto === 'h1' ? '1.1' : '2');
      const body = res.json();
      assert.equal(body.object, 'chat.completion');
      assert.equal(body.choices[0].message.content, 'word0 word1 word2 word3');
      assert.equal(body.usage.completion_tokens, 4);
      assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + 4);
      assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
      assert.match(res.headers['x-request-id'] ?? '', /^[A-Za-z0-9._:-]{1,64}$/);
      assertNoBackendRatelimit(res);
      const s = await east.stats();
      assert.equal(s.requests, 1);
      assert.equal((await swc.stats()).requests, 0);
    });
  }

  it('a sane client x-request-id is echoed (h1 and h2c)', async () => {
    for (const proto of ['h1', 'h2c']) {
      const id = `it-req.${proto}:ABC_123-xyz`;
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto, headers: { 'x-request-id': id } });
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-request-id'], id);
    }
  });

  it('a client x-request-id with bad characters is replaced', async () => {
    const bad = 'bad id<script>"x"';
    const res = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': bad } });
    assert.equal(res.status, 200, res.body);
    const id = res.headers['x-request-id'];
    assert.ok(id, 'x-request-id missing');
    assert.notEqual(id, bad);
    assert.match(id, /^[A-Za-z0-9._:-]{1,64}$/);
    const tooLong = 'a'.repeat(200);
    const res2 = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': tooLong } });
    assert.equal(res2.status, 200);
    assert.notEqual(res2.headers['x-request-id'], tooLong);
    assert.match(res2.headers['x-request-id'] ?? '', /^[A-Za-z0-9._:-]{1,64}$/);
  });

  it('two requests without an id get different ids', async () => {
    const a = await post(router.url, CHAT_PATH, chatBody());
    const b = await post(router.url, CHAT_PATH, chatBody(), { proto: 'h2c' });
    assert.ok(a.headers['x-request-id'] && b.headers['x-request-id']);
    assert.notEqual(a.headers['x-request-id'], b.headers['x-request-id']);
  });

  it('the access log gets one JSON line per request, with its id', async () => {
    const id = `it-log-${Date.now()}`;
    const res = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': id } });
    assert.equal(res.status, 200);
    const line = await pollUntil(() => router.accessLog().find((l) => JSON.stringify(l).includes(id)), { timeoutMs: 5000 * SLOW });
    assert.ok(line, `no access-log line with ${id} in:\n${router.stdout().slice(-2000)}`);
    assert.ok(!line.unparsable, `access-log line is not JSON: ${line.unparsable}`);
    assert.ok(JSON.stringify(line).includes('200'));
    assert.ok(JSON.stringify(line).includes('eastus'));
  });
});

describe('deployment mapping and paths', () => {
  it('the logical deployment is mapped in the upstream path; api-version kept', async () => {
    const res = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(res.status, 200, res.body);
    const s = await east.stats();
    assert.equal(s.last_request.method, 'POST');
    assert.equal(s.last_request.path, '/openai/deployments/gpt-4o-east/chat/completions');
    assert.equal(s.last_request.query, 'api-version=2024-10-21');
    assert.equal(res.json().model, 'gpt-4o-east');
    // body forwarded as is on the deployments path
    assert.deepEqual(JSON.parse(s.last_request.body), chatBody());
  });

  it('another logical deployment maps to its own name', async () => {
    const res = await post(router.url, '/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21', chatBody());
    assert.equal(res.status, 200, res.body);
    assert.equal((await east.stats()).last_request.path, '/openai/deployments/mini-east/chat/completions');
  });

  for (const p of ['/openai/v1/chat/completions', '/v1/chat/completions']) {
    for (const proto of ['h1', 'h2c']) {
      it(`${p} (${proto}): upstream /openai/v1/chat/completions with model rewritten`, async () => {
        const res = await post(router.url, p, chatBody({ model: 'gpt-4o', temperature: 0.5 }), { proto });
        assert.equal(res.status, 200, res.body);
        assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
        const s = await east.stats();
        assert.equal(s.last_request.path, '/openai/v1/chat/completions');
        const sent = JSON.parse(s.last_request.body);
        assert.equal(sent.model, 'gpt-4o-east');
        assert.equal(sent.temperature, 0.5);
        assert.deepEqual(sent.messages, chatBody().messages);
        assert.equal(res.json().model, 'gpt-4o-east');
      });
    }
  }

  it('query subscription-key is dropped from the upstream URL', async () => {
    const res = await post(router.url, '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&subscription-key=s3cr3tsub', chatBody());
    assert.equal(res.status, 200, res.body);
    const s = await east.stats();
    assert.equal(s.last_request.query, 'api-version=2024-10-21');
    const res2 = await post(router.url, '/openai/deployments/gpt-4o/chat/completions?subscription-key=s3cr3tsub&api-version=2024-10-21', chatBody());
    assert.equal(res2.status, 200, res2.body);
    const s2 = await east.stats();
    assert.ok(!String(s2.last_request.query).includes('s3cr3tsub'), `query: ${s2.last_request.query}`);
    assert.match(String(s2.last_request.query), /api-version=2024-10-21/);
  });
});

describe('credentials', () => {
  it('client credentials are never forwarded; the backend gets its own api-key', async () => {
    for (const proto of ['h1', 'h2c']) {
      await resetMocks(east);
      const res = await post(router.url, CHAT_PATH, chatBody(), {
        proto,
        headers: { Authorization: 'Bearer x', 'api-key': 'clientkey', 'Ocp-Apim-Subscription-Key': 'k' },
      });
      assert.equal(res.status, 200, res.body);
      const h = (await east.stats()).last_request.headers;
      assert.equal(h.authorization, undefined);
      assert.equal(h['ocp-apim-subscription-key'], undefined);
      assert.equal(h['api-key'], SECRET);
      assert.ok(!JSON.stringify(h).includes('clientkey'));
    }
  });

  it('a backend without auth gets no api-key at all', async () => {
    await east.setBehaviour({ status: 500 });
    const res = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': 'clientkey' } });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    const h = (await swc.stats()).last_request.headers;
    assert.equal(h['api-key'], undefined);
    assert.equal(h.authorization, undefined);
  });

  it('the backend secret never appears in router stdout/stderr', async () => {
    const res = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'x-request-id': 'it-secret-check' } });
    assert.equal(res.status, 200);
    assert.ok(!res.body.includes(SECRET));
    assert.ok(!JSON.stringify(res.headers).includes(SECRET));
    await pollUntil(() => router.stdout().includes('it-secret-check'), { timeoutMs: 3000 * SLOW });
    assert.ok(router.stdout().includes('it-secret-check'), 'access log not written yet');
    assert.ok(!router.stdout().includes(SECRET), 'secret in stdout');
    assert.ok(!router.stderr().includes(SECRET), 'secret in stderr');
  });
});

describe('upstream connections', () => {
  it('keep-alive: 50 sequential requests reuse a few backend connections', async () => {
    const before = (await east.stats()).connections;
    for (let i = 0; i < 50; i++) {
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto: i % 2 ? 'h2c' : 'h1' });
      assert.equal(res.status, 200, res.body);
    }
    const s = await east.stats();
    assert.equal(s.requests, 50);
    const opened = s.connections - before;
    assert.ok(opened <= 4, `the router opened ${opened} connections for 50 requests`);
  });
});

describe('idle', () => {
  it('the router is still healthy after the suite', async () => {
    await sleep(100);
    assert.equal((await get(router.url, '/healthz')).status, 200);
    assert.equal(router.proc.exitCode, null);
  });
});
