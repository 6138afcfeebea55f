// Client authentication attacked from outside (issue 6 items 17-19, issue 7 items 1, 4-10):
// cold start against a slow or dead IdP, /readyz for the router's own dependencies, resumed TLS
// handshakes with client certificates, hostile tenant names from every source, random keys
// under load (Redis round trips counted), a dropped signing key after SIGHUP, every spelling of
// ?subscription-key, jwt_and_key tenants, many required claims, kid-less tokens.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  get,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  run,
  SLOW,
  ROUTER_BIN,
  accessLogLine,
  redisCli,
  httpRequest,
  tempDir,
  freePort,
} from './lib/harness.mjs';
import { startOidc, mintWith, claimsFor, makeKey } from './lib/oidc.mjs';

const AUD = 'api://aoai-router';
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
let seq = 0;
const rid = (what) => `it-hauth-${what}-${++seq}-${Date.now()}`;
const backends = (mock) => [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })];

/** the checksummed key format of `keys create` (auth/apikey.h), computed here independently */
function checkedKey(body = crypto.randomBytes(32).toString('base64url')) {
  const head = `aor_${body}`;
  const sum = crypto.createHash('sha256').update(head).digest().subarray(0, 6).toString('base64url');
  return head + sum;
}

function call(target, { token, key, headers = {}, id = rid('req'), p = CHAT_PATH, proto = 'h1' } = {}) {
  const h = { 'x-request-id': id, ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  if (key !== undefined) h['api-key'] = key;
  return post(target.url, p, chatBody({ max_tokens: 2 }), { proto, headers: h });
}

/** many requests through one keep-alive agent (curl per request would be too slow for floods) */
function nodePost(target, agent, headers) {
  return httpRequest(`${target.url}${CHAT_PATH}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(chatBody({ max_tokens: 2 })),
    agent,
  });
}

async function redisCalls(redis, cmd) {
  const r = await redisCli(redis, 'INFO', 'commandstats');
  const m = new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(r.stdout);
  return m ? Number(m[1]) : 0;
}

// ---- 7.1 / 7.4: cold start and readiness --------------------------------------------------------

describe('cold start: an IdP that is slow or down (issue 7.1, 7.4)', () => {
  let east, idp;
  before(async () => {
    east = await startMock('eastus');
    idp = await startOidc({ name: 'slow', algs: ['ES256'] });
  });
  after(async () => stopAll(east, idp));

  it('JWKS 2 s late: /readyz 503 until loaded; the first valid token waits and gets 200 (not 401)', async () => {
    idp.setJwksDelay(2000);
    const router = await startRouter({
      config: { backends: backends(east), auth: { mode: 'jwt', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD] }] } },
    });
    try {
      const t0 = Date.now();
      const ready = await get(router.url, '/readyz');
      assert.equal(ready.status, 503, `readyz before the keys: ${ready.body}`);
      assert.match(ready.body, /signing keys/);
      const res = await call(router, { token: await idp.mint({ tid: 'cold' }, { alg: 'ES256' }) });
      assert.equal(res.status, 200, `first request: ${res.status} ${res.body}`);
      assert.ok(Date.now() - t0 < 5000 * SLOW, 'took longer than the wait bound');
      assert.equal((await get(router.url, '/readyz')).status, 200);
    } finally {
      idp.setJwksDelay(0);
      await router.stop();
    }
  });

  it('IdP down: a valid token gets 503 not_ready with retry-after after a bounded wait; /readyz 503', async () => {
    idp.setDown('close');
    const router = await startRouter({
      config: { backends: backends(east), auth: { mode: 'jwt_and_key', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD] }] } },
    });
    try {
      const before = (await east.stats()).requests;
      const t0 = Date.now();
      const res = await call(router, { token: await idp.mint({ tid: 'cold' }, { alg: 'ES256' }), key: checkedKey() });
      const took = Date.now() - t0;
      assert.equal(res.status, 503, `${res.status} ${res.body}`);
      assert.equal(res.json().error.code, 'not_ready');
      assert.ok(Number(res.headers['retry-after']) >= 1, `retry-after ${res.headers['retry-after']}`);
      assert.equal(res.headers['www-authenticate'], undefined, 'a 503 is no challenge to the token');
      assert.ok(took >= 4000 && took < 8000 * SLOW, `the wait took ${took} ms (bound 5 s)`);
      assert.equal((await east.stats()).requests, before);
      const ready = await get(router.url, '/readyz');
      assert.equal(ready.status, 503);
      // no JWT at all, or one of another issuer: refused at once, no wait, no 503
      for (const bad of ['not.a.jwt', await mintWith(idp.key('ES256'), claimsFor('https://other.example', AUD, { tid: 'x' }))]) {
        const t1 = Date.now();
        const r = await call(router, { token: bad, key: checkedKey() });
        assert.equal(r.status, 401, `${r.status} ${r.body}`);
        assert.ok(Date.now() - t1 < 1000 * SLOW, 'a token that cannot be valid waited for keys');
      }
      // the worker kept serving while the request waited (the wait is a timer, not a block)
      assert.equal((await get(router.url, '/healthz')).status, 200);
    } finally {
      idp.setDown(null);
      await router.stop();
    }
  });

  it('a client that leaves while its request waits for keys: nothing leaks, the router serves on', async () => {
    idp.setDown('close');
    const router = await startRouter({
      config: { backends: backends(east), auth: { mode: 'jwt', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD] }] } },
    });
    try {
      const token = await idp.mint({ tid: 'gone' }, { alg: 'ES256' });
      const reqs = [];
      for (let i = 0; i < 20; ++i) {
        const r = http.request(`${router.url}${CHAT_PATH}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } });
        r.on('error', () => {});
        r.end(JSON.stringify(chatBody()));
        reqs.push(r);
      }
      await sleep(300);
      for (const r of reqs) r.destroy();
      await sleep(300);
      assert.equal((await get(router.url, '/healthz')).status, 200);
      // SIGTERM while a request waits: the drain lets it end (503), the exit is clean
      const waiting = call(router, { token });
      await sleep(300);
      const t0 = Date.now();
      await router.stop(); // asserts a clean exit (and no sanitizer report under ASan)
      assert.ok(Date.now() - t0 < 8000 * SLOW);
      const res = await waiting;
      assert.ok([503, 0].includes(res.status), `${res.status} ${res.body}`);
    } finally {
      idp.setDown(null);
      await router.stop();
    }
  });
});

