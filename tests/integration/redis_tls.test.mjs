// rediss:// (issue 8, "Redis as a real dependency"): the router and the admin CLI speak to a real
// redis-server serving TLS only, certificate chain verified against the system CAs plus
// redis.ca_file and the host name checked; refused certificates, a password over TLS, a
// SIGSTOPped or restarted TLS Redis, and a reload switching redis:// to rediss://.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
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
  redisCli,
} from './lib/harness.mjs';
import { makeCerts, startTlsRedis, tlsRedisCliArgs } from './lib/redis_tls.mjs';

const PASSWORD = 'tls-redis-pw-' + crypto.randomBytes(6).toString('hex');
const ROUTER_ENV = { AOR_IT_REDIS_PW: PASSWORD };
const WITHIN_MS = 2000;
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;

let certs, east, tlsRedis, router;

function routerConfig(url, { caFile, password = true, onFailure = 'closed', threads = 2 } = {}) {
  const redis = { url, on_failure: onFailure };
  if (caFile) redis.ca_file = caFile;
  if (password) redis.password_env = 'AOR_IT_REDIS_PW';
  return {
    threads,
    redis,
    backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
    auth: { mode: 'key' },
  };
}

function call(target, key) {
  return post(target.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': key } });
}

/** the CLI with only --redis (an admin machine: no config, no backend secrets) */
function cli(url, ...args) {
  return run(ROUTER_BIN, ['--redis', url, ...args], { env: { PATH: process.env.PATH } });
}

async function tlsCli(r, ...args) {
  return run('redis-cli', [...tlsRedisCliArgs(r, certs.ca, PASSWORD), ...args]);
}

async function createKey(tenant) {
  const url = `rediss://:${PASSWORD}@localhost:${tlsRedis.port}/0`;
  const r = await cli(url, 'keys', 'create', '--tenant', tenant, '--redis-ca-file', certs.ca);
  assert.equal(r.code, 0, `keys create: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout.trim();
}

/** a router that cannot use its Redis: an unseen key → 503 quota_store_unavailable, /readyz 503, `logged` in stderr */
async function expectRefusedRedis(config, logged, what) {
  const r = await startRouter({ config, env: ROUTER_ENV });
  try {
    assert.ok(await r.waitStderr(logged, 5000 * SLOW), `${what}: stderr does not match ${logged}:\n${r.stderr()}`);
    const res = await call(r, newKey());
    assert.equal(res.status, 503, `${what}: ${res.status} ${res.body}`);
    assert.equal(res.json().error.code, 'quota_store_unavailable', `${what}: ${res.body}`);
    const ready = await get(r.url, '/readyz');
    assert.equal(ready.status, 503, `${what}: /readyz ${ready.status} ${ready.body}`);
    assert.ok(!r.stderr().includes(PASSWORD), `${what}: the password is in the log`);
  } finally {
    await r.stop();
  }
}

before(async () => {
  certs = makeCerts();
  east = await startMock('eastus');
  tlsRedis = await startTlsRedis({ cert: certs.good, ca: certs.ca, password: PASSWORD });
  router = await startRouter({ config: routerConfig(tlsRedis.url('localhost'), { caFile: certs.ca }), env: ROUTER_ENV });
});

after(async () => {
  if (tlsRedis?.proc.exitCode === null) tlsRedis.proc.kill('SIGCONT');
  await stopAll(router, east, tlsRedis);
});

describe('rediss:// with a verified certificate and a password', () => {
  it('keys create through the CLI with --redis rediss:// → 200; revoke → 403 within 2 s', async () => {
    const key = await createKey('tls-t1');
    assert.match(key, /^[\x21-\x7e]{32,256}$/);
    // the key hash is in the TLS Redis (checked with redis-cli over TLS)
    const h = await tlsCli(tlsRedis, 'HGET', `aoai:key:${sha256(key)}`, 'tenant');
    assert.equal(h.stdout.trim(), 'tls-t1', h.stderr);
    const ok = await call(router, key);
    assert.equal(ok.status, 200, `${ok.status} ${ok.body}`);
    const url = `rediss://:${PASSWORD}@localhost:${tlsRedis.port}/0`;
    const rev = await cli(url, 'keys', 'revoke', key, '--redis-ca-file', certs.ca);
    assert.equal(rev.code, 0, rev.stderr);
    const t0 = Date.now();
    const seen = await pollUntil(async () => (await call(router, key)).status === 403, { timeoutMs: WITHIN_MS + 1000 * SLOW, intervalMs: 50 });
    assert.ok(seen, 'the revoked key is still admitted');
    assert.ok(Date.now() - t0 <= WITHIN_MS + 1000 * SLOW);
    const listed = await cli(url, 'keys', 'list', '--redis-ca-file', certs.ca);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /tls-t1/);
  });

  it('the router says it connected over TLS with the certificate verified; /readyz 200; no password in the log', async () => {
    assert.match(router.stderr(), /localhost:\d+: connected over TLS, certificate verified/);
    assert.equal((await get(router.url, '/readyz')).status, 200);
    assert.ok(!router.stderr().includes(PASSWORD));
  });

  it('the CLI refuses the same server without --redis-ca-file (system CAs only); an IP address in the certificate is accepted', async () => {
    const r = await cli(`rediss://:${PASSWORD}@localhost:${tlsRedis.port}/0`, 'keys', 'list');
    assert.equal(r.code, 1, `exit ${r.code}: ${r.stdout} ${r.stderr}`);
    assert.match(r.stderr, /certificate verification failed/i);
    // 127.0.0.1 is in the certificate (IP SAN): accepted
    const byIp = await cli(`rediss://:${PASSWORD}@127.0.0.1:${tlsRedis.port}/0`, 'keys', 'list', '--redis-ca-file', certs.ca);
    assert.equal(byIp.code, 0, byIp.stderr);
    assert.ok(!r.stderr.includes(PASSWORD));
  });

  it('TLS Redis SIGSTOPped: a request needing Redis is not held beyond the deadline (503)', async () => {
    const key = await createKey('tls-stop');
    tlsRedis.proc.kill('SIGSTOP');
    let res, took;
    try {
      const t0 = Date.now();
      res = await call(router, key);
      took = Date.now() - t0;
    } finally {
      tlsRedis.proc.kill('SIGCONT');
    }
    assert.equal(res.status, 503, res.body);
    assert.equal(res.json().error.code, 'quota_store_unavailable');
    assert.ok(took < 2500 * SLOW, `held ${took} ms (command deadline 1000 ms)`);
    const back = await pollUntil(async () => (await call(router, key)).status === 200, { timeoutMs: 15000 * SLOW, intervalMs: 200 });
    assert.ok(back, 'never reconnected after SIGCONT');
  });

  it('TLS Redis restarted on the same port: the router reconnects', async () => {
    const port = tlsRedis.port;
    await tlsRedis.stop();
    const down = await call(router, newKey());
    assert.equal(down.status, 503, down.body);
    tlsRedis = await startTlsRedis({ cert: certs.good, ca: certs.ca, password: PASSWORD, port });
    const key = await createKey('tls-restart');
    const ok = await pollUntil(async () => (await call(router, key)).status === 200, { timeoutMs: 10000 * SLOW, intervalMs: 200 });
    assert.ok(ok, `no reconnect after the restart:\n${router.stderr().slice(-2000)}`);
  });
});

