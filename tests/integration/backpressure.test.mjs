// Streaming backpressure and upstream TLS verification.
// - A client that stops reading must pause the upstream transfer: the router's memory
//   stays flat and the backend cannot finish, instead of the router buffering the
//   whole stream; when the client reads again the stream completes.
// - An https backend whose certificate the system CA bundle does not trust is refused
//   (a connect failure that fails over), never silently accepted.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  chatBody,
  CHAT_PATH,
  stopAll,
  pollUntil,
  sleep,
  SLOW,
  tempDir,
  freePort,
  run,
  post,
} from './lib/harness.mjs';

function rssKb(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

describe('backpressure', () => {
  let east, router;
  before(async () => {
    east = await startMock('eastus');
    router = await startRouter({ config: { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })] } });
  });
  after(async () => {
    await stopAll(router, east);
  });

  it('a client that stops reading pauses the upstream; reading again completes the stream', async () => {
    await resetMocks(east);
    // ~60 MB of SSE produced as fast as the mock can write it
    const chunks = 300000;
    await east.setBehaviour({ chunks });
    const body = JSON.stringify(chatBody({ stream: true }));
    const sock = net.connect(router.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const rssBefore = rssKb(router.proc.pid);
    let received = 0;
    let tail = '';
    let paused = false;
    const onData = (d) => {
      received += d.length;
      tail = (tail + d.toString('latin1')).slice(-64);
      if (!paused) {
        paused = true;
        sock.pause(); // stop reading after the first bytes: the kernel buffers fill, then the router must stop pulling
      }
    };
    sock.on('data', onData);
    sock.write(
      `POST ${CHAT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    try {
    await pollUntil(() => received > 0, { timeoutMs: 5000 * SLOW });
    await sleep(2500 * SLOW);
    const st = await east.stats();
    const rssPaused = rssKb(router.proc.pid);
    assert.equal(st.completed, 0, 'the backend must not be able to finish while the client does not read');
    assert.equal(st.active, 1);
    assert.ok(
      rssPaused - rssBefore < 24 * 1024,
      `router RSS grew by ${rssPaused - rssBefore} kB while the client was paused (stream is ~60 MB)`,
    );
    const receivedWhilePaused = received;
    assert.ok(receivedWhilePaused < 1024 * 1024, `client got ${receivedWhilePaused} bytes while paused`);
    sock.resume();
    await pollUntil(() => tail.includes('data: [DONE]'), { timeoutMs: 60000 * SLOW, intervalMs: 200 });
    assert.ok(received > 40 * 1024 * 1024, `the whole stream arrived (${received} bytes)`);
    } finally {
      sock.destroy();
    }
    await pollUntil(async () => (await east.stats()).completed === 1, { timeoutMs: 5000 * SLOW });
  });
});

describe('upstream TLS verification', () => {
  let east, router, server, dir;
  before(async () => {
    dir = tempDir('aor-it-tls-up-');
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1',
      '-days', '1', '-keyout', key, '-out', cert,
    ]);
    const tlsPort = await freePort();
    // a TLS server with a self-signed certificate standing in for an untrusted "Azure" endpoint
    server = spawn('openssl', ['s_server', '-quiet', '-accept', String(tlsPort), '-cert', cert, '-key', key, '-www'], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    await pollUntil(
      () =>
        new Promise((resolve) => {
          const s = net.connect(tlsPort, '127.0.0.1');
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        }),
      { timeoutMs: 5000 * SLOW },
    );
    east = await startMock('eastus');
    router = await startRouter({
      config: {
        backends: [
          { name: 'untrusted', url: `https://127.0.0.1:${tlsPort}`, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } },
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
  });
  after(async () => {
    server?.kill('SIGTERM');
    await stopAll(router, east);
  });

  it('a self-signed https backend is refused and the request fails over', async () => {
    const res = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
    await pollUntil(() => /untrusted.*(SSL|certificate)/i.test(router.stderr()), { timeoutMs: 5000 * SLOW });
  });
});