describe('/readyz and Redis with on_failure: closed (issue 7.4)', () => {
  let east;
  before(async () => {
    east = await startMock('eastus');
  });
  after(async () => stopAll(east));

  it('Redis unreachable: 503 with closed, 200 with open; back to 200 when Redis comes', async () => {
    const port = await freePort();
    const closed = await startRouter({ config: { backends: backends(east), redis: { url: `redis://127.0.0.1:${port}/0`, on_failure: 'closed' }, auth: { mode: 'key' } } });
    const open = await startRouter({ config: { backends: backends(east), redis: { url: `redis://127.0.0.1:${port}/0`, on_failure: 'open' }, auth: { mode: 'key' } } });
    let redis;
    try {
      const r = await get(closed.url, '/readyz');
      assert.equal(r.status, 503, r.body);
      assert.match(r.body, /redis/);
      assert.equal((await get(open.url, '/readyz')).status, 200);
      // Redis comes up on that port: ready within the reconnect backoff (2 s max)
      redis = await startRedisOn(port);
      assert.ok(
        await pollUntil(async () => (await get(closed.url, '/readyz')).status === 200 && (await get(closed.url, '/readyz')).status === 200, {
          timeoutMs: 6000 * SLOW,
          intervalMs: 200,
        }),
        'never ready after Redis came',
      );
    } finally {
      await stopAll(closed, open, redis);
    }
  });
});

/** redis-server on a given port (startRedis picks its own) */
async function startRedisOn(port) {
  const { spawn } = await import('node:child_process');
  const dir = tempDir('aor-it-hauth-redis-');
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  await pollUntil(async () => (await run('redis-cli', ['-p', String(port), 'PING'])).stdout.includes('PONG'), { timeoutMs: 5000, intervalMs: 50 });
  return {
    async stop() {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
    },
  };
}

