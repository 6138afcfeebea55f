// `aoai-router --check`: every fixture in tests/fixtures/config is refused with the
// file:line and message its `# expect: <substring> at line N` comment announces; the repo's
// backends.yaml passes. The typo'd files of issue 7 are also refused at start-up and on
// SIGHUP (the running config kept); warnings print as file:line: warning: ... and exit 0.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT,
  ROUTER_BIN,
  run,
  checkSanitizers,
  tempDir,
  freePort,
  startMock,
  startRouter,
  backendFor,
  post,
  chatBody,
  CHAT_PATH,
  stopAll,
  httpRequest,
  SLOW,
} from './lib/harness.mjs';

const FIXTURES = path.join(ROOT, 'tests/fixtures/config');

function fixtures() {
  if (!existsSync(FIXTURES)) return [];
  return readdirSync(FIXTURES)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => {
      const text = readFileSync(path.join(FIXTURES, f), 'utf8');
      const m = /#\s*expect:\s*(.*?)\s+at line\s+(\d+)/.exec(text);
      return { file: f, expect: m ? m[1].replace(/^["']|["']$/g, '') : null, line: m ? Number(m[2]) : null };
    });
}

describe('--check', () => {
  it('the repo backends.yaml is valid: exit 0', async () => {
    const r = await run(ROUTER_BIN, ['--check', '-c', 'backends.yaml'], { cwd: ROOT });
    checkSanitizers(r.stderr);
    assert.equal(r.code, 0, r.stderr);
  });

  it('a missing file: exit 1 with a message naming it', async () => {
    const r = await run(ROUTER_BIN, ['--check', '-c', '/nonexistent/aor-missing.yaml']);
    checkSanitizers(r.stderr);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /aor-missing\.yaml/);
  });

  it('there are fixtures, each with an expect comment', () => {
    const all = fixtures();
    assert.ok(all.length > 0, `no fixtures in ${FIXTURES}`);
    for (const f of all) assert.ok(f.expect && f.line, `${f.file} has no "# expect: <substring> at line N" comment`);
  });

  for (const f of fixtures()) {
    it(`${f.file}: exit 1, "${f.file}:${f.line}:" and "${f.expect}"`, async () => {
      assert.ok(f.expect && f.line, `${f.file} has no expect comment`);
      const r = await run(ROUTER_BIN, ['--check', '-c', f.file], { cwd: FIXTURES });
      checkSanitizers(r.stderr);
      assert.equal(r.code, 1, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
      assert.ok(r.stderr.includes(`${f.file}:${f.line}:`), `stderr lacks "${f.file}:${f.line}:":\n${r.stderr}`);
      assert.ok(r.stderr.includes(f.expect), `stderr lacks "${f.expect}":\n${r.stderr}`);
      // the diagnostics line carries both
      const line = r.stderr.split('\n').find((l) => l.includes(`${f.file}:${f.line}:`) && l.includes(f.expect));
      assert.ok(line, `no single line with "${f.file}:${f.line}:" and "${f.expect}":\n${r.stderr}`);
    });
  }
});

// the typos issue 7 met: each passed --check and the router ran with the key ignored
const TYPO_FIXTURES = [
  'bad_unknown_top_key.yaml', // authentication:
  'bad_unknown_required_claims.yaml', // requried_claims
  'bad_unknown_priorty.yaml', // priorty
  'bad_unknown_deployment.yaml', // deployment:
  'bad_unknown_tenant_claim.yaml', // tenant_claim
  'bad_unknown_max_attemps.yaml', // max_attemps
  'bad_auth_omitted_public.yaml', // no auth: on 0.0.0.0
  'bad_backend_url_path.yaml', // a portal-copied url with /openai/deployments/...
];

/** a config file in a fresh directory; returns its path */
function writeTemp(name, text) {
  const file = path.join(tempDir('aor-check-'), name);
  writeFileSync(file, text);
  return file;
}

describe('the router refuses to start on a typo\'d file', () => {
  for (const name of TYPO_FIXTURES) {
    const f = fixtures().find((x) => x.file === name);
    it(`${name}: exit 1 before listening, "${name}:${f?.line}:" on stderr`, async () => {
      assert.ok(f?.expect, `${name} is missing or has no expect comment`);
      // on the old build these started and ran (until the timeout kills them: code null)
      const r = await run(ROUTER_BIN, ['-c', name], { cwd: FIXTURES, timeoutMs: 5000 * SLOW });
      checkSanitizers(r.stderr);
      assert.equal(r.code, 1, `exit ${r.code ?? r.signal}\nstderr: ${r.stderr}`);
      assert.ok(r.stderr.split('\n').some((l) => l.startsWith(`${name}:${f.line}:`) && l.includes(f.expect)), r.stderr);
      assert.match(r.stderr, /has errors; not starting/);
    });
  }
});

describe('--check warnings', () => {
  it('plain http:// JWKS on a non-loopback host: exit 0, "file:line: warning: ..." on stderr', async () => {
    const file = writeTemp(
      'http-jwks.yaml',
      [
        'listen:',
        '  - { address: 127.0.0.1, port: 8080 }',
        'auth:',
        '  mode: jwt',
        '  jwt:',
        '    - issuer: https://idp.example/',
        '      jwks_uri: http://idp.example/.well-known/jwks.json',
        '      audiences: [api://aoai-router]',
        '    - issuer: https://local.example/',
        '      jwks_uri: http://127.0.0.1:9999/jwks.json', // loopback: no warning
        '      audiences: [api://aoai-router]',
        'backends:',
        '  - { name: eastus, url: "https://contoso-eastus.openai.azure.com" }',
        '',
      ].join('\n'),
    );
    const r = await run(ROUTER_BIN, ['--check', '-c', file]);
    checkSanitizers(r.stderr);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.split('\n').filter(Boolean);
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0].startsWith(`${file}:7: warning: auth.jwt[0].jwks_uri: plain http://`), r.stderr);
    assert.match(r.stdout, /OK/);
  });

  it('default_max_tokens not below the tenant\'s tpm: --check passes with a warning naming the tenant (every request without a completion limit would be 429)', async () => {
    const file = writeTemp(
      'dmt.yaml',
      [
        'listen:',
        '  - { address: 127.0.0.1, port: 8080 }',
        'tenants:',
        '  default: { tpm: 1000, default_max_tokens: 500 }', // below: no warning
        '  big: { default_max_tokens: 1000 }', // inherits tpm 1000: equal, warned
        '  huge: { tpm: 5000, default_max_tokens: 8000 }', // warned
        '  open: { tpm: -1, default_max_tokens: 8000 }', // unlimited: no warning
        '  off: { tpm: 0, default_max_tokens: 8000 }', // blocked anyway (403): no warning
        'backends:',
        '  - { name: eastus, url: "https://contoso-eastus.openai.azure.com" }',
        '',
      ].join('\n'),
    );
    const r = await run(ROUTER_BIN, ['--check', '-c', file]);
    checkSanitizers(r.stderr);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.split('\n').filter(Boolean);
    assert.equal(lines.length, 2, r.stderr);
    assert.ok(lines[0].startsWith(`${file}:5: warning: tenants.big: default_max_tokens 1000 is not below its tpm 1000`), r.stderr);
    assert.ok(lines[1].startsWith(`${file}:6: warning: tenants.huge: default_max_tokens 8000 is not below its tpm 5000`), r.stderr);
  });

  it('auth: { mode: none } on 0.0.0.0: --check passes with a warning', async () => {
    const file = writeTemp(
      'open.yaml',
      'listen:\n  - { address: 0.0.0.0, port: 8080 }\nauth: { mode: none }\nbackends:\n  - { name: eastus, url: "https://contoso-eastus.openai.azure.com" }\n',
    );
    const r = await run(ROUTER_BIN, ['--check', '-c', file]);
    checkSanitizers(r.stderr);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stderr.startsWith(`${file}:3: warning: auth.mode: none: clients are not authenticated`), r.stderr);
  });

  it('auth omitted: refused on 0.0.0.0, fine on 127.0.0.1', async () => {
    const text = (addr) => `listen:\n  - { address: ${addr}, port: 8080 }\nbackends:\n  - { name: eastus, url: "https://contoso-eastus.openai.azure.com" }\n`;
    const open = writeTemp('public.yaml', text('0.0.0.0'));
    const r = await run(ROUTER_BIN, ['--check', '-c', open]);
    checkSanitizers(r.stderr);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.startsWith(`${open}:2: auth: missing: listen[0] (0.0.0.0:8080) is not loopback`), r.stderr);
    const local = writeTemp('local.yaml', text('127.0.0.1'));
    const l = await run(ROUTER_BIN, ['--check', '-c', local]);
    assert.equal(l.code, 0, l.stderr);
    assert.equal(l.stderr, '');
  });
});

