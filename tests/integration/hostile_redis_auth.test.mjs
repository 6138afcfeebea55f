// Keyless Redis (redis.auth) under attack and breakage: the identity endpoint dies after the first
// token (the token runs out: Redis becomes unavailable, never served with an expired token, then
// recovers), Redis kills the router's connections (reconnect with the cached token, no new token
// call), the identity endpoint slower than the connect timeout at start (bounded reconnects, the
// loop keeps answering), the ACL user deleted (WRONGPASS: bounded, one fresh token asked).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, get, stopAll, sleep, pollUntil, SLOW } from './lib/harness.mjs';
import { keylessKit, OID, STATIC_KEY, chat } from './lib/keyless_redis.mjs';

let east;
const cleanup = [];
const { admin, keylessRedis, redisIdentity, config, router, routerClients, authStats } = keylessKit({ backend: () => east, cleanup });

before(async () => {
  east = await startMock('eastus');
});

after(async () => {
  await stopAll(...cleanup.reverse(), east);
});

describe('hostile: keyless Redis', () => {
  it('identity endpoint dies after the first token: served while the token is valid, then Redis unavailable (closed 503, /readyz 503), back when it returns', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    id.imds.lifetimeS = 3; // refresh after 1.5 s, sendable until 2.5 s
    const r = await router(config(redis, id, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }));
    const issuedAt = id.imds.requests.at(-1).time;
    id.imds.down = true;
    // while the token is valid the connection is used (the failed refresh keeps the current token)
    const early = await chat(r, STATIC_KEY);
    assert.equal(early.status, 200, early.body);
    // past its send margin (2.5 s) plus the 1 s check: the connection is dropped, nothing more is sent
    assert.ok(
      await pollUntil(async () => (await get(r.url, '/readyz')).status === 503, { timeoutMs: 6000 * SLOW, intervalMs: 100 }),
      'still ready with an expired token',
    );
    const downAt = Date.now();
    assert.ok(downAt - issuedAt >= 2400, `dropped ${downAt - issuedAt} ms after issue: before the token ran out`);
    assert.ok(downAt - issuedAt <= 5000 * SLOW, `dropped ${downAt - issuedAt} ms after issue`);
    // each worker looks at its token every second: the last one drops within about a second more
    let res;
    assert.ok(
      await pollUntil(async () => (res = await chat(r, STATIC_KEY)).status === 503, { timeoutMs: 3000 * SLOW, intervalMs: 100 }),
      'a worker kept serving with an expired token',
    );
    assert.equal(res.json().error.code, 'quota_store_unavailable');
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 0, { timeoutMs: 3000 * SLOW }), 'no connection without a valid token');
    assert.match(r.stderr(), /the Entra ID token is no longer valid and no new one came/);
    id.imds.down = false;
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 15000 * SLOW, intervalMs: 200 }), 'never recovered');
    assert.equal((await authStats(redis)).failed, 0, 'no AUTH with an old token');
  });

  it('Redis kills the router connections (CLIENT KILL USER) again and again: each comes back with the cached token, no new token call', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    const r = await router(config(redis, id, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }));
    const calls = id.imds.calls;
    for (let i = 0; i < 3; ++i) {
      const before = await routerClients(redis);
      assert.equal(before.length, 2);
      await admin(redis, 'CLIENT', 'KILL', 'USER', OID);
      assert.ok(
        await pollUntil(async () => {
          const now = await routerClients(redis);
          return now.length === 2 && now.every((c) => !before.includes(c));
        }, { timeoutMs: 5000 * SLOW, intervalMs: 50 }),
        'both workers reconnected',
      );
      assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 5000 * SLOW }));
    }
    assert.equal(id.imds.calls, calls, 'a reconnect reuses the cached token');
    assert.equal((await authStats(redis)).failed, 0);
  });

  it('identity endpoint slower than the connect timeout at start: bounded reconnects, /healthz answers meanwhile, connected once the token comes', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    id.imds.delayMs = 2500; // the connect timeout is 1 s: attempts give up and back off while the first token is on its way
    const r = await router(config(redis, id, { onFailure: 'open' }));
    const t0 = Date.now();
    const h = await get(r.url, '/healthz');
    assert.equal(h.status, 200);
    assert.ok(Date.now() - t0 < 1000 * SLOW, 'the loop answers while the token is pending');
    const ok = await chat(r, STATIC_KEY); // open: admitted locally meanwhile (or after the 1 s wait)
    assert.equal(ok.status, 200, ok.body);
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 10000 * SLOW, intervalMs: 100 }), 'never connected');
    assert.equal(id.imds.calls, 1, 'one token call however many attempts');
    const info = await admin(redis, 'INFO', 'stats');
    const conns = Number(/total_connections_received:(\d+)/.exec(info.stdout)[1]);
    // the admin's own connections are most of these; the router's attempts in ~2.5 s are a few per worker
    assert.ok(conns < 60, `connections received: ${conns}`);
    assert.equal((await authStats(redis)).failed, 0);
  });

  it('the ACL user is deleted (operator revokes the identity): WRONGPASS bounded, the cache asked once for a fresh token, 503 closed', async () => {
    const redis = await keylessRedis();
    const ctl = { acl: true };
    const id = await redisIdentity(redis, ctl);
    const r = await router(config(redis, id, { onFailure: 'closed' }));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }));
    const calls = id.imds.calls;
    ctl.acl = false;
    await admin(redis, 'ACL', 'DELUSER', OID); // Redis also closes the user's connections
    await sleep(2500);
    const stats = await authStats(redis);
    assert.ok(stats.failed >= 2 && stats.failed <= 20, `refused AUTHs in 2.5 s: ${stats.failed}`);
    assert.equal(id.imds.calls - calls, 1, 'one fresh token asked (cooldown)');
    const res = await chat(r, STATIC_KEY);
    assert.equal(res.status, 503, res.body);
    const logged = r.stderr().split('\n').filter((l) => l.includes('Redis refused the Entra ID token'));
    assert.ok(logged.length >= 1 && logged.length <= 4, `refusals logged once per token and worker: ${logged.length}`);
    for (const t of id.allIssued()) assert.ok(!r.stderr().includes(t), 'a token in the log');
  });
});
