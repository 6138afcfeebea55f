// Client certificates (SPEC §3 listen[].tls client_ca_file / client_cert; issue 3 mTLS):
// a CA, client certificates (with a CN, without one, with a CN that is no safe tenant name)
// and an untrusted CA, all generated with `openssl` here. With `auth:` omitted the
// certificate names the tenant (cert:<CN>, else cert:<first 16 hex digits of the SHA-256
// thumbprint>); `client_cert: required` refuses the handshake without a valid certificate.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  freePort,
  tempDir,
  run,
  accessLogLine,
} from './lib/harness.mjs';

let east, router, keyRouter;
let dir, requiredUrl;
const certs = {};
let seq = 0;
const rid = (what) => `it-mtls-${what}-${++seq}-${Date.now()}`;
const STATIC_KEY = `aor_${crypto.randomBytes(32).toString('base64url')}`;

async function openssl(...args) {
  const r = await run('openssl', args);
  assert.equal(r.code, 0, `openssl ${args.join(' ')}:\n${r.stderr}`);
  return r;
}

/** A P-256 key and a certificate for `subj`, signed by `ca` (or self-signed CA when ca is null). */
async function makeCert(name, subj, ca, { clientAuth = true } = {}) {
  const key = path.join(dir, `${name}.key`);
  const pem = path.join(dir, `${name}.pem`);
  if (!ca) {
    await openssl(
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subj, '-days', '2',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-keyout', key, '-out', pem,
    );
  } else {
    const csr = path.join(dir, `${name}.csr`);
    const ext = path.join(dir, `${name}.ext`);
    writeFileSync(ext, `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n${clientAuth ? 'extendedKeyUsage=clientAuth\n' : ''}`);
    await openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subj, '-keyout', key, '-out', csr);
    await openssl('x509', '-req', '-in', csr, '-CA', ca.pem, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', pem);
  }
  const x509 = new crypto.X509Certificate(readFileSync(pem));
  return { key, pem, thumbprint: x509.fingerprint256.replace(/:/g, '').toLowerCase() };
}

function call(url, { cert, proto = 'h1', id = rid('req'), headers = {} } = {}) {
  const args = ['-k'];
  if (cert) args.push('--cert', cert.pem, '--key', cert.key);
  return post(url, CHAT_PATH, chatBody({ max_tokens: 2 }), { proto, headers: { 'x-request-id': id, ...headers }, args });
}

async function expectOk(target, url, opts, what) {
  const id = rid('ok');
  const res = await call(url, { ...opts, id });
  assert.equal(res.exitCode, 0, `${what}: curl: ${res.stderr}`);
  assert.equal(res.status, 200, `${what}: ${res.status} ${res.body}`);
  const line = await accessLogLine(target, id);
  assert.ok(line, `${what}: no access-log line`);
  return line;
}

before(async () => {
  dir = tempDir('aor-it-mtls-');
  certs.ca = await makeCert('ca', '/CN=aoai-it-client-ca', null);
  certs.server = await makeCert('server', '/CN=localhost', null);
  certs.client = await makeCert('client', '/O=Contoso/CN=client-app-1', certs.ca);
  certs.noCn = await makeCert('nocn', '/O=Contoso/OU=no-common-name', certs.ca);
  certs.oddCn = await makeCert('oddcn', '/CN=odd name {with} "quotes"', certs.ca);
  certs.evilCa = await makeCert('evil-ca', '/CN=aoai-it-client-ca', null); // same name, other key
  certs.evil = await makeCert('evil', '/CN=client-app-1', certs.evilCa);

  east = await startMock('eastus');
  const optPort = await freePort();
  const reqPort = await freePort();
  const tls = (mode) => ({ cert_file: certs.server.pem, key_file: certs.server.key, client_ca_file: certs.ca.pem, client_cert: mode });
  router = await startRouter({
    config: {
      listen: [
        { address: '127.0.0.1', port: optPort, tls: tls('optional') },
        { address: '127.0.0.1', port: reqPort, tls: tls('required') },
      ],
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
    },
  });
  requiredUrl = `https://127.0.0.1:${reqPort}`;
});

after(async () => {
  await stopAll(router, keyRouter, east);
});

beforeEach(async () => {
  await resetMocks(east);
});