describe('running open on purpose and reloading a typo', () => {
  let east;
  before(async () => {
    east = await startMock('eastus');
  });
  after(() => stopAll(east));

  it('auth: { mode: none } on 0.0.0.0 starts, warns on stderr and serves without credentials', async () => {
    const port = await freePort();
    const router = await startRouter({
      port,
      config: { listen: [{ address: '0.0.0.0', port }], auth: { mode: 'none' }, backends: [backendFor(east)] },
    });
    try {
      assert.match(router.stderr(), /:\d+: warning: auth\.mode: none: clients are not authenticated/);
      const r = await post(router.url, CHAT_PATH, chatBody());
      assert.equal(r.status, 200, r.body);
    } finally {
      await router.stop();
    }
  });

  it('SIGHUP with authentication: for auth: is refused: keys are still required, the old config kept', async () => {
    const KEY = 'aor-check-test-key-0123456789';
    const sha = createHash('sha256').update(KEY).digest('hex');
    const router = await startRouter({
      config: { auth: { mode: 'key', keys: { static: [{ sha256: sha, tenant: 't1' }] } }, backends: [backendFor(east)] },
    });
    try {
      assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 401);
      assert.equal((await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': KEY } })).status, 200);

      // the same file with the section name mistyped: on loopback, omitting auth: is allowed,
      // so only the unknown key stands between this file and an open router
      const typo = [
        'threads: 2',
        `listen: [ { address: 127.0.0.1, port: ${router.port} } ]`,
        'authentication:',
        '  mode: key',
        `  keys: { static: [ { sha256: "${sha}", tenant: t1 } ] }`,
        'backends:',
        `  - { name: eastus, url: "${east.url}", priorty: 1 }`,
        '',
      ].join('\n');
      router.writeConfig(typo);
      const from = router.stderr().length;
      router.signal('SIGHUP');
      assert.ok(await router.waitStderr(/reload refused/, undefined, from), `no refusal:\n${router.stderr().slice(from)}`);
      const out = router.stderr().slice(from);
      assert.ok(out.includes(`${router.configPath}:3: authentication: unknown key "authentication" (did you mean "auth"?)`), out);
      assert.ok(out.includes(`${router.configPath}:7: backends[0].priorty: unknown key "priorty" (did you mean "priority"?)`), out);

      // still closed, still serving with the old config
      assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 401);
      assert.equal((await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': KEY } })).status, 200);
      const ready = await httpRequest(`${router.url}/healthz`);
      assert.equal(ready.status, 200);
    } finally {
      await router.stop();
    }
  });
});
