// An outside review of issue 6 (items 6–12, 14) and issue 7 (items 3, 4) from the other side
// of the wire: a lying Redis and a lying backend, written as raw TCP servers (node net).
// Each test here failed on the main it was written against; the fix is in the C code.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startMock, startRouter, backendFor, post, chatBody, CHAT_PATH, stopAll, sleep, httpRequest, SLOW } from './lib/harness.mjs';
import { startFakeResp, streamFlood } from './lib/hostile_review_resp.mjs';

function memKb(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { rss: Number(/VmRSS:\s+(\d+) kB/.exec(s)[1]), hwm: Number(/VmHWM:\s+(\d+) kB/.exec(s)[1]) };
}

describe('a lying Redis: replies far larger than any the router asks for', () => {
  let healthy;
  before(async () => {
    healthy = await startMock('healthy');
  });
  after(() => stopAll(healthy));

  /* the router polls the shared cooldown keys (MGET) as soon as Redis is up: the fake answers that */
  async function attack(answer) {
    const fake = await startFakeResp(answer);
    const router = await startRouter({
      config: {
        threads: 1,
        redis: { url: fake.url, on_failure: 'open' },
        backends: [backendFor(healthy, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
    try {
      const before = memKb(router.proc.pid);
      let worstHealthzMs = 0;
      const t0 = Date.now();
      while (Date.now() - t0 < 4000 * SLOW) {
        const s = Date.now();
        const res = await httpRequest(`${router.url}/healthz`);
        assert.equal(res.status, 200);
        worstHealthzMs = Math.max(worstHealthzMs, Date.now() - s);
        await sleep(100);
      }
      const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
      assert.equal(res.status, 200, res.body);
      const after = memKb(router.proc.pid);
      assert.ok(fake.seen.MGET >= 1, `the router asked the fake Redis (${JSON.stringify(fake.seen)})`);
      assert.ok(after.hwm - before.rss < 64 * 1024, `router peak RSS grew by ${after.hwm - before.rss} kB (bound 64 MiB)`);
      assert.ok(worstHealthzMs < 1000 * SLOW, `/healthz took up to ${worstHealthzMs} ms: the loop was blocked`);
      assert.match(router.stderr(), /reply (over|with more than)/, 'the cause is logged');
    } finally {
      await router.stop();
      await fake.stop();
    }
  }

  it('a 2 GB bulk string: the connection is dropped at 1 MiB, memory stays flat', async () => {
    await attack((s) => streamFlood(s, '$2000000000\r\n', Buffer.alloc(1 << 20, 97), 2000000000));
  });

  it('an array of 2 billion elements: refused at its header, memory stays flat, the loop answers', async () => {
    await attack((s) => streamFlood(s, '*2000000000\r\n', Buffer.from(':1\r\n'.repeat(1 << 18)), 2000000000));
  });
});
