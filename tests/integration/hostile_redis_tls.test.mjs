// Hostile TLS "Redis" servers against the router's rediss:// transport (issue 8): a server that
// answers garbage, one that sends a bulk reply without end, one that announces a 2-billion
// element array, one that closes in the middle of the TLS handshake, one that never finishes
// it. Each is a certificate-valid server (the test CA, localhost), so the bytes reach the RESP
// reader. Bound: the connection is dropped (protocol error, reply bound of 1 MiB, connect
// deadline), requests needing Redis answer 503 quota_store_unavailable within the command
// deadline, memory stays bounded, the router keeps serving and exits cleanly.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { startMock, startRouter, backendFor, post, get, chatBody, CHAT_PATH, stopAll, freePort, run, ROUTER_BIN, SLOW } from './lib/harness.mjs';
import { makeCerts } from './lib/redis_tls.mjs';

const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
let certs, east;

/** a TLS server on a free port; `onData(socket, stats)` decides what it answers; stats.sent counts plaintext bytes written */
async function hostileTls(onData, { raw = false, first = false } = {}) {
  const port = await freePort();
  const stats = { sent: 0, connections: 0, closed: 0 };
  const sockets = new Set();
  const handler = (s) => {
    stats.connections++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => {
      stats.closed++;
      sockets.delete(s);
    });
    if (first) onData(s, stats);
    else s.once('data', (d) => onData(s, stats, d));
  };
  const server = raw
    ? net.createServer(handler)
    : tls.createServer({ cert: readFileSync(certs.good.cert), key: readFileSync(certs.good.key) }, handler);
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    stats,
    url: `rediss://localhost:${port}/0`,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** a router on `server`; a request needing Redis → 503 within the deadline, the log matches `logged`, /healthz 200 */
async function expectBounded(server, logged, what) {
  const router = await startRouter({
    config: {
      threads: 1,
      redis: { url: server.url, ca_file: certs.ca, on_failure: 'closed' },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      auth: { mode: 'key' },
    },
  });
  try {
    assert.ok(await router.waitStderr(logged, 8000 * SLOW), `${what}: stderr does not match ${logged}:\n${router.stderr()}`);
    for (let i = 0; i < 3; ++i) {
      const t0 = Date.now();
      const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': newKey() } });
      const took = Date.now() - t0;
      assert.equal(res.status, 503, `${what}: ${res.status} ${res.body}`);
      assert.equal(res.json().error.code, 'quota_store_unavailable', what);
      assert.ok(took < 2500 * SLOW, `${what}: held ${took} ms`);
    }
    assert.equal((await get(router.url, '/healthz')).status, 200, `${what}: /healthz`);
    assert.equal((await get(router.url, '/readyz')).status, 503, `${what}: /readyz`);
    return { router, rss: rssKiB(router.proc.pid) };
  } finally {
    await router.stop(); // exits 0, no sanitizer report
  }
}

before(async () => {
  certs = makeCerts();
  east = await startMock('eastus');
});

after(async () => {
  await stopAll(east);
});