// ---- 7.5 / 6.19 / 7.6: certificates ------------------------------------------------------------

/** minimal DER tree: constructed elements are parsed into children, primitive ones kept as bytes */
function derParse(buf, off = 0, end = buf.length) {
  const out = [];
  while (off < end) {
    const tag = buf[off];
    let len = buf[off + 1];
    let hdr = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let i = 0; i < n; ++i) len = len * 256 + buf[off + 2 + i];
      hdr = 2 + n;
    }
    const body = buf.subarray(off + hdr, off + hdr + len);
    out.push(tag & 0x20 ? { tag, children: derParse(buf, off + hdr, off + hdr + len) } : { tag, value: body });
    off += hdr + len;
  }
  return out;
}
function derEncode(node) {
  const content = node.children ? Buffer.concat(node.children.map(derEncode)) : node.value;
  const len = content.length;
  const lenBytes = len < 128 ? Buffer.from([len]) : len < 256 ? Buffer.from([0x81, len]) : Buffer.from([0x82, len >> 8, len & 255]);
  return Buffer.concat([Buffer.from([node.tag]), lenBytes, content]);
}
function derReplace(node, from, to) {
  if (node.children) return node.children.reduce((n, c) => n + derReplace(c, from, to), 0);
  if (node.value.equals(from)) {
    node.value = to;
    return 1;
  }
  return 0;
}

