// `aoai-router --check`: every fixture in tests/fixtures/config is refused with the
// file:line and message its `# expect: <substring> at line N` comment announces; the repo's
// backends.yaml passes.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { ROOT, ROUTER_BIN, run, checkSanitizers } from './lib/harness.mjs';

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
