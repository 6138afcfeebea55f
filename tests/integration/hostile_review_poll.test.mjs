// Outside review of the tenant:{default} poll (EVALSHA, NOSCRIPT -> once EVAL), the per-command
// `sent` flag and the teardown 503: real redis-server, a fake RESP server, the router binary.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { startMock, startRouter, startRedis, backendFor, chatBody, CHAT_PATH, fetchMetrics, metricSum, stopAll, run, pollUntil, sleep, SLOW, freePort, tempDir, track, waitExit } from './lib/harness.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const KEY = `aor_${crypto.randomBytes(24).toString('base64url')}`;
let east, redis;

before(async () => {
  east = await startMock('eastus', { tpm: 100000000, rpm: 1000000 });
  redis = await startRedis();
});
after(async () => {
  if (redis?.proc) redis.proc.kill('SIGCONT');
  await stopAll(east, redis);
});

const cli = (...args) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--raw', ...args]);
const errs = async (router) => metricSum(await fetchMetrics(router), 'aoai_router_redis_errors_total');
async function cmdstat(name) {
  const out = (await cli('INFO', 'commandstats')).stdout;
  const m = out.match(new RegExp(`cmdstat_${name}:calls=(\\d+)`));
  return m ? Number(m[1]) : 0;
}
const cfg = (url, extra = {}) => ({
  redis: { url, on_failure: 'open' },
  backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
  auth: { mode: 'key', keys: { static: [{ sha256: sha256(KEY), tenant: 'pt' }] } },
  tenants: { default: { tpm: 100000000, rpm: 10000000 } },
  ...extra,
});

const noTenants = (c) => {
  const { tenants, ...rest } = c;
  return rest;
};

/** a fake RESP server: every command recorded; the tenant:{default} poll answered by `poll(cmd)` */
async function startFake(poll) {
  const fake = { cmds: [], poll, sockets: new Set() };
  const server = net.createServer((s) => {
    fake.sockets.add(s);
    s.on('close', () => fake.sockets.delete(s));
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length === 0 || buf[0] !== 0x2a) return;
        let e = buf.indexOf('\r\n');
        if (e < 0) return;
        const n = Number(buf.subarray(1, e));
        let p = e + 2;
        const args = [];
        for (let i = 0; i < n; i++) {
          e = buf.indexOf('\r\n', p);
          if (e < 0) return;
          const len = Number(buf.subarray(p + 1, e));
          if (buf.length < e + 2 + len + 2) return;
          args.push(buf.subarray(e + 2, e + 2 + len).toString('latin1'));
          p = e + 2 + len + 2;
        }
        buf = buf.subarray(p);
        const cmd = args[0].toUpperCase();
        fake.cmds.push({ cmd, key: args[3], t: Date.now() });
        if (cmd === 'PING') s.write('+PONG\r\n');
        else if ((cmd === 'EVALSHA' || cmd === 'EVAL') && /tenant:\{default\}$/.test(args[3] ?? '')) s.write(fake.poll(cmd));
        else if (cmd === 'EVALSHA' || cmd === 'EVAL') s.write('-ERR fake\r\n');
        else if (cmd === 'MGET') s.write(`*${args.length - 1}\r\n` + '$-1\r\n'.repeat(args.length - 1));
        else s.write('+OK\r\n');
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  fake.url = `redis://127.0.0.1:${server.address().port}/0`;
  fake.polls = (from = 0) => fake.cmds.slice(from).filter((c) => (c.cmd === 'EVAL' || c.cmd === 'EVALSHA') && /tenant:\{default\}$/.test(c.key ?? ''));
  fake.stop = async () => {
    for (const s of fake.sockets) s.destroy();
    await new Promise((r) => server.close(r));
  };
  return fake;
}

function req(url, key = KEY) {
  return new Promise((resolve) => {
    const rq = http.request(`${url}${CHAT_PATH}`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'api-key': key } }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (b += d));
      res.on('end', () => resolve({ status: res.statusCode, body: b }));
      res.on('error', (e) => resolve({ status: 0, error: e.message }));
    });
    rq.on('error', (e) => resolve({ status: 0, error: e.message }));
    rq.end(JSON.stringify(chatBody({ max_tokens: 3 })));
  });
}