describe('client certificates (issue 6.19, 7.5, 7.6)', () => {
  let dir, east, router, certs, optPort, reqPort;

  async function openssl(...args) {
    const r = await run('openssl', args);
    assert.equal(r.code, 0, `openssl ${args.join(' ')}:\n${r.stderr}`);
    return r;
  }
  async function makeCert(name, subj, ca, { server = false } = {}) {
    const key = path.join(dir, `${name}.key`);
    const pem = path.join(dir, `${name}.pem`);
    if (server) {
      // a leaf fit for TLS 1.2 too (a CA-only keyUsage has no digitalSignature for ECDHE-ECDSA)
      await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subj, '-days', '2',
        '-addext', 'keyUsage=critical,digitalSignature', '-addext', 'extendedKeyUsage=serverAuth', '-keyout', key, '-out', pem);
    } else if (!ca) {
      await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subj, '-days', '2',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', key, '-out', pem);
    } else {
      const csr = path.join(dir, `${name}.csr`);
      const ext = path.join(dir, `${name}.ext`);
      writeFileSync(ext, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
      await openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subj, '-keyout', key, '-out', csr);
      await openssl('x509', '-req', '-in', csr, '-CA', ca.pem, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', pem);
    }
    return { key, pem, thumbprint: new crypto.X509Certificate(readFileSync(pem)).fingerprint256.replace(/:/g, '').toLowerCase() };
  }
  /** a CA-signed certificate whose CN is the raw bytes `cnBytes` (a NUL, over-long: what openssl's CLI will not make) */
  async function rawCnCert(name, cnBytes, ca) {
    const placeholder = 'placeholder-cn';
    const c = await makeCert(name, `/CN=${placeholder}`, ca);
    const der = Buffer.from(readFileSync(c.pem, 'utf8').replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const [cert] = derParse(der);
    const [tbs, alg] = cert.children;
    assert.equal(derReplace(tbs, Buffer.from(placeholder), cnBytes), 1);
    const tbsDer = derEncode(tbs);
    const sig = crypto.sign('sha256', tbsDer, crypto.createPrivateKey(readFileSync(ca.key)));
    const out = derEncode({ tag: 0x30, children: [tbs, alg, { tag: 0x03, value: Buffer.concat([Buffer.from([0]), sig]) }] });
    const pem = `-----BEGIN CERTIFICATE-----\n${out.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
    writeFileSync(c.pem, pem);
    return { ...c, thumbprint: new crypto.X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase() };
  }

  function mtlsCall(url, cert, id = rid('mtls')) {
    return post(url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'x-request-id': id }, args: ['-k', '--cert', cert.pem, '--key', cert.key] });
  }
  async function tenantOf(cert) {
    const id = rid('mtls');
    const res = await mtlsCall(router.url, cert, id);
    assert.equal(res.status, 200, `${res.status} ${res.body} ${res.stderr}`);
    const line = await accessLogLine(router, id);
    assert.ok(line && !line.unparsable, 'no JSON access-log line');
    return line;
  }

  before(async () => {
    dir = tempDir('aor-it-hauth-mtls-');
    certs = {};
    certs.ca = await makeCert('ca', '/CN=hauth-ca', null);
    certs.server = await makeCert('server', '/CN=localhost', null, { server: true });
    certs.client = await makeCert('client', '/CN=client-app-1', certs.ca);
    certs.nul = await rawCnCert('nul', Buffer.from('client-app-1\0evil', 'latin1'), certs.ca);
    certs.long = await rawCnCert('long', Buffer.from('x'.repeat(124)), certs.ca);
    certs.longOk = await rawCnCert('longok', Buffer.from('y'.repeat(123)), certs.ca);
    certs.hex = await makeCert('hex', '/CN=0123456789abcdef', certs.ca);
    certs.utf8 = await makeCert('utf8', '/CN=caf\u00e9', certs.ca);
    certs.two = await makeCert('two', '/CN=client-app-1/CN=other', certs.ca);
    east = await startMock('eastus');
    optPort = await freePort();
    reqPort = await freePort();
    const tls = (mode) => ({ cert_file: certs.server.pem, key_file: certs.server.key, client_ca_file: certs.ca.pem, client_cert: mode });
    router = await startRouter({
      config: {
        listen: [
          { address: '127.0.0.1', port: optPort, tls: tls('optional') },
          { address: '127.0.0.1', port: reqPort, tls: tls('required') },
        ],
        backends: backends(east),
      },
    });
  });
  after(async () => stopAll(router, east));

  it('a CN with an embedded NUL does not become the tenant it starts with: the thumbprint names it', async () => {
    const line = await tenantOf(certs.nul);
    assert.notEqual(line.tenant, 'cert:client-app-1');
    assert.equal(line.tenant, `cert:${certs.nul.thumbprint.slice(0, 16)}`);
    assert.equal((await tenantOf(certs.client)).tenant, 'cert:client-app-1');
  });

  it('CNs outside the rule (over-long, non-ASCII, two CNs, thumbprint-shaped) fall back to the thumbprint; 123 bytes is taken', async () => {
    for (const c of [certs.long, certs.utf8, certs.two, certs.hex]) {
      const line = await tenantOf(c);
      assert.equal(line.tenant, `cert:${c.thumbprint.slice(0, 16)}`);
    }
    assert.equal((await tenantOf(certs.longOk)).tenant, `cert:${'y'.repeat(123)}`);
  });

  for (const ver of ['-tls1_2', '-tls1_3']) {
    for (const which of ['optional', 'required']) {
      it(`a resumed ${ver.slice(1)} handshake with a client certificate (client_cert: ${which}) is "Reused"`, async () => {
        const port = which === 'optional' ? optPort : reqPort;
        const sess = path.join(dir, `sess-${ver}-${which}`);
        const input = path.join(dir, 'req.txt');
        writeFileSync(input, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        const sclient = (extra) =>
          run('sh', ['-c', `openssl s_client -connect 127.0.0.1:${port} ${ver} -ign_eof -cert ${certs.client.pem} -key ${certs.client.key} ${extra} < ${input} 2>&1`]);
        const first = await sclient(`-sess_out ${sess}`);
        assert.match(first.stdout, /^New, /m, first.stdout.slice(-2000));
        assert.match(first.stdout, /HTTP\/1\.1 200 OK/);
        const second = await sclient(`-sess_in ${sess}`);
        assert.match(second.stdout, /^Reused, /m, `not resumed:\n${second.stdout.slice(-3000)}`);
        assert.match(second.stdout, /HTTP\/1\.1 200 OK/);
      });
    }
  }
});

// ---- 7.6: tenant names from tokens, Redis, the CLI, the config ------------------------------------

describe('one tenant-name rule for every source (issue 7.6)', () => {
  let east, idp, redis, router;
  before(async () => {
    east = await startMock('eastus');
    idp = await startOidc({ name: 'tn', algs: ['ES256'] });
    redis = await startRedis();
    router = await startRouter({
      config: {
        backends: backends(east),
        redis: { url: redis.url },
        auth: { mode: 'jwt_or_key', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD], tenant_claims: ['tid', 'azp'] }] },
      },
    });
    assert.ok(await pollUntil(async () => (await call(router, { token: await idp.mint({ tid: 'warm' }, { alg: 'ES256' }) })).status === 200, { timeoutMs: 10000 * SLOW }));
  });
  after(async () => stopAll(router, redis, idp, east));

  it('a token whose tenant claim is present but no tenant name is 401, never the next claim', async () => {
    const before = (await east.stats()).requests;
    for (const tid of [7, '', null, ['a'], {}, true, 'a{b}', 'a b', 'q"x', 'caf\u00e9', 'a/b', 'x'.repeat(129), 'back\\slash']) {
      const res = await call(router, { token: await idp.mint({ tid, azp: 'fallback-app' }, { alg: 'ES256' }) });
      assert.equal(res.status, 401, `tid ${JSON.stringify(tid)}: ${res.status} ${res.body}`);
      assert.match(res.headers['www-authenticate'] ?? '', /invalid_token/);
    }
    assert.equal((await east.stats()).requests, before, 'a bad tenant claim reached the backend');
    const id = rid('ok');
    assert.equal((await call(router, { token: await idp.mint({ tid: 'Ab0._:@-z', azp: 'x' }, { alg: 'ES256' }), id })).status, 200);
    assert.equal((await accessLogLine(router, id)).tenant, 'Ab0._:@-z');
  });

  it('a Redis key hash whose tenant breaks the rule is refused (401), the log stays JSON', async () => {
    for (const tenant of ['a"b', 'a\\b', 'caf\u00e9', '{t}', 'a b', 'x'.repeat(129), 'a/b']) {
      const key = checkedKey();
      await redisCli(redis, 'HSET', `aoai:key:${sha256(key)}`, 'tenant', tenant);
      const id = rid('badtenant');
      const res = await call(router, { key, id });
      assert.equal(res.status, 401, `tenant ${JSON.stringify(tenant)}: ${res.status} ${res.body}`);
      const line = await accessLogLine(router, id);
      assert.ok(line && !line.unparsable);
    }
  });

  it('the CLI refuses bad tenant names (keys create, quota set)', async () => {
    for (const t of ['a{b', 'a"b', 'caf\u00e9', 'x'.repeat(129), 'a/b']) {
      const r1 = await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'create', '--tenant', t]);
      assert.notEqual(r1.code, 0, `keys create --tenant ${t}`);
      assert.match(r1.stderr, /tenant/);
      const r2 = await run(ROUTER_BIN, ['--redis', redis.url, 'quota', 'set', t, '--tpm', '5']);
      assert.notEqual(r2.code, 0, `quota set ${t}`);
    }
    const ok = await run(ROUTER_BIN, ['--redis', redis.url, 'keys', 'create', '--tenant', 'good-tenant']);
    assert.equal(ok.code, 0, ok.stderr);
  });

  it('the config refuses bad tenant names (tenants:, static keys) with file:line', async () => {
    const dir = tempDir('aor-it-hauth-cfg-');
    const file = path.join(dir, 'b.yaml');
    for (const [section, bad] of [
      [`tenants:\n  "caf\u00e9": { tpm: 1 }\n`, 'caf\u00e9'],
      [`auth:\n  mode: key\n  keys:\n    static: [ { sha256: "${'a'.repeat(64)}", tenant: "a/b" } ]\n`, 'a/b'],
    ]) {
      const text = `listen:\n  - { address: 127.0.0.1, port: 1 }\nbackends:\n  - name: b\n    url: http://127.0.0.1:1\n    deployments: { gpt-4o: gpt-4o }\n${section}`;
      const line = text.split('\n').findIndex((l) => l.includes(bad)) + 1;
      writeFileSync(file, text);
      const r = await run(ROUTER_BIN, ['-c', file, '--check']);
      assert.notEqual(r.code, 0, `--check accepted:\n${section}`);
      assert.match(r.stderr, new RegExp(`b\\.yaml:${line}:.*tenant`), r.stderr);
    }
  });
});

