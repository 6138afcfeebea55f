// SPEC §4 errors: JSON {"error":{"code":...}} for unknown deployments, bad paths, bad
// bodies, bodies over max_body_bytes and unknown paths — and no backend is bothered.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRouter, backendFor, resetMocks, post, get, chatBody, CHAT_PATH, stopAll } from './lib/harness.mjs';

const MAX_BODY = 1024;
let east, swc, router;
const crashes = []; // stderr of routers that died during a test (each test then gets a fresh one)

function routerConfig() {
  return {
    limits: { max_body_bytes: MAX_BODY, max_attempts: 3 },
    backends: [
      backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o-east' } }),
      backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
    ],
  };
}

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  router = await startRouter({ config: routerConfig() });
});

after(async () => {
  await stopAll(router, east, swc);
  if (crashes.length)
    throw new Error(`the router died ${crashes.length} time(s) during these tests; first stderr:\n${crashes[0].slice(-4000)}`);
});

beforeEach(async () => {
  await resetMocks(east, swc);
  if (router.proc.exitCode !== null || router.proc.signalCode !== null) {
    // a crash is that test's failure; the next test gets a fresh router so it shows its own result
    crashes.push(`exit ${router.proc.exitCode ?? router.proc.signalCode}\n${router.stderr()}`);
    router = await startRouter({ config: routerConfig() });
  }
});

describe('errors (SPEC §4)', () => {
  it('healthz and readyz answer 200', async () => {
    for (const proto of ['h1', 'h2c']) {
      assert.equal((await get(router.url, '/healthz', { proto })).status, 200);
      assert.equal((await get(router.url, '/readyz', { proto })).status, 200);
    }
  });

  it('unknown path: 404 with a JSON error', async () => {
    for (const proto of ['h1', 'h2c']) {
      const res = await get(router.url, '/no/such/path', { proto });
      assert.equal(res.status, 404);
      assert.equal(typeof res.json().error.code, 'string');
      const res2 = await post(router.url, '/openai/something-else', chatBody(), { proto });
      assert.equal(res2.status, 404);
    }
  });

  it('malformed path: 400 invalid_request', async () => {
    for (const p of ['/openai/deployments/../x', '/openai/deployments/../chat/completions', '/openai/deployments/gpt-4o', '/openai/deployments/gp%20t/chat/completions']) {
      const res = await post(router.url, p, chatBody(), { args: ['--path-as-is'] });
      assert.equal(res.status, 400, `${p}: ${res.status} ${res.body}`);
      assert.equal(res.json().error.code, 'invalid_request', p);
    }
    assert.equal((await east.stats()).requests, 0);
  });

  it('unknown deployment: 404 deployment_not_found', async () => {
    for (const proto of ['h1', 'h2c']) {
      const res = await post(router.url, '/openai/deployments/no-such-model/chat/completions?api-version=2024-10-21', chatBody(), { proto });
      assert.equal(res.status, 404);
      assert.equal(res.json().error.code, 'deployment_not_found');
      assert.equal(typeof res.json().error.message, 'string');
      assert.ok(res.headers['x-request-id']);
    }
    const v1 = await post(router.url, '/openai/v1/chat/completions', chatBody({ model: 'no-such-model' }));
    assert.equal(v1.status, 404);
    assert.equal(v1.json().error.code, 'deployment_not_found');
    assert.equal((await east.stats()).requests, 0);
    assert.equal((await swc.stats()).requests, 0);
  });

  it('non-JSON body: 400 invalid_request, no backend contacted', async () => {
    for (const proto of ['h1', 'h2c']) {
      const res = await post(router.url, CHAT_PATH, '{"messages": [ this is not json', { proto });
      assert.equal(res.status, 400, res.body);
      assert.equal(res.json().error.code, 'invalid_request');
      assert.equal(res.headers['x-aoai-router-backend'], undefined);
    }
    assert.equal((await east.stats()).requests, 0);
  });

  it('v1 without model: 400 invalid_request', async () => {
    for (const p of ['/openai/v1/chat/completions', '/v1/chat/completions']) {
      const res = await post(router.url, p, chatBody());
      assert.equal(res.status, 400, res.body);
      assert.equal(res.json().error.code, 'invalid_request');
      const res2 = await post(router.url, p, chatBody({ model: 42 }));
      assert.equal(res2.status, 400, res2.body);
      assert.equal(res2.json().error.code, 'invalid_request');
    }
    assert.equal((await east.stats()).requests, 0);
  });

  function bodyOfSize(n) {
    const base = JSON.stringify({ messages: [{ role: 'user', content: '' }] });
    const b = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(n - base.length) }] });
    assert.equal(Buffer.byteLength(b), n);
    return b;
  }

  it('body of max_body_bytes + 1: 413 body_too_large; exactly max_body_bytes: 200', async () => {
    for (const proto of ['h1', 'h2c']) {
      const big = await post(router.url, CHAT_PATH, bodyOfSize(MAX_BODY + 1), { proto });
      assert.equal(big.status, 413, big.body);
      assert.equal(big.json().error.code, 'body_too_large');
      const ok = await post(router.url, CHAT_PATH, bodyOfSize(MAX_BODY), { proto });
      assert.equal(ok.status, 200, ok.body);
    }
    assert.equal((await east.stats()).requests, 2);
  });

});
