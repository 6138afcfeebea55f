// The harness's own moving parts that no product test exercises yet.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis, run, toYaml, ROUTER_BIN, MOCK_BIN } from './lib/harness.mjs';
import { existsSync } from 'node:fs';

describe('harness', () => {
  it('binaries exist in AOR_BUILD', () => {
    assert.ok(existsSync(ROUTER_BIN), ROUTER_BIN);
    assert.ok(existsSync(MOCK_BIN), MOCK_BIN);
  });

  it('redis-server starts on a free port and answers', async () => {
    const redis = await startRedis();
    try {
      const r = await run('redis-cli', ['-p', String(redis.port), 'ping']);
      assert.equal(r.stdout.trim(), 'PONG');
      assert.match(redis.url, /^redis:\/\/127\.0\.0\.1:\d+\/0$/);
    } finally {
      await redis.stop();
    }
  });

  it('toYaml writes block YAML', () => {
    const y = toYaml({ a: 1, b: { c: 'x y', d: [{ e: 'f', g: { h: true } }, 'z'] }, e: {} });
    assert.equal(y, 'a: 1\nb:\n  c: "x y"\n  d:\n    - e: f\n      g:\n        h: true\n    - z\ne: {}\n');
  });

  it('aoai-router --version', async () => {
    const r = await run(ROUTER_BIN, ['--version']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^aoai-router \d+\.\d+\.\d+/);
  });
});
