// Hostile clients (issue 6 items 1, 2, 3, 5): HPACK header bombs, over-size bodies, bodies
// without credentials, Rapid Reset and MadeYouReset, too many connections, a stdout reader
// that stalls. Each test attacks the real router with a raw HTTP/2 frame client
// (lib/hostile_h2.mjs) or raw sockets and asserts what a backend saw and what the client got.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  get,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  SLOW,
  httpRequest,
  fetchMetrics,
  metricSum,
  tempDir,
  toYaml,
  freePort,
  ROUTER_BIN,
  pollUntil,
  waitExit,
  checkSanitizers,
  h2load,
  startRedis,
  redisCli,
  run,
  sanitizerEnv,
} from './lib/harness.mjs';
import { connectH2, frames, requestHead, hpack, rssKiB } from './lib/hostile_h2.mjs';

let east;
const routers = [];

async function router(extra = {}, opts = {}) {
  const r = await startRouter({
    config: { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })], ...extra },
    ...opts,
  });
  routers.push(r);
  return r;
}

before(async () => {
  east = await startMock('eastus');
});

after(async () => {
  await stopAll(...routers, east);
});

beforeEach(async () => {
  await resetMocks(east);
});

const body = JSON.stringify(chatBody());

/** p-th percentile (0..1) of a list of numbers */
function pct(list, p) {
  const s = [...list].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

/** n sequential honest HTTP/1.1 requests on one keep-alive connection; their latencies in ms */
async function honestLatencies(url, n) {
  const http = await import('node:http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const out = [];
  try {
    for (let i = 0; i < n; ++i) {
      const t0 = process.hrtime.bigint();
      const res = await httpRequest(`${url}${CHAT_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, agent });
      assert.equal(res.status, 200, `honest request ${i}: ${res.status} ${res.body}`);
      out.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  } finally {
    agent.destroy();
  }
  return out;
}

describe('header limits (item 1)', () => {
  it('HPACK bomb: 10,000 references to a 3 KB header → 431 or the connection closed, nothing upstream, RSS bounded', async () => {
    const r = await router();
    const rssBefore = await rssKiB(r.proc.pid);
    const big = 'x'.repeat(3000);
    const results = [];
    for (let c = 0; c < 4; ++c) {
      const h2 = await connectH2(r.port);
      for (let s = 0; s < 5; ++s) {
        const id = 1 + 2 * s;
        // first stream of the connection puts the header in the dynamic table; all reference it
        const first = s === 0 ? hpack.literalIndexed('x-bomb', big) : Buffer.alloc(0);
        const refs = Buffer.alloc(10000, 0x80 | 62);
        const block = Buffer.concat([requestHead({ path: CHAT_PATH }), first, refs]);
        await h2.write(Buffer.concat([frames.headers(id, block.subarray(0, 16000), { endHeaders: block.length <= 16000 }),
          ...(block.length > 16000 ? [frames.continuation(id, block.subarray(16000))] : []),
          frames.data(id, body)]));
        const res = await h2.waitStream(id, 10000 * SLOW);
        // a block over twice the limits closes the connection before h2o decodes it (server.c, header-block guard)
        results.push(res?.status === undefined && h2.closed ? 'closed' : res);
        if (h2.closed) break;
      }
      h2.close();
    }
    const rssAfter = await rssKiB(r.proc.pid);
    for (const res of results) {
      if (res === 'closed') continue;
      assert.equal(res?.status, 431, `status ${res?.status}`);
      assert.equal(JSON.parse(res.body.toString()).error.code, 'headers_too_large');
    }
    assert.equal((await east.stats()).requests, 0, 'the backend saw a bombed request');
    // 20 requests × 30 MB decoded each: copying them would grow RSS by hundreds of MB
    assert.ok(rssAfter - rssBefore < 32 * 1024, `RSS grew by ${rssAfter - rssBefore} KiB`);
  });

  it('HTTP/1.1: headers over max_header_bytes → 431 JSON, over max_header_count → 431', async () => {
    const r = await router({ limits: { max_header_bytes: 8192, max_header_count: 20 } });
    const headers = { 'content-type': 'application/json' };
    for (let i = 0; i < 6; ++i) headers[`x-pad-${i}`] = 'p'.repeat(2000);
    let res = await post(r.url, CHAT_PATH, chatBody(), { headers });
    assert.equal(res.status, 431);
    assert.equal(res.json().error.code, 'headers_too_large');
    const many = { 'content-type': 'application/json' };
    for (let i = 0; i < 30; ++i) many[`x-n-${i}`] = 'v';
    res = await post(r.url, CHAT_PATH, chatBody(), { headers: many });
    assert.equal(res.status, 431);
    res = await post(r.url, CHAT_PATH, chatBody(), { proto: 'h2c', headers: many });
    assert.equal(res.status, 431);
    assert.equal((await east.stats()).requests, 0);
    // within limits: served
    res = await post(r.url, CHAT_PATH, chatBody(), { headers: { 'x-pad': 'p'.repeat(2000) } });
    assert.equal(res.status, 200);
  });
});

/** a raw HTTP/1.1 exchange: writes `head` (+ `bodyBytes` of filler, as far as the server reads), returns the reply text */
function rawH1(port, head, { bodyBytes = 0, timeoutMs = 10000 * SLOW } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let reply = '';
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(reply);
    };
    const timer = setTimeout(done, timeoutMs);
    s.on('data', (d) => {
      reply += d.toString('latin1');
      const m = /\r\n\r\n/.exec(reply);
      const len = /content-length:\s*(\d+)/i.exec(reply);
      if (m && len && reply.length >= m.index + 4 + Number(len[1])) done();
    });
    s.on('error', () => done());
    s.on('close', () => done());
    s.write(head);
    const chunk = Buffer.alloc(65536, 'x');
    let sent = 0;
    const pump = () => {
      while (sent < bodyBytes && !s.destroyed) {
        sent += chunk.length;
        if (!s.write(chunk)) return s.once('drain', pump);
      }
    };
    pump();
  });
}

describe('bodies (item 2)', () => {
  const MAX = 256 * 1024;
  const sha256 = async (x) => (await import('node:crypto')).createHash('sha256').update(x).digest('hex');

  it('HTTP/1.1: any body over max_body_bytes gets the JSON 413 (content-length and chunked), nothing upstream', async () => {
    const r = await router({ limits: { max_body_bytes: MAX } });
    const path = CHAT_PATH;
    for (const [what, head, bodyBytes] of [
      ['declared 100 MiB', `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n`, 0],
      ['chunked, endless', `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`, 0],
      ['max + 1', `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${MAX + 1}\r\n\r\n`, MAX + 1],
    ]) {
      let reply;
      if (what.startsWith('chunked')) {
        const chunk = `10000\r\n${'x'.repeat(0x10000)}\r\n`;
        reply = await rawH1(r.port, head + chunk.repeat(8));
      } else reply = await rawH1(r.port, head, { bodyBytes });
      assert.match(reply, /^HTTP\/1\.1 413 /, `${what}: ${reply.slice(0, 200)}`);
      assert.match(reply, /content-type: application\/json/i, what);
      const body = reply.slice(reply.indexOf('\r\n\r\n') + 4);
      assert.equal(JSON.parse(body).error.code, 'body_too_large', what);
    }
    assert.equal((await east.stats()).requests, 0);
  });

  it('HTTP/2: a body a little over gets the JSON 413; far over, h2o refuses the stream (RST_STREAM REFUSED_STREAM)', async () => {
    const r = await router({ limits: { max_body_bytes: MAX } });
    const h2 = await connectH2(r.port);
    const send = async (id, n) => {
      await h2.write(frames.headers(id, requestHead({ path: CHAT_PATH })));
      for (let off = 0; off < n; off += 16384) await h2.write(frames.data(id, Buffer.alloc(Math.min(16384, n - off), 'x'), { endStream: off + 16384 >= n }));
      return h2.waitStream(id, 10000 * SLOW);
    };
    let res = await send(1, MAX + 1);
    assert.equal(res.status, 413);
    assert.equal(JSON.parse(res.body.toString()).error.code, 'body_too_large');
    res = await send(3, 4 * MAX);
    assert.equal(res.rst, 7, `stream 3: ${JSON.stringify(res)}`); // REFUSED_STREAM: h2o 2.2.5 has no hook for an answer
    h2.close();
    assert.equal((await east.stats()).requests, 0);
  });

  it('a body without credentials is refused (401) before it is copied or scanned', async () => {
    const key = 'aor_' + 'k'.repeat(43);
    const r = await router({ auth: { mode: 'key', keys: { static: [{ sha256: await sha256(key), tenant: 't1' }] } } });
    // malformed JSON: scanning it first would answer 400
    let res = await post(r.url, CHAT_PATH, '{"messages": [', {});
    assert.equal(res.status, 401, res.body);
    res = await post(r.url, CHAT_PATH, '{"messages": [', { headers: { 'api-key': key } });
    assert.equal(res.status, 400, res.body);
    assert.equal((await east.stats()).requests, 0);
  });

  it('the in-flight body budget: over it, 503 overloaded with retry-after', async () => {
    const r = await router({ limits: { max_inflight_body_bytes: 100000 } });
    await east.setBehaviour({ delay_ms: 1500 });
    const big = JSON.stringify(chatBody({ messages: [{ role: 'user', content: 'y'.repeat(60000) }] }));
    const first = post(r.url, CHAT_PATH, big, {});
    await pollUntil(async () => (await east.stats()).active === 1, { timeoutMs: 5000 * SLOW });
    const second = await post(r.url, CHAT_PATH, big, { proto: 'h2c' });
    assert.equal(second.status, 503, second.body);
    assert.equal(second.json().error.code, 'overloaded');
    assert.equal(second.headers['retry-after'], '1');
    assert.equal((await first).status, 200);
    // released when the first ended
    await east.setBehaviour({});
    assert.equal((await post(r.url, CHAT_PATH, big, {})).status, 200);
  });

  it('HTTP/2: at most max_streams_per_connection requests of a connection are handled at once', async () => {
    const r = await router({ limits: { max_streams_per_connection: 2 } });
    await east.setBehaviour({ delay_ms: 800 });
    const h2 = await connectH2(r.port);
    const ids = [1, 3, 5, 7, 9];
    await h2.write(Buffer.concat(ids.flatMap((id) => [frames.headers(id, requestHead({ path: CHAT_PATH })), frames.data(id, body)])));
    await sleep(400 * SLOW);
    assert.ok((await east.stats()).active <= 2, `active ${(await east.stats()).active}`);
    for (const id of ids) assert.equal((await h2.waitStream(id, 10000 * SLOW)).status, 200);
    h2.close();
  });

  it('limits.max_connections: connections over the cap wait in the accept queue until one closes', async () => {
    const r = await router({ limits: { max_connections: 3 } });
    const held = [];
    for (let i = 0; i < 3; ++i) held.push(await connectH2(r.port));
    await sleep(100);
    // the 4th connects (kernel backlog) but is not served
    const extra = await connectH2(r.port);
    await extra.write(Buffer.concat([frames.headers(1, requestHead({ method: 'GET', path: '/healthz', contentType: null }), { endStream: true })]));
    await sleep(500 * SLOW);
    assert.equal(extra.streams.get(1)?.status, undefined, 'served over the cap');
    held[0].close();
    const res = await extra.waitStream(1, 5000 * SLOW);
    assert.equal(res?.status, 200);
    for (const c of [...held, extra]) c.close();
  });
});

const ATTACK = path.join(path.dirname(new URL(import.meta.url).pathname), 'lib', 'hostile_attack.mjs');

/** runs lib/hostile_attack.mjs in a child process; resolves to its JSON summary */
function attack(port, mode, count, { repeatMs = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [ATTACK, String(port), mode, String(count), CHAT_PATH, String(repeatMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let so = '';
    let se = '';
    p.stdout.on('data', (d) => (so += d));
    p.stderr.on('data', (d) => (se += d));
    p.once('exit', (code) => {
      try {
        resolve(JSON.parse(so.trim().split('\n').pop()));
      } catch {
        reject(new Error(`attacker exited ${code}: ${so} ${se}`));
      }
    });
  });
}

describe('Rapid Reset and MadeYouReset (item 3)', () => {
  for (const mode of ['rapid-reset', 'made-you-reset']) {
    it(`${mode}: 20,000 streams on one connection → ≤ 1 % reach the backend, the connection is closed`, async () => {
      const r = await router();
      const res = await attack(r.port, mode, 20000);
      const seen = (await east.stats()).requests;
      assert.ok(seen <= 200, `the backend saw ${seen} requests (attack: ${JSON.stringify(res)})`);
      assert.equal(res.closed + res.goaway >= 1, true, `connection not closed: ${JSON.stringify(res)}`);
      console.log(`${mode}: ${JSON.stringify(res)}, backend saw ${seen}`);
      // the router is fine afterwards
      assert.equal((await post(r.url, CHAT_PATH, chatBody(), { proto: 'h2c' })).status, 200);
      const m = await fetchMetrics(r);
      assert.ok(metricSum(m, 'aoai_router_client_conns_reset_closed_total') >= 1);
    });
  }

  it('an honest client on another connection keeps its p99 during a reset flood', async () => {
    const r = await router();
    await honestLatencies(r.url, 20); // warm up
    const alone = await honestLatencies(r.url, 200);
    const flood = attack(r.port, 'rapid-reset', 20000, { repeatMs: 4000 * SLOW });
    await sleep(200);
    const during = await honestLatencies(r.url, 200);
    const res = await flood;
    const seen = (await east.stats()).requests - 220 - 200;
    const p99a = pct(alone, 0.99);
    const p99d = pct(during, 0.99);
    console.log(`honest p99 alone ${p99a.toFixed(2)} ms, during the flood ${p99d.toFixed(2)} ms; attack ${JSON.stringify(res)}; backend saw ${seen} attack requests`);
    assert.ok(res.connections >= 2, 'the flood did not run');
    assert.ok(seen <= res.streams_written / 100, `the backend saw ${seen} of ${res.streams_written} reset streams`);
    assert.ok(p99d < Math.max(20 * p99a, p99a + 50), `p99 ${p99d} ms during the flood vs ${p99a} ms alone`);
  });
});

describe('logs never block a worker (item 5)', () => {
  it('stdout to a pipe nobody reads: /healthz and the data plane still answer; dropped lines are counted', async () => {
    const { openSync, closeSync } = await import('node:fs');
    const { execFileSync } = await import('node:child_process');
    const dir = tempDir('aor-it-stall-');
    const fifo = path.join(dir, 'stdout.fifo');
    execFileSync('mkfifo', [fifo]);
    const fd = openSync(fifo, 'r+'); // held open, never read: the pipe fills at 64 KiB
    const port = await freePort();
    const configPath = path.join(dir, 'backends.yaml');
    writeFileSync(
      configPath,
      toYaml({ threads: 1, listen: [{ address: '127.0.0.1', port }], backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })] }),
    );
    const proc = spawn(ROUTER_BIN, ['-c', configPath], { stdio: ['ignore', fd, 'pipe'], env: sanitizerEnv() });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    const url = `http://127.0.0.1:${port}`;
    try {
      assert.ok(await pollUntil(() => httpRequest(`${url}/healthz`, { timeoutMs: 1000 }).then((r) => r.status === 200, () => false), { timeoutMs: 10000 * SLOW }));
      // ~400 bytes a line: 5,000 lines are 2 MB, more than the pipe and the 1 MiB buffer
      const load = await h2load(['-n', '5000', '-c', '4', '-m', '8', `${url}/healthz`]);
      assert.equal(load.status['2xx'], 5000, load.output);
      const t0 = Date.now();
      assert.equal((await httpRequest(`${url}/healthz`, { timeoutMs: 2000 })).status, 200);
      const res = await post(url, CHAT_PATH, chatBody(), { timeoutMs: 5000 });
      assert.equal(res.status, 200);
      assert.ok(Date.now() - t0 < 2000 * SLOW, `took ${Date.now() - t0} ms`);
      const m = await fetchMetrics(url);
      assert.ok(metricSum(m, 'aoai_router_log_dropped_total', { log: 'access' }) > 0, m.match(/.*log_dropped.*/g)?.join('\n'));
      proc.kill('SIGTERM');
      const { code } = await waitExit(proc, 10000 * SLOW);
      assert.equal(code, 0, stderr);
      checkSanitizers(stderr);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      closeSync(fd);
    }
  });
});

describe('logs never block a worker: stderr (item 5)', () => {
  it('stderr to a pipe nobody reads: a flood of failover lines is dropped and counted, the router answers', async () => {
    const { openSync, closeSync } = await import('node:fs');
    const { execFileSync } = await import('node:child_process');
    const dir = tempDir('aor-it-stall2-');
    const fifo = path.join(dir, 'stderr.fifo');
    execFileSync('mkfifo', [fifo]);
    const fd = openSync(fifo, 'r+'); // never read
    const port = await freePort();
    const configPath = path.join(dir, 'backends.yaml');
    writeFileSync(
      configPath,
      toYaml({
        threads: 1,
        listen: [{ address: '127.0.0.1', port }],
        circuit: { failures: 1000000 },
        limits: { max_attempts: 1 },
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      }),
    );
    // every request fails over with one stderr line (~120 bytes): 3,000 of them overflow the pipe
    await east.setBehaviour({ status: 500 });
    const proc = spawn(ROUTER_BIN, ['-c', configPath], { stdio: ['ignore', 'ignore', fd], env: sanitizerEnv() });
    const url = `http://127.0.0.1:${port}`;
    try {
      assert.ok(await pollUntil(() => httpRequest(`${url}/healthz`, { timeoutMs: 1000 }).then((r) => r.status === 200, () => false), { timeoutMs: 10000 * SLOW }));
      writeFileSync(path.join(dir, 'body.json'), body);
      const load = await h2load(['-n', '3000', '-c', '4', '-m', '4', '-d', path.join(dir, 'body.json'), '-H', 'content-type: application/json', `${url}${CHAT_PATH}`], { timeoutMs: 60000 * SLOW });
      assert.equal(load.status['5xx'], 3000, load.output);
      await east.setBehaviour({});
      const t0 = Date.now();
      assert.equal((await httpRequest(`${url}/healthz`, { timeoutMs: 2000 })).status, 200);
      assert.equal((await post(url, CHAT_PATH, chatBody(), { timeoutMs: 5000 })).status, 200);
      assert.ok(Date.now() - t0 < 2000 * SLOW, `took ${Date.now() - t0} ms`);
      const m = await fetchMetrics(url);
      assert.ok(metricSum(m, 'aoai_router_log_dropped_total', { log: 'error' }) > 0, m.match(/.*log_dropped.*/g)?.join('\n'));
      proc.kill('SIGTERM');
      const { code } = await waitExit(proc, 10000 * SLOW);
      assert.equal(code, 0);
    } finally {
      await east.setBehaviour({});
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      closeSync(fd);
    }
  });
});

describe('shutdown (item 22)', () => {
  it('SIGTERM with key lookups pending on a stopped Redis, upstream requests and late keep-alive requests: clean exit', async () => {
    const crypto = await import('node:crypto');
    const sha = (x) => crypto.createHash('sha256').update(x).digest('hex');
    const redis = await startRedis();
    const key = 'aor_' + crypto.randomBytes(32).toString('base64url');
    await redisCli(redis, 'HSET', `aoai:key:${sha(key)}`, 'tenant', 't1', 'name', 'k');
    const r = await startRouter({
      config: {
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'key' },
        redis: { url: redis.url },
        limits: { drain_timeout_ms: 300 },
      },
    });
    try {
      assert.equal((await post(r.url, CHAT_PATH, chatBody(), { headers: { 'api-key': key } })).status, 200);
      // idle keep-alive connections, HTTP/1.1 and HTTP/2
      const idle = [];
      for (let i = 0; i < 8; ++i) {
        const s = net.connect(r.port, '127.0.0.1');
        await new Promise((res) => s.once('connect', res));
        s.on('error', () => {});
        s.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
        idle.push(s);
      }
      const h2idle = [];
      for (let i = 0; i < 4; ++i) h2idle.push(await connectH2(r.port));
      await sleep(100);
      // upstream requests that outlive the drain, lookups that wait on a stopped Redis
      await east.setBehaviour({ delay_ms: 3000 });
      const upstream = [1, 2, 3].map(() => post(r.url, CHAT_PATH, chatBody(), { headers: { 'api-key': key }, timeoutMs: 10000 }));
      redis.proc.kill('SIGSTOP');
      const h2 = await connectH2(r.port);
      const parts = [];
      for (let k = 0; k < 20; ++k) {
        const id = 1 + 2 * k;
        parts.push(frames.headers(id, requestHead({ path: CHAT_PATH, extra: [['api-key', 'aor_' + crypto.randomBytes(32).toString('base64url')]] })), frames.data(id, body));
      }
      await h2.write(Buffer.concat(parts));
      await sleep(150);
      r.signal('SIGTERM');
      // late requests on the idle keep-alive connections while the worker drains and tears down
      // (an unknown deployment: authenticated — a key-cache lookup — then answered at once, so
      // late requests do not pile up behind h2o's per-connection request limit)
      const NOPE = '/openai/deployments/nope/chat/completions?api-version=2024-10-21';
      const until = Date.now() + 1500 * SLOW;
      for (let k = 0; Date.now() < until; ++k) {
        for (const s of idle) if (!s.destroyed) s.write(`POST ${NOPE} HTTP/1.1\r\nhost: x\r\napi-key: ${key}\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        // h2o keeps taking new streams for 1 s after SIGTERM (its first GOAWAY names the last id)
        for (const c of h2idle) if (!c.closed && k < 20000) c.sock.write(frames.headers(1 + 2 * k, requestHead({ path: NOPE, extra: [['api-key', key]] }), { endStream: true }));
        await new Promise((res) => setTimeout(res, 0.3));
      }
      if (process.env.AOR_IT_DEBUG) console.log(r.stderr());
      await r.stop({ timeoutMs: 15000 * SLOW }); // exit 0, no sanitizer report (checked by stop)
      await Promise.allSettled(upstream);
      for (const s of idle) s.destroy();
      h2.close();
      for (const c of h2idle) c.close();
    } finally {
      redis.proc.kill('SIGCONT');
      await east.setBehaviour({});
      await redis.stop();
    }
  });
});

describe('reload of redis: (item 21)', () => {
  const sha = (x) => crypto.createHash('sha256').update(x).digest('hex');
  const newKey = () => 'aor_' + crypto.randomBytes(32).toString('base64url');
  const cli = (redis, pw, ...args) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), ...(pw ? ['--no-auth-warning', '-a', pw] : []), '--raw', ...args]);
  const put = (redis, pw, key, tenant) => cli(redis, pw, 'HSET', `aoai:key:${sha(key)}`, 'tenant', tenant, 'name', 'k');
  const ask = (r, key) => post(r.url, CHAT_PATH, chatBody(), { headers: { 'api-key': key } });

  it('a changed URL: the workers use the new Redis after SIGHUP', async () => {
    const a = await startRedis();
    const b = await startRedis();
    const base = { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })], auth: { mode: 'key' } };
    const r = await router({ ...base, redis: { url: a.url } });
    try {
      const inA = newKey();
      const inB = newKey();
      const laterA = newKey();
      await put(a, null, inA, 'ta');
      await put(a, null, laterA, 'ta');
      await put(b, null, inB, 'tb');
      assert.equal((await ask(r, inA)).status, 200);
      assert.equal((await ask(r, inB)).status, 401);
      const from = r.stderr().length;
      r.writeConfig({ ...base, redis: { url: b.url } });
      r.signal('SIGHUP');
      assert.ok(await r.waitStderr(/reloaded/, 5000 * SLOW, from));
      // both workers: every one of several fresh connections finds B's key and not A's
      const probe = await ask(r, await newKeyIn(b));
      assert.equal(probe.status, 200, `${probe.body}\n${r.stderr().slice(from)}`);
      // fresh keys each time (answers cached before the reload live out their TTL)
      for (let i = 0; i < 6; ++i) assert.equal((await ask(r, await newKeyIn(b))).status, 200, 'a worker still asks the old Redis');
      assert.equal((await ask(r, laterA)).status, 401, "a key only in the old Redis");
    } finally {
      await stopAll(a, b);
    }
    async function newKeyIn(redis) {
      const k = newKey();
      await put(redis, null, k, 'tb');
      return k;
    }
  });

  it('a rotated requirepass: the workers reconnect with the new password', async () => {
    const c = await startRedis();
    const dir = tempDir('aor-it-redispw-');
    const pwFile = path.join(dir, 'redis-password');
    try {
      await cli(c, null, 'CONFIG', 'SET', 'requirepass', 'first-password');
      writeFileSync(pwFile, 'first-password\n');
      const base = { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })], auth: { mode: 'key' } };
      const r = await router({ ...base, redis: { url: c.url, password_file: pwFile } });
      const k1 = newKey();
      await put(c, 'first-password', k1, 't1');
      assert.equal((await ask(r, k1)).status, 200);
      // rotate: Redis first, then the router's secret and SIGHUP, then old connections are cut
      await cli(c, 'first-password', 'CONFIG', 'SET', 'requirepass', 'second-password');
      writeFileSync(pwFile, 'second-password\n');
      const from = r.stderr().length;
      r.signal('SIGHUP');
      assert.ok(await r.waitStderr(/reloaded/, 5000 * SLOW, from));
      await sleep(300);
      await cli(c, 'second-password', 'CLIENT', 'KILL', 'TYPE', 'normal');
      const k2 = newKey();
      await put(c, 'second-password', k2, 't2');
      assert.ok(await pollUntil(async () => (await ask(r, k2)).status === 200, { timeoutMs: 5000 * SLOW }), 'never admitted after the rotation');
      for (let i = 0; i < 6; ++i) {
        const k = newKey();
        await put(c, 'second-password', k, 't3');
        assert.equal((await ask(r, k)).status, 200, 'a worker uses the old password');
      }
      assert.doesNotMatch(r.stderr(), /second-password|first-password/);
    } finally {
      await c.stop();
    }
  });
});
