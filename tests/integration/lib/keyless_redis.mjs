// Keyless Redis (redis.auth) test kit: a redis-server whose default user is off and whose ACL user
// OID has as its only password the token the IMDS mock handed out last (set before the answer
// leaves), the router config naming it, and probes of Redis' side (connections, AUTH counts).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startRouter, startRedis, backendFor, post, chatBody, CHAT_PATH, fetchMetrics, metricSum, redisCli } from './harness.mjs';
import { startIdentity } from './identity_mocks.mjs';

export const REDIS_RESOURCE = 'https://redis.azure.com';
export const OID = '6f1c2d3e-0000-4000-8000-0123456789ab';
export const CLIENT_ID = 'uami-redis';
const ADMIN = ['--user', 'admin', '--pass', 'adminpw', '--no-auth-warning'];
export const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
export const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
export const STATIC_KEY = newKey();

// aoai_router_redis_errors_total does not count the NOSCRIPT that answers each worker's first EVALSHA
// (admit.c then sends EVAL): a healthy Redis shows 0. Beyond that, a Redis trouble
export const NOSCRIPT_PER_WORKER = 0;

/** [redis] warnings/errors the router logged (a lost connection, a refused AUTH) */
export const redisTrouble = (r) => r.stderr().split('\n').filter((l) => /(warn|error) \[redis\]/.test(l));

export const chat = (r, key) => post(r.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': key } });

export async function redisErrors(r) {
  return metricSum(await fetchMetrics(r), 'aoai_router_redis_errors_total');
}

/** `backend()` gives the mock backend; what is started goes into `cleanup`, routers also into `routers` */
export function keylessKit({ backend, cleanup, routers = [] }) {
// every admin() is one redis-cli connection, so one AUTH of user admin: subtracted from Redis' AUTH counts
const adminAuths = new Map();
const admin = (redis, ...args) => {
  adminAuths.set(redis, (adminAuths.get(redis) ?? 0) + 1);
  return redisCli(redis, ...ADMIN, ...args);
};

/** redis-server with an operator user for the test and the default user off: nothing runs unauthenticated */
async function keylessRedis() {
  const redis = await startRedis();
  cleanup.push(redis);
  let r = await redisCli(redis, 'ACL', 'SETUSER', 'admin', 'on', '>adminpw', '~*', '&*', '+@all');
  assert.equal(r.stdout.trim(), 'OK', r.stderr);
  r = await admin(redis, 'ACL', 'SETUSER', 'default', 'off');
  assert.equal(r.stdout.trim(), 'OK', r.stderr);
  return redis;
}

/**
 * The IMDS mock for Redis' resource. Each token it issues becomes the only password of the ACL user
 * OID before the answer leaves (ctl.acl false: the ACL is left alone, so Redis refuses the token).
 */
async function redisIdentity(redis, ctl = { acl: true }) {
  const id = await startIdentity({
    resources: [REDIS_RESOURCE],
    clientIds: [CLIENT_ID],
    onIssue: async (token) => {
      if (!ctl.acl) return;
      const r = await admin(redis, 'ACL', 'SETUSER', OID, 'reset', 'on', `>${token}`, '~*', '&*', '+@all');
      if (r.stdout.trim() !== 'OK') throw new Error(`ACL SETUSER: ${r.stdout} ${r.stderr}`);
    },
  });
  id.ctl = ctl;
  cleanup.push(id);
  return id;
}

function config(redis, id, { onFailure = 'closed' } = {}) {
  return {
    redis: {
      url: redis.url,
      on_failure: onFailure,
      auth: { type: 'managed_identity', client_id: CLIENT_ID, imds_endpoint: id.imdsUrl, object_id: OID },
    },
    auth: { mode: 'key', keys: { static: [{ sha256: sha256(STATIC_KEY), tenant: 'static-t' }] } },
    tenants: { default: { tpm: 10000000, rpm: 100000 } },
    backends: [backendFor(backend())],
  };
}

async function router(cfg, env = {}) {
  const r = await startRouter({ config: cfg, env: { AOR_LOG_LEVEL: 'debug', ...env } });
  cleanup.push(r);
  routers.push(r);
  return r;
}


/** the router's connections: CLIENT LIST lines of user OID (id and user fields) */
async function routerClients(redis) {
  const r = await admin(redis, 'CLIENT', 'LIST');
  return r.stdout
    .split('\n')
    .filter((l) => l.includes(` user=${OID} `))
    .map((l) => /(?:^| )id=(\d+)/.exec(l)[1])
    .sort();
}

/** the router's AUTHs so far: {calls, failed} of INFO commandstats (Redis 7 counts WRONGPASS in both) minus the admin's */
async function authStats(redis) {
  const r = await admin(redis, 'INFO', 'commandstats');
  const m = /cmdstat_auth:calls=(\d+),.*?failed_calls=(\d+)/.exec(r.stdout);
  const calls = m ? Number(m[1]) : 0;
  return { calls: calls - adminAuths.get(redis), failed: m ? Number(m[2]) : 0 };
}

  return { admin, keylessRedis, redisIdentity, config, router, routerClients, authStats };
}
