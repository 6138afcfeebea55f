// `./dev.sh stack` (issue 11): Redis, three mock regions, the router with three tenants,
// Prometheus scraping it with the alert rules loaded, and the traffic generator. Runs the script
// itself (AOR_DEV_SKIP_BUILD=1: the binaries of ./build) on free ports with its own state
// directory and a 1 s scrape interval, waits until Prometheus has the router's target up and has
// seen it serve traffic for several tenants, then sends SIGINT to the script's process group as a
// terminal's Ctrl-C does and checks that nothing it started is left: no process in its group, no
// port answering, its Redis stopped.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { ROOT, freePort, tempDir, pollUntil, httpRequest, waitExit, SLOW } from './lib/harness.mjs';

function listening(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function groupAlive(pgid) {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

async function promQuery(url, expr) {
  const r = await httpRequest(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`, { timeoutMs: 2000 });
  return JSON.parse(r.body).data.result;
}

describe('./dev.sh stack', () => {
  let proc;
  after(async () => {
    // a failed test never leaves the stack running
    if (proc && groupAlive(proc.pid)) {
      process.kill(-proc.pid, 'SIGINT');
      await waitExit(proc, 20000 * SLOW).catch(() => process.kill(-proc.pid, 'SIGKILL'));
    }
  });

  it('comes up with Prometheus scraping the router, which serves the tenants\' traffic; Ctrl-C stops every part', async () => {
    const names = ['AOR_DEV_REDIS_PORT', 'AOR_DEV_PORT', 'AOR_DEV_METRICS_PORT', 'AOR_DEV_PROM_PORT', 'AOR_DEV_MOCK1_PORT', 'AOR_DEV_MOCK2_PORT', 'AOR_DEV_MOCK3_PORT'];
    const ports = {};
    for (const n of names) ports[n] = String(await freePort());
    const dir = tempDir('aor-it-stack-');
    proc = spawn(path.join(ROOT, 'dev.sh'), ['stack'], {
      cwd: ROOT,
      detached: true, // its own process group, like a terminal's foreground job
      env: { ...process.env, AOR_DEV_SKIP_BUILD: '1', AOR_DEV_RUN_DIR: dir, AOR_DEV_SCRAPE_INTERVAL: '1s', ...ports },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => (err += d));
    proc.stdout.resume();
    const prom = `http://127.0.0.1:${ports.AOR_DEV_PROM_PORT}`;
    const metrics = `http://127.0.0.1:${ports.AOR_DEV_METRICS_PORT}`;

    // up: the URLs printed; Prometheus' target up; requests of at least two tenants answered 200
    const up = await pollUntil(
      async () => {
        if (proc.exitCode !== null) return false;
        try {
          const t = await promQuery(prom, 'up{job="aoai-router",namespace="dev"}');
          const served = await promQuery(prom, 'count(sum by (tenant) (aoai_router_requests_total{code="200"}) > 0)');
          return t.length === 1 && t[0].value[1] === '1' && Number(served[0]?.value[1]) >= 2;
        } catch {
          return false;
        }
      },
      { timeoutMs: 30000 * SLOW, intervalMs: 250 },
    );
    assert.ok(up, `the stack did not come up:\n${err}`);
    for (const u of [`http://127.0.0.1:${ports.AOR_DEV_PORT}`, `${metrics}/metrics`, `${metrics}/status`, prom])
      assert.ok(err.includes(u), `the URL ${u} is not printed:\n${err}`);
    const rules = JSON.parse((await httpRequest(`${prom}/api/v1/rules`)).body).data.groups.flatMap((g) => g.rules.map((r) => r.name));
    assert.ok(rules.includes('AoaiRouterNoBackendAvailable') && rules.includes('AoaiRouterTenantNearQuota'), `alert rules not loaded: ${rules}`);
    const text = (await httpRequest(`${metrics}/metrics`)).body;
    for (const b of ['eastus', 'westeurope', 'swedencentral']) assert.match(text, new RegExp(`aoai_router_backend_circuit_open\\{backend="${b}"\\} 0`));
    assert.match(text, /aoai_router_requests_total\{tenant="team-[abc]"/);

    // Ctrl-C
    process.kill(-proc.pid, 'SIGINT');
    const res = await waitExit(proc, 20000 * SLOW);
    assert.notEqual(res.code, null, `killed by ${res.signal}`);
    assert.match(err, /stopped the stack \(pids [\d ]+\)/);
    assert.match(err, new RegExp(`stopped the redis-server this script started \\(pid \\d+\\)`));
    assert.ok(!groupAlive(proc.pid), 'a process of the stack is still running');
    const open = [];
    for (const n of names) if (await listening(Number(ports[n]))) open.push(`${n}=${ports[n]}`);
    assert.deepEqual(open, [], 'ports still answering after Ctrl-C');
  });
});
