// Outside review of keyless Redis (redis.auth): a Redis that answers AUTH with an error other than
// WRONGPASS (LOADING after a restart, max clients) must not make the router throw its valid Entra
// ID token away; a Redis that accepts the handshake and drops the connection at once must not be
// hammered with reconnects; operator typos in redis.auth found by --check.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import crypto from 'node:crypto';
import { startMock, stopAll, sleep, pollUntil, run, tempDir, toYaml, ROUTER_BIN, SLOW, backendFor, h2load, bodyFile, chatBody, CHAT_PATH } from './lib/harness.mjs';
import { keylessKit, OID, CLIENT_ID, STATIC_KEY, chat, sha256, newKey, redisTrouble } from './lib/keyless_redis.mjs';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

let east;
const cleanup = [];
const { admin, keylessRedis, redisIdentity, config, router, routerClients, authStats } = keylessKit({ backend: () => east, cleanup });

before(async () => {
  east = await startMock('eastus');
});

after(async () => {
  await stopAll(...cleanup.reverse(), east);
});

/**
 * A TCP front for a real redis-server: while `front.mode` is 'loading' a new connection gets
 * `-LOADING …` to its first command (the AUTH: nothing else goes before it is answered) as a
 * restarting Redis answers; 'busy' answers `-ERR max number of clients reached`; 'pipe' relays.
 */
