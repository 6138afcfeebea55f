// Upstream TLS: the router verifies the backend's certificate chain AND its name, on TLS 1.2
// and TLS 1.3 alike (h2o 2.2.5's own post-handshake name check is skipped on TLS 1.3, see
// bench/clientcmp/results/tls.txt: the router has OpenSSL check the name during verification).
// A test CA (given to the router as SSL_CERT_FILE) signs a certificate for "localhost" and one
// for "evil.test"; https backends are small node servers answering like the mock.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { startMock, startRouter, backendFor, post, chatBody, stopAll, tempDir, run, pollUntil, SLOW } from './lib/harness.mjs';

let dir, mock, router;
const servers = [];
const hits = {};

async function ossl(...args) {
  const r = await run('openssl', args);
  assert.equal(r.code, 0, r.stderr);
}

async function leaf(name, san) {
  const key = path.join(dir, `${name}.key`), csr = path.join(dir, `${name}.csr`), crt = path.join(dir, `${name}.pem`);
  const ext = path.join(dir, `${name}.ext`);
  writeFileSync(ext, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  await ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-keyout', key, '-out', csr);
  await ossl('x509', '-req', '-in', csr, '-CA', path.join(dir, 'ca.pem'), '-CAkey', path.join(dir, 'ca.key'), '-CAcreateserial',
    '-days', '1', '-extfile', ext, '-out', crt);
  return { key: readFileSync(key), cert: readFileSync(crt) };
}

/* an https "backend" on 127.0.0.1 and ::1 answering every POST with a chat completion */
async function backend(label, creds, version) {
  const srv = https.createServer({ ...creds, minVersion: version, maxVersion: version }, (req, res) => {
    req.resume();
    req.on('end', () => {
      hits[label] = (hits[label] ?? 0) + 1;
      const body = JSON.stringify({
        id: 'chatcmpl-tls', object: 'chat.completion', model: 'gpt-4o',
        choices: [{ index: 0, message: { role: 'assistant', content: label }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  await new Promise((resolve) => srv.listen(0, '::', resolve)); // dual stack: "localhost" may resolve to either
  servers.push(srv);
  return srv.address().port;
}

before(async () => {
  dir = tempDir('aor-it-uptls-');
  await ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=aor test CA',
    '-days', '1', '-keyout', path.join(dir, 'ca.key'), '-out', path.join(dir, 'ca.pem'));
  const good = await leaf('localhost', 'DNS:localhost');
  const evil = await leaf('evil.test', 'DNS:evil.test');
  const backends = [];
  for (const v of ['TLSv1.2', 'TLSv1.3']) {
    const tag = v === 'TLSv1.2' ? '12' : '13';
    const goodPort = await backend(`good${tag}`, good, v);
    const evilPort = await backend(`evil${tag}`, evil, v);
    backends.push(
      { name: `good${tag}`, url: `https://localhost:${goodPort}`, priority: 1, deployments: { [`good${tag}`]: 'gpt-4o' } },
      // the certificate names localhost, the URL an IP address
      { name: `ip${tag}`, url: `https://127.0.0.1:${goodPort}`, priority: 1, deployments: { [`ip${tag}`]: 'gpt-4o' } },
      // a certificate from the trusted CA, but for another name
      { name: `evil${tag}`, url: `https://localhost:${evilPort}`, priority: 1, deployments: { [`evil${tag}`]: 'gpt-4o' } },
    );
  }
  mock = await startMock('fallback');
  const fallback = backendFor(mock, { priority: 2 });
  fallback.deployments = Object.fromEntries(backends.map((b) => [Object.keys(b.deployments)[0], 'gpt-4o']));
  router = await startRouter({
    config: { limits: { max_attempts: 2 }, backends: [...backends, fallback] },
    env: { SSL_CERT_FILE: path.join(dir, 'ca.pem'), SSL_CERT_DIR: dir },
  });
});

after(async () => {
  for (const s of servers) s.close();
  await stopAll(router, mock);
});

const ask = (deployment) => post(router.url, `/openai/deployments/${deployment}/chat/completions?api-version=2024-10-21`, chatBody());

describe('upstream TLS verification (chain and name)', () => {
  for (const tag of ['12', '13']) {
    it(`TLS 1.${tag[1]}: a certificate for the URL's host from a trusted CA is accepted`, async () => {
      const res = await ask(`good${tag}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-aoai-router-backend'], `good${tag}`);
      assert.equal(res.json().choices[0].message.content, `good${tag}`);
    });

    it(`TLS 1.${tag[1]}: a certificate for another DNS name is refused (the request fails over)`, async () => {
      const before = hits[`evil${tag}`] ?? 0;
      const res = await ask(`evil${tag}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-aoai-router-backend'], 'fallback');
      assert.equal(hits[`evil${tag}`] ?? 0, before, 'the request reached a backend whose name did not match');
      assert.ok(await pollUntil(() => new RegExp(`evil${tag}.*name mismatch`).test(router.stderr()), { timeoutMs: 5000 * SLOW }));
    });

    it(`TLS 1.${tag[1]}: a URL naming an IP address the certificate does not carry is refused`, async () => {
      const res = await ask(`ip${tag}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.headers['x-aoai-router-backend'], 'fallback');
      assert.ok(await pollUntil(() => new RegExp(`ip${tag}.*(IP address|name) mismatch`).test(router.stderr()), { timeoutMs: 5000 * SLOW }));
    });
  }
});
