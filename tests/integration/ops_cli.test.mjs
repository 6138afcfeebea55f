// The first day of an operator (issue 11): global options before or after the command word,
// --help naming every option, `keys revoke` by the id `keys list` prints (the access log's
// key_id, same length) or from stdin, --json for keys list / quota get / usage, the Redis
// password from an environment variable or the config's password_env (never only in a URL), and
// `--check --no-secrets` for CI without the secrets' environment.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  run,
  ROUTER_BIN,
  accessLogLine,
  redisCli,
  tempDir,
  toYaml,
  checkSanitizers,
} from './lib/harness.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const ROUTER_ENV = { AOR_IT_BACKEND_KEY: 'backend-secret-for-ops-test' };

let east, redis, router;

/** the CLI with `input` on stdin */
function cli(args, { env = {}, input } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(ROUTER_BIN, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let so = '';
    let se = '';
    p.stdout.setEncoding('utf8');
    p.stderr.setEncoding('utf8');
    p.stdout.on('data', (d) => (so += d));
    p.stderr.on('data', (d) => (se += d));
    p.once('error', reject);
    p.once('exit', (code) => {
      checkSanitizers(se);
      resolve({ code, stdout: so, stderr: se });
    });
    if (input !== undefined) p.stdin.end(input);
    else p.stdin.end();
  });
}

before(async () => {
  east = await startMock('eastus');
  redis = await startRedis();
  router = await startRouter({
    config: {
      redis: { url: redis.url, on_failure: 'closed' },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' }, auth: { type: 'api_key', key_env: 'AOR_IT_BACKEND_KEY' } })],
      auth: { mode: 'key' },
      tenants: { 'ops-t1': { tpm: 1000 } },
    },
    env: ROUTER_ENV,
  });
});

after(async () => {
  await stopAll(router, east, redis);
});