async function redisFront(redis) {
  const front = { mode: 'pipe', conns: 0, sockets: new Set() };
  const server = net.createServer((s) => {
    ++front.conns;
    front.sockets.add(s);
    s.on('close', () => front.sockets.delete(s));
    s.on('error', () => {});
    if (front.mode !== 'pipe') {
      const words = front.mode === 'loading' ? '-LOADING Redis is loading the dataset in memory\r\n' : '-ERR max number of clients reached\r\n';
      s.once('data', () => s.end(words));
      return;
    }
    const up = net.connect(redis.port, '127.0.0.1');
    front.sockets.add(up);
    up.on('close', () => (front.sockets.delete(up), s.destroy()));
    up.on('error', () => {});
    s.on('close', () => up.destroy());
    s.pipe(up);
    up.pipe(s);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  front.url = `redis://127.0.0.1:${server.address().port}/0`;
  front.stop = async () => {
    for (const s of front.sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  cleanup.push(front);
  return front;
}

/** a fake Redis that answers the handshake (AUTH +OK, PING +PONG) and then closes the connection */
async function flappingRedis() {
  const fake = { conns: 0, auths: 0, sockets: new Set() };
  const server = net.createServer((s) => {
    ++fake.conns;
    fake.sockets.add(s);
    s.on('close', () => fake.sockets.delete(s));
    s.on('error', () => {});
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      fake.auths += (buf.match(/\$4\r\nAUTH\r\n/gi) ?? []).length;
      if (/\$4\r\nPING\r\n/i.test(buf)) {
        buf = '';
        s.end('+OK\r\n+PONG\r\n');
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.url = `redis://127.0.0.1:${server.address().port}/0`;
  fake.stop = async () => {
    for (const s of fake.sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  cleanup.push(fake);
  return fake;
}

/** a small RESP client (one connection, commands in order) for the mock IMDS: no redis-cli spawn per token */
async function respClient(redis, ...auth) {
  const sock = net.connect(redis.port, '127.0.0.1');
  await new Promise((resolve, reject) => (sock.once('connect', resolve), sock.once('error', reject)));
  const waiting = [];
  let buf = '';
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    let e;
    while ((e = buf.indexOf('\r\n')) >= 0) {
      const line = buf.slice(0, e);
      buf = buf.slice(e + 2);
      waiting.shift()?.(line);
    }
  });
  const cmd = (...args) =>
    new Promise((resolve) => {
      waiting.push(resolve);
      sock.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    });
  const c = { cmd, stop: async () => sock.destroy() };
  if (auth.length) assert.equal(await cmd('AUTH', ...auth), '+OK');
  cleanup.push(c);
  return c;
}

/**
 * A mock IMDS for Redis' resource: each token it hands out (`next()`, random by default) becomes the
 * only password of the ACL user OID first (unless it is one Redis could not take), answered with
 * expires_in `lifetimeS`. `calls`, `issued` for the test.
 */
async function imdsFor(redis, { lifetimeS = 3600, next = () => `tok_${crypto.randomBytes(24).toString('base64url')}`, acl = true } = {}) {
  const resp = await respClient(redis, 'admin', 'adminpw');
  const m = { calls: 0, issued: [], lifetimeS, next, acl };
  const server = http.createServer(async (req, res) => {
    ++m.calls;
    const token = m.next();
    m.issued.push(token);
    if (m.acl) assert.equal(await resp.cmd('ACL', 'SETUSER', OID, 'reset', 'on', `>${token}`, '~*', '&*', '+@all'), '+OK');
    const body = JSON.stringify({ access_token: token, expires_in: String(m.lifetimeS), resource: 'https://redis.azure.com', token_type: 'Bearer' });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  m.url = `http://127.0.0.1:${server.address().port}/metadata/identity/oauth2/token`;
  m.stop = () => new Promise((resolve) => (server.closeAllConnections(), server.close(resolve)));
  cleanup.push(m);
  return m;
}

describe('hostile review: keyless Redis', () => {
  for (const mode of ['loading', 'busy']) {
    it(`AUTH answered ${mode === 'loading' ? '-LOADING (Redis restarting)' : '-ERR max number of clients'}: the valid token is kept (no new token call), not logged as refused; connected when Redis answers`, async () => {
      const redis = await keylessRedis();
      const id = await redisIdentity(redis);
      const front = await redisFront(redis);
      const cfg = config(redis, id, { onFailure: 'closed' });
      cfg.redis.url = front.url;
      const r = await router(cfg);
      assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }));
      assert.equal(id.imds.calls, 1);
      // Redis restarts: the identity endpoint is unreachable meanwhile (both behind the same outage)
      id.imds.down = true;
      front.mode = mode;
      const conns = front.conns;
      for (const s of front.sockets) s.destroy();
      // each worker reconnects and is answered the error (then backs off: 100, 200, 400 ms ...)
      assert.ok(await pollUntil(() => front.conns - conns >= 2, { timeoutMs: 5000 * SLOW, intervalMs: 20 }), 'no reconnect attempts');
      await sleep(1000);
      front.mode = 'pipe';
      // the token is still valid (an hour): Redis, back, accepts it without any token call
      assert.ok(
        await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 6000 * SLOW, intervalMs: 100 }),
        'Redis stayed unavailable: the valid token was dropped',
      );
      assert.equal(id.imds.calls, 1, 'a token call for an error that was not about the token');
      assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 4000 * SLOW }), 'both workers connected');
      assert.equal((await authStats(redis)).failed, 0);
      assert.doesNotMatch(r.stderr(), /refused the Entra ID token|refused the token/);
      assert.match(r.stderr(), mode === 'loading' ? /LOADING Redis is loading/ : /max number of clients/);
    });
  }

  it('a token living 3 s (re-AUTH every 1.5 s) under 16 concurrent HTTP/2 streams, 30000 requests: every request served, usage in Redis counts each exactly once, no reconnect', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 3 });
    const key = newKey();
    const tenant = 'rot-t';
    assert.equal((await admin(redis, 'HSET', `aoai:key:${sha256(key)}`, 'tenant', tenant, 'name', 'app')).stdout.trim(), '2');
    const r = await router(config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, key)).status === 200, { timeoutMs: 10000 * SLOW }), 'never served');
    const clientsBefore = await routerClients(redis);
    const callsBefore = imds.calls;
    const load = await h2load(['-n', '30000', '-c', '4', '-m', '4', '-d', bodyFile(chatBody({ max_tokens: 2 })), '-H', 'content-type: application/json', '-H', `api-key: ${key}`, `${r.url}${CHAT_PATH}`]);
    const ok = load.status['2xx'] ?? 0;
    assert.ok(imds.calls - callsBefore >= 1, `tokens issued during the run: ${imds.calls - callsBefore}`);
        assert.equal(ok, 30000, `not every request served while the token rotated:\n${load.output}\n${redisTrouble(r).join('\n')}`);
    // usage: one request each, over the minute hashes the run touched (+1 for the first request)
    let counted = 0;
    await pollUntil(async () => {
      const keys = (await admin(redis, '--scan', '--pattern', `aoai:usage:{${tenant}}:minute:*`)).stdout.trim().split('\n').filter(Boolean);
      counted = 0;
      for (const k of keys) counted += Number((await admin(redis, 'HGET', k, 'requests')).stdout.trim());
      return counted === ok + 1;
    }, { timeoutMs: 3000 * SLOW });
    assert.equal(counted, ok + 1, 'requests counted in Redis');
    assert.deepEqual(await routerClients(redis), clientsBefore, 'the same connections: re-AUTH, no reconnect');
    assert.equal((await authStats(redis)).failed, 0, 'no AUTH refused');
    assert.deepEqual(redisTrouble(r), []);
  });

  it('Redis accepts the handshake (AUTH +OK, PONG) and drops at once, again and again: reconnects back off, not a tight loop', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    const fake = await flappingRedis();
    const cfg = config(redis, id, { onFailure: 'open' });
    cfg.redis.url = fake.url;
    const r = await router(cfg);
    assert.ok(await pollUntil(() => fake.auths >= 2, { timeoutMs: 5000 * SLOW, intervalMs: 20 }));
    const c0 = fake.conns;
    await sleep(2000);
    const n = fake.conns - c0;
    // 2 workers, backoff 100 ms doubling to 2 s: a handful each in 2 s (a tight loop makes hundreds)
    assert.ok(n <= 24, `connections in 2 s: ${n}`);
    assert.equal(id.imds.calls, 1, 'one token call');
    const res = await chat(r, STATIC_KEY); // open: admitted locally
    assert.equal(res.status, 200, res.body);
  });
});