// ---- 7.7: keys with a checksum, random keys under load ---------------------------------------------

describe('random keys cost no Redis round trips; real keys keep working (issue 7.7)', () => {
  let east, redis, router;
  const real = [];
  before(async () => {
    east = await startMock('eastus');
    redis = await startRedis();
    router = await startRouter({ config: { backends: backends(east), redis: { url: redis.url }, auth: { mode: 'key' } } });
    for (let i = 0; i < 2; ++i) {
      const r = await run(ROUTER_BIN, ['-c', router.configPath, 'keys', 'create', '--tenant', `real-${i}`]);
      assert.equal(r.code, 0, r.stderr);
      real.push(r.stdout.trim());
    }
    // a key made before checksums (aor_ + 43): still accepted through Redis
    const legacy = `aor_${crypto.randomBytes(32).toString('base64url')}`;
    await redisCli(redis, 'HSET', `aoai:key:${sha256(legacy)}`, 'tenant', 'legacy');
    real.push(legacy);
  });
  after(async () => stopAll(router, redis, east));

  it('keys create prints the checksummed format; made keys and a legacy key work', async () => {
    for (const k of real.slice(0, 2)) {
      assert.equal(k.length, 55);
      assert.equal(checkedKey(k.slice(4, 47)), k, 'the checksum is not the documented one');
    }
    for (const k of real) assert.equal((await call(router, { key: k })).status, 200);
  });

  it('1,000 requests with random keys of the checksummed format: ~0 Redis lookups, 401 each', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    const before = await redisCalls(redis, 'hgetall');
    let n401 = 0;
    for (let i = 0; i < 1000; i += 50) {
      const res = await Promise.all(Array.from({ length: 50 }, () => nodePost(router, agent, { 'api-key': `aor_${crypto.randomBytes(38).toString('base64url').slice(0, 51)}` })));
      n401 += res.filter((r) => r.status === 401).length;
    }
    agent.destroy();
    const lookups = (await redisCalls(redis, 'hgetall')) - before;
    assert.equal(n401, 1000);
    assert.ok(lookups <= 2, `${lookups} Redis lookups for 1,000 random keys`);
  });

  it('a flood of random legacy-shaped keys (each a lookup) cannot push real keys into 503', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 200 });
    const realAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    let stop = false;
    const flood = (async () => {
      let sent = 0;
      const statuses = {};
      while (!stop) {
        const res = await Promise.all(
          Array.from({ length: 200 }, () => nodePost(router, agent, { 'api-key': `aor_${crypto.randomBytes(32).toString('base64url')}` }).catch(() => ({ status: 0 }))),
        );
        for (const r of res) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        sent += res.length;
      }
      return { sent, statuses };
    })();
    await sleep(200);
    const realStatuses = {};
    for (let i = 0; i < 60; ++i) {
      const k = real[i % 2]; // checksummed keys
      const r = await nodePost(router, realAgent, { 'api-key': k });
      realStatuses[r.status] = (realStatuses[r.status] ?? 0) + 1;
    }
    stop = true;
    const f = await flood;
    agent.destroy();
    realAgent.destroy();
    assert.deepEqual(realStatuses, { 200: 60 }, `real keys during the flood: ${JSON.stringify(realStatuses)}; flood ${JSON.stringify(f)}`);
    assert.ok(f.sent >= 400, `flood too small: ${JSON.stringify(f)}`);
    // the flood itself: 401 or a fair 503 with retry-after, nothing else
    for (const s of Object.keys(f.statuses)) assert.ok(['401', '503'].includes(s), JSON.stringify(f.statuses));
  });
});

