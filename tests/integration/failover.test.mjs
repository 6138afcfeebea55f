// SPEC §5 routing and failover: 429 cooldowns (retry-after-ms, retry-after, capped), all
// backends throttled, 5xx, circuit breaker and /readyz, connect errors, timeouts, max_attempts.
// Each describe runs its own router so cooldown and circuit state never leak between them.
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
  freePort,
  SLOW,
} from './lib/harness.mjs';

let east, swc, wus;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  wus = await startMock('westus');
});

after(async () => {
  await stopAll(east, swc, wus);
});

beforeEach(async () => {
  await resetMocks(east, swc, wus);
});

function twoBackends(extra = {}) {
  return {
    backends: [
      backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
      backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
    ],
    ...extra,
  };
}

const ask = (router, opts) => post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), opts);

/** Sends requests every `everyMs` until one is answered by `backend`; returns {res, at} or null. */
async function pollServedBy(router, backend, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const res = await ask(router);
    if (res.status === 200 && res.headers['x-aoai-router-backend'] === backend) return { res, at: Date.now() };
    await sleep(150);
  }
  return null;
}

describe('429 cooldown', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: twoBackends() });
  });
  after(() => router?.stop());

  it('retry-after: failover, cooldown, then recovery', async () => {
    await east.setBehaviour({ status: 429, retry_after: '2', count: 1 });
    const t0 = Date.now();
    const res = await ask(router);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal(res.json().model, 'gpt-4o-swc');
    assert.equal((await east.stats()).requests, 1);
    assert.equal((await swc.stats()).requests, 1);

    // within the cooldown: straight to the secondary, the primary is not asked
    const r2 = await ask(router, { proto: 'h2c' });
    assert.equal(r2.status, 200);
    assert.equal(r2.headers['x-aoai-router-backend'], 'swedencentral');
    await sleep(Math.max(0, 800 - (Date.now() - t0)));
    if (Date.now() - t0 < 1500) {
      const r3 = await ask(router);
      assert.equal(r3.headers['x-aoai-router-backend'], 'swedencentral', 'primary used again well inside its 2 s cooldown');
    }
    assert.equal((await east.stats()).requests, 1, 'the primary was asked during its cooldown');

    const back = await pollServedBy(router, 'eastus', 6000 * SLOW);
    assert.ok(back, 'the primary never served again');
    assert.ok(back.at - t0 >= 1500, `the primary served again after ${back.at - t0} ms, before its 2 s cooldown`);
    assert.equal((await east.stats()).requests, 2);
  });

  it('retry-after-ms takes precedence over retry-after', async () => {
    await east.setBehaviour({ status: 429, retry_after_ms: '1200', retry_after: '60', count: 1 });
    const t0 = Date.now();
    const res = await ask(router);
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    const r2 = await ask(router);
    assert.equal(r2.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await east.stats()).requests, 1);
    const back = await pollServedBy(router, 'eastus', 6000 * SLOW);
    assert.ok(back, 'the primary did not serve again: retry-after-ms ignored?');
    assert.ok(back.at - t0 >= 800, `recovered after ${back.at - t0} ms, before the 1200 ms cooldown`);
  });

  it('a 429 with a body is never passed to the client when another backend answers', async () => {
    await east.setBehaviour({ status: 429, retry_after: '1', body: '{"error":{"code":"429","message":"slow down"}}', count: 1 });
    const res = await ask(router, { proto: 'h2c' });
    assert.equal(res.status, 200);
    assert.ok(!res.body.includes('slow down'));
    assert.equal(res.headers['retry-after'], undefined);
  });
});

