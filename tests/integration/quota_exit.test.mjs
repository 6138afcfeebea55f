// Usage still waiting for Redis when the router stops (issue 8, "nothing lost"): with Redis
// dead, every usage delta the backlog holds is logged at exit with its numbers (an operator can
// add them by hand); with Redis back, what waits is written before the process ends — either
// way the sum of Redis' counters and the logged numbers equals what the backend reported.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startMock, startRouter, backendFor, post, chatBody, CHAT_PATH, stopAll, run, pollUntil, sleep, setBehaviour, resetMock, SLOW } from './lib/harness.mjs';
import { startDurableRedis } from './lib/quota_redis.mjs';
import { exitLines } from './lib/exit_report.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const KEY = `aor_${crypto.randomBytes(24).toString('base64url')}`;

let east, redis;

before(async () => {
  east = await startMock('eastus', { tpm: 100000000, rpm: 1000000 });
  redis = await startDurableRedis();
});

after(async () => {
  await stopAll(east, redis);
});

function cli(...args) {
  return run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--raw', ...args]);
}

function routerConfig(tenant) {
  return {
    redis: { url: redis.url, on_failure: 'open' },
    backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
    auth: { mode: 'key', keys: { static: [{ sha256: sha256(KEY), tenant }] } },
    tenants: { default: { tpm: 10000000, rpm: 100000, tokens_per_day: 1000000000 } },
  };
}

async function serve(router, n) {
  const sum = { requests: 0, prompt: 0, completion: 0, total: 0 };
  for (let i = 0; i < n; i++) {
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 3 + i }), { headers: { 'api-key': KEY } });
    assert.equal(r.status, 200, r.body);
    const u = r.json().usage;
    sum.requests += 1;
    sum.prompt += u.prompt_tokens;
    sum.completion += u.completion_tokens;
    sum.total += u.total_tokens;
  }
  return sum;
}

/** the exit lines of one window kind ('day', 'minute', 'month'), summed */
function logged(stderr, tenant, kind) {
  const sum = { requests: 0, prompt: 0, completion: 0, total: 0, lines: 0, perhaps: 0 };
  for (const l of exitLines(stderr)) {
    if (!l.key.startsWith(`aoai:usage:{${tenant}}:${kind}:`)) continue;
    assert.equal(l.deployment, '"gpt-4o"');
    sum.lines += 1;
    if (!l.sure) sum.perhaps += 1;
    sum.requests += l.requests;
    sum.prompt += l.prompt;
    sum.completion += l.completion;
    sum.total += l.total;
  }
  return sum;
}

async function inRedis(tenant) {
  const d = new Date().toISOString().slice(0, 10).replaceAll('-', '');
  const r = (await cli('HGETALL', `aoai:usage:{${tenant}}:day:${d}`)).stdout.split('\n');
  const o = {};
  for (let i = 0; i + 1 < r.length; i += 2) o[r[i]] = Number(r[i + 1]);
  return { requests: o.requests ?? 0, prompt: o.prompt_tokens ?? 0, completion: o.completion_tokens ?? 0, total: o.total_tokens ?? 0 };
}

describe('usage waiting for Redis when the router stops', () => {
  it('Redis dead at SIGTERM: every waiting delta is logged at exit with its numbers (day, minute and month each sum to what the backend reported); the exit is not held', async () => {
    const tenant = 'exit-dead';
    const router = await startRouter({ config: routerConfig(tenant) });
    await redis.kill();
    try {
      const want = await serve(router, 6); // open: admitted locally, usage into the backlog
      const t0 = Date.now();
      await router.stop();
      assert.ok(Date.now() - t0 < 5000 * SLOW, `stopped in ${Date.now() - t0} ms`);
      const err = router.stderr();
      for (const kind of ['day', 'month']) {
        const got = logged(err, tenant, kind);
        assert.deepEqual(
          { requests: got.requests, prompt: got.prompt, completion: got.completion, total: got.total },
          want,
          `${kind}: ${err.slice(-3000)}`,
        );
      }
      const minute = logged(err, tenant, 'minute');
      assert.equal(minute.total, want.total);
      assert.equal(minute.requests, want.requests);
      assert.doesNotMatch(err, new RegExp(KEY), 'the key never reaches the log');
    } finally {
      await redis.restart();
    }
    assert.deepEqual(await inRedis(tenant), { requests: 0, prompt: 0, completion: 0, total: 0 }, 'nothing reached Redis');
  });

  it('Redis back before SIGTERM: what waited is written (at the latest while the worker stops) or logged — Redis plus the exit lines equal what the backend reported, nothing counted twice', async () => {
    const tenant = 'exit-back';
    const router = await startRouter({ config: routerConfig(tenant) });
    await redis.kill();
    let want;
    try {
      want = await serve(router, 5);
    } finally {
      await redis.restart();
    }
    // the worker reconnects with backoff; whichever comes first (the 0.5 s flush or the stop) writes it
    await sleep(300);
    await router.stop();
    const err = router.stderr();
    const day = logged(err, tenant, 'day');
    const got = await pollUntil(async () => {
      const r = await inRedis(tenant);
      return r.requests + day.requests >= want.requests ? r : null;
    }, { timeoutMs: 3000 * SLOW });
    assert.ok(got, `Redis: ${JSON.stringify(await inRedis(tenant))}, logged ${JSON.stringify(day)}\n${err.slice(-3000)}`);
    if (day.perhaps === 0) {
      assert.deepEqual(
        { requests: got.requests + day.requests, prompt: got.prompt + day.prompt, completion: got.completion + day.completion, total: got.total + day.total },
        want,
        err.slice(-3000),
      );
    } else {
      // a write sent and never confirmed may be in Redis too: at least once, at most that
      assert.ok(got.total <= want.total && got.total + day.total >= want.total, JSON.stringify({ got, day, want }));
    }
  });

  it('Redis up and slow at SIGTERM (DEBUG SLEEP 0.6 s, inside the 1 s deadline): the settles in flight are awaited, not abandoned — Redis holds every token, nothing is logged as unrecorded', async () => {
    const tenant = 'exit-slow';
    const router = await startRouter({ config: routerConfig(tenant) });
    const want = await serve(router, 4);
    await pollUntil(async () => (await inRedis(tenant)).requests === want.requests, { timeoutMs: 3000 * SLOW });
    // one more request whose settle reaches Redis while it sleeps: the backend answers after
    // 400 ms, Redis sleeps from 150 ms to 750 ms, and the router is told to stop the moment
    // the answer is in, so the settle is still in flight when the worker stops
    await setBehaviour(east, { delay_ms: 400 });
    const pending = post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': KEY }, timeoutMs: 10000 * SLOW });
    await sleep(150);
    const sleeper = cli('DEBUG', 'SLEEP', '0.6');
    const r = await pending;
    assert.equal(r.status, 200, r.body);
    await router.stop();
    await resetMock(east);
    await sleeper;
    const u = r.json().usage;
    const got = await inRedis(tenant);
    assert.deepEqual(got, {
      requests: want.requests + 1,
      prompt: want.prompt + u.prompt_tokens,
      completion: want.completion + u.completion_tokens,
      total: want.total + u.total_tokens,
    });
    assert.doesNotMatch(router.stderr(), /at exit: key/, router.stderr().slice(-3000));
  });
});