// ---- 7.8: SIGHUP refetches every issuer's keys ------------------------------------------------------

describe('a key the IdP dropped (issue 7.8)', () => {
  let east, idp, router;
  before(async () => {
    east = await startMock('eastus');
    idp = await startOidc({ name: 'drop', algs: ['ES256'] });
    await idp.addKey('ES256');
    idp.setHeaders({ 'cache-control': 'max-age=100000' }); // "a day": the router caps it at 1 h
  });
  after(async () => stopAll(router, idp, east));

  it('SIGHUP refetches: a token signed by the dropped key is refused within 2 s (and not from the token cache)', async () => {
    const jwt = [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD], jwks_refetch_cooldown_s: 3600 }];
    router = await startRouter({ config: { backends: backends(east), auth: { mode: 'jwt', jwt } } });
    const [kidA, kidB] = idp.publishedKids();
    const keyB = idp.keys.get(kidB);
    const token = await mintWith(keyB, claimsFor(idp.issuer, AUD, { tid: 'drop' }));
    assert.ok(await pollUntil(async () => (await call(router, { token })).status === 200, { timeoutMs: 10000 * SLOW }));
    assert.equal((await call(router, { token })).status, 200); // now in the verified-token cache
    // a day's max-age is not obeyed: the next periodic refresh is at most an hour away
    assert.ok(await router.waitStderr(/max-age=100000 ignored; next refresh in 3600 s/), router.stderr().slice(-2000));
    idp.dropKey(kidB);
    const t0 = Date.now();
    router.signal('SIGHUP');
    const refused = await pollUntil(async () => (await call(router, { token })).status === 401, { timeoutMs: 2000 * SLOW, intervalMs: 100 });
    assert.ok(refused, 'the dropped key was still trusted 2 s after SIGHUP');
    const took = Date.now() - t0;
    assert.ok(took < 2000 * SLOW, `${took} ms`);
    // the key still published keeps working
    const tokA = await mintWith(idp.keys.get(kidA), claimsFor(idp.issuer, AUD, { tid: 'kept' }));
    assert.equal((await call(router, { token: tokA })).status, 200);
  });
});