describe('hostile TLS Redis servers', () => {
  it('garbage instead of RESP → protocol error, connection dropped, 503', async () => {
    const s = await hostileTls((sock) => sock.write('HTTP/1.1 200 OK\r\n\x00\xff\xfe garbage\r\n'));
    try {
      await expectBounded(s, /protocol error/, 'garbage');
      assert.ok(s.stats.closed >= 1, 'the router never closed the garbage connection');
    } finally {
      await s.stop();
    }
  });

  it('a bulk reply without end ($1 GiB announced, streamed) → dropped at 1 MiB, memory bounded', async () => {
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const s = await hostileTls((sock, stats) => {
      sock.write('$1073741824\r\n');
      const pump = () => {
        while (!sock.destroyed && stats.sent < 1024 * 1024 * 1024) {
          stats.sent += chunk.length;
          if (!sock.write(chunk)) return sock.once('drain', pump);
        }
      };
      pump();
    });
    try {
      const { rss } = await expectBounded(s, /reply over 1048576 bytes/, 'huge bulk');
      // without the bound the reader would hold the whole GiB; ASan's quarantine and shadow memory add their share
      assert.ok(rss < 200 * 1024 * SLOW, `router RSS ${rss} KiB after the huge reply`);
      // each connection got at most the bound (plus what was in flight in socket buffers) before the router hung up
      assert.ok(s.stats.sent / Math.max(1, s.stats.connections) < 64 * 1024 * 1024, `sent ${s.stats.sent} bytes over ${s.stats.connections} connections`);
    } finally {
      await s.stop();
    }
  });

  it('an array of 2 billion elements announced → refused before allocating', async () => {
    const s = await hostileTls((sock) => sock.write('*2000000000\r\n:1\r\n'));
    try {
      const { rss } = await expectBounded(s, /protocol error: array reply over 1048576 elements/, 'huge array');
      assert.ok(rss < 200 * 1024 * SLOW, `router RSS ${rss} KiB`);
    } finally {
      await s.stop();
    }
  });

  it('a server speaking first, right after the TLS handshake → a reply to no command: protocol error', async () => {
    const s = await hostileTls((sock) => sock.write('+OK\r\n+OK\r\n'), { first: true });
    try {
      await expectBounded(s, /protocol error/, 'speaks first');
    } finally {
      await s.stop();
    }
  });

  it('a reply nested deeper than hiredis allows → protocol error', async () => {
    const s = await hostileTls((sock) => sock.write('*1\r\n'.repeat(20) + ':1\r\n'));
    try {
      await expectBounded(s, /protocol error/, 'deep nesting');
    } finally {
      await s.stop();
    }
  });

  it('the server closes in the middle of the TLS handshake → handshake failure, 503', async () => {
    const s = await hostileTls((sock) => sock.destroy(), { raw: true }); // reads the ClientHello, hangs up
    try {
      await expectBounded(s, /TLS handshake failed/, 'closed mid-handshake');
    } finally {
      await s.stop();
    }
  });

  it('the server never answers the ClientHello → the connect deadline ends the attempt', async () => {
    const s = await hostileTls(() => {}, { raw: true });
    try {
      await expectBounded(s, /not connected within 1000 ms \(TCP or TLS handshake\)/, 'silent handshake');
    } finally {
      await s.stop();
    }
  });

  it('plaintext garbage instead of a TLS handshake → handshake failure, 503', async () => {
    const s = await hostileTls((sock) => sock.write('-ERR this is not TLS\r\n'.repeat(100)), { raw: true });
    try {
      await expectBounded(s, /TLS handshake failed/, 'plaintext server');
    } finally {
      await s.stop();
    }
  });

  it('the admin CLI over rediss:// against garbage, a 2-billion array, a silent handshake: exit 1, quickly, no crash', async () => {
    const cases = [
      [(sock) => sock.write('*2000000000\r\n'), {}, /redis localhost:\d+: /],
      [(sock) => sock.write('\x00\xff garbage\r\n'), {}, /redis localhost:\d+: /],
      [() => {}, { raw: true }, /redis localhost:\d+: /],
    ];
    for (const [onData, opts, re] of cases) {
      const s = await hostileTls(onData, opts);
      try {
        const t0 = Date.now();
        const r = await run(ROUTER_BIN, ['--redis', s.url, 'keys', 'list', '--redis-ca-file', certs.ca], { timeoutMs: 30000 * SLOW });
        assert.equal(r.code, 1, `exit ${r.code ?? r.signal}: ${r.stdout} ${r.stderr}`);
        assert.match(r.stderr, re);
        assert.ok(Date.now() - t0 < 12000 * SLOW, `the CLI took ${Date.now() - t0} ms`);
      } finally {
        await s.stop();
      }
    }
  });
});