describe('cooldowns are per backend deployment (SPEC §5)', () => {
  let router;
  const EMB = '/openai/deployments/emb/chat/completions?api-version=2024-10-21';
  before(async () => {
    router = await startRouter({
      config: {
        backends: [
          backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb-east' } }),
          backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc', emb: 'emb-swc' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  it("a 429 for one deployment does not stop the backend's other deployments", async () => {
    await east.setBehaviour({ status: 429, retry_after: '30', count: 1 });
    const r = await ask(router);
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    // gpt-4o cools down on eastus: the secondary serves it, eastus is not asked
    assert.equal((await ask(router)).headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await east.stats()).requests, 1);
    // emb on eastus is another Azure deployment with its own TPM: served by the primary
    for (const proto of ['h1', 'h2c']) {
      const e = await post(router.url, EMB, chatBody(), { proto });
      assert.equal(e.status, 200, e.body);
      assert.equal(e.headers['x-aoai-router-backend'], 'eastus');
      assert.equal(e.json().model, 'emb-east');
    }
    assert.equal((await east.stats()).requests, 3);
  });
});

describe('every backend throttled', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: twoBackends() });
  });
  after(() => router?.stop());

  it('429 backends_throttled with retry-after = earliest end, rounded up', async () => {
    await east.setBehaviour({ status: 429, retry_after: '7' });
    await swc.setBehaviour({ status: 429, retry_after: '3' });
    for (const proto of ['h1', 'h2c']) {
      const res = await ask(router, { proto });
      assert.equal(res.status, 429, res.body);
      assert.equal(res.json().error.code, 'backends_throttled');
      const ra = res.headers['retry-after'];
      assert.match(ra ?? '', /^\d+$/, `retry-after: ${ra}`);
      assert.ok(Number(ra) >= 1 && Number(ra) <= 3, `retry-after ${ra}`);
    }
    // the second request found both cooling down: neither backend was asked again
    assert.equal((await east.stats()).requests, 1);
    assert.equal((await swc.stats()).requests, 1);
    // readyz: a backend cooling down after 429 still counts as ready
    assert.equal((await get(router.url, '/readyz')).status, 200);
  });
});

describe('absurd retry-after is capped by limits.max_cooldown_ms', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: twoBackends({ limits: { max_cooldown_ms: 1500, max_attempts: 3 } }) });
  });
  after(() => router?.stop());

  it('retry-after 86400: the primary serves again within seconds, and the cap is logged', async () => {
    await east.setBehaviour({ status: 429, retry_after: '86400', count: 1 });
    const res = await ask(router);
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    const back = await pollServedBy(router, 'eastus', 6000 * SLOW);
    assert.ok(back, 'the primary stayed in its 86400 s cooldown');
    assert.ok(await router.waitStderr(/capped/i), `stderr does not mention the cap:\n${router.stderr()}`);
  });
});

describe('5xx failover', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: twoBackends() });
  });
  after(() => router?.stop());

  for (const status of [500, 502, 503, 504]) {
    it(`primary ${status}: the secondary answers`, async () => {
      await east.setBehaviour({ status, count: 1 });
      for (const proto of ['h1', 'h2c']) {
        await east.setBehaviour({ status, count: 1 });
        const res = await ask(router, { proto });
        assert.equal(res.status, 200, res.body);
        assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
      }
      assert.equal((await east.stats()).requests, 2);
      assert.equal((await swc.stats()).requests, 2);
      // the primary is fine again: it serves (its circuit never opened: failures < 5)
      const ok = await ask(router);
      assert.equal(ok.headers['x-aoai-router-backend'], 'eastus');
    });
  }

  it("a backend's own 4xx (not 429) is the answer: no failover", async () => {
    await east.setBehaviour({ status: 400, count: 1 });
    const res = await ask(router);
    assert.equal(res.status, 400);
    assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
    assert.equal((await swc.stats()).requests, 0);
  });
});

