// Keyless Redis (issue 9 "Keyless Redis too", SPEC §3 redis.auth): the router authenticates to
// Redis with `AUTH <object_id> <access token>`, the token from the same cache as the backends'
// (managed identity here: the IMDS mock, resource https://redis.azure.com). Against a real
// redis-server whose default user is off and whose ACL user <object_id> has, as its only password,
// the token the mock handed out last (the mock sets it before answering, the old one removed).
//   - a Redis-stored key works, usage is written, every router connection is that ACL user
//   - token rotation: live connections re-AUTH with the new token, no reconnect, no failed request
//   - token endpoint down at start: Redis unavailable (closed: 503 quota_store_unavailable and
//     /readyz 503; open: admitted locally), then recovers when the endpoint returns
//   - a token Redis refuses (WRONGPASS): bounded AUTH attempts, counted, logged without the token
//   - no token in any log line; --check validates redis.auth; the operator CLI's clear error
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { startMock, get, stopAll, sleep, fetchMetrics, metricSum, pollUntil, run, tempDir, toYaml, ROUTER_BIN, SLOW } from './lib/harness.mjs';
import { keylessKit, OID, REDIS_RESOURCE, CLIENT_ID, STATIC_KEY, NOSCRIPT_PER_WORKER, sha256, newKey, chat, redisErrors, redisTrouble } from './lib/keyless_redis.mjs';

let east;
const cleanup = [];
const routers = []; // every router started: the secrets test reads all their logs
const { admin, keylessRedis, redisIdentity, config, router, routerClients, authStats } = keylessKit({ backend: () => east, cleanup, routers });

before(async () => {
  east = await startMock('eastus');
});

after(async () => {
  await stopAll(...cleanup.reverse(), east);
});

