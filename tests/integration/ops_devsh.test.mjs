// `./dev.sh run` (issue 11): on Ctrl-C it stops the Redis it started and says so; a Redis it
// finds already answering on its port is used, named, and left running. Runs the script itself
// (AOR_DEV_SKIP_BUILD=1: the binaries of ./build) on free ports with its own state directory,
// and sends SIGINT to its process group as a terminal's Ctrl-C does.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { ROOT, freePort, tempDir, pollUntil, startRedis, httpRequest, waitExit, SLOW } from './lib/harness.mjs';

function answers(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(String(d).startsWith('+PONG'));
    });
    s.once('error', () => resolve(false));
    s.setTimeout(2000, () => {
      s.destroy();
      resolve(false);
    });
  });
}

async function devRun(redisPort) {
  const ports = { AOR_DEV_REDIS_PORT: String(redisPort), AOR_DEV_PORT: String(await freePort()), AOR_DEV_MOCK1_PORT: String(await freePort()), AOR_DEV_MOCK2_PORT: String(await freePort()) };
  const proc = spawn(path.join(ROOT, 'dev.sh'), ['run'], {
    cwd: ROOT,
    detached: true, // its own process group, like a terminal's foreground job
    env: { ...process.env, AOR_DEV_SKIP_BUILD: '1', AOR_DEV_RUN_DIR: tempDir('aor-it-devsh-'), ...ports },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => (err += d));
  proc.stdout.resume();
  const url = `http://127.0.0.1:${ports.AOR_DEV_PORT}`;
  const up = await pollUntil(() => httpRequest(`${url}/healthz`, { timeoutMs: 1000 }).then((r) => r.status === 200, () => false), { timeoutMs: 20000 * SLOW, intervalMs: 100 });
  return { proc, ports, url, up, stderr: () => err };
}

async function ctrlC(run) {
  process.kill(-run.proc.pid, 'SIGINT');
  const res = await waitExit(run.proc, 30000 * SLOW);
  return res;
}

describe('./dev.sh run', () => {
  it('starts Redis, the mocks and the router; Ctrl-C stops the Redis it started and says so', async () => {
    const rport = await freePort();
    const run = await devRun(rport);
    try {
      assert.ok(run.up, `the router did not come up:\n${run.stderr()}`);
      assert.match(run.stderr(), new RegExp(`starting redis-server on 127\\.0\\.0\\.1:${rport}`));
      assert.ok(await answers(rport), 'its Redis answers');
      const models = await httpRequest(`${run.url}/v1/models`);
      assert.equal(models.status, 200);
    } finally {
      await ctrlC(run);
    }
    assert.match(run.stderr(), /stopped the redis-server this script started \(pid \d+\)/);
    assert.ok(await pollUntil(async () => !(await answers(rport)), { timeoutMs: 5000 * SLOW }), 'its Redis still answers after Ctrl-C');
    assert.ok(await pollUntil(() => httpRequest(`${run.url}/healthz`, { timeoutMs: 500 }).then(() => false, () => true), { timeoutMs: 5000 * SLOW }), 'the router still answers');
  });

  it('a Redis already on the port: used, said so, and left running', async () => {
    const mine = await startRedis();
    let run;
    try {
      run = await devRun(mine.port);
      assert.ok(run.up, `the router did not come up:\n${run.stderr()}`);
      assert.match(run.stderr(), new RegExp(`a Redis already answers on 127\\.0\\.0\\.1:${mine.port}: using it`));
      await ctrlC(run);
      assert.doesNotMatch(run.stderr(), /stopped the redis-server/);
      assert.ok(await answers(mine.port), 'dev.sh stopped a Redis it did not start');
    } finally {
      if (run && run.proc.exitCode === null && run.proc.signalCode === null) await ctrlC(run).catch(() => {});
      await mine.stop();
    }
  });
});