// ---- 7.9: every spelling of ?subscription-key ---------------------------------------------------------

describe('?subscription-key in any spelling (issue 7.9)', () => {
  let east, redis, router, key;
  before(async () => {
    east = await startMock('eastus');
    redis = await startRedis();
    router = await startRouter({ config: { backends: backends(east), redis: { url: redis.url }, auth: { mode: 'key' } } });
    const r = await run(ROUTER_BIN, ['-c', router.configPath, 'keys', 'create', '--tenant', 'q']);
    key = r.stdout.trim();
  });
  after(async () => stopAll(router, redis, east));

  it('is honoured as the key and never forwarded, repeated or percent-encoded', async () => {
    const base = '/openai/deployments/gpt-4o/chat/completions';
    for (const q of [
      `Subscription-Key=${key}&api-version=2024-10-21`,
      `api-version=2024-10-21&subscription%2Dkey=${key}`,
      `SUBSCRIPTION%2dKEY=${encodeURIComponent(key).replace(/_/g, '%5F')}&api-version=2024-10-21&Subscription-Key=other&subscription-key=x`,
      `%73ubscription-key=${key}&api-version=2024-10-21&sUbScRiPtIoN-kEy`,
    ]) {
      const res = await post(router.url, `${base}?${q}`, chatBody({ max_tokens: 2 }));
      assert.equal(res.status, 200, `${q}: ${res.status} ${res.body}`);
      const last = (await east.stats()).last_request;
      assert.equal(last.query, 'api-version=2024-10-21', `forwarded query for ${q}`);
      assert.ok(!JSON.stringify(last).includes(key), 'the key went upstream');
    }
  });

  it('a variant spelling with a wrong key is refused, and still not forwarded', async () => {
    const before = (await east.stats()).requests;
    const res = await post(router.url, `${CHAT_PATH}&Subscription-Key=${checkedKey()}`, chatBody());
    assert.equal(res.status, 401);
    assert.equal((await east.stats()).requests, before);
  });
});

// ---- 6.17, 6.18, 7.10 ------------------------------------------------------------------------------------

