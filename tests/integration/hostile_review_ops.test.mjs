// Outside review of the operators' view (issue 11): a hostile client on the data plane reaching
// /status, /status.json or /metrics; the metrics listener's connections against the data plane's.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { startMock, startRouter, backendFor, get, stopAll, freePort, sleep, SLOW, ROUTER_BIN, tempDir, toYaml, track, waitExit, pollUntil, checkSanitizers, ROOT, h2load, httpRequest, startRedis, bodyFile, chatBody, CHAT_PATH } from './lib/harness.mjs';

// opens `n` HTTP/1.1 connections to host:port, each asking GET /healthz (keep-alive); resolves after
// `ms` to {answered, sockets}: how many got a response line, and the open sockets (caller destroys)
async function h1Flood(host, port, n, ms) {
  const sockets = [];
  let answered = 0;
  for (let i = 0; i < n; ++i) {
    const s = net.connect(port, host);
    s.on('error', () => {});
    let seen = false;
    s.on('data', (d) => {
      if (!seen && d.toString('latin1').startsWith('HTTP/1.1 ')) (seen = true), ++answered;
    });
    s.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
    sockets.push(s);
  }
  await sleep(ms);
  return { answered, sockets };
}

const status = async (base, p, proto = 'h1') => String((await get(base, p, { proto })).status);

