// Outside review of the hot-path rewrites (redis argv writer, request ids, quota windows,
// settle ids, backend x-ratelimit-* dropping). Probes against the built binary.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRouter, post, chatBody, CHAT_PATH, curlStream } from './lib/harness.mjs';
import { CHAT_JSON, chunk, sseEvent, startHostileBackend } from './lib/hostile_upstream_backend.mjs';

const RL =
  'X-RateLimit-Limit-Tokens: 999000\r\nx-ratelimit-remaining-tokens: 998000\r\nx-ratelimit-reset-tokens: 6ms\r\n' +
  'X-RATELIMIT-Whatever: 1\r\nx-ratelimit-: 2\r\nx-ratelimit-limit-requests: 5000\r\n';

function leaked(res) {
  return res.headerList.filter(([k]) => /^x-ratelimit-/i.test(k) && !/^x-ratelimit-remaining-(tokens|requests)$/i.test(k));
}

describe('backend x-ratelimit-* never reaches the client (SPEC §5)', () => {
  let be, router;
  before(async () => {
    be = await startHostileBackend();
    router = await startRouter({
      config: { threads: 1, backends: [{ name: 'hostile', url: be.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }] },
    });
  });
  after(async () => {
    await router?.stop?.();
    await be?.stop();
  });

  for (const proto of ['h1', 'h2c']) {
    it(`non-streamed 200 over ${proto}`, async () => {
      be.handler = (ctx) => ctx.ok(CHAT_JSON, RL);
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto });
      assert.equal(res.status, 200);
      assert.deepEqual(leaked(res), []);
      for (const [k, v] of res.headerList) if (/^x-ratelimit-remaining-tokens$/i.test(k)) assert.notEqual(v, '998000');
    });
    it(`a 400 answer over ${proto}`, async () => {
      const b = JSON.stringify({ error: { code: 'bad', message: 'x' } });
      be.handler = (ctx) => {
        ctx.write(`HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${b.length}\r\n${RL}\r\n${b}`);
        ctx.done();
      };
      const res = await post(router.url, CHAT_PATH, chatBody(), { proto });
      assert.equal(res.status, 400);
      assert.deepEqual(leaked(res), []);
    });
    it(`streamed (chunked SSE) over ${proto}`, async () => {
      be.handler = (ctx) => {
        ctx.write(`HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n${RL}\r\n`);
        ctx.write(chunk(sseEvent('hi')) + chunk('data: [DONE]\n\n') + '0\r\n\r\n');
        ctx.done();
      };
      const s = curlStream(router.url, CHAT_PATH, chatBody({ stream: true }), { proto });
      const res = await s.done;
      assert.equal(res.status, 200);
      const list = Object.entries(res.headers ?? {});
      assert.deepEqual(list.filter(([k]) => /^x-ratelimit-/i.test(k) && !/^x-ratelimit-remaining-(tokens|requests)$/i.test(k)), []);
    });
  }
});

import { fetchMetrics, metricSum, startMock, backendFor, stopAll, sleep, SLOW } from './lib/harness.mjs';
import { startFakeResp } from './lib/hostile_review_resp.mjs';

// router/redis.c:1011 leaves every error reply starting with NOSCRIPT out of
// aoai_router_redis_errors_total, whatever the command. Only EVALSHA can meet a legitimate
// NOSCRIPT; a Redis (or a proxy in front of it) that answers MGET/EVAL/anything with
// "-NOSCRIPT ..." has every failure hidden from the metric operators alert on.
describe('NOSCRIPT is exempt from aoai_router_redis_errors_total only where it is expected', () => {
  let healthy;
  before(async () => {
    healthy = await startMock('healthy');
  });
  after(() => stopAll(healthy));

  async function errorsWith(line) {
    const fake = await startFakeResp((s) => s.write(line));
    const router = await startRouter({
      config: { threads: 1, redis: { url: fake.url, on_failure: 'open' }, backends: [backendFor(healthy, { deployments: { 'gpt-4o': 'gpt-4o' } })] },
    });
    try {
      await sleep(2500 * SLOW); // the cooldown poll (MGET) runs meanwhile
      return { errors: metricSum(await fetchMetrics(router), 'aoai_router_redis_errors_total'), seen: { ...fake.seen } };
    } finally {
      await router.stop();
      await fake.stop();
    }
  }

  it('an MGET answered "-NOSCRIPT ..." is counted like any other error reply', async () => {
    const err = await errorsWith('-ERR broken\r\n');
    const nos = await errorsWith('-NOSCRIPT No matching script. Please use EVAL.\r\n');
    assert.ok(err.seen.MGET > 0 && nos.seen.MGET > 0, `MGET sent: ${JSON.stringify([err.seen, nos.seen])}`);
    assert.ok(err.errors > 0, 'a plain error reply is counted');
    assert.ok(nos.errors > 0, `NOSCRIPT replies to ${nos.seen.MGET} MGETs counted as ${nos.errors} errors`);
  });
});

describe('generated x-request-id', () => {
  let healthy, router;
  before(async () => {
    healthy = await startMock('healthy');
    router = await startRouter({ config: { threads: 1, backends: [backendFor(healthy, { deployments: { 'gpt-4o': 'gpt-4o' } })] } });
  });
  after(() => stopAll(router, healthy));

  it('is a lowercase UUIDv4 (8-4-4-4-12, version 4, variant 10), fresh each time', async () => {
    const ids = new Set();
    for (let i = 0; i < 20; i++) {
      const r = await post(router.url, CHAT_PATH, chatBody(), { proto: i % 2 ? 'h2c' : 'h1', headers: { 'x-request-id': i % 3 ? 'bad id!' : '' } });
      const id = r.headers['x-request-id'];
      assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      ids.add(id);
    }
    assert.equal(ids.size, 20);
  });
});