describe('jwt_and_key tenants, many required claims, kid-less tokens (issue 6.17, 6.18, 7.10)', () => {
  let east, idp, redis, routers = [];
  before(async () => {
    east = await startMock('eastus');
    idp = await startOidc({ name: 'misc', algs: ['ES256'] });
    redis = await startRedis();
  });
  after(async () => stopAll(...routers, redis, idp, east));

  async function router(auth, extra = {}) {
    const r = await startRouter({ config: { backends: backends(east), redis: { url: redis.url }, auth, ...extra } });
    routers.push(r);
    return r;
  }

  it('jwt_and_key: the key names the tenant; same_tenant: true refuses a mismatch with 403', async () => {
    const jwt = [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD] }];
    const plain = await router({ mode: 'jwt_and_key', jwt });
    const same = await router({ mode: 'jwt_and_key', jwt, same_tenant: true });
    const r = await run(ROUTER_BIN, ['-c', plain.configPath, 'keys', 'create', '--tenant', 'key-tenant']);
    const key = r.stdout.trim();
    const other = await idp.mint({ tid: 'token-tenant' }, { alg: 'ES256' });
    const none = await idp.mint({ tid: undefined, azp: undefined, sub: undefined }, { alg: 'ES256' });
    await pollUntil(async () => (await call(plain, { token: other, key })).status === 200, { timeoutMs: 10000 * SLOW });
    let id = rid('and');
    assert.equal((await call(plain, { token: other, key, id })).status, 200);
    assert.equal((await accessLogLine(plain, id)).tenant, 'key-tenant');
    id = rid('and-none');
    assert.equal((await call(plain, { token: none, key, id })).status, 200, 'a token naming no tenant is fine when the key names it');
    await pollUntil(async () => (await call(same, { token: await idp.mint({ tid: 'key-tenant' }, { alg: 'ES256' }), key })).status === 200, { timeoutMs: 10000 * SLOW });
    const res = await call(same, { token: other, key });
    assert.equal(res.status, 403, res.body);
    assert.equal((await call(same, { token: none, key })).status, 403);
    // the token must still be valid
    const expired = await idp.mint({ tid: 'key-tenant', exp: Math.floor(Date.now() / 1000) - 3600, iat: Math.floor(Date.now() / 1000) - 7200 }, { alg: 'ES256' });
    assert.equal((await call(plain, { token: expired, key })).status, 401);
  });

  it('40 required claims are all enforced (the 40th missing: 403)', async () => {
    const required = {};
    for (let i = 0; i < 40; ++i) required[`c${i}`] = [`v${i}`];
    const r = await router({ mode: 'jwt', jwt: [{ issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD], required_claims: required }] });
    const all = {};
    for (let i = 0; i < 40; ++i) all[`c${i}`] = `v${i}`;
    await pollUntil(async () => (await call(r, { token: await idp.mint({ tid: 't', ...all }, { alg: 'ES256' }) })).status === 200, { timeoutMs: 10000 * SLOW });
    assert.equal((await call(r, { token: await idp.mint({ tid: 't', ...all }, { alg: 'ES256' }) })).status, 200);
    for (const missing of ['c32', 'c39']) {
      const claims = { tid: 't', ...all };
      delete claims[missing];
      const res = await call(r, { token: await idp.mint(claims, { alg: 'ES256' }) });
      assert.equal(res.status, 403, `${missing} missing: ${res.status} ${res.body}`);
    }
  });

  it('a token without a kid is verified by the 6th key of the JWKS (every fitting key is tried)', async () => {
    const many = await startOidc({ name: 'many', algs: [] });
    routers.push(many);
    let last;
    for (let i = 0; i < 6; ++i) last = await many.addKey('ES256');
    const r = await router({ mode: 'jwt', jwt: [{ issuer: many.issuer, jwks_uri: many.jwksUri, audiences: [AUD] }] });
    const kidless = await mintWith({ ...last, kid: undefined }, claimsFor(many.issuer, AUD, { tid: 'kidless' }));
    assert.ok(!JSON.parse(Buffer.from(kidless.split('.')[0], 'base64url')).kid, 'the token has a kid');
    const ok = await pollUntil(async () => (await call(r, { token: kidless })).status === 200, { timeoutMs: 10000 * SLOW, intervalMs: 200 });
    assert.ok(ok, `kid-less token refused: ${(await call(r, { token: kidless })).body}`);
  });
});