describe('rediss:// refused certificates and credentials (on_failure: closed)', () => {
  let wrongHost, selfSigned;

  before(async () => {
    wrongHost = await startTlsRedis({ cert: certs.wrongHost, ca: certs.ca, password: PASSWORD });
    selfSigned = await startTlsRedis({ cert: certs.selfSigned, ca: certs.ca, password: PASSWORD });
  });

  after(async () => {
    await stopAll(wrongHost, selfSigned);
  });

  it('a certificate for another host name → 503 quota_store_unavailable, /readyz 503, the mismatch logged', async () => {
    await expectRefusedRedis(routerConfig(wrongHost.url('localhost'), { caFile: certs.ca }), /TLS handshake failed: .*(mismatch|hostname)/i, 'wrong host');
  });

  it('a self-signed certificate not under the CA → refused', async () => {
    await expectRefusedRedis(routerConfig(selfSigned.url('localhost'), { caFile: certs.ca }), /TLS handshake failed: .*self[- ]signed/i, 'self-signed');
  });

  it('the test CA without redis.ca_file (system bundle only) → refused', async () => {
    await expectRefusedRedis(routerConfig(tlsRedis.url('localhost')), /TLS handshake failed: .*(local issuer|unable to get|self[- ]signed certificate in certificate chain)/i, 'no ca_file');
  });

  it('a wrong password over TLS → refused (WRONGPASS logged, not the password)', async () => {
    await expectRefusedRedis(routerConfig(tlsRedis.url('localhost'), { caFile: certs.ca, password: false }), /NOAUTH|WRONGPASS|Authentication required/i, 'no password');
  });

  it('an IP address in the URL is checked against the certificate IP addresses', async () => {
    const r = await startRouter({ config: routerConfig(tlsRedis.url('127.0.0.1'), { caFile: certs.ca }), env: ROUTER_ENV });
    try {
      const key = await createKey('tls-ip');
      const ok = await pollUntil(async () => (await call(r, key)).status === 200, { timeoutMs: 5000 * SLOW, intervalMs: 100 });
      assert.ok(ok, r.stderr());
    } finally {
      await r.stop();
    }
    // the other certificate names only redis.other.example: not 127.0.0.1
    await expectRefusedRedis(routerConfig(wrongHost.url('127.0.0.1'), { caFile: certs.ca }), /TLS handshake failed: .*(mismatch|IP address)/i, 'IP not in the certificate');
    const c = await cli(`rediss://:${PASSWORD}@127.0.0.1:${wrongHost.port}/0`, 'keys', 'list', '--redis-ca-file', certs.ca);
    assert.equal(c.code, 1, `the CLI accepted a certificate without the IP address: ${c.stdout}`);
    assert.match(c.stderr, /certificate verification failed: .*(mismatch|IP address)/i);
    const d = await cli(`rediss://:${PASSWORD}@localhost:${wrongHost.port}/0`, 'keys', 'list', '--redis-ca-file', certs.ca);
    assert.equal(d.code, 1, `the CLI accepted a certificate for another host name: ${d.stdout}`);
    assert.match(d.stderr, /certificate verification failed: .*mismatch/i);
  });
});