describe('keyless Redis (redis.auth)', () => {
  it('a Redis-stored key works; usage written; every router connection is the ACL user <object_id>; one token call (resource https://redis.azure.com)', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    const key = newKey();
    assert.equal((await admin(redis, 'HSET', `aoai:key:${sha256(key)}`, 'tenant', 'kl-t1', 'name', 'app')).stdout.trim(), '2');
    const r = await router(config(redis, id));
    assert.ok(await pollUntil(async () => (await get(r.url, '/readyz')).status === 200, { timeoutMs: 10000 * SLOW }), 'never ready');
    for (let i = 0; i < 4; ++i) {
      const res = await chat(r, key);
      assert.equal(res.status, 200, res.body);
    }
    // the usage went to Redis over the authenticated connections
    const scan = await admin(redis, '--scan', '--pattern', 'aoai:usage:{kl-t1}:minute:*');
    const usageKey = scan.stdout.trim().split('\n')[0];
    assert.ok(usageKey, 'no usage hash written');
    assert.ok(await pollUntil(async () => Number((await admin(redis, 'HGET', usageKey, 'requests')).stdout.trim()) === 4), 'usage requests != 4');
    // both workers connected as OID; nothing as another user
    const list = (await admin(redis, 'CLIENT', 'LIST')).stdout.split('\n').filter(Boolean);
    const users = list.map((l) => / user=(\S+)/.exec(l)[1]).filter((u) => u !== 'admin');
    assert.ok(users.length >= 2, `router connections: ${users}`);
    assert.deepEqual([...new Set(users)], [OID]);
    // single flight for both workers; the right resource and identity
    assert.equal(id.imds.calls, 1, 'one token call for the process');
    assert.equal(id.imds.requests[0].query.resource, REDIS_RESOURCE);
    assert.equal(id.imds.requests[0].query.client_id, CLIENT_ID);
    assert.equal(id.imds.requests[0].headers.metadata, 'true');
    // the unknown key is refused by Redis' answer (not by a dead store)
    const bad = await chat(r, newKey());
    assert.equal(bad.status, 401, bad.body);
    assert.ok((await redisErrors(r)) <= NOSCRIPT_PER_WORKER, r.stderr());
    assert.deepEqual(redisTrouble(r), []);
    assert.match(r.stderr(), /Entra ID token accepted/);
    // the Redis token's own gauges (a 3600 s token, no failed call)
    const m = await fetchMetrics(r);
    const expiry = metricSum(m, 'aoai_router_redis_credential_expiry_seconds');
    assert.ok(expiry > 3500 && expiry <= 3600, `expiry gauge ${expiry}`);
    assert.equal(metricSum(m, 'aoai_router_redis_credential_refresh_failures_total'), 0);
    assert.doesNotMatch(m, /aoai_router_credential_expiry_seconds\{/, 'no backend has a token credential');
  });

  it('SIGHUP: an unchanged redis.auth keeps the connections; another object_id reconnects as that ACL user with the cached token', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    const cfg = config(redis, id);
    const r = await router(cfg);
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 10000 * SLOW }));
    const before = await routerClients(redis);
    r.writeConfig({ ...cfg, listen: [{ address: '127.0.0.1', port: r.port }] });
    const from = r.stderr().length;
    r.signal('SIGHUP');
    assert.ok(await r.waitStderr(/reload/i, 5000 * SLOW, from));
    await sleep(500);
    assert.deepEqual(await routerClients(redis), before, 'same connections after a reload that changed nothing');
    const OID2 = 'a0b1c2d3-0000-4000-8000-000000000002';
    assert.equal((await admin(redis, 'ACL', 'SETUSER', OID2, 'on', `>${id.imds.issued.at(-1)}`, '~*', '&*', '+@all')).stdout.trim(), 'OK');
    r.writeConfig({ ...cfg, listen: [{ address: '127.0.0.1', port: r.port }], redis: { ...cfg.redis, auth: { ...cfg.redis.auth, object_id: OID2 } } });
    r.signal('SIGHUP');
    const as2 = async () => (await admin(redis, 'CLIENT', 'LIST')).stdout.split('\n').filter((l) => l.includes(` user=${OID2} `)).length;
    assert.ok(await pollUntil(async () => (await as2()) === 2, { timeoutMs: 5000 * SLOW }), 'not reconnected as the new object_id');
    assert.equal((await routerClients(redis)).length, 0, 'no connection left as the old one');
    assert.equal(id.imds.calls, 1, 'same identity and resource: the cached token');
    assert.equal((await chat(r, STATIC_KEY)).status, 200);
  });

  it('token rotation: the ACL password becomes the new token (old removed); live connections re-AUTH, none reconnects, no request fails', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    id.imds.lifetimeS = 4; // refreshed 2 s after issue, sendable until ~3.3 s
    const r = await router(config(redis, id)); // on_failure closed: any Redis trouble would be a 503
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }), 'never served');
    const clientsBefore = await routerClients(redis);
    assert.equal(clientsBefore.length, 2, `one connection per worker: ${clientsBefore}`);
    const authBefore = await authStats(redis);
    const callsBefore = id.imds.calls;
    const statuses = [];
    const until = Date.now() + 5500;
    while (Date.now() < until) {
      statuses.push((await chat(r, STATIC_KEY)).status);
      await sleep(50);
    }
    const rotations = id.imds.calls - callsBefore;
    assert.ok(rotations >= 2, `tokens issued during the run: ${rotations}`);
    assert.deepEqual([...new Set(statuses)], [200], `a request failed during rotation: ${statuses.filter((s) => s !== 200)}`);
    // each worker re-authenticated once per new token on its live connection
    await sleep(300);
    const authAfter = await authStats(redis);
    assert.equal(authAfter.failed, authBefore.failed, 'no AUTH refused');
    assert.ok(authAfter.calls - authBefore.calls >= 2 * rotations - 1, `AUTH calls ${authAfter.calls - authBefore.calls} for ${rotations} new tokens`);
    assert.deepEqual(await routerClients(redis), clientsBefore, 'the same connections: no reconnect');
    assert.ok((await redisErrors(r)) <= NOSCRIPT_PER_WORKER, r.stderr());
    assert.deepEqual(redisTrouble(r), []);
    // and a connection made now authenticates with the current token (the old ones no longer work)
    await admin(redis, 'CLIENT', 'KILL', 'USER', OID);
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 5000 * SLOW }), 'no reconnect with the current token');
    assert.equal((await authStats(redis)).failed, authBefore.failed, 'the reconnect used the current token');
  });

  it('token endpoint down at start, on_failure closed: 503 quota_store_unavailable and /readyz 503 without touching Redis; recovers when it returns', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    id.imds.down = true;
    const r = await router(config(redis, id, { onFailure: 'closed' }));
    assert.ok(await pollUntil(() => id.imds.calls >= 1, { timeoutMs: 5000 * SLOW }));
    await sleep(300);
    const res = await chat(r, STATIC_KEY);
    assert.equal(res.status, 503, res.body);
    assert.equal(res.json().error.code, 'quota_store_unavailable');
    const ready = await get(r.url, '/readyz');
    assert.equal(ready.status, 503);
    assert.match(ready.body, /redis/);
    assert.equal((await routerClients(redis)).length, 0, 'no connection without a token');
    assert.equal((await authStats(redis)).calls, 0, 'no AUTH without a token');
    assert.match(r.stderr(), /no Entra ID token for Redis/);
    const m = await fetchMetrics(r);
    assert.ok(metricSum(m, 'aoai_router_redis_credential_refresh_failures_total') >= 1);
    assert.equal(metricSum(m, 'aoai_router_redis_credential_expiry_seconds'), 0);
    id.imds.down = false;
    assert.ok(await pollUntil(async () => (await get(r.url, '/readyz')).status === 200, { timeoutMs: 15000 * SLOW, intervalMs: 100 }), 'never recovered');
    const ok = await chat(r, STATIC_KEY);
    assert.equal(ok.status, 200, ok.body);
    assert.equal((await authStats(redis)).failed, 0);
  });

  it('token endpoint down at start, on_failure open: admitted locally (200), /readyz 200; Redis used once a token comes', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    id.imds.down = true;
    const r = await router(config(redis, id, { onFailure: 'open' }));
    assert.ok(await pollUntil(() => id.imds.calls >= 1, { timeoutMs: 5000 * SLOW }));
    await sleep(300);
    const res = await chat(r, STATIC_KEY);
    assert.equal(res.status, 200, res.body);
    assert.equal((await get(r.url, '/readyz')).status, 200);
    assert.equal((await routerClients(redis)).length, 0);
    id.imds.down = false;
    assert.ok(await pollUntil(async () => (await routerClients(redis)).length === 2, { timeoutMs: 15000 * SLOW, intervalMs: 100 }), 'never connected');
    assert.equal((await chat(r, STATIC_KEY)).status, 200);
    // usage of the request admitted locally was buffered and written once Redis came (SPEC §6)
    assert.ok(
      await pollUntil(async () => (await admin(redis, '--scan', '--pattern', 'aoai:usage:{static-t}:minute:*')).stdout.trim() !== '', { timeoutMs: 10000 * SLOW }),
      'usage never written',
    );
  });

  it('a token Redis refuses (WRONGPASS): bounded AUTH attempts, counted in aoai_router_redis_errors_total, one fresh token asked, logged without the token', async () => {
    const redis = await keylessRedis();
    const ctl = { acl: false };
    const id = await redisIdentity(redis, ctl);
    await admin(redis, 'ACL', 'SETUSER', OID, 'on', '>not-the-token', '~*', '&*', '+@all');
    const r = await router(config(redis, id, { onFailure: 'closed' }));
    assert.ok(await pollUntil(() => id.imds.calls >= 1, { timeoutMs: 5000 * SLOW }));
    const t0 = Date.now();
    await sleep(3000);
    const elapsed = (Date.now() - t0) / 1000;
    const stats = await authStats(redis);
    // 2 workers, backoff 100 ms doubling to 2 s: a handful each, not a tight loop
    assert.ok(stats.failed >= 2 && stats.failed <= 24, `failed AUTHs in ${elapsed} s: ${stats.failed}`);
    assert.equal(stats.calls, stats.failed, 'no AUTH succeeded');
    assert.ok(id.imds.calls >= 2 && id.imds.calls <= 3, `token calls: ${id.imds.calls} (one fresh token asked per refused token, 10 s cooldown)`);
    const res = await chat(r, STATIC_KEY);
    assert.equal(res.status, 503, res.body);
    assert.equal(res.json().error.code, 'quota_store_unavailable');
    assert.ok((await redisErrors(r)) >= stats.failed, 'refused AUTHs counted');
    assert.match(r.stderr(), /Redis refused the Entra ID token of object_id 6f1c2d3e-0000-4000-8000-0123456789ab: WRONGPASS/);
    // the ACL is fixed: the next token (or the current one) connects
    ctl.acl = true;
    const current = id.imds.issued.at(-1);
    await admin(redis, 'ACL', 'SETUSER', OID, 'reset', 'on', `>${current}`, '~*', '&*', '+@all');
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW, intervalMs: 200 }), 'never recovered');
  });

  it('secrets: no token the mock issued appears in any router log line, error body or metric', async () => {
    assert.ok(routers.length >= 5, 'runs after the tests above');
    const tokens = [];
    for (const c of cleanup) if (c.allIssued) tokens.push(...c.allIssued());
    assert.ok(tokens.length >= 5, `tokens issued: ${tokens.length}`);
    for (const r of routers) {
      const text = r.stderr() + r.stdout();
      const metrics = r.proc.exitCode === null ? await fetchMetrics(r).catch(() => '') : '';
      for (const t of tokens) {
        const [, payload, sig] = t.split('.');
        for (const part of [t, payload, sig]) {
          assert.ok(!text.includes(part), 'a token (or its payload/signature) is in a log line');
          assert.ok(!metrics.includes(part), 'a token is in /metrics');
        }
      }
    }
  });

  it('--check: redis.auth fields validated (object_id, type, keys of the type); an unreadable token_file is a warning (exit 0)', async () => {
    const dir = tempDir('aor-it-redisauth-');
    const file = path.join(dir, 'backends.yaml');
    const base = { listen: [{ address: '127.0.0.1', port: 8080 }], backends: [{ name: 'b', url: 'http://127.0.0.1:9' }] };
    const check = async (redis) => {
      writeFileSync(file, toYaml({ ...base, redis }));
      return run(ROUTER_BIN, ['--check', '-c', file]);
    };
    let res = await check({ url: 'redis://h', auth: { type: 'managed_identity', client_id: 'c' } });
    assert.equal(res.code, 1);
    assert.match(res.stderr + res.stdout, /redis\.auth\.object_id: missing required key/);
    res = await check({ url: 'redis://h', auth: { type: 'managed_identity', object_id: OID, secret_env: 'X' } });
    assert.equal(res.code, 1);
    assert.match(res.stderr + res.stdout, /redis\.auth\.secret_env: unknown key/);
    res = await check({ url: 'redis://h', auth: { type: 'api_key', object_id: OID } });
    assert.equal(res.code, 1);
    assert.match(res.stderr + res.stdout, /redis\.auth\.type/);
    res = await check({ url: 'redis://h', password_env: 'HOME', auth: { type: 'managed_identity', object_id: OID } });
    assert.equal(res.code, 1);
    assert.match(res.stderr + res.stdout, /exclusive/);
    res = await check({ url: 'rediss://h:6380', auth: { type: 'managed_identity', client_id: 'c', object_id: OID } });
    assert.equal(res.code, 0, res.stderr);
    const missing = path.join(dir, 'no-such-token');
    res = await check({ url: 'redis://h', auth: { type: 'workload_identity', tenant_id: 't', client_id: 'c', token_file: missing, object_id: OID } });
    assert.equal(res.code, 0, `an unreadable token_file is not an error: ${res.stderr}`);
    assert.match(res.stderr + res.stdout, /warning: redis\.auth\.token_file: cannot read/);
    writeFileSync(file, toYaml({ ...base, backends: [{ name: 'b', url: 'http://127.0.0.1:9', auth: { type: 'workload_identity', tenant_id: 't', client_id: 'c', token_file: missing } }] }));
    res = await run(ROUTER_BIN, ['--check', '-c', file]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr + res.stdout, /warning: backends\[0\]\.auth\.token_file: cannot read/);
  });

  it('operator CLI: with redis.auth in the config, a clear error; as the identity with --redis <oid>@host and a token in --redis-password-env, it works', async () => {
    const redis = await keylessRedis();
    const id = await redisIdentity(redis);
    const r = await router(config(redis, id));
    assert.ok(await pollUntil(async () => (await chat(r, STATIC_KEY)).status === 200, { timeoutMs: 10000 * SLOW }));
    let res = await run(ROUTER_BIN, ['-c', r.configPath, 'quota', 'get', 'static-t']);
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /redis\.auth \(Entra ID\) is not used by the operator commands/);
    assert.match(res.stderr, new RegExp(`--redis redis://<object id>@127\\.0\\.0\\.1:${redis.port}`));
    res = await run(ROUTER_BIN, ['--redis', `redis://${OID}@127.0.0.1:${redis.port}/0`, '--redis-password-env', 'AOR_TOKEN', 'quota', 'set', 'cli-t', '--tpm', '5'], {
      env: { ...process.env, AOR_TOKEN: id.imds.issued.at(-1) },
    });
    assert.equal(res.code, 0, res.stderr);
    assert.equal((await admin(redis, 'HGET', 'aoai:tenant:{cli-t}', 'tpm')).stdout.trim(), '5');
  });
});