describe('operator CLI', () => {
  it('global options before the command (--redis URL --prefix P quota get T), after it, and mixed', async () => {
    for (const args of [
      ['--redis', redis.url, '--prefix', 'aoai:', 'quota', 'get', 'ops-t1'],
      ['quota', 'get', 'ops-t1', '--redis', redis.url, '--prefix', 'aoai:'],
      ['--redis', redis.url, 'quota', 'get', '--prefix=aoai:', 'ops-t1'],
      ['--json', '--redis=' + redis.url, 'quota', 'get', 'ops-t1'],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 0, `${args.join(' ')}: exit ${r.code} ${r.stderr}`);
      assert.match(r.stdout, /ops-t1/);
    }
    // -c before the command: the config's redis: section (no key_env in this shell: not needed for Redis)
    const r = await cli(['-c', router.configPath, 'quota', 'get', 'ops-t1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /tpm\s+1000 \(config tenants\.ops-t1\)/);
  });

  it('--help (and <cmd> --help) lists every option; exit 0', async () => {
    const flags = ['-c', '--config', '--check', '--no-secrets', '--version', '--verbose', '--help', '--redis', '--redis-ca-file', '--redis-password-env', '--prefix', '--json', '--tenant', '--name', '--period', '--tpm', '--rpm', '--tokens-per-day', '--tokens-per-month', '--deployments', '--disabled'];
    for (const args of [['--help'], ['-h'], ['keys', '--help'], ['quota', 'set', '--help'], ['usage', '-h']]) {
      const r = await cli(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      for (const f of flags) assert.ok(r.stdout.includes(f), `${args.join(' ')}: ${f} missing from the help`);
    }
    const bad = await cli(['--frobnicate']);
    assert.equal(bad.code, 2);
  });

  it('--version names the CMake version and the git commit', async () => {
    const r = await cli(['--version']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^aoai-router \d+\.\d+\.\d+ \(commit [0-9a-f]{7,40}(-dirty)?\)\n$/);
  });

  it('keys list prints the id the access log calls key_id (same length); keys revoke <id> revokes that key', async () => {
    const c = await cli(['--redis', redis.url, 'keys', 'create', '--tenant', 'ops-t1', '--name', 'ops-app']);
    assert.equal(c.code, 0, c.stderr);
    const key = c.stdout.trim();
    const id = `ops-${Date.now()}`;
    const res = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': key, 'x-request-id': id } });
    assert.equal(res.status, 200, res.body);
    const line = await accessLogLine(router, id);
    const list = await cli(['keys', 'list', '--json', '--redis', redis.url]);
    assert.equal(list.code, 0, list.stderr);
    const rows = JSON.parse(list.stdout);
    const row = rows.find((x) => x.name === 'ops-app');
    assert.ok(row, list.stdout);
    assert.equal(row.id, line.key_id, 'keys list id and access-log key_id differ');
    assert.equal(row.id, sha256(key).slice(0, row.id.length));
    assert.deepEqual(Object.keys(row).sort(), ['created', 'id', 'name', 'revoked', 'tenant']);
    assert.equal(row.revoked, false);
    assert.match(row.created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.ok(!list.stdout.includes(key) && !list.stdout.includes(sha256(key)));
    // the plain listing prints the same id
    const plain = await cli(['keys', 'list', '--redis', redis.url]);
    assert.match(plain.stdout, new RegExp(`^${row.id}\\tops-t1\\tops-app\\t`, 'm'));

    const rv = await cli(['--redis', redis.url, 'keys', 'revoke', row.id]);
    assert.equal(rv.code, 0, rv.stderr);
    assert.match(rv.stdout, new RegExp(`revoked ${row.id} tenant ops-t1`));
    const h = await redisCli(redis, 'HGET', `aoai:key:${sha256(key)}`, 'revoked');
    assert.equal(h.stdout.trim(), '1');
  });

  it('keys revoke -: the key from stdin (not in argv); a key on stdin is never echoed', async () => {
    const c = await cli(['--redis', redis.url, 'keys', 'create', '--tenant', 'ops-t1', '--name', 'stdin-app']);
    const key = c.stdout.trim();
    const rv = await cli(['keys', 'revoke', '-', '--redis', redis.url, '--json'], { input: `${key}\n` });
    assert.equal(rv.code, 0, rv.stderr);
    assert.deepEqual(JSON.parse(rv.stdout), { revoked: true, id: sha256(key).slice(0, 8), tenant: 'ops-t1' });
    assert.equal((await redisCli(redis, 'HGET', `aoai:key:${sha256(key)}`, 'revoked')).stdout.trim(), '1');
    // an unknown key on stdin: exit 1, not echoed
    const unknown = `aor_${crypto.randomBytes(32).toString('base64url')}`;
    const u = await cli(['keys', 'revoke', '-', '--redis', redis.url], { input: unknown });
    assert.equal(u.code, 1);
    assert.ok(!u.stderr.includes(unknown) && !u.stdout.includes(unknown));
    // nothing on stdin: a usage error
    const e = await cli(['keys', 'revoke', '-', '--redis', redis.url], { input: '' });
    assert.equal(e.code, 2);
    // a line longer than any key: refused, not echoed
    const long = 'x'.repeat(2000);
    const l = await cli(['keys', 'revoke', '-', '--redis', redis.url], { input: long });
    assert.equal(l.code, 2);
    assert.ok(!l.stderr.includes('xxxxxxxxxx'));
  });

  it('keys revoke <id>: an id two keys share is refused (nothing revoked); an unknown id exits 1', async () => {
    const a = 'abcdef01' + '1'.repeat(56);
    const b = 'abcdef01' + '2'.repeat(56);
    for (const h of [a, b]) await redisCli(redis, 'HSET', `aoai:key:${h}`, 'tenant', 'ops-t2');
    const r = await cli(['--redis', redis.url, 'keys', 'revoke', 'abcdef01']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /2 keys have an id starting with abcdef01/);
    for (const h of [a, b]) assert.equal((await redisCli(redis, 'HGET', `aoai:key:${h}`, 'revoked')).stdout.trim(), '');
    const longer = await cli(['--redis', redis.url, 'keys', 'revoke', 'ABCDEF0111']);
    assert.equal(longer.code, 0, longer.stderr);
    assert.equal((await redisCli(redis, 'HGET', `aoai:key:${a}`, 'revoked')).stdout.trim(), '1');
    assert.equal((await redisCli(redis, 'HGET', `aoai:key:${b}`, 'revoked')).stdout.trim(), '');
    const none = await cli(['--redis', redis.url, 'keys', 'revoke', '0123456789']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no key with id 0123456789/);
    const short = await cli(['--redis', redis.url, 'keys', 'revoke', 'abcdef0']);
    assert.equal(short.code, 2);
  });

  it('--json: quota set/get and usage are JSON documents with numbers', async () => {
    const s = await cli(['--redis', redis.url, '--json', 'quota', 'set', 'ops-t3', '--tpm', '500', '--deployments', 'gpt-4o,o1']);
    assert.equal(s.code, 0, s.stderr);
    const q = JSON.parse(s.stdout);
    assert.equal(q.tenant, 'ops-t3');
    assert.deepEqual(q.limits.tpm, { value: 500, source: 'redis' });
    assert.deepEqual(q.limits.rpm, { value: null, source: 'none' });
    assert.deepEqual(q.deployments, ['gpt-4o', 'o1']);
    assert.equal(q.deployments_source, 'redis');
    const g = JSON.parse((await cli(['-c', router.configPath, 'quota', 'get', 'ops-t1', '--json'])).stdout);
    assert.deepEqual(g.limits.tpm, { value: 1000, source: 'config' });
    const now = new Date();
    const minute = now.toISOString().replace(/[-T:]/g, '').slice(0, 12);
    await redisCli(redis, 'HSET', `aoai:usage:{ops-t3}:minute:${minute}`, 'tokens', '42', 'requests', '3');
    const u = await cli(['--redis', redis.url, 'usage', 'ops-t3', '--json', '--period', 'minute']);
    assert.equal(u.code, 0, u.stderr);
    const doc = JSON.parse(u.stdout);
    assert.equal(doc.tenant, 'ops-t3');
    assert.equal(doc.windows.length, 1);
    assert.equal(doc.windows[0].period, 'minute');
    // the minute may have turned between the HSET and the CLI
    if (doc.windows[0].window === minute) assert.deepEqual(doc.windows[0].usage, { tokens: 42, requests: 3 });
    const all = JSON.parse((await cli(['--redis', redis.url, 'usage', 'ops-t3', '--json'])).stdout);
    assert.deepEqual(all.windows.map((w) => w.period), ['minute', 'day', 'month']);
  });
});

describe('Redis password without a URL', () => {
  let locked;
  const PASSWORD = `pw-${crypto.randomBytes(8).toString('hex')}`;
  before(async () => {
    locked = await startRedis();
    await redisCli(locked, 'CONFIG', 'SET', 'requirepass', PASSWORD);
  });
  after(async () => {
    await stopAll(locked);
  });

  it('--redis-password-env VAR, or the config’s redis.password_env with -c; never printed', async () => {
    const url = `redis://127.0.0.1:${locked.port}/0`;
    const none = await cli(['--redis', url, 'quota', 'get', 'pw-t']);
    assert.equal(none.code, 1, 'no password: refused by Redis');
    const env = await cli(['--redis', url, '--redis-password-env', 'OPS_REDIS_PW', 'quota', 'get', 'pw-t'], { env: { OPS_REDIS_PW: PASSWORD } });
    assert.equal(env.code, 0, env.stderr);
    const unset = await cli(['--redis', url, '--redis-password-env', 'OPS_REDIS_PW_UNSET', 'quota', 'get', 'pw-t']);
    assert.equal(unset.code, 1);
    assert.match(unset.stderr, /OPS_REDIS_PW_UNSET is not set/);
    // a config with password_env (and a backend key_env that is not set here: not needed for Redis)
    const dir = tempDir('aor-it-ops-');
    const cfg = path.join(dir, 'backends.yaml');
    writeFileSync(
      cfg,
      toYaml({
        listen: [{ address: '127.0.0.1', port: 1 }],
        redis: { url, password_env: 'OPS_REDIS_PW' },
        backends: [{ name: 'b', url: 'http://127.0.0.1:1', auth: { type: 'api_key', key_env: 'OPS_UNSET_BACKEND_KEY' } }],
      }),
    );
    const viaConf = await cli(['-c', cfg, 'quota', 'get', 'pw-t'], { env: { OPS_REDIS_PW: PASSWORD } });
    assert.equal(viaConf.code, 0, viaConf.stderr);
    const viaConfAndUrl = await cli(['quota', 'get', 'pw-t', '--redis', url, '-c', cfg], { env: { OPS_REDIS_PW: PASSWORD } });
    assert.equal(viaConfAndUrl.code, 0, viaConfAndUrl.stderr);
    for (const r of [env, viaConf, viaConfAndUrl, unset]) assert.ok(!r.stdout.includes(PASSWORD) && !r.stderr.includes(PASSWORD));
  });
});

describe('--check --no-secrets (CI without the secrets)', () => {
  const dir = tempDir('aor-it-ops-check-');
  const write = (name, obj) => {
    const p = path.join(dir, name);
    writeFileSync(p, typeof obj === 'string' ? obj : toYaml(obj));
    return p;
  };
  const base = {
    listen: [{ address: '127.0.0.1', port: 8080, tls: { cert_file: '/nonexistent/cert.pem', key_file: '/nonexistent/key.pem' } }],
    redis: { url: 'redis://127.0.0.1:6379', password_env: 'OPS_UNSET_REDIS_PW' },
    backends: [
      { name: 'east', url: 'https://east.example', auth: { type: 'api_key', key_env: 'OPS_UNSET_KEY' } },
      { name: 'west', url: 'https://west.example', auth: { type: 'api_key', key_file: '/run/secrets/nonexistent' } },
      { name: 'wi', url: 'https://wi.example', auth: { type: 'workload_identity' } },
    ],
    auth: { mode: 'jwt', jwt: [{ issuer: 'https://issuer.example', audiences: ['api://x'], secret_env: 'OPS_UNSET_JWT' }] },
  };
  const clean = { ...process.env };
  for (const k of Object.keys(clean)) if (k.startsWith('AZURE_')) delete clean[k];

  it('without --no-secrets the unset variables and missing files are problems; with it: exit 0', async () => {
    const p = write('ci.yaml', base);
    const full = await run(ROUTER_BIN, ['--check', '-c', p], { env: clean });
    assert.equal(full.code, 1);
    for (const re of [/OPS_UNSET_KEY/, /OPS_UNSET_REDIS_PW/, /OPS_UNSET_JWT/, /nonexistent/]) assert.match(full.stderr, re);
    const shape = await run(ROUTER_BIN, ['--check', '--no-secrets', '-c', p], { env: clean });
    checkSanitizers(shape.stderr);
    assert.equal(shape.code, 0, shape.stderr);
    assert.match(shape.stdout, /OK .*shape and references only/);
  });

  it('--no-secrets still refuses shape and reference problems', async () => {
    const cases = [
      [{ ...base, backends: [{ ...base.backends[0], auth: { type: 'api_key', key_env: 'A', key_file: '/x' } }] }, /set only one of key_env and key_file/],
      [{ ...base, backends: [{ ...base.backends[0], priorty: 1 }] }, /priorty/],
      [{ ...base, backends: [{ ...base.backends[0], auth: { type: 'api_key', key: 'inline-secret' } }] }, /secrets must come from/],
      [{ ...base, backends: [base.backends[0], { ...base.backends[0] }] }, /east/],
      [{ ...base, limits: { max_body_bytes: -5 } }, /max_body_bytes/],
    ];
    for (const [cfg, re] of cases) {
      const r = await run(ROUTER_BIN, ['--check', '--no-secrets', '-c', write('bad.yaml', cfg)], { env: clean });
      assert.equal(r.code, 1, `expected a problem matching ${re}: ${r.stdout}`);
      assert.match(r.stderr, re);
      assert.ok(!r.stderr.includes('shape-only-check-placeholder'));
    }
  });

  it('--no-secrets without --check is refused (a router never runs on placeholders)', async () => {
    const r = await run(ROUTER_BIN, ['--no-secrets', '-c', write('ci2.yaml', base)], { env: clean });
    assert.equal(r.code, 2);
  });
});