describe('hostile review: operators view', () => {
  let east;
  before(async () => {
    east = await startMock('eastus');
  });
  after(async () => stopAll(east));

  it('a data-plane listener on the metrics port at another address serves no /status, /status.json or /metrics', async () => {
    // listen 127.0.0.2:P (the data plane) and metrics 127.0.0.1:P: two sockets, one port
    const port = await freePort();
    const router = await startRouter({
      config: {
        listen: [{ address: '127.0.0.2', port }],
        metrics: { address: '127.0.0.1', port },
        backends: [backendFor(east)],
      },
      port,
    });
    after(async () => stopAll(router));
    const data = `http://127.0.0.2:${port}`;
    const mon = `http://127.0.0.1:${port}`;
    for (const p of ['/status', '/status.json', '/metrics'])
      for (const proto of ['h1', 'h2c']) assert.equal(await status(data, p, proto), '404', `${proto} ${p} on the data plane`);
    for (const p of ['/status', '/status.json', '/metrics']) assert.equal(await status(mon, p), '200', `${p} on the metrics listener`);
  });

  it('the metrics listener holds at most 64 connections: a flood of idle ones cannot take the data plane\'s descriptors', async () => {
    const mport = await freePort();
    const router = await startRouter({
      config: { metrics: { address: '127.0.0.1', port: mport }, limits: { max_connections: 1000 }, backends: [backendFor(east)] },
    });
    after(async () => stopAll(router));
    const flood = await h1Flood('127.0.0.1', mport, 100, 1000 * SLOW);
    try {
      assert.ok(flood.answered >= 1 && flood.answered <= 64, `metrics connections served at once: ${flood.answered}`);
      assert.equal(await status(router.url, '/healthz'), '200', 'the data plane during the flood');
    } finally {
      for (const s of flood.sockets) s.destroy();
    }
    // the held ones leave the accept queue as the room comes back
    assert.equal(await status(`http://127.0.0.1:${mport}`, '/metrics'), '200');
  });

  it('a reload that drops listen[1] leaves its connections counted against limits.max_connections', async () => {
    const [p0, p1, mport] = [await freePort(), await freePort(), await freePort()];
    const listen = [
      { address: '127.0.0.1', port: p0 },
      { address: '127.0.0.1', port: p1 },
    ];
    const base = { metrics: { address: '127.0.0.1', port: mport }, backends: [backendFor(east)] };
    const router = await startRouter({ config: { ...base, listen, limits: { max_connections: 3 } } });
    after(async () => stopAll(router));
    const from = router.stderr().length;
    router.writeConfig({ ...base, listen: listen.slice(0, 1), limits: { max_connections: 3 } });
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/take effect only after a restart/, 5000 * SLOW, from), router.stderr());
    // listen[1] still runs (listeners move with a restart): 10 connections there, 3 served
    const flood = await h1Flood('127.0.0.1', p1, 10, 1000 * SLOW);
    try {
      assert.equal(flood.answered, 3, 'connections served on the dropped listener over max_connections 3');
    } finally {
      for (const s of flood.sockets) s.destroy();
    }
    // the metrics listener is not counted: it answers while the data plane is at its cap
    const held = await h1Flood('127.0.0.1', p0, 3, 300 * SLOW);
    try {
      assert.equal(await status(`http://127.0.0.1:${mport}`, '/metrics'), '200');
    } finally {
      for (const s of held.sockets) s.destroy();
    }
  });

  it('more idle client connections than RLIMIT_NOFILE allows: held in the accept queue, no accept() spin; SIGTERM still exits', async () => {
    // an operator's shell or unit with a low `ulimit -n` and the default max_connections (10000)
    const port = await freePort();
    const dir = tempDir('aor-it-nofile-');
    const configPath = path.join(dir, 'backends.yaml');
    writeFileSync(configPath, toYaml({ threads: 2, listen: [{ address: '127.0.0.1', port }], backends: [backendFor(east)] }));
    const env = {
      ...process.env,
      ASAN_OPTIONS: process.env.ASAN_OPTIONS ?? 'detect_leaks=1',
      LSAN_OPTIONS: process.env.LSAN_OPTIONS ?? `suppressions=${path.join(ROOT, 'tests/lsan.supp')}`, // as startRouter
    };
    const proc = track(spawn('prlimit', ['--nofile=512:512', ROUTER_BIN, '-c', configPath], { env, stdio: ['ignore', 'ignore', 'pipe'] }));
    let stderr = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => (stderr += d));
    const exited = waitExit(proc);
    after(async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    });
    assert.ok(await pollUntil(async () => (await get(`http://127.0.0.1:${port}`, '/healthz')).status === 200, { timeoutMs: 10000 * SLOW }), stderr);
    const flood = await h1Flood('127.0.0.1', port, 700, 1500 * SLOW);
    for (const s of flood.sockets) s.destroy();
    assert.ok(flood.answered >= 20 && flood.answered < 300, `connections served at once under nofile 512: ${flood.answered}`);
    // the workers are back to serving once the flood is gone, and SIGTERM ends the process
    assert.ok(await pollUntil(async () => (await get(`http://127.0.0.1:${port}`, '/healthz', { timeoutMs: 2000 })).status === 200, { timeoutMs: 5000 * SLOW }), 'the data plane after the flood');
    proc.kill('SIGTERM');
    const res = await Promise.race([exited, sleep(10000 * SLOW).then(() => 'timeout')]);
    assert.notEqual(res, 'timeout', 'aoai-router did not exit after SIGTERM');
    assert.equal(res.code, 0, stderr);
    checkSanitizers(stderr);
    assert.match(stderr, /max_connections/, 'the start names the clamp');
  });

  it('scrapes of /status, /status.json and /metrics during load and SIGHUP reloads that add and drop backends: every answer whole', async () => {
    const west = await startMock('westus');
    after(async () => stopAll(west));
    const mport = await freePort();
    const mk = (n) => ({
      metrics: { address: '127.0.0.1', port: mport, max_tenants: 3 },
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } }), ...(n ? [backendFor(west, { name: `west${n}`, deployments: { 'gpt-4o': 'gpt-4o', [`m${n}`]: 'x' } })] : [])],
    });
    const router = await startRouter({ config: mk(0) });
    after(async () => stopAll(router));
    const mon = `http://127.0.0.1:${mport}`;
    let stop = false;
    const seen = { status: 0, json: 0, metrics: 0, reloads: 0 };
    const scrape = async () => {
      while (!stop) {
        const [h, j, m] = await Promise.all(['/status', '/status.json', '/metrics'].map((p) => httpRequest(`${mon}${p}`)));
        assert.equal(h.status, 200);
        assert.match(h.body, /<\/html>\n$/, 'the page whole');
        assert.equal(j.status, 200);
        const doc = JSON.parse(j.body);
        assert.ok(doc.backends.length >= 1 && doc.backends[0].name === 'eastus', j.body.slice(0, 200));
        assert.equal(m.status, 200);
        assert.match(m.body, /aoai_router_build_info/);
        seen.status++, seen.json++, seen.metrics++;
      }
    };
    const reload = async () => {
      for (let i = 1; !stop; ++i) {
        router.writeConfig(mk(i % 3));
        router.signal('SIGHUP');
        seen.reloads++;
        await sleep(60);
      }
    };
    const scrapers = [scrape(), scrape(), reload()];
    const load = await h2load(['-D', '4', '-c', '4', '-m', '8', '-d', bodyFile(chatBody()), '-H', 'content-type: application/json', `${router.url}${CHAT_PATH}`], { timeoutMs: 25000 * SLOW });
    stop = true;
    await Promise.all(scrapers);
    assert.ok(load.requests.succeeded >= 100, load.output);
    assert.equal(load.requests.failed + load.requests.errored, 0, load.output);
    assert.equal(load.status['2xx'], load.requests.done, load.output);
    assert.ok(seen.status >= 5 && seen.reloads >= 5, JSON.stringify(seen));
    await router.stop(); // exits 0, no sanitizer report
  });
});