describe('a reload (SIGHUP) switching redis:// → rediss:// and back', () => {
  let plain, hup;

  before(async () => {
    plain = await startRedis();
    hup = await startRouter({ config: routerConfig(plain.url, { password: false }), env: ROUTER_ENV });
  });

  after(async () => {
    await stopAll(hup, plain);
  });

  it('a key only in the TLS Redis works after the reload; a key only in the plain one no longer does', async () => {
    const plainKey = newKey();
    assert.equal((await redisCli(plain, 'HSET', `aoai:key:${sha256(plainKey)}`, 'tenant', 'plain-t', 'name', 'n')).code, 0);
    assert.equal((await call(hup, plainKey)).status, 200);
    const tlsKey = await createKey('tls-hup');
    assert.equal((await call(hup, tlsKey)).status, 401);
    const from = hup.stderr().length;
    hup.writeConfig(routerConfig(tlsRedis.url('localhost'), { caFile: certs.ca }));
    hup.signal('SIGHUP');
    const ok = await pollUntil(async () => (await call(hup, tlsKey)).status === 200, { timeoutMs: 5000 * SLOW, intervalMs: 100 });
    assert.ok(ok, `the TLS key never worked after the reload:\n${hup.stderr().slice(from)}`);
    assert.match(hup.stderr().slice(from), /connected over TLS, certificate verified/);
    await sleep(1100); // past the 1 s answer cache
    assert.notEqual((await call(hup, plainKey)).status, 200, 'the plain Redis is still used');
    // and back to redis://
    hup.writeConfig(routerConfig(plain.url, { password: false }));
    hup.signal('SIGHUP');
    const back = await pollUntil(async () => (await call(hup, plainKey)).status === 200, { timeoutMs: 5000 * SLOW, intervalMs: 100 });
    assert.ok(back, 'the reload back to redis:// did not apply');
  });
});
