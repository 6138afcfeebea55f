// A broken or hostile backend (issue 6 items 3, 6, 7, 9, 14): a raw TCP "backend"
// (lib/hostile_upstream_backend.mjs) sends what no HTTP library would — an endless header
// block, a body cut short, a chunked body without its last chunk, a keep-alive connection
// closed under a written request, nothing at all — and the router must neither hand the
// client a truncated answer as a success, nor send a POST twice, nor blame a backend for
// its own exhaustion. Counts the raw backend saw, statuses, aoai_router_failovers_total
// and the circuit are asserted.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync, readdirSync } from 'node:fs';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  get,
  curl,
  curlStream,
  bodyFile,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  run,
  fetchMetrics,
  metricSum,
  SLOW,
} from './lib/harness.mjs';
import { startHostileBackend, CHAT_JSON, chunk, sseEvent } from './lib/hostile_upstream_backend.mjs';

const ask = (router, opts) => post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), opts);

function hwmKb(pid) {
  return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

async function metric(router, name, labels) {
  return metricSum(await fetchMetrics(router), name, labels);
}

/* a chunked 200 head (JSON or SSE) */
function chunkedHead(type = 'application/json') {
  return `HTTP/1.1 200 OK\r\ncontent-type: ${type}\r\ntransfer-encoding: chunked\r\n\r\n`;
}

/* writes `block` until the peer goes away or `max` bytes went out, respecting backpressure */
function flood(ctx, block, max) {
  let sent = 0;
  const go = () => {
    while (!ctx.conn.closed && sent < max) {
      sent += block.length;
      if (!ctx.write(block)) {
        ctx.socket.once('drain', go);
        return;
      }
    }
  };
  go();
}

let healthy, be;

before(async () => {
  healthy = await startMock('healthy');
  be = await startHostileBackend();
});

after(async () => {
  await stopAll(healthy);
  await be?.stop();
});

beforeEach(async () => {
  await resetMocks(healthy);
  be.reset();
  be.handler = (ctx) => ctx.ok(CHAT_JSON);
});

/* the hostile backend first (priority 1), the mock behind it */
function hostileThenHealthy(extra = {}) {
  return {
    threads: 1,
    backends: [
      { name: 'hostile', url: be.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } },
      backendFor(healthy, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
    ],
    limits: { max_attempts: 2, upstream_timeout_ms: 4000, connect_timeout_ms: 1000 },
    circuit: { failures: 1000, open_ms: 60000 },
    ...extra,
  };
}

describe('broken answers before the first byte fail over (non-streaming)', () => {
  let router;
  before(async () => {
    router = await startRouter({ config: hostileThenHealthy() });
  });
  after(() => router?.stop());

  async function expectFailover(reason = 'connect') {
    const before = await metric(router, 'aoai_router_failovers_total', { backend: 'hostile', reason });
    const t0 = Date.now();
    const res = await ask(router);
    const ms = Date.now() - t0;
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'healthy', 'the answer must come from the healthy backend');
    assert.equal(res.json().object, 'chat.completion');
    assert.equal(be.stats.posts, 1, 'the hostile backend saw the POST once');
    assert.equal((await healthy.stats()).requests, 1);
    assert.equal(await metric(router, 'aoai_router_failovers_total', { backend: 'hostile', reason }), before + 1);
    return ms;
  }

  it('an endless header line: capped at 64 KiB, fails over at once, memory stays flat', async () => {
    be.handler = (ctx) => {
      ctx.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-flood: ');
      flood(ctx, 'a'.repeat(64 * 1024), 128 * 1024 * 1024);
    };
    const hwm0 = hwmKb(router.proc.pid);
    const ms = await expectFailover();
    assert.ok(ms < 2500 * SLOW, `took ${ms} ms: the head was not capped`);
    const grew = hwmKb(router.proc.pid) - hwm0;
    assert.ok(grew < 24 * 1024, `router peak RSS grew by ${grew} kB`);
    await pollUntil(() => be.sockets.size === 0, { timeoutMs: 2000 });
    assert.equal(be.sockets.size, 0, 'the router must close the flooding connection');
  });

  it('an endless block of short headers: the count cap fails over', async () => {
    be.handler = (ctx) => {
      ctx.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n');
      flood(ctx, 'x-h: 1\r\n'.repeat(1000), 64 * 1024 * 1024);
    };
    const ms = await expectFailover();
    assert.ok(ms < 2500 * SLOW, `took ${ms} ms`);
  });

  it('101 headers in a complete head: over the count cap, fails over', async () => {
    be.handler = (ctx) => ctx.ok(CHAT_JSON, 'x-h: 1\r\n'.repeat(101));
    await expectFailover();
  });

  it('content-length 1000, then 10 bytes and close: not a 200 from the hostile backend', async () => {
    be.handler = (ctx) => {
      ctx.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"id":"x","choi');
      ctx.socket.end();
    };
    await expectFailover();
  });

  it('a chunked body closed mid-chunk fails over', async () => {
    be.handler = (ctx) => {
      ctx.write(chunkedHead() + chunk('{"id":"x",') + '40\r\n"choices":[');
      ctx.socket.end();
    };
    await expectFailover();
  });

  it('a chunked body closed cleanly before its 0-chunk fails over', async () => {
    be.handler = (ctx) => {
      ctx.write(chunkedHead() + chunk('{"id":"x",') + chunk('"choi'));
      ctx.socket.end();
    };
    await expectFailover();
  });

  it('a malformed chunk size fails over', async () => {
    be.handler = (ctx) => {
      ctx.write(chunkedHead() + chunk('{"id":"x",') + 'zz\r\n' + '"choi');
      setTimeout(() => ctx.socket.end(), 300);
    };
    await expectFailover();
  });

  it('a length-less body cut by a reset fails over', async () => {
    be.handler = (ctx) => {
      ctx.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"id":"x","choi');
      setTimeout(() => ctx.socket.resetAndDestroy(), 100);
    };
    await expectFailover();
  });

  it('a length-less body ended by a clean close is a complete answer', async () => {
    be.handler = (ctx) => {
      ctx.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${CHAT_JSON}`);
      ctx.socket.end();
    };
    const res = await ask(router);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'hostile');
    assert.equal(res.body, CHAT_JSON);
    assert.equal((await healthy.stats()).requests, 0);
  });

  it('a chunked answer with trailers is complete', async () => {
    be.handler = (ctx) => {
      ctx.write(chunkedHead() + chunk(CHAT_JSON.slice(0, 20)) + chunk(CHAT_JSON.slice(20)) + '0\r\nx-trailer: 1\r\n\r\n');
      ctx.done();
    };
    const res = await ask(router);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['x-aoai-router-backend'], 'hostile');
    assert.equal(res.body, CHAT_JSON);
    // and the connection went back to the pool: the next request reuses it
    const r2 = await ask(router);
    assert.equal(r2.status, 200);
    assert.equal(be.stats.connections, 1, 'the connection was not reused');
  });

  it('transfer-encoding and content-length together (a smuggling signal) fail over', async () => {
    be.handler = (ctx) => {
      ctx.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n` + chunk(CHAT_JSON) + '0\r\n\r\n');
      ctx.done();
    };
    await expectFailover();
  });

  it('an endless run of 100-continue heads: capped with the head, fails over', async () => {
    be.handler = (ctx) => flood(ctx, 'HTTP/1.1 100 Continue\r\n\r\n'.repeat(512), 64 * 1024 * 1024);
    const ms = await expectFailover();
    assert.ok(ms < 2500 * SLOW, `took ${ms} ms`);
  });

  it('bytes after a complete answer, or sent on an idle connection: that connection is never reused', async () => {
    be.handler = (ctx) => {
      if (ctx.conn.id === 1) {
        // the answer and, in the same write, a second one nobody asked for
        ctx.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${CHAT_JSON.length}\r\n\r\n${CHAT_JSON}`);
        ctx.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno');
        ctx.done();
      } else {
        ctx.ok(CHAT_JSON);
        setTimeout(() => ctx.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno'), 100); // unasked, while idle
      }
    };
    for (let i = 0; i < 3; i++) {
      const r = await ask(router);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.headers['x-aoai-router-backend'], 'hostile');
      assert.equal(r.body, CHAT_JSON);
      await sleep(250);
    }
    assert.equal(be.stats.connections, 3, 'each answer was followed by junk: a new connection each time');
    assert.equal(be.stats.posts, 3);
    assert.equal((await healthy.stats()).requests, 0);
  });

  it('an HTTP/1.0 answer without keep-alive is complete; its connection is not reused', async () => {
    be.handler = (ctx) => {
      ctx.write(`HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${CHAT_JSON.length}\r\n\r\n${CHAT_JSON}`);
      ctx.done();
    };
    for (let i = 0; i < 2; i++) {
      const r = await ask(router);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.headers['x-aoai-router-backend'], 'hostile');
    }
    assert.equal(be.stats.connections, 2);
  });

  it('a backend that never answers: the transfer deadline fails over (reason timeout)', async () => {
    be.handler = () => {};
    const ms = await expectFailover('timeout');
    assert.ok(ms >= 3500 && ms < 8000 * SLOW, `took ${ms} ms`);
  });

  it('a pooled connection closed after the request was written: never sent twice, fails over', async () => {
    // first request on a connection: a normal keep-alive answer; the second: read it all, then drop the connection
    be.handler = (ctx) => (ctx.index === 1 ? ctx.ok(CHAT_JSON) : ctx.destroy());
    const r1 = await ask(router);
    assert.equal(r1.status, 200);
    assert.equal(r1.headers['x-aoai-router-backend'], 'hostile');
    assert.equal(be.stats.connections, 1);
    const before = await metric(router, 'aoai_router_failovers_total', { backend: 'hostile' });
    const r2 = await ask(router);
    assert.equal(r2.status, 200, r2.body);
    assert.equal(r2.headers['x-aoai-router-backend'], 'healthy', 'the written POST must not be resent to the same backend');
    assert.equal(be.stats.posts, 2, 'the hostile backend must see the second POST exactly once');
    assert.equal(be.stats.connections, 1, 'no new connection to resend the POST on');
    assert.equal((await healthy.stats()).requests, 1);
    assert.equal(await metric(router, 'aoai_router_failovers_total', { backend: 'hostile' }), before + 1);
  });

  it('a backend closing an idle pooled connection is noticed: the next request takes a new one, no failover', async () => {
    be.handler = (ctx) => {
      ctx.ok(CHAT_JSON);
      setTimeout(() => ctx.socket.end(), 100);
    };
    const r1 = await ask(router);
    assert.equal(r1.headers['x-aoai-router-backend'], 'hostile');
    await pollUntil(() => be.sockets.size === 0, { timeoutMs: 2000 });
    const r2 = await ask(router);
    assert.equal(r2.status, 200);
    assert.equal(r2.headers['x-aoai-router-backend'], 'hostile');
    assert.equal(be.stats.connections, 2);
    assert.equal(be.stats.posts, 2);
    assert.equal((await healthy.stats()).requests, 0);
  });
});

describe('a broken answer counts against the backend', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        threads: 1,
        backends: [{ name: 'hostile', url: be.url, deployments: { 'gpt-4o': 'gpt-4o' } }],
        limits: { max_attempts: 1 },
        circuit: { failures: 2, open_ms: 60000 },
      },
    });
  });
  after(() => router?.stop());

  it('no other backend: a truncated JSON answer is a 502, never a 200; two open the circuit', async () => {
    be.handler = (ctx) => {
      ctx.write(chunkedHead() + chunk('{"id":"x","choi'));
      ctx.socket.end();
    };
    const r1 = await ask(router);
    assert.equal(r1.status, 502, r1.body);
    assert.equal(r1.json().error.code, 'backend_error');
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'hostile' }), 0);
    const r2 = await ask(router, { proto: 'h2c' });
    assert.equal(r2.status, 502, r2.body);
    assert.equal(be.stats.posts, 2);
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'hostile' }), 1);
  });
});

describe('a stream broken after the first byte aborts the client stream', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        threads: 1,
        backends: [
          { name: 'hostile', url: be.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } },
          backendFor(healthy, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
        circuit: { failures: 2, open_ms: 60000 },
      },
    });
  });
  after(() => router?.stop());

  const variants = [
    ['h1', 'closed cleanly before the 0-chunk', (ctx) => ctx.socket.end()],
    ['h2c', 'closed mid-chunk', (ctx) => (ctx.write('80\r\ndata: {"partial'), ctx.socket.end())],
  ];
  for (const [proto, what, cut] of variants) {
    it(`${proto}: SSE ${what} → the client sees an incomplete transfer`, async () => {
      be.handler = (ctx) => {
        ctx.write(chunkedHead('text/event-stream') + chunk(sseEvent('one ')) + chunk(sseEvent('two ')));
        setTimeout(() => cut(ctx), 200);
      };
      const s = curlStream(router.url, CHAT_PATH, chatBody({ stream: true }), { proto });
      const r = await s.done;
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-aoai-router-backend'], 'hostile');
      assert.match(r.body, /one /);
      assert.doesNotMatch(r.body, /\[DONE\]/);
      // curl: 18 (partial file, HTTP/1.1 without the last chunk) or 92 (HTTP/2 stream error) / 56
      assert.ok([18, 56, 92].includes(r.exitCode), `curl exit ${r.exitCode}: the stream ended cleanly\n${r.stderr}`);
      assert.equal((await healthy.stats()).requests, 0, 'no failover after the first byte');
    });
  }

  it('both breaks counted against the backend: its circuit is open', async () => {
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'hostile' }), 1);
  });
});

describe('client cancels keep pooled connections', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        threads: 1,
        backends: [{ name: 'hostile', url: be.url, deployments: { 'gpt-4o': 'gpt-4o' } }],
        circuit: { failures: 2, open_ms: 60000 },
      },
    });
  });
  after(() => router?.stop());

  it('cancelled requests: the answers are drained and the connections reused (few new TCP connections)', async () => {
    be.handler = (ctx) => setTimeout(() => ctx.ok(CHAT_JSON), 250);
    const n = 16;
    for (let i = 0; i < n; i++) {
      const r = await post(router.url, CHAT_PATH, chatBody(), { proto: 'h2c', args: ['--max-time', '0.1'] });
      assert.equal(r.exitCode, 28, 'curl should have timed out (cancel)');
    }
    await sleep(600);
    assert.equal(be.stats.posts, n, 'every request reached the backend once');
    assert.ok(be.stats.connections <= 4, `${be.stats.connections} TCP connections for ${n} cancelled requests`);
    const before = be.stats.connections;
    const r = await ask(router);
    assert.equal(r.status, 200, r.body);
    assert.equal(be.stats.connections, before, 'a drained connection serves the next request');
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'hostile' }), 0);
  });
});

describe('connections per backend are capped', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        threads: 1,
        backends: [{ name: 'hostile', url: be.url, deployments: { 'gpt-4o': 'gpt-4o' } }],
        limits: { max_backend_connections: 2, connect_timeout_ms: 500, upstream_timeout_ms: 5000 },
        circuit: { failures: 2, open_ms: 60000 },
      },
    });
  });
  after(() => router?.stop());

  it('over max_backend_connections a request waits; the wait times out as a local error, not the backend’s', async () => {
    be.handler = (ctx) => setTimeout(() => ctx.ok(CHAT_JSON), 1500);
    const conns0 = be.stats.connections;
    const results = await Promise.all([0, 1, 2, 3, 4].map(() => ask(router)));
    const statuses = results.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 502, 502, 502], JSON.stringify(results.map((r) => r.body)));
    assert.ok(be.stats.connections - conns0 <= 2, `${be.stats.connections - conns0} new connections over a cap of 2`);
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'hostile' }), 0, 'local waits opened the circuit');
    assert.equal(await metric(router, 'aoai_router_failovers_total', { backend: 'hostile', reason: 'local' }), 3);
    const r = await ask(router);
    assert.equal(r.status, 200, 'the backend is still in use');
  });
});

describe('file-descriptor exhaustion is the router’s problem, not the backend’s', () => {
  let router;
  before(async () => {
    router = await startRouter({
      config: {
        threads: 1,
        backends: [backendFor(healthy, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        circuit: { failures: 2, open_ms: 60000 },
      },
    });
  });
  after(() => router?.stop());

  it('EMFILE on connect: 502 with retry-after, the circuit stays closed, /readyz stays 200', async () => {
    const pid = router.proc.pid;
    const fds = readdirSync(`/proc/${pid}/fd`).length;
    const slack = 12;
    const lim = await run('prlimit', ['--pid', String(pid), `--nofile=${fds + slack}:${fds + slack}`]);
    assert.equal(lim.code, 0, lim.stderr);
    // fill the table with client connections, then ask on each of them
    const socks = [];
    for (let i = 0; i < slack + 8; i++) {
      const s = net.connect(router.port, '127.0.0.1');
      s.on('error', () => {});
      s.setEncoding('latin1');
      s.text = '';
      s.on('data', (d) => (s.text += d));
      socks.push(s);
    }
    await pollUntil(() => readdirSync(`/proc/${pid}/fd`).length >= fds + slack, { timeoutMs: 3000 });
    const body = JSON.stringify(chatBody());
    for (const s of socks)
      s.write(`POST ${CHAT_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    await pollUntil(() => socks.filter((s) => /^HTTP\/1.1 \d+/.test(s.text)).length >= 4, { timeoutMs: 4000 * SLOW });
    const answered = socks.filter((s) => /^HTTP\/1.1 \d+/.test(s.text));
    const statuses = answered.map((s) => Number(/^HTTP\/1.1 (\d+)/.exec(s.text)[1]));
    assert.ok(statuses.filter((c) => c === 502).length >= 3, `statuses ${statuses}`);
    const a502 = answered.find((s) => s.text.startsWith('HTTP/1.1 502'));
    assert.match(a502.text, /retry-after: 1/i);
    for (const s of socks) s.destroy();
    await sleep(300);
    assert.equal(await metric(router, 'aoai_router_backend_circuit_open', { backend: 'healthy' }), 0, 'EMFILE opened the circuit');
    assert.equal((await get(router.url, '/readyz')).status, 200);
    assert.match(router.stderr(), /too many open files/i);
    const ok = await ask(router);
    assert.equal(ok.status, 200, ok.body);
  });
});
