// An outside review of issue 6 (items 6–12, 14) and issue 7 (items 3, 4) from the other side
// of the wire: a lying Redis and a lying backend, written as raw TCP servers (node net).
// Each test here failed on the main it was written against; the fix is in the C code.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  startMock,
  startRouter,
  backendFor,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  httpRequest,
  tempDir,
  run,
  fetchMetrics,
  metricSum,
  SLOW,
} from './lib/harness.mjs';
import { startFakeResp, streamFlood } from './lib/hostile_review_resp.mjs';
import { CHAT_JSON, startHostileBackend } from './lib/hostile_upstream_backend.mjs';

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

describe('a TLS backend whose close-delimited body is cut by a TCP FIN (no close_notify)', () => {
  let dir, healthy, server, router, mode;
  let hits = 0;

  async function ossl(...args) {
    const r = await run('openssl', args);
    assert.equal(r.code, 0, r.stderr);
  }

  before(async () => {
    dir = tempDir('aor-it-review-tls-');
    await ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=review CA', '-days', '1',
      '-keyout', path.join(dir, 'ca.key'), '-out', path.join(dir, 'ca.pem'));
    writeFileSync(path.join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
    await ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=leaf', '-keyout',
      path.join(dir, 'leaf.key'), '-out', path.join(dir, 'leaf.csr'));
    await ossl('x509', '-req', '-in', path.join(dir, 'leaf.csr'), '-CA', path.join(dir, 'ca.pem'), '-CAkey', path.join(dir, 'ca.key'),
      '-CAcreateserial', '-days', '1', '-extfile', path.join(dir, 'leaf.ext'), '-out', path.join(dir, 'leaf.pem'));
    const creds = { key: readFileSync(path.join(dir, 'leaf.key')), cert: readFileSync(path.join(dir, 'leaf.pem')) };
    /* TLS over a raw TCP socket, so that the TCP connection can be ended without a close_notify */
    server = net.createServer((raw) => {
      raw.on('error', () => {});
      const t = new tls.TLSSocket(raw, { isServer: true, ...creds });
      t.requests = 0;
      t.on('error', () => {});
      let buf = '';
      t.on('data', (d) => {
        buf += d;
        const at = buf.indexOf('\r\n\r\n');
        if (at < 0) return;
        const len = Number((/content-length:\s*(\d+)/i.exec(buf.slice(0, at)) ?? [0, 0])[1]);
        if (buf.length < at + 4 + len) return;
        buf = buf.slice(at + 4 + len);
        hits++;
        if (mode === 'pooled') {
          /* keep-alive: the first request on a connection is answered, the next one read and the connection closed */
          if (++t.requests === 1) t.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${CHAT_JSON.length}\r\n\r\n${CHAT_JSON}`);
          else t.end();
          return;
        }
        const body = mode === 'cut' ? CHAT_JSON.slice(0, 40) : CHAT_JSON;
        /* no content-length, no chunking: the body ends with the connection */
        t.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n${body}`, () => {
          if (mode === 'cut') setTimeout(() => raw.end(), 50); // a FIN, no close_notify: a truncation
          else setTimeout(() => t.end(), 50); // close_notify, then the FIN: the end of the body
        });
      });
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    healthy = await startMock('healthy');
    router = await startRouter({
      env: { SSL_CERT_FILE: path.join(dir, 'ca.pem') },
      config: {
        threads: 1,
        backends: [
          { name: 'tlsclose', url: `https://127.0.0.1:${server.address().port}`, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } },
          backendFor(healthy, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
        limits: { max_attempts: 2 },
        circuit: { failures: 1000, open_ms: 60000 },
      },
    });
  });
  after(async () => {
    await stopAll(router, healthy);
    server?.close();
  });

  it('a FIN without close_notify is a truncation: fails over, never a 200 with the cut body', async () => {
    mode = 'cut';
    hits = 0;
    const before = metricSum(await fetchMetrics(router), 'aoai_router_failovers_total', { backend: 'tlsclose' });
    const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'healthy', `the cut body was delivered: ${res.body}`);
    assert.equal(res.json().object, 'chat.completion');
    assert.equal(hits, 1);
    assert.equal(metricSum(await fetchMetrics(router), 'aoai_router_failovers_total', { backend: 'tlsclose' }), before + 1);
  });

  it('item 14 over TLS: a pooled connection closed after the next request was read: never sent twice', async () => {
    mode = 'pooled';
    hits = 0;
    const first = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(first.headers['x-aoai-router-backend'], 'tlsclose', first.body);
    const second = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(second.status, 200, second.body);
    assert.equal(second.headers['x-aoai-router-backend'], 'healthy', 'the second request failed over');
    assert.equal(hits, 2, 'the TLS backend read each POST once');
  });

  it('close_notify then the FIN ends a close-delimited body: a complete answer', async () => {
    mode = 'whole';
    hits = 0;
    const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'tlsclose');
    assert.equal(res.body, CHAT_JSON);
    assert.equal(hits, 1);
  });
});