describe('circuit breaker and /readyz', () => {
  let router;
  const OPEN_MS = 1500;
  before(async () => {
    router = await startRouter({ config: twoBackends({ circuit: { failures: 2, open_ms: OPEN_MS } }) });
  });
  after(() => router?.stop());

  it('opens after N failures, probes once after open_ms, readyz 503 only when all are open', async () => {
    await east.setBehaviour({ status: 500 });
    for (let i = 1; i <= 2; i++) {
      const res = await ask(router);
      assert.equal(res.status, 200);
      assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
      assert.equal((await east.stats()).requests, i);
    }
    const opened = Date.now();
    // open: the primary is skipped
    for (let i = 0; i < 3; i++) {
      const res = await ask(router, { proto: 'h2c' });
      assert.equal(res.status, 200);
      assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    }
    assert.equal((await east.stats()).requests, 2, 'the primary was tried while its circuit was open');
    assert.equal((await get(router.url, '/readyz')).status, 200, 'one circuit is closed: ready');

    // after open_ms one probe reaches it (and fails: the circuit reopens)
    let probeAt = null;
    const deadline = Date.now() + OPEN_MS + 5000 * SLOW;
    while (Date.now() < deadline) {
      const res = await ask(router);
      assert.equal(res.status, 200);
      if ((await east.stats()).requests >= 3) {
        probeAt = Date.now();
        break;
      }
      await sleep(100);
    }
    assert.ok(probeAt, 'no probe reached the primary after open_ms');
    assert.ok(probeAt - opened >= OPEN_MS - 500, `probe after ${probeAt - opened} ms < open_ms`);
    assert.equal((await east.stats()).requests, 3, 'more than one probe while half-open');
    const again = await ask(router);
    assert.equal(again.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await east.stats()).requests, 3, 'the failed probe did not reopen the circuit');

    // now the secondary breaks too: two failures open its circuit
    await swc.setBehaviour({ status: 500 });
    for (let i = 0; i < 2; i++) {
      const res = await ask(router);
      assert.equal(res.status, 502, res.body);
      assert.equal(res.json().error.code, 'backend_error');
    }
    assert.equal((await east.stats()).requests, 3);
    const r = await get(router.url, '/readyz');
    assert.equal(r.status, 503, 'every circuit is open: not ready');
    assert.equal((await get(router.url, '/healthz')).status, 200, 'liveness is unaffected');

    // both heal; after open_ms the router is ready again and a probe closes the circuit
    await resetMocks(east, swc);
    let ready = false;
    const d2 = Date.now() + OPEN_MS + 5000 * SLOW;
    while (Date.now() < d2 && !ready) {
      ready = (await get(router.url, '/readyz')).status === 200;
      if (!ready) await sleep(100);
    }
    assert.ok(ready, 'readyz stayed 503 after open_ms');
    const back = await pollServedBy(router, 'eastus', 5000 * SLOW);
    assert.ok(back, 'the primary never came back after a successful probe');
    const after1 = await ask(router);
    assert.equal(after1.headers['x-aoai-router-backend'], 'eastus');
  });
});

describe('connect errors and timeouts', () => {
  let router;
  before(async () => {
    const closed = await freePort();
    router = await startRouter({
      config: {
        limits: { upstream_timeout_ms: 800, max_attempts: 3 },
        backends: [
          { name: 'nowhere', url: `http://127.0.0.1:${closed}`, priority: 1, deployments: { 'gpt-4o': 'gpt-4o', 'only-dead': 'x' } },
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o', slow: 'slow-east' } }),
          backendFor(swc, { priority: 3, deployments: { 'gpt-4o': 'gpt-4o', slow: 'slow-swc' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  it('a backend on a closed port: the next one answers', async () => {
    for (const proto of ['h1', 'h2c']) {
      const res = await ask(router, { proto });
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
    }
    assert.equal((await east.stats()).requests, 2);
  });

  it('only a dead backend: 502 backend_error', async () => {
    const res = await post(router.url, '/openai/deployments/only-dead/chat/completions?api-version=2024-10-21', chatBody());
    assert.equal(res.status, 502, res.body);
    assert.equal(res.json().error.code, 'backend_error');
  });

  it('a backend slower than upstream_timeout_ms: the next one answers', async () => {
    await east.setBehaviour({ delay_ms: 2500 });
    const res = await post(router.url, '/openai/deployments/slow/chat/completions?api-version=2024-10-21', chatBody());
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal(res.json().model, 'slow-swc');
    assert.equal((await east.stats()).requests, 1);
    assert.equal((await swc.stats()).requests, 1);
  });
});

describe('max_attempts', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        limits: { max_attempts: 2 },
        backends: [
          backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(wus, { priority: 3, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
  });
  after(() => router?.stop());

  it('3 backends all 500, max_attempts 2: 502 backend_error after exactly 2 attempts', async () => {
    for (const m of [east, swc, wus]) await m.setBehaviour({ status: 500 });
    const res = await ask(router);
    assert.equal(res.status, 502, res.body);
    assert.equal(res.json().error.code, 'backend_error');
    const counts = await Promise.all([east, swc, wus].map(async (m) => (await m.stats()).requests));
    assert.deepEqual(counts, [1, 1, 0]);
  });

  it('3 backends, first two 500, max_attempts 2: still 502 (the third is never reached)', async () => {
    await east.setBehaviour({ status: 500, count: 1 });
    await swc.setBehaviour({ status: 503, count: 1 });
    const res = await ask(router, { proto: 'h2c' });
    assert.equal(res.status, 502);
    assert.equal((await wus.stats()).requests, 0);
  });
});
