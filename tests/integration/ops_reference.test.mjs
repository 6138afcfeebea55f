// The configuration reference (docs/configuration.md, issue 11) is checked against the code:
// every key of every known-key table in router/config.c appears in the section of the
// reference that names that table, every limits default in router/config.h is the one the
// reference gives, the README points at the reference, and the repo's example passes --check.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, ROUTER_BIN, run, tempDir } from './lib/harness.mjs';

const REF = path.join(ROOT, 'docs/configuration.md');
const CONFIG_C = path.join(ROOT, 'router/config.c');
const CONFIG_H = path.join(ROOT, 'router/config.h');

/** {table: [keys]} from `static const char *const <table>_keys[] = {"a", "b", NULL};` */
function keyTables() {
  const src = readFileSync(CONFIG_C, 'utf8');
  const out = {};
  for (const m of src.matchAll(/static const char \*const (\w+)_keys\[\]\s*=\s*\{([^}]*)\}/g))
    out[m[1]] = [...m[2].matchAll(/"([^"]+)"/g)].map((x) => x[1]);
  return out;
}

/** the text of the reference that names table `t`: its section (a heading ending in (`t`)) or its table row */
function sectionOf(ref, t) {
  const lines = ref.split('\n');
  const tag = `(\`${t}\`)`;
  const i = lines.findIndex((l) => l.includes(tag));
  if (i < 0) return null;
  if (!lines[i].startsWith('#')) return lines[i];
  let j = i + 1;
  while (j < lines.length && !/^#{1,4} /.test(lines[j])) ++j;
  return lines.slice(i, j).join('\n');
}

describe('docs/configuration.md', () => {
  const ref = readFileSync(REF, 'utf8');
  const tables = keyTables();

  it('router/config.c is read: the tables SPEC §3 needs are there', () => {
    for (const t of ['root', 'listen', 'tls', 'redis', 'limits', 'circuit', 'metrics', 'auth', 'issuer', 'auth_keys', 'static_key', 'tenant', 'backend', 'cred_api_key'])
      assert.ok(tables[t]?.length > 0, `no ${t}_keys table in router/config.c`);
    assert.ok(Object.keys(tables).length >= 20, Object.keys(tables).join(', '));
  });

  it('every known key of every table is in the section of the reference for that table', () => {
    const missing = [];
    for (const [t, keys] of Object.entries(tables)) {
      const sec = sectionOf(ref, t);
      if (sec === null) {
        missing.push(`no section or row tagged (\`${t}\`)`);
        continue;
      }
      for (const k of keys) if (!sec.includes(`\`${k}\``)) missing.push(`${t}: \`${k}\``);
    }
    assert.deepEqual(missing, []);
  });

  it('the checker itself notices a key the reference lacks', () => {
    const cut = ref.replace('`max_backend_connections`', '`max_backend_conns`');
    assert.ok(!sectionOf(cut, 'limits').includes('`max_backend_connections`'));
  });

  it('every limits default of router/config.h is the one the reference gives', () => {
    const h = readFileSync(CONFIG_H, 'utf8');
    const limits = sectionOf(ref, 'limits');
    let n = 0;
    for (const m of h.matchAll(/(?:uint64_t|unsigned)\s+(\w+);\s*\/\*\s*default (\d+)/g)) {
      const row = limits.split('\n').find((l) => l.startsWith(`| \`${m[1]}\``));
      if (!row && !tables.limits.includes(m[1])) continue; // circuit's fields: below
      assert.ok(row, `limits.${m[1]} has no row`);
      assert.equal(row.split('|')[3].trim(), m[2], `limits.${m[1]}: config.h says ${m[2]}: ${row}`);
      ++n;
    }
    assert.ok(n >= 10, `only ${n} defaults compared`);
  });

  it('the README sends readers to the reference, not outside the repo', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    assert.match(readme, /docs\/configuration\.md/);
  });

  it('the example in the reference passes --check (with its one variable set)', async () => {
    const m = /## Example\n\n```yaml\n([\s\S]*?)```/.exec(ref);
    assert.ok(m, 'no example');
    const file = path.join(tempDir('aor-it-ref-'), 'example.yaml');
    writeFileSync(file, m[1]);
    const r = await run(ROUTER_BIN, ['--check', '-c', file], { env: { AOAI_EASTUS_KEY: 'k', AOR_REDIS_PASSWORD: 'p' } });
    assert.equal(r.code, 0, r.stderr);
    const shape = await run(ROUTER_BIN, ['--check', '--no-secrets', '-c', file], { env: { AOAI_EASTUS_KEY: '', AOR_REDIS_PASSWORD: '' } });
    assert.equal(shape.code, 0, shape.stderr);
  });
});
