// SPEC §5/§6: with Redis, a backend deployment's 429 cooldown is shared with every router
// replica through <prefix>backend:<name>:<deployment>:cooldown_until (unix ms, PX TTL;
// <deployment> is the name on that backend).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMock,
  startRedis,
  startRouter,
  backendFor,
  resetMocks,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  pollUntil,
  redisCli,
  SLOW,
  sleep,
} from './lib/harness.mjs';

describe('cooldown shared through Redis', () => {
  let east, swc, redis, a, b;
  before(async () => {
    east = await startMock('eastus');
    swc = await startMock('swedencentral');
    redis = await startRedis();
    const config = () => ({
      redis: { url: `redis://127.0.0.1:${redis.port}/0` },
      backends: [
        backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o-east', emb: 'emb-east' } }),
        backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' } }),
      ],
    });
    a = await startRouter({ config: config() });
    b = await startRouter({ config: config() });
  });
  after(async () => stopAll(a, b, east, swc, redis));

  it('a 429 seen by one replica keeps the other away from that backend', async () => {
    await resetMocks(east, swc);
    // replica b has used the primary before: it is not cooling down there
    assert.equal((await post(b.url, CHAT_PATH, chatBody())).headers['x-aoai-router-backend'], 'eastus');
    await east.setBehaviour({ status: 429, retry_after: '8', count: 1 });
    const r = await post(a.url, CHAT_PATH, chatBody());
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    // the cooldown is in Redis, as SPEC §6 names it (the deployment's name on that backend), with a TTL
    const KEY = 'aoai:backend:eastus:gpt-4o-east:cooldown_until';
    const until = Number(((await redisCli(redis, 'GET', KEY)).stdout).trim());
    assert.ok(until > Date.now() + 5000 && until < Date.now() + 9000, `cooldown_until ${until}`);
    const pttl = Number(((await redisCli(redis, 'PTTL', KEY)).stdout).trim());
    assert.ok(pttl > 5000 && pttl <= 8000, `PTTL ${pttl}`);
    // within the poll interval (1 s per worker) replica b adopts it
    await pollUntil(
      async () => (await post(b.url, CHAT_PATH, chatBody())).headers['x-aoai-router-backend'] === 'swedencentral',
      { timeoutMs: 3000 * SLOW, intervalMs: 200 },
    );
    await sleep(1200 * SLOW); // every worker of b has polled by now
    const before = (await east.stats()).requests;
    for (let i = 0; i < 6; i++) {
      const r2 = await post(b.url, CHAT_PATH, chatBody());
      assert.equal(r2.headers['x-aoai-router-backend'], 'swedencentral');
    }
    assert.equal((await east.stats()).requests, before, 'replica b sent nothing to the cooling primary');
    const m = await (await fetch(`${b.url}/metrics`)).text();
    assert.match(m, /aoai_router_backend_cooldown\{backend="eastus",deployment="gpt-4o"\} 1/);
    // the other deployment on that backend is not cooling down, on either replica
    assert.match(m, /aoai_router_backend_cooldown\{backend="eastus",deployment="emb"\} 0/);
    const EMB = '/openai/deployments/emb/chat/completions?api-version=2024-10-21';
    for (const r of [a, b]) assert.equal((await post(r.url, EMB, chatBody())).headers['x-aoai-router-backend'], 'eastus');
  });
});
