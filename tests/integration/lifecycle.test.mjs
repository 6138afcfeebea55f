// SPEC §2 signals: SIGHUP reloads without dropping connections (a bad file is refused and
// the old config kept); SIGTERM drains in-flight requests and exits 0.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  get,
  curlStream,
  parseSse,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  waitExit,
  checkSanitizers,
  SLOW,
} from './lib/harness.mjs';

let east, swc;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
});

after(async () => {
  await stopAll(east, swc);
});

beforeEach(async () => {
  await resetMocks(east, swc);
});

const streamBody = () => chatBody({ stream: true, stream_options: { include_usage: true } });
const NEW_PATH = '/openai/deployments/gpt-4o-new/chat/completions?api-version=2024-10-21';

function configV1() {
  return {
    backends: [
      backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
      backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
    ],
  };
}

function configV2() {
  // priorities swapped, and a new deployment
  return {
    backends: [
      backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o', 'gpt-4o-new': 'new-east' } }),
      backendFor(swc, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o', 'gpt-4o-new': 'new-swc' } }),
    ],
  };
}

describe('SIGHUP', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: configV1() });
  });
  after(() => router?.stop());

  it('reload during a stream: the stream completes, new requests see the new config', async () => {
    const b2 = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(b2.headers['x-aoai-router-backend'], 'eastus');

    await east.setBehaviour({ chunk_interval_ms: 100, chunks: 20 });
    const streams = [
      curlStream(router.url, CHAT_PATH, streamBody(), { proto: 'h1' }),
      curlStream(router.url, CHAT_PATH, streamBody(), { proto: 'h2c' }),
    ];
    for (const s of streams) assert.ok(await s.waitEvents(2), 'stream did not start');

    router.writeConfig(configV2());
    const from = router.stderr().length;
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/reload/i, undefined, from), `no reload message:\n${router.stderr()}`);

    // new requests follow the new file (the reload is asynchronous: poll briefly)
    const fresh = await pollUntil(
      async () => {
        const r = await post(router.url, NEW_PATH, chatBody(), { proto: 'h2c' });
        return r.status === 200 ? r : null;
      },
      { timeoutMs: 3000 * SLOW },
    );
    assert.ok(fresh, 'the new deployment is not served after SIGHUP');
    assert.equal(fresh.headers['x-aoai-router-backend'], 'swedencentral');
    assert.equal((await swc.stats()).last_request.path, '/openai/deployments/new-swc/chat/completions');
    const swapped = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(swapped.status, 200);
    assert.equal(swapped.headers['x-aoai-router-backend'], 'swedencentral');

    // the streams that started before the reload complete on the old config
    for (const s of streams) {
      const r = await s.done;
      assert.equal(r.exitCode, 0, r.stderr);
      const { done, text } = parseSse(s.events);
      assert.ok(done, 'stream cut by the reload');
      assert.equal(text.split(' ').filter(Boolean).length, 20);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    }
    const es = await east.stats();
    assert.equal(es.requests, 3); // one plain request before the reload and the two streams
    assert.equal(es.completed, 3);
  });

});

describe('SIGHUP with a bad file', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: configV2() });
  });
  after(() => router?.stop());

  it('a broken file on SIGHUP is refused; the old config keeps serving', async () => {
    const ok1 = await post(router.url, NEW_PATH, chatBody());
    assert.equal(ok1.status, 200);
    router.writeConfig('listen: [ {address: 127.0.0.1, port: nope\nbackends:\n  - name: [unterminated\n');
    const before = router.stderr().length;
    router.signal('SIGHUP');
    assert.ok(
      await pollUntil(() => /refused/i.test(router.stderr().slice(before)), { timeoutMs: 5000 * SLOW }),
      `no "refused" message:\n${router.stderr().slice(before)}`,
    );
    await sleep(200);
    assert.equal(router.proc.exitCode, null, 'the router died on a bad config');
    const ok2 = await post(router.url, NEW_PATH, chatBody(), { proto: 'h2c' });
    assert.equal(ok2.status, 200);
    assert.equal(ok2.headers['x-aoai-router-backend'], 'swedencentral');

    // a file that parses but is invalid (a backend without url) is refused too
    router.writeConfig({ backends: [{ name: 'x', priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }] });
    const before2 = router.stderr().length;
    router.signal('SIGHUP');
    assert.ok(
      await pollUntil(() => /refused/i.test(router.stderr().slice(before2)), { timeoutMs: 5000 * SLOW }),
      `no "refused" message:\n${router.stderr().slice(before2)}`,
    );
    const ok3 = await post(router.url, NEW_PATH, chatBody());
    assert.equal(ok3.status, 200);
    assert.equal((await get(router.url, '/readyz')).status, 200);

    // and a good file afterwards is taken again
    router.writeConfig(configV1());
    router.signal('SIGHUP');
    const back = await pollUntil(
      async () => {
        const r = await post(router.url, CHAT_PATH, chatBody());
        return r.headers['x-aoai-router-backend'] === 'eastus' ? r : null;
      },
      { timeoutMs: 3000 * SLOW },
    );
    assert.ok(back, 'the good config after a refused one was not loaded');
  });
});

describe('SIGTERM', () => {
  it('drains: streams in flight complete, new connections are refused, exit 0', async () => {
    const router = await startRouter({ config: configV1() });
    let exited = false;
    try {
      await east.setBehaviour({ chunk_interval_ms: 100, chunks: 25 });
      const streams = [
        curlStream(router.url, CHAT_PATH, streamBody(), { proto: 'h1' }),
        curlStream(router.url, CHAT_PATH, streamBody(), { proto: 'h2c' }),
      ];
      for (const s of streams) assert.ok(await s.waitEvents(2), 'stream did not start');
      router.signal('SIGTERM');

      // while draining, new connections are refused (curl exit 7) — poll: the workers close
      // their listeners when they get the news
      const refused = await pollUntil(
        async () => {
          const r = await get(router.url, '/healthz', { timeoutMs: 5000 });
          return r.exitCode === 7 ? r : null;
        },
        { timeoutMs: 2000 * SLOW, intervalMs: 50 },
      );
      assert.ok(refused, 'new connections still accepted while draining');
      assert.equal(router.proc.exitCode, null, 'exited before its streams completed');

      for (const s of streams) {
        const r = await s.done;
        assert.equal(r.exitCode, 0, r.stderr);
        const { done, text } = parseSse(s.events);
        assert.ok(done, 'stream cut by SIGTERM');
        assert.equal(text.split(' ').filter(Boolean).length, 25);
      }
      const { code, signal } = await waitExit(router.proc, 20000 * SLOW);
      exited = true;
      checkSanitizers(router.stderr());
      assert.equal(signal, null);
      assert.equal(code, 0, router.stderr());
      const after = await get(router.url, '/healthz', { timeoutMs: 5000 });
      assert.equal(after.exitCode, 7, 'something still listens after exit');
      assert.equal((await east.stats()).completed, 2);
    } finally {
      if (!exited) await router.stop().catch(() => {});
    }
  });

  it('an idle router exits 0 at once on SIGTERM', async () => {
    const router = await startRouter({ config: configV1() });
    const res = await post(router.url, CHAT_PATH, chatBody(), { proto: 'h2c' });
    assert.equal(res.status, 200);
    const { code } = await router.stop(); // throws unless it exits 0 without sanitizer reports
    assert.equal(code, 0);
    assert.equal((await get(router.url, '/healthz', { timeoutMs: 5000 })).exitCode, 7);
  });
});
