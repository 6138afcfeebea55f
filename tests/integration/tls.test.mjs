// A TLS listener: h2 via ALPN and HTTP/1.1, with a self-signed P-256 certificate.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  curlStream,
  parseSse,
  chatBody,
  CHAT_PATH,
  stopAll,
  freePort,
  tempDir,
  run,
} from './lib/harness.mjs';

let east, router;

before(async () => {
  east = await startMock('eastus');
  const dir = tempDir('aor-it-tls-');
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const port = await freePort();
  router = await startRouter({
    config: {
      listen: [{ address: '127.0.0.1', port, tls: { cert_file: cert, key_file: key } }],
      backends: [backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } })],
    },
  });
});

after(async () => {
  await stopAll(router, east);
});

beforeEach(async () => {
  await resetMocks(east);
});

describe('TLS listener', () => {
  it('h2 via ALPN: 200', async () => {
    assert.match(router.url, /^https:/);
    const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 3 }), { proto: 'h2', args: ['-k'] });
    assert.equal(res.exitCode, 0, res.stderr);
    assert.equal(res.httpVersion, '2');
    assert.equal(res.status, 200);
    assert.equal(res.json().choices[0].message.content, 'word0 word1 word2');
    assert.equal(res.headers['x-aoai-router-backend'], 'eastus');
  });

  it('HTTP/1.1 over TLS: 200', async () => {
    const res = await post(router.url, CHAT_PATH, chatBody(), { proto: 'h1', args: ['-k'] });
    assert.equal(res.exitCode, 0, res.stderr);
    assert.equal(res.httpVersion, '1.1');
    assert.equal(res.status, 200);
  });

  it('a stream over h2/TLS', async () => {
    const s = curlStream(router.url, CHAT_PATH, chatBody({ stream: true, max_tokens: 4, stream_options: { include_usage: true } }), {
      proto: 'h2',
      args: ['-k'],
    });
    const r = await s.done;
    assert.equal(r.exitCode, 0, r.stderr);
    const { done, text, usage } = parseSse(s.events);
    assert.ok(done);
    assert.equal(text, 'word0 word1 word2 word3 ');
    assert.equal(usage.completion_tokens, 4);
  });

  it('the certificate is not trusted without -k (it is self-signed)', async () => {
    const res = await post(router.url, CHAT_PATH, chatBody(), { proto: 'h2' });
    assert.equal(res.exitCode, 60);
    assert.equal((await east.stats()).requests, 0);
  });

  it('plain HTTP on the TLS port gets no answer', async () => {
    const res = await post(router.url.replace('https:', 'http:'), CHAT_PATH, chatBody(), { proto: 'h1', timeoutMs: 5000 });
    assert.notEqual(res.status, 200);
    assert.equal((await east.stats()).requests, 0);
  });
});