describe('tenant:{default} poll against a real Redis', () => {
  it('SCRIPT FLUSH every 50 ms for 2 s under load: no Redis error counted, EVAL at most once per worker per 500 ms tick, requests keep 200', async () => {
    const router = await startRouter({ config: cfg(redis.url) });
    try {
      await sleep(700);
      {
        // no load: only the poll runs EVAL; flushed before every tick, a worker's tick is EVALSHA(NOSCRIPT) + EVAL unless the other worker's EVAL cached it just before
        const ev0 = await cmdstat('eval');
        const sh0 = await cmdstat('evalsha');
        const t = Date.now();
        while (Date.now() - t < 1500) {
          await cli('SCRIPT', 'FLUSH');
          await sleep(40);
        }
        const ticks = Math.ceil((Date.now() - t) / 500) + 1;
        const ev = (await cmdstat('eval')) - ev0;
        const sh = (await cmdstat('evalsha')) - sh0;
        assert.ok(ev >= 2 && ev <= 2 * ticks && sh >= ev && sh <= 2 * ticks + 2, `idle: EVAL ${ev} EVALSHA ${sh} over ${ticks} ticks`);
      }
      const e0 = await errs(router);
      const eval0 = await cmdstat('eval');
      const sha0 = await cmdstat('evalsha');
      const t0 = Date.now();
      let flushes = 0;
      const statuses = [];
      const load = (async () => {
        while (Date.now() - t0 < 2000) statuses.push((await req(router.url)).status);
      })();
      while (Date.now() - t0 < 2000) {
        await cli('SCRIPT', 'FLUSH');
        flushes++;
        await sleep(50);
      }
      await load;
      const ms = Date.now() - t0;
      const evals = (await cmdstat('eval')) - eval0;
      const shas = (await cmdstat('evalsha')) - sha0;
      const ticks = Math.ceil(ms / 500) + 1;
      assert.ok(flushes > 10, `flushes ${flushes}`);
      assert.ok(statuses.length > 5 && statuses.every((s) => s === 200), `statuses ${statuses}`);
      // admit.c's own scripts reload on NOSCRIPT too; the poll alone: <= 2 workers * ticks
      assert.ok(evals <= 2 * ticks + statuses.length * 2 + 4, `EVAL ${evals} over ${ticks} ticks, ${statuses.length} requests`);
      assert.ok(shas > 0, 'EVALSHA used');
      assert.equal((await errs(router)) - e0, 0, 'aoai_router_redis_errors_total grew');
    } finally {
      await router.stop();
    }
  });

  it('reloads (SIGHUP) changing redis.prefix 10 times: the poll follows the last prefix (rpm 0 under p9: -> 403 within 1.5 s; the old prefix is ignored), DEL -> 200', async () => {
    const c = (prefix) => ({ ...noTenants(cfg(redis.url)), redis: { url: redis.url, on_failure: 'open', ...(prefix ? { prefix } : {}) } });
    const router = await startRouter({ config: c() });
    try {
      assert.equal((await req(router.url)).status, 200);
      for (let i = 0; i < 10; i++) {
        router.writeConfig(c(`p${i}_`));
        router.signal('SIGHUP');
        await sleep(60);
      }
      await cli('HSET', 'aoai:tenant:{default}', 'rpm', '0');
      await sleep(300);
      await cli('HSET', 'p9_tenant:{default}', 'rpm', '0');
      const got = await pollUntil(async () => (await req(router.url)).status === 403, { timeoutMs: 1500 * SLOW, intervalMs: 100 });
      assert.ok(got, `no 403 under p9: ${router.stderr().slice(-1500)}`);
      await cli('DEL', 'p9_tenant:{default}');
      const seq = [];
      const back = await pollUntil(async () => { const r = await req(router.url); seq.push(r.status); return r.status === 200; }, { timeoutMs: 3000 * SLOW, intervalMs: 200 });
      const last = await req(router.url);
      await cli('DEL', 'aoai:tenant:{default}');
      await sleep(1200);
      const afterOld = (await req(router.url)).status;
      assert.ok(back, `still 403 ${seq.length} times over 3 s after DEL of p9_tenant:{default} (${last.body}); after DEL of aoai:tenant:{default} too: ${afterOld}\n${router.stderr().slice(-2500)}`);
    } finally {
      await router.stop();
      await cli('DEL', 'p9_tenant:{default}', 'aoai:tenant:{default}');
    }
  });

  it('Redis restarted (script cache empty) on the same port: the poll recovers via NOSCRIPT -> EVAL; rpm 0 set after the restart gives 403 within 2 s; NOSCRIPTs not counted as errors after reconnect', async () => {
    const port = await freePort();
    const dir = tempDir('aor-poll-redis-');
    const spawnR = () => track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' }));
    const rcli = (...a) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '--raw', ...a]);
    let r1 = spawnR();
    await pollUntil(async () => (await rcli('PING')).stdout.includes('PONG'), { timeoutMs: 5000 });
    const url = `redis://127.0.0.1:${port}/0`;
    const router = await startRouter({ config: noTenants(cfg(url)) });
    try {
      assert.equal((await req(router.url)).status, 200);
      await sleep(600);
      r1.kill('SIGKILL');
      await waitExit(r1, 5000);
      await sleep(700);
      const off = router.stderr().length;
      r1 = spawnR();
      await pollUntil(async () => (await rcli('PING')).stdout.includes('PONG'), { timeoutMs: 5000 });
      // both workers connected again (connection failures before this are counted as errors, rightly)
      assert.ok(await pollUntil(() => (router.stderr().slice(off).match(/connected \(db 0\)/g) ?? []).length >= 2, { timeoutMs: 5000 * SLOW }));
      // wait for the workers to reconnect (their first EVALSHA gets NOSCRIPT)
      const e0 = await errs(router);
      await rcli('HSET', 'aoai:tenant:{default}', 'rpm', '0');
      const got = await pollUntil(async () => (await req(router.url)).status === 403, { timeoutMs: 2000 * SLOW, intervalMs: 100 });
      assert.ok(got, 'rpm 0 not applied after restart');
      await sleep(1000);
      const st = (await rcli('INFO', 'commandstats')).stdout;
      const evals = Number(st.match(/cmdstat_eval:calls=(\d+)/)?.[1] ?? 0);
      assert.ok(evals <= 2 + 6, `EVAL ${evals} after restart: ${st}`);
      assert.equal((await errs(router)) - e0, 0, router.stderr().slice(-2500));
    } finally {
      await router.stop();
      r1.kill('SIGKILL');
    }
  });

  it('SIGTERM (drain_timeout_ms 300) while 4 requests wait on a SIGSTOPped Redis: each gets 503 or a closed connection, none reaches the backend', async () => {
    const router = await startRouter({ config: cfg(redis.url, { threads: 1, limits: { drain_timeout_ms: 300 } }) });
    let res;
    let before;
    try {
      assert.equal((await req(router.url)).status, 200);
      await sleep(100);
      before = (await east.stats()).requests;
      redis.proc.kill('SIGSTOP');
      const pending = Promise.all(Array.from({ length: 4 }, () => req(router.url)));
      await sleep(150);
      const stopped = router.stop().catch((e) => e);
      res = await pending;
      await stopped;
    } finally {
      redis.proc.kill('SIGCONT');
    }
    const after_ = (await east.stats()).requests;
    for (const r of res) assert.ok(r.status === 0 || (r.status === 503 && /shutting_down|quota_store_unavailable/.test(r.body)), JSON.stringify(r));
    assert.equal(after_ - before, 0, `backend got ${after_ - before}; statuses ${res.map((r) => r.status)}`);
  });
});