describe('a lying Redis: error replies written to forge log lines', () => {
  it('a newline in a Redis error cannot start a log line of its own', async () => {
    const healthy = await startMock('healthy');
    const fake = await startFakeResp((s) => s.write('-ERR nope\n2099-01-01T00:00:00.000Z error [server] FORGED by redis\r\n'));
    const router = await startRouter({
      config: {
        threads: 1,
        redis: { url: fake.url, on_failure: 'open' },
        auth: { mode: 'key' },
        backends: [backendFor(healthy, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
    try {
      const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': 'legacy-shaped-key-0123456789' } });
      assert.equal(res.status, 503, res.body); // the key cannot be looked up, and it was never seen before
      assert.ok(fake.seen.HGETALL >= 1, JSON.stringify(fake.seen));
      await sleep(200);
      const lines = router.stderr().split('\n');
      assert.ok(lines.some((l) => l.includes('FORGED')), 'the error reply is logged');
      assert.ok(!lines.some((l) => l.startsWith('2099-')), `a forged line:\n${lines.filter((l) => l.includes('FORGED')).join('\n')}`);
    } finally {
      await stopAll(router, healthy);
      await fake.stop();
    }
  });
});

describe('answers collected whole (JSON) share the in-flight budget', () => {
  it('40 answers of 4 MiB held at once stay within max_inflight_body_bytes (the rest are streamed)', async () => {
    const be = await startHostileBackend();
    const LEN = 4 * 1024 * 1024 - 64;
    const block = Buffer.alloc(1 << 20, 0x20);
    /* a JSON answer just under the 4 MiB collection limit, its last 10 bytes never sent */
    be.handler = (ctx) => {
      ctx.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${LEN + 10}\r\n\r\n{"a":"`);
      let sent = 6;
      const go = () => {
        while (sent < LEN && !ctx.conn.closed) {
          const n = Math.min(block.length, LEN - sent);
          sent += n;
          if (!ctx.socket.write(block.subarray(0, n))) {
            ctx.socket.once('drain', go);
            return;
          }
        }
      };
      go();
    };
    const router = await startRouter({
      config: {
        threads: 1,
        backends: [{ name: 'big', url: be.url, deployments: { 'gpt-4o': 'gpt-4o' } }],
        limits: { upstream_timeout_ms: 4000 * SLOW, max_backend_connections: 1000, max_inflight_body_bytes: 32 * 1024 * 1024 },
        circuit: { failures: 100000 },
      },
    });
    try {
      const before = memKb(router.proc.pid);
      const all = Promise.all(Array.from({ length: 40 }, () => post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 })).catch(() => null)));
      await sleep(3000 * SLOW);
      const grown = memKb(router.proc.pid).hwm - before.rss;
      assert.equal(be.stats.posts, 40, 'every request reached the backend');
      /* unbounded, they take 160+ MiB; ASan's quarantine keeps freed buffers a while (measured 111 MiB) */
      const bound = (SLOW > 1 ? 140 : 80) * 1024;
      assert.ok(grown < bound, `router peak RSS grew by ${grown} kB with 40 answers of 4 MiB in flight (budget 32 MiB)`);
      const results = await all;
      assert.ok(results.every((r) => r === null || r.status === 502 || r.status === 200), 'cut answers: 502, or a 200 stream cut short');
      const res = await httpRequest(`${router.url}/healthz`);
      assert.equal(res.status, 200);
    } finally {
      await router.stop();
      await be.stop();
    }
  });
});
