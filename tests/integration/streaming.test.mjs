// SSE streaming: chunk-by-chunk pass-through, no failover after the first byte, and a
// client that goes away cancels the upstream transfer.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  curlStream,
  parseSse,
  chatBody,
  CHAT_PATH,
  stopAll,
  pollUntil,
  sleep,
  SLOW,
} from './lib/harness.mjs';

let east, swc, router;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  router = await startRouter({
    config: {
      backends: [
        backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
        backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
      ],
    },
  });
});

after(async () => {
  await stopAll(router, east, swc);
});

beforeEach(async () => {
  await resetMocks(east, swc);
});

const streamBody = (extra = {}) => chatBody({ stream: true, stream_options: { include_usage: true }, ...extra });

describe('SSE pass-through', () => {
  for (const proto of ['h1', 'h2c']) {
    it(`${proto}: events arrive as the backend sends them, not buffered`, async () => {
      await east.setBehaviour({ chunk_interval_ms: 200, chunks: 5 });
      const s = curlStream(router.url, CHAT_PATH, streamBody(), { proto });
      const r = await s.done;
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.status, 200);
      assert.match(r.headers['content-type'] ?? '', /^text\/event-stream/);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
      assert.ok(r.headers['x-request-id']);
      const { chunks, text, done, usage } = parseSse(s.events);
      assert.ok(done, 'no [DONE]');
      assert.equal(text, 'word0 word1 word2 word3 word4 ');
      assert.equal(usage?.completion_tokens, 5);
      assert.ok(chunks.length >= 8);
      // 9 events 200 ms apart: the first must reach the client well before the last
      const first = s.events[0].t;
      const last = s.events[s.events.length - 1].t;
      assert.ok(last - first > 500, `events arrived within ${last - first} ms: buffered`);
      // and they arrive spread out, not in one burst at the end
      const distinct = new Set(s.events.map((e) => Math.floor((e.t - first) / 100))).size;
      assert.ok(distinct >= 4, `events arrived in ${distinct} bursts`);
    });
  }

  it('a stream without include_usage ends with [DONE] and no usage chunk', async () => {
    const s = curlStream(router.url, CHAT_PATH, chatBody({ stream: true, max_tokens: 3 }), { proto: 'h2c' });
    const r = await s.done;
    assert.equal(r.exitCode, 0, r.stderr);
    const { text, done, usage } = parseSse(s.events);
    assert.ok(done);
    assert.equal(text, 'word0 word1 word2 ');
    assert.equal(usage, undefined);
  });
});

describe('no failover after the first streamed byte', () => {
  for (const proto of ['h1', 'h2c']) {
    it(`${proto}: a stream broken mid-way reaches the client incomplete; the secondary is not tried`, async () => {
      await east.setBehaviour({ reset_after_chunks: 2, chunks: 6, chunk_interval_ms: 20 });
      const s = curlStream(router.url, CHAT_PATH, streamBody(), { proto });
      const r = await s.done;
      assert.notEqual(r.exitCode, 0, `curl exited 0; body:\n${r.body}`);
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
      const { text, done } = parseSse(s.events.filter((e) => e.data === '[DONE]' || isJson(e.data)));
      assert.ok(!done, 'the incomplete stream ended with [DONE]');
      assert.ok(!r.body.includes('[DONE]'));
      assert.ok(text.startsWith('word0 word1'), `got ${JSON.stringify(text)}`);
      assert.ok(!text.includes('word2'));
      const a = await east.stats();
      assert.equal(a.requests, 1);
      assert.equal(a.resets, 1);
      assert.equal((await swc.stats()).requests, 0);
      // the router is fine afterwards
      await east.setBehaviour({});
      const ok = curlStream(router.url, CHAT_PATH, streamBody({ max_tokens: 2 }), { proto });
      assert.equal((await ok.done).exitCode, 0);
      assert.ok(parseSse(ok.events).done);
    });
  }
});

function isJson(s) {
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
}

describe('client disconnect', () => {
  for (const proto of ['h1', 'h2c']) {
    it(`${proto}: a client that leaves mid-stream cancels the upstream`, async () => {
      await east.setBehaviour({ chunk_interval_ms: 100, chunks: 50 });
      const s = curlStream(router.url, CHAT_PATH, streamBody(), { proto });
      assert.ok(await s.waitEvents(1), 'no first event');
      s.abort();
      await s.done;
      const st = await pollUntil(
        async () => {
          const x = await east.stats();
          return x.aborted >= 1 ? x : null;
        },
        { timeoutMs: 5000 * SLOW },
      );
      assert.ok(st, `the backend's stream was not aborted: ${JSON.stringify(await east.stats())}`);
      assert.equal(st.aborted, 1);
      assert.equal(st.completed, 0);
      // well before the 50 x 100 ms stream would have ended
      await sleep(200);
      assert.equal((await east.stats()).active, 0);
      assert.equal((await swc.stats()).requests, 0);
    });
  }

  it('a client that leaves while the backend is still thinking cancels it too (h2c)', async () => {
    await east.setBehaviour({ delay_ms: 3000 });
    const s = curlStream(router.url, CHAT_PATH, streamBody(), { proto: 'h2c' });
    await pollUntil(async () => (await east.stats()).active >= 1, { timeoutMs: 5000 * SLOW });
    s.abort();
    await s.done;
    // the mock learns of a HTTP/1.1 disconnect only when the delay ends: poll past it
    const st = await pollUntil(
      async () => {
        const x = await east.stats();
        return x.active === 0 ? x : null;
      },
      { timeoutMs: 8000 * SLOW },
    );
    assert.ok(st, 'the backend request never ended');
    assert.equal(st.requests, 1);
    assert.equal((await swc.stats()).requests, 0, 'a client that left must not cause a failover');
  });
});