describe('tenant:{default} poll against a hostile fake Redis', () => {
  let fake;
  let mode = 'noscript';
  before(async () => {
    fake = await startFake((cmd) => {
      if (mode === 'noscript') return '-NOSCRIPT No matching script. Please use EVAL.\r\n';
      if (mode === 'err') return '-ERR boom\r\n';
      if (mode === 'huge') return `*200000\r\n${':1\r\n'.repeat(200000)}`;
      if (mode === 'hugebulk') return `$${8 << 20}\r\n${'x'.repeat(8 << 20)}\r\n`;
      return '*5\r\n' + '$-1\r\n'.repeat(5);
    });
  });
  after(async () => {
    await fake.stop();
  });

  it('NOSCRIPT to EVALSHA and EVAL alike for 2 s: no tight loop (<= 2 commands per worker per tick), errors counted at most once per tick; back to EVALSHA when Redis behaves', async () => {
    mode = 'noscript';
    const router = await startRouter({ config: cfg(fake.url, { threads: 1 }) });
    try {
      await sleep(300);
      const from = fake.cmds.length;
      const e0 = await errs(router);
      const t0 = Date.now();
      await sleep(2000);
      const polls = fake.polls(from);
      const ms = Date.now() - t0;
      const e1 = await errs(router);
      const ticks = Math.ceil(ms / 500) + 1;
      const evals = polls.filter((c) => c.cmd === 'EVAL').length;
      const shas = polls.filter((c) => c.cmd === 'EVALSHA').length;
      assert.ok(polls.length >= 6 && polls.length <= 2 * ticks, `polls ${polls.length} in ${ms} ms (EVAL ${evals}, EVALSHA ${shas})`);
      assert.ok(Math.abs(evals - shas) <= 1, `EVAL ${evals} EVALSHA ${shas}`);
      assert.ok(e1 - e0 <= evals, `errors +${e1 - e0} for ${evals} EVAL NOSCRIPTs`);
      mode = 'ok';
      await sleep(700);
      const from2 = fake.cmds.length;
      await sleep(1100);
      const later = fake.polls(from2);
      assert.ok(later.length >= 2 && later.every((c) => c.cmd === 'EVALSHA'), later.map((c) => c.cmd).join(','));
    } finally {
      await router.stop();
    }
  });

  it('poll answered -ERR, a 200000-element array, then an 8 MiB bulk: no loop, router serves /metrics and requests throughout, exits cleanly', async () => {
    const router = await startRouter({ config: cfg(fake.url, { threads: 1 }) });
    try {
      for (const m of ['err', 'huge', 'hugebulk']) {
        mode = m;
        const from = fake.cmds.length;
        await sleep(1100);
        const polls = fake.polls(from);
        assert.ok(polls.length >= 1 && polls.length <= 4, `${m}: ${polls.length} polls in 1.1 s`);
        const t = Date.now();
        const text = await fetchMetrics(router);
        assert.ok(/aoai_router_redis_errors_total/.test(text));
        assert.ok(Date.now() - t < 1000 * SLOW, `${m}: /metrics took ${Date.now() - t} ms`);
      }
      mode = 'ok';
    } finally {
      const r = await router.stop();
      assert.equal(r.code ?? 0, 0);
    }
  });
});
