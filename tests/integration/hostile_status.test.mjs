// The status page under attack (issue 11): markup in strings from the config (a backend's region
// may hold < > " ' &), a client naming itself `<script>`, a flood of tenants, the page
// asked for on the data-plane listener. Checked in a real headless Chromium: no element the
// names could inject exists in the DOM, the names read back exactly as text.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { writeFileSync } from 'node:fs';
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
  freePort,
  redisCli,
  run,
  tempDir,
  toYaml,
  ROUTER_BIN,
} from './lib/harness.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const newKey = () => `aor_${crypto.randomBytes(32).toString('base64url')}`;
// backend names are [A-Za-z0-9_.-] (config.c); a region is free text from the operator's file
const EVIL_BACKEND = 'evil.backend';
const EVIL_REGION = `<script>alert(1)</script>"><img src=x onerror=alert(2)><b>x</b>&amp;'`;

async function chromiumDom(url) {
  const r = await run(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--virtual-time-budget=2000', '--dump-dom', url],
    { timeoutMs: 45000 },
  );
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

const decode = (s) =>
  s
    .replace(/<[^>]*>/g, '')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, '&')
    .trim();

describe('hostile status page', () => {
  let east, redis, router, mport;
  const EVIL_KEY = newKey();
  const keys = [];

  before(async () => {
    east = await startMock('eastus');
    redis = await startRedis();
    mport = await freePort();
    // a key whose hash names the tenant "<script>" (someone wrote it straight into Redis)
    assert.equal((await redisCli(redis, 'HSET', `aoai:key:${sha256(EVIL_KEY)}`, 'tenant', '<script>', 'name', 'x')).code, 0);
    for (let i = 0; i < 60; ++i) {
      keys.push(newKey());
      assert.equal((await redisCli(redis, 'HSET', `aoai:key:${sha256(keys[i])}`, 'tenant', `flood-${i}`, 'name', 'x')).code, 0);
    }
    router = await startRouter({
      config: {
        redis: { url: redis.url },
        metrics: { address: '127.0.0.1', port: mport, max_tenants: 100 },
        backends: [backendFor(east, { name: EVIL_BACKEND, region: EVIL_REGION })],
        auth: { mode: 'key' },
      },
    });
  });
  after(async () => stopAll(router, east, redis));

  it('a client whose key names the tenant "<script>" is refused and never reaches the page', async () => {
    const r = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': EVIL_KEY } });
    assert.equal(r.status, 401, r.body);
    const s = JSON.parse((await get(`http://127.0.0.1:${mport}`, '/status.json')).body);
    assert.ok(!s.tenants.some((t) => t.tenant.includes('<')), JSON.stringify(s.tenants));
  });

  it('a backend region full of markup is text in the DOM: no script, no img, no injected element', async () => {
    const dom = await chromiumDom(`http://127.0.0.1:${mport}/status`);
    assert.ok(!/<script/i.test(dom), 'a script element in the DOM');
    assert.ok(!/<img/i.test(dom), 'an img element in the DOM');
    assert.ok(!/<b>x<\/b>/.test(dom), 'an injected element in the DOM');
    const row = /<table id="backends">[\s\S]*?<tr><td>([\s\S]*?)<\/td><td>([\s\S]*?)<\/td>/.exec(dom);
    assert.ok(row, 'no backend row');
    assert.equal(decode(row[1]), EVIL_BACKEND);
    assert.equal(decode(row[2]), EVIL_REGION);
    // the page itself: no script allowed even if something slipped through
    const h = await get(`http://127.0.0.1:${mport}`, '/status');
    assert.match(h.headers['content-security-policy'], /default-src 'none'/);
    assert.equal(h.headers['x-content-type-options'], 'nosniff');
    assert.match(h.headers['content-type'], /^text\/html; charset=utf-8$/);
  });

  it('status.json carries the names exactly (JSON-escaped, parseable)', async () => {
    const s = JSON.parse((await get(`http://127.0.0.1:${mport}`, '/status.json')).body);
    assert.equal(s.backends[0].name, EVIL_BACKEND);
    assert.equal(s.backends[0].region, EVIL_REGION);
  });

  it('60 tenants: the page shows the 50 with most tokens, status.json counts all 60', async () => {
    for (let i = 0; i < 60; ++i) {
      // tenant i sends i % 3 + 1 requests: the top of the list is deterministic in tokens
      for (let k = 0; k < (i % 3) + 1; ++k) assert.equal((await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': keys[i] } })).status, 200);
    }
    const s = JSON.parse((await get(`http://127.0.0.1:${mport}`, '/status.json')).body);
    assert.equal(s.tenants_tracked, 60);
    assert.equal(s.tenants.length, 50);
    const tokens = s.tenants.map((t) => t.tokens);
    assert.deepEqual(tokens, [...tokens].sort((a, b) => b - a), 'most tokens first');
    // the 20 tenants with 3 requests all come before any with 1
    assert.equal(new Set(s.tenants.slice(0, 20).map((t) => Number(t.tenant.split('-')[1]) % 3)).size, 1);
  });

  it('the data-plane listener: /status, /status.json, with a query, a trailing slash, HTTP/2 → 404', async () => {
    for (const p of ['/status', '/status.json', '/status?x=1', '/status.json?format=html', '/status/'])
      for (const proto of ['h1', 'h2c']) assert.equal((await get(router.url, p, { proto })).status, 404, `${p} ${proto}`);
    assert.equal((await get(`http://127.0.0.1:${mport}`, '/status.json?x=1')).status, 200);
  });
});

describe('hostile status config', () => {
  it('a tenant named "<script>" in the config, and max_tenants out of range, are refused by --check', async () => {
    const dir = tempDir('aor-it-hstatus-');
    const base = { listen: [{ address: '127.0.0.1', port: 18080 }], backends: [{ name: 'b', url: 'http://127.0.0.1:9', region: 'r' }] };
    const cases = [
      [{ ...base, tenants: { '<script>': { tpm: 1 } } }, /tenants/],
      [{ ...base, metrics: { max_tenants: -1 } }, /max_tenants/],
      [{ ...base, metrics: { max_tenants: 10001 } }, /max_tenants/],
      [{ ...base, metrics: { max_tenant: 5 } }, /max_tenants/], // a typo: the nearest known name suggested
    ];
    for (const [conf, want] of cases) {
      const f = path.join(dir, 'c.yaml');
      writeFileSync(f, toYaml(conf));
      const r = await run(ROUTER_BIN, ['--check', '-c', f]);
      assert.notEqual(r.code, 0, JSON.stringify(conf));
      assert.match(r.stderr + r.stdout, want);
    }
    writeFileSync(path.join(dir, 'ok.yaml'), toYaml({ ...base, metrics: { max_tenants: 0 } }));
    const ok = await run(ROUTER_BIN, ['--check', '-c', path.join(dir, 'ok.yaml')]);
    assert.equal(ok.code, 0, ok.stderr);
  });
});
