// Outside review of keyless Redis (redis.auth): a Redis that answers AUTH with an error other than
// WRONGPASS (LOADING after a restart, max clients) must not make the router throw its valid Entra
// ID token away; a Redis that accepts the handshake and drops the connection at once must not be
// hammered with reconnects; operator typos in redis.auth found by --check.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import crypto from 'node:crypto';
import { startMock, stopAll, sleep, pollUntil, run, tempDir, toYaml, ROUTER_BIN, SLOW, h2load, bodyFile, chatBody, CHAT_PATH, fetchMetrics, get } from './lib/harness.mjs';
import { startTokenBackend, startIdentity } from './lib/identity_mocks.mjs';
import { keylessKit, OID, CLIENT_ID, STATIC_KEY, chat, sha256, newKey, redisTrouble } from './lib/keyless_redis.mjs';
import tls from 'node:tls';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { makeCerts } from './lib/redis_tls.mjs';

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

/** TLS in front of a plain redis-server (what Azure's port 6380 is), with a certificate of the test CA */
async function tlsFront(redis, certs) {
  const front = { sockets: new Set() };
  const server = tls.createServer({ cert: readFileSync(certs.good.cert), key: readFileSync(certs.good.key) }, (s) => {
    const up = net.connect(redis.port, '127.0.0.1');
    for (const x of [s, up]) {
      front.sockets.add(x);
      x.on('close', () => (front.sockets.delete(x), s.destroy(), up.destroy()));
      x.on('error', () => {});
    }
    s.pipe(up);
    up.pipe(s);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  front.url = `rediss://localhost:${server.address().port}/0`;
  front.stop = async () => {
    for (const x of front.sockets) x.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  cleanup.push(front);
  return front;
}

/**
 * A TCP front for a real redis-server that stalls Redis' answers for `stallMs` once a live
 * connection sends its second AUTH (the re-AUTH of a new token): a Redis slow to answer AUTH.
 */
async function stallOnReauthFront(redis, stallMs) {
  const front = { sockets: new Set(), stalls: 0 };
  const server = net.createServer((s) => {
    const up = net.connect(redis.port, '127.0.0.1');
    let auths = 0;
    for (const x of [s, up]) {
      front.sockets.add(x);
      x.on('close', () => (front.sockets.delete(x), s.destroy(), up.destroy()));
      x.on('error', () => {});
    }
    s.on('data', (d) => {
      auths += (d.toString('latin1').match(/\$4\r\nAUTH\r\n/gi) ?? []).length;
      if (auths === 2 && !s.stalled) {
        s.stalled = true;
        ++front.stalls;
        up.unpipe(s);
        setTimeout(() => !s.destroyed && up.pipe(s), stallMs);
      }
      up.write(d);
    });
    up.pipe(s);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  front.url = `redis://127.0.0.1:${server.address().port}/0`;
  front.stop = async () => {
    for (const x of front.sockets) x.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  cleanup.push(front);
  return front;
}

/** a fake Redis that reads everything and answers nothing to AUTH (a server that hangs on it) */
async function silentRedis() {
  const fake = { conns: 0, sockets: new Set() };
  const server = net.createServer((s) => {
    ++fake.conns;
    fake.sockets.add(s);
    s.on('close', () => fake.sockets.delete(s));
    s.on('error', () => {});
    s.on('data', () => {});
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
async function imdsFor(redis, { lifetimeS = 3600, next = () => `tok_${crypto.randomBytes(24).toString('base64url')}`, acl = true, keepOld = false } = {}) {
  const resp = await respClient(redis, 'admin', 'adminpw');
  const m = { calls: 0, issued: [], other: [], lifetimeS, next, acl, delayMs: 0 };
  const server = http.createServer(async (req, res) => {
    const resource = new URL(req.url, 'http://x').searchParams.get('resource');
    if (resource !== 'https://redis.azure.com') {
      // another resource (a backend's): a token of its own, never Redis' ACL password
      const t = `other_${crypto.randomBytes(24).toString('base64url')}`;
      m.other.push(t);
      const body = JSON.stringify({ access_token: t, expires_in: '3600', resource, token_type: 'Bearer' });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    ++m.calls;
    if (m.delayMs) await sleep(m.delayMs);
    const token = m.next();
    m.issued.push(token);
    if (m.acl) assert.equal(await resp.cmd('ACL', 'SETUSER', OID, ...(keepOld ? [] : ['reset']), 'on', `>${token}`, '~*', '&*', '+@all'), '+OK');
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

  it('rediss:// with redis.auth: AUTH goes inside TLS (CA verified), tokens rotate by re-AUTH over the same TLS connections', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 3 });
    const certs = makeCerts();
    const front = await tlsFront(redis, certs);
    const cfg = config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' });
    cfg.redis.url = front.url;
    cfg.redis.ca_file = certs.ca;
    const r = await router(cfg);
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), `never served\n${r.stderr()}`);
    assert.match(r.stderr(), /connected over TLS, certificate verified, Entra ID token accepted/);
    const clients = await routerClients(redis);
    assert.equal(clients.length, 2);
    const calls = imds.calls;
    const until = Date.now() + 3500;
    while (Date.now() < until) {
      const res = await chat(r, STATIC_KEY);
      assert.equal(res.status, 200, res.body);
      await sleep(100);
    }
    assert.ok(imds.calls - calls >= 2, `tokens during the run: ${imds.calls - calls}`);
    assert.deepEqual(await routerClients(redis), clients, 're-AUTH on the same TLS connections');
    assert.equal((await authStats(redis)).failed, 0);
    assert.deepEqual(redisTrouble(r), []);
  });

  it('SIGHUP under load: redis.auth → password (ACL user admin) → redis.auth, on_failure open: every request served, each config its own AUTH user, the cached token reused', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis);
    const cfgAuth = config(redis, { imdsUrl: imds.url }, { onFailure: 'open' });
    const cfgPw = { ...cfgAuth, redis: { url: redis.url.replace('redis://', 'redis://admin@'), on_failure: 'open', password_env: 'AOR_REVIEW_REDIS_PW' } };
    const r = await router(cfgAuth, { AOR_REVIEW_REDIS_PW: 'adminpw' });
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 10000 * SLOW }));
    const users = async () => {
      const list = (await admin(redis, 'CLIENT', 'LIST')).stdout.split('\n').filter((l) => / cmd=(?!client)/.test(l) && !/ cmd=(acl|auth)/.test(l));
      return list.map((l) => / user=(\S+)/.exec(l)[1]);
    };
    const loadP = h2load(['-n', '40000', '-c', '2', '-m', '8', '-d', bodyFile(chatBody({ max_tokens: 2 })), '-H', 'content-type: application/json', '-H', `api-key: ${STATIC_KEY}`, `${r.url}${CHAT_PATH}`]);
    for (const [cfg, user] of [[cfgPw, 'admin'], [cfgAuth, OID], [cfgPw, 'admin'], [cfgAuth, OID]]) {
      const from = r.stderr().length;
      r.writeConfig(cfg);
      r.signal('SIGHUP');
      assert.ok(await r.waitStderr(/settings changed by a reload/, 5000 * SLOW, from), 'no reload');
      assert.ok(
        await pollUntil(async () => {
          const u = (await users()).filter((x) => x === user);
          return u.length >= 2;
        }, { timeoutMs: 5000 * SLOW, intervalMs: 50 }),
        `no connection as ${user}: ${await users()}`,
      );
      await sleep(200);
    }
    const load = await loadP;
    assert.equal(load.status['2xx'], 40000, load.output);
    assert.equal(imds.calls, 1, 'the Redis token is fetched once: a reload back to redis.auth reuses it');
    assert.equal((await authStats(redis)).failed, 0, 'no AUTH refused');
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 3000 * SLOW }));
  });

  it('the same managed identity for a backend and for Redis: two tokens (one per resource); the backend never gets the Redis token, Redis never the backend one', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 3 });
    const be = await startTokenBackend('mi-be', null);
    cleanup.push(be);
    const cfg = config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' });
    cfg.backends = [{ name: be.name, url: be.url, priority: 1, weight: 1, auth: { type: 'managed_identity', client_id: CLIENT_ID, imds_endpoint: imds.url } }];
    const r = await router(cfg);
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), r.stderr());
    const until = Date.now() + 2000; // the Redis token rotates meanwhile
    while (Date.now() < until) {
      assert.equal((await chat(r, STATIC_KEY)).status, 200);
      await sleep(100);
    }
    assert.ok(imds.issued.length >= 2 && imds.other.length === 1, `redis tokens ${imds.issued.length}, backend tokens ${imds.other.length}`);
    const bearers = new Set(be.bearers());
    assert.deepEqual([...bearers], [imds.other[0]], 'the backend got only its own token');
    for (const t of imds.issued) {
      assert.ok(!JSON.stringify(be.seen).includes(t), 'a Redis token reached the backend');
      assert.ok(!r.stderr().includes(t) && !r.stdout().includes(t), 'a Redis token in the log');
    }
    assert.equal((await authStats(redis)).failed, 0);
    const m = await fetchMetrics(r);
    for (const t of [...imds.issued, ...imds.other]) assert.ok(!m.includes(t), 'a token in /metrics');
  });

  for (const [what, token] of [
    ['CR LF and a second command', 'tok\r\n*1\r\n$8\r\nFLUSHALL'],
    ['a space (AUTH split)', 'tok en'],
    ['17 KiB', 'x'.repeat(17 * 1024)],
    ['64 KiB (answer over the 64 KiB bound)', 'x'.repeat(64 * 1024)],
  ]) {
    it(`a lying identity endpoint: a token with ${what} is refused before Redis sees it (no AUTH, closed 503, logged without the token)`, async () => {
      const redis = await keylessRedis();
      await admin(redis, 'SET', 'canary', '1');
      const imds = await imdsFor(redis, { next: () => token, acl: false });
      const r = await router(config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' }));
      assert.ok(await pollUntil(() => imds.calls >= 1, { timeoutMs: 5000 * SLOW, intervalMs: 20 }));
      let res;
      assert.ok(await pollUntil(async () => (res = await chat(r, STATIC_KEY)).status === 503, { timeoutMs: 5000 * SLOW }), 'served without a token');
      assert.equal(res.json().error.code, 'quota_store_unavailable');
      assert.ok(!res.body.includes(token.length > 40 ? token.slice(0, 1000) : token), 'the token in an error body');
      assert.equal((await authStats(redis)).calls, 1, 'only the mock IMDS\'s own admin AUTH: none from the router');
      assert.equal((await routerClients(redis)).length, 0);
      assert.equal((await admin(redis, 'GET', 'canary')).stdout.trim(), '1');
      assert.match(r.stderr(), /token call failed/);
      assert.ok(!r.stderr().includes(token.length > 40 ? token.slice(0, 1000) : token), 'the token in the log');
    });
  }

  it('a 16 KiB token (the bound) goes whole into AUTH and is accepted', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { next: () => `big_${crypto.randomBytes(12288).toString('base64url')}`.slice(0, 16384) });
    const r = await router(config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), r.stderr());
    assert.equal(imds.issued[0].length, 16384);
    assert.equal((await routerClients(redis)).length, 2);
    assert.equal((await authStats(redis)).failed, 0);
  });

  it('--check: operator typos in redis.auth.resource (the scope …/.default instead of the resource, a space, a control byte) are named at their line', async () => {
    const dir = tempDir('aor-it-review-redisauth-');
    const file = path.join(dir, 'backends.yaml');
    const base = { listen: [{ address: '127.0.0.1', port: 8080 }], backends: [{ name: 'b', url: 'http://127.0.0.1:9' }] };
    const check = async (resource) => {
      writeFileSync(file, toYaml({ ...base, redis: { url: 'rediss://h:6380', auth: { type: 'managed_identity', object_id: OID, resource } } }));
      return run(ROUTER_BIN, ['--check', '-c', file]);
    };
    for (const [resource, re] of [
      ['https://redis.azure.com/.default', /redis\.auth\.resource: .*scope.*https:\/\/redis\.azure\.com/],
      ['https://redis.azure.com/.default/', /redis\.auth\.resource: .*scope/],
      ['https://redis.azure.com/x y', /redis\.auth\.resource: .*visible ASCII/],
      ['https://redis.azure.com\t', /redis\.auth\.resource: .*visible ASCII/],
    ]) {
      const res = await check(resource);
      assert.equal(res.code, 1, `${JSON.stringify(resource)} accepted: ${res.stdout}${res.stderr}`);
      assert.match(res.stderr + res.stdout, re);
    }
    for (const resource of ['https://redis.azure.com', 'https://redis.azure.com/', 'api://contoso-redis']) {
      const res = await check(resource);
      assert.equal(res.code, 0, `${resource}: ${res.stderr}`);
    }
  });

  for (const onFailure of ['closed', 'open']) {
    it(`Redis never answers the AUTH (on_failure ${onFailure}): the first requests wait at most the 1 s connect deadline, the next ones not at all; /healthz meanwhile`, async () => {
      const redis = await keylessRedis();
      const imds = await imdsFor(redis);
      const fake = await silentRedis();
      const cfg = config(redis, { imdsUrl: imds.url }, { onFailure });
      cfg.redis.url = fake.url;
      const r = await router(cfg);
      const want = onFailure === 'closed' ? 503 : 200;
      const timed = async () => {
        const t0 = Date.now();
        const res = await chat(r, STATIC_KEY);
        return { status: res.status, ms: Date.now() - t0, body: res.body };
      };
      const first = await Promise.all(Array.from({ length: 4 }, timed));
      for (const x of first) {
        assert.equal(x.status, want, x.body);
        assert.ok(x.ms < 1600 * SLOW, `a request waited ${x.ms} ms`);
      }
      assert.ok(fake.conns >= 1 && imds.calls === 1);
      for (let i = 0; i < 3; ++i) {
        const x = await timed();
        assert.equal(x.status, want, x.body);
        assert.ok(x.ms < 500 * SLOW, `a request waited ${x.ms} ms on a Redis known to hang`);
      }
      const t0 = Date.now();
      assert.equal((await get(r.url, '/healthz')).status, 200);
      assert.ok(Date.now() - t0 < 500 * SLOW);
      assert.match(r.stderr(), /not connected within 1000 ms/);
    });
  }

  it('SIGHUP while the first Redis token is still on its way: redis.auth → password → redis.auth; each config connects as its user, no AUTH refused', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis);
    imds.delayMs = 1500;
    const cfgAuth = config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' });
    const cfgPw = { ...cfgAuth, redis: { url: redis.url.replace('redis://', 'redis://admin@'), on_failure: 'closed', password_env: 'AOR_REVIEW_REDIS_PW' } };
    const r = await router(cfgAuth, { AOR_REVIEW_REDIS_PW: 'adminpw' });
    await sleep(300); // the handshakes wait for the token
    let from = r.stderr().length;
    r.writeConfig(cfgPw);
    r.signal('SIGHUP');
    assert.ok(await r.waitStderr(/settings changed by a reload/, 5000 * SLOW, from), 'no reload');
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 3000 * SLOW }), 'not served with the password');
    assert.equal((await routerClients(redis)).length, 0, 'no connection as the identity after the reload');
    await sleep(1500); // the token comes meanwhile: nothing to do with it
    assert.equal((await routerClients(redis)).length, 0);
    from = r.stderr().length;
    r.writeConfig(cfgAuth);
    r.signal('SIGHUP');
    assert.ok(await r.waitStderr(/settings changed by a reload/, 5000 * SLOW, from), 'no reload');
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 5000 * SLOW }), 'not connected as the identity');
    assert.equal((await chat(r, STATIC_KEY)).status, 200);
    // the call in flight at the first reload is abandoned with the source no config names; the second reload asks again
    assert.ok(imds.calls <= 2, `token calls: ${imds.calls}`);
    assert.equal((await authStats(redis)).failed, 0);
  });

  it('8 workers, a token every 1.5 s: one token call per rotation for the process (single flight), 8 connections re-AUTH in place, none refused', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 3 });
    const cfg = config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' });
    cfg.threads = 8;
    const r = await router(cfg);
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 8, { timeoutMs: 10000 * SLOW }), 'not 8 connections');
    const t0 = Date.now();
    const clients = await routerClients(redis);
    const load = await h2load(['-n', '8000', '-c', '8', '-m', '4', '-d', bodyFile(chatBody({ max_tokens: 2 })), '-H', 'content-type: application/json', '-H', `api-key: ${STATIC_KEY}`, `${r.url}${CHAT_PATH}`]);
    await sleep(Math.max(0, 3500 - (Date.now() - t0)));
    const elapsed = Date.now() - t0;
    assert.equal(load.status['2xx'], 8000, load.output);
    assert.ok(imds.calls >= 2 && imds.calls <= Math.ceil(elapsed / 1400) + 2, `token calls ${imds.calls} in ${elapsed} ms`);
    assert.deepEqual(await routerClients(redis), clients, 'the same 8 connections');
    assert.equal((await authStats(redis)).failed, 0);
    assert.deepEqual(redisTrouble(r), []);
  });

  it('a re-AUTH Redis refuses under load (on_failure open): every request served, and once Redis takes the token again each request is counted exactly once', async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 3 });
    const key = newKey();
    const tenant = 'refused-t';
    assert.equal((await admin(redis, 'HSET', `aoai:key:${sha256(key)}`, 'tenant', tenant, 'name', 'app')).stdout.trim(), '2');
    const r = await router(config(redis, { imdsUrl: imds.url }, { onFailure: 'open' }));
    assert.ok(await pollUntil(async () => (await chat(r, key)).status === 200, { timeoutMs: 10000 * SLOW }), 'never served');
    imds.acl = false; // the next token is not in the ACL: its re-AUTH is refused (Redis keeps the old identity on that connection)
    // rounds of 10000 until a re-AUTH was refused (the token lives 3 s: a fast build ends 30000 requests
    // before the rotation); whole rounds, so every request sent was answered and can be counted
    let served = 0;
    for (let round = 0; round < 30 && (round === 0 || (await authStats(redis)).failed < 1); round++) {
      const load = await h2load(['-n', '10000', '-c', '8', '-m', '32', '-d', bodyFile(chatBody({ max_tokens: 2 })), '-H', 'content-type: application/json', '-H', `api-key: ${key}`, `${r.url}${CHAT_PATH}`]);
      assert.equal(load.status['2xx'], 10000, load.output);
      served += 10000;
    }
    assert.ok((await authStats(redis)).failed >= 1, 'no re-AUTH was refused during the run');
    // the ACL takes the current token again: Redis comes back, the buffered usage is written
    imds.acl = true;
    assert.equal(await (await respClient(redis, 'admin', 'adminpw')).cmd('ACL', 'SETUSER', OID, 'reset', 'on', `>${imds.issued.at(-1)}`, '~*', '&*', '+@all'), '+OK');
    let counted = 0;
    await pollUntil(async () => {
      const keys = (await admin(redis, '--scan', '--pattern', `aoai:usage:{${tenant}}:minute:*`)).stdout.trim().split('\n').filter(Boolean);
      counted = 0;
      for (const k of keys) counted += Number((await admin(redis, 'HGET', k, 'requests')).stdout.trim());
      return counted >= served + 1;
    }, { timeoutMs: 8000 * SLOW, intervalMs: 200 });
    await sleep(500);
    let final = 0;
    for (const k of (await admin(redis, '--scan', '--pattern', `aoai:usage:{${tenant}}:minute:*`)).stdout.trim().split('\n').filter(Boolean))
      final += Number((await admin(redis, 'HGET', k, 'requests')).stdout.trim());
    assert.equal(final, served + 1, 'requests counted in Redis');
  });

  it('SIGHUP under load changes the identity type (managed_identity → client_secret → managed_identity): every request served, reconnects AUTH with the new source\'s token, none refused', async () => {
    const redis = await keylessRedis();
    const id = await startIdentity({
      resources: ['https://redis.azure.com'],
      clientIds: [CLIENT_ID],
      tenant: 'tnt-redis',
      entraClients: { 'sp-redis': { secret: 'sp-secret' } },
      onIssue: async (token) => {
        // each token is added (both identities' tokens are valid, as on Azure with two access policies)
        const res = await admin(redis, 'ACL', 'SETUSER', OID, 'on', `>${token}`, '~*', '&*', '+@all');
        if (res.stdout.trim() !== 'OK') throw new Error(`ACL SETUSER: ${res.stdout} ${res.stderr}`);
      },
    });
    cleanup.push(id);
    const cfgMi = config(redis, id, { onFailure: 'open' });
    const cfgSp = { ...cfgMi, redis: { ...cfgMi.redis, auth: { type: 'client_secret', tenant_id: 'tnt-redis', client_id: 'sp-redis', secret_env: 'AOR_REVIEW_SP', authority_host: id.authority, object_id: OID } } };
    const r = await router(cfgMi, { AOR_REVIEW_SP: 'sp-secret' });
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 10000 * SLOW }));
    const loadP = h2load(['-n', '30000', '-c', '2', '-m', '8', '-d', bodyFile(chatBody({ max_tokens: 2 })), '-H', 'content-type: application/json', '-H', `api-key: ${STATIC_KEY}`, `${r.url}${CHAT_PATH}`]);
    for (const [cfg, ep] of [[cfgSp, 'entra'], [cfgMi, 'imds']]) {
      const from = r.stderr().length;
      const before = id[ep].calls;
      const clients = await routerClients(redis);
      r.writeConfig(cfg);
      r.signal('SIGHUP');
      assert.ok(await r.waitStderr(/settings changed by a reload/, 5000 * SLOW, from), 'no reload');
      assert.ok(
        await pollUntil(async () => {
          const now = await routerClients(redis);
          return now.length === 2 && now.every((c) => !clients.includes(c));
        }, { timeoutMs: 5000 * SLOW, intervalMs: 50 }),
        'not reconnected with the new identity',
      );
      assert.ok(id[ep].calls - before <= 1, `${ep} token calls: ${id[ep].calls - before}`);
    }
    const load = await loadP;
    assert.equal(load.status['2xx'], 30000, load.output);
    assert.equal((await authStats(redis)).failed, 0, 'no AUTH refused');
    assert.equal(id.entra.calls, 1);
    assert.equal(id.entra.requests[0].form.scope, 'https://redis.azure.com/.default');
    for (const t of id.allIssued()) assert.ok(!r.stderr().includes(t) && !r.stderr().includes('sp-secret'));
  });

  // Open (not fixed here): the shared token schedule (auth/cred_token.c) never refreshes sooner than
  // AOR_CRED_MIN_REFRESH_MS (1 s) after a token came, but a 1 s token is only sendable for 833 ms
  // (its send margin is a sixth): every cycle leaves ~170 ms + the token call without a valid
  // token, and Redis' connections are retired then (closed: 503s; measured 8 % of sequential requests, up to half under load).
  // Entra ID never issues tokens under 10 min; an identity endpoint that does is broken or hostile.
  it('a token living 1 s (an identity endpoint that lies about lifetimes), on_failure closed: every request served', { todo: 'refresh floor (1 s) beyond a 1 s token\'s send window: auth/cred_token.c, shared with the backends' }, async () => {
    const redis = await keylessRedis();
    const imds = await imdsFor(redis, { lifetimeS: 1 });
    const r = await router(config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), 'never served');
    const statuses = [];
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      statuses.push((await chat(r, STATIC_KEY)).status);
      await sleep(20);
    }
    const bad = statuses.filter((x) => x !== 200).length;
    assert.equal(bad, 0, `${bad} of ${statuses.length} requests failed`);
  });

  it('Redis answers a re-AUTH 3 s late (on_failure closed): no request waits more than the 1 s deadline, the stuck connection is replaced, then all served', async () => {
    const redis = await keylessRedis();
    // the ACL keeps every token: a late re-AUTH must not turn into a refusal
    const imds = await imdsFor(redis, { lifetimeS: 3, keepOld: true });
    const front = await stallOnReauthFront(redis, 3000);
    const cfg = config(redis, { imdsUrl: imds.url }, { onFailure: 'closed' });
    cfg.redis.url = front.url;
    const r = await router(cfg);
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), 'never served');
    const results = [];
    const until = Date.now() + 4500;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (Date.now() < until) {
          const t0 = Date.now();
          const res = await chat(r, STATIC_KEY);
          results.push({ status: res.status, ms: Date.now() - t0, code: res.status === 200 ? null : res.json()?.error?.code });
        }
      }),
    );
    assert.ok(front.stalls >= 1, 'no re-AUTH was stalled');
    const slow = results.filter((x) => x.ms > 1400 * SLOW);
    assert.deepEqual(slow, [], 'a request waited past the deadline');
    assert.deepEqual([...new Set(results.filter((x) => x.status !== 200).map((x) => `${x.status} ${x.code}`))].filter((x) => x !== '503 quota_store_unavailable'), []);
    assert.match(r.stderr(), /no reply within 1000 ms/);
    // afterwards: served again (a new connection's first AUTH is not stalled)
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 5000 * SLOW }), 'never recovered');
    assert.equal((await authStats(redis)).failed, 0);
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
