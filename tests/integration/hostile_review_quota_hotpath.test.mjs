// Outside review of the quota hot path (one-string reserve reply, RESP key arguments, key-block
// cache, deferred Redis flush, tenant:{default} layer, default_max_tokens): attacks through the
// router binary with a real redis-server.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startMock, startRouter, startRedis, backendFor, post, chatBody, CHAT_PATH, stopAll, redisCli, freePort } from './lib/harness.mjs';

const sha = (s) => crypto.createHash('sha256').update(s).digest('hex');

// The config accepts limits up to INT64_MAX (config.c get_int), the reserve script gets them as
// the fallback and prints the remaining headroom with %d into its one-string reply; the parser
// (read_int) takes at most 18 digits. A config limit of 10^18 must not turn every admission of
// the tenant into "unexpected reply from the reserve script" (503 with on_failure closed).
describe('config limits near the int64 range through the one-string reserve reply', () => {
  let mock, redis, router;
  const KEY = { big: 'aor_review_hot_big_0123456789abcdef', max: 'aor_review_hot_max_0123456789abcdef' };

  before(async () => {
    mock = await startMock('rqh-big');
    redis = await startRedis();
    const port = await freePort();
    router = await startRouter({
      config: `listen:\n  - { address: 127.0.0.1, port: ${port} }\nthreads: 1\n` +
        `redis: { url: ${redis.url}, on_failure: closed }\n` +
        `auth: { mode: key, keys: { static: [ { sha256: "${sha(KEY.big)}", tenant: big }, { sha256: "${sha(KEY.max)}", tenant: max } ] } }\n` +
        `tenants:\n  big: { tpm: 1000000000000000000, rpm: 1000000000000000000 }\n` +
        `  max: { tpm: 9223372036854775807, rpm: 9223372036854775807, tokens_per_day: 9223372036854775807 }\n` +
        `backends:\n  - { name: rqh-big, url: ${mock.url}, priority: 1, weight: 1, deployments: { gpt-4o: gpt-4o } }\n`,
      port,
    });
  });
  after(async () => {
    await stopAll(router, mock, redis);
  });

  for (const t of ['big', 'max']) {
    it(`tenant ${t}: admitted (200), remaining headers are non-negative numbers`, async () => {
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEY[t] } });
      assert.equal(r.status, 200, `${r.status} ${r.body}`);
      for (const h of ['x-ratelimit-remaining-tokens', 'x-ratelimit-remaining-requests']) {
        assert.match(r.headers[h] ?? '', /^\d+$/, `${h}: ${r.headers[h]}`);
      }
      assert.doesNotMatch(router.stderr(), /unexpected reply from the reserve script/);
    });
  }
});