describe('client_cert: optional, auth omitted', () => {
  it('a client certificate names the tenant cert:<CN>', async () => {
    for (const proto of ['h1', 'h2']) {
      const line = await expectOk(router, router.url, { cert: certs.client, proto }, `with a cert (${proto})`);
      assert.equal(line.tenant, 'cert:client-app-1');
      assert.equal(line.auth, 'mtls');
      assert.equal(line.subject, 'client-app-1');
    }
  });

  it('without a certificate: tenant "default"', async () => {
    const line = await expectOk(router, router.url, {}, 'no cert');
    assert.equal(line.tenant, 'default');
  });

  it('a certificate without CN: cert:<first 16 hex digits of the SHA-256 thumbprint>', async () => {
    const line = await expectOk(router, router.url, { cert: certs.noCn }, 'no CN');
    assert.equal(line.tenant, `cert:${certs.noCn.thumbprint.slice(0, 16)}`);
  });

  it('a CN that is no safe tenant name falls back to the thumbprint; the log line stays JSON', async () => {
    const line = await expectOk(router, router.url, { cert: certs.oddCn }, 'odd CN');
    assert.ok(!line.unparsable, 'access-log line is not JSON');
    assert.equal(line.tenant, `cert:${certs.oddCn.thumbprint.slice(0, 16)}`);
  });

  it('a certificate from another CA (same CA name) gives no identity', async () => {
    const id = rid('evil');
    const res = await call(router.url, { cert: certs.evil, id });
    if (res.exitCode === 0 && res.status !== 0) {
      // the handshake was allowed to go on: the certificate must not name the tenant
      const line = await accessLogLine(router, id);
      assert.ok(line, 'no access-log line');
      assert.notEqual(line.tenant, 'cert:client-app-1', 'an untrusted certificate named the tenant');
    } else {
      assert.notEqual(res.exitCode, 0);
    }
  });
});

describe('client_cert: required', () => {
  it('with a certificate from the CA: 200, tenant cert:<CN> (h1 and h2)', async () => {
    for (const proto of ['h1', 'h2']) {
      const line = await expectOk(router, requiredUrl, { cert: certs.client, proto }, `required (${proto})`);
      assert.equal(line.tenant, 'cert:client-app-1');
    }
  });

  it('without a certificate: the TLS handshake fails', async () => {
    const before = (await east.stats()).requests;
    const res = await call(requiredUrl, {});
    assert.notEqual(res.exitCode, 0, `curl succeeded without a client certificate: ${res.status} ${res.body}`);
    assert.equal(res.status, 0);
    assert.equal((await east.stats()).requests, before);
  });

  it('with a certificate from another CA: the TLS handshake fails', async () => {
    const res = await call(requiredUrl, { cert: certs.evil });
    assert.notEqual(res.exitCode, 0, `curl succeeded with an untrusted certificate: ${res.status} ${res.body}`);
    assert.equal(res.status, 0);
  });

  it('the router still serves after refused handshakes', async () => {
    const line = await expectOk(router, requiredUrl, { cert: certs.client }, 'after');
    assert.equal(line.tenant, 'cert:client-app-1');
  });
});

describe('a subscription key names the tenant over a certificate', () => {
  before(async () => {
    const port = await freePort();
    keyRouter = await startRouter({
      config: {
        listen: [
          { address: '127.0.0.1', port, tls: { cert_file: certs.server.pem, key_file: certs.server.key, client_ca_file: certs.ca.pem, client_cert: 'optional' } },
        ],
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'key', keys: { static: [{ sha256: crypto.createHash('sha256').update(STATIC_KEY).digest('hex'), tenant: 'key-tenant' }] } },
      },
    });
  });

  it('cert + key: the key tenant; cert alone in mode key: 401', async () => {
    const line = await expectOk(keyRouter, keyRouter.url, { cert: certs.client, headers: { 'api-key': STATIC_KEY } }, 'cert + key');
    assert.equal(line.tenant, 'key-tenant');
    assert.equal(line.auth, 'key');
    const res = await call(keyRouter.url, { cert: certs.client });
    assert.equal(res.status, 401, res.body);
    assert.equal(res.json().error.code, 'unauthorized');
  });
});
