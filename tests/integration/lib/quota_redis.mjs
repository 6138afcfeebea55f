// A redis-server that survives being killed: append-only file fsynced on every write, so a
// SIGKILL loses nothing Redis acknowledged, and restart() brings it back on the same port
// with the same data (the quota tests' "Redis killed mid-load and restarted"). DEBUG SLEEP is
// allowed from loopback, for a Redis that answers late but within the router's deadline.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { freePort, tempDir, pollUntil, waitExit, track, SLOW } from './harness.mjs';

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(String(d).startsWith('+PONG'));
    });
    s.once('error', () => resolve(false));
  });
}

export async function startDurableRedis() {
  const port = await freePort();
  const dir = tempDir('aor-it-qredis-');
  const r = { port, url: `redis://127.0.0.1:${port}/0`, proc: null, out: '' };
  r.start = async () => {
    // starting twice would orphan the first server and hold the test process open
    if (r.proc && r.proc.exitCode === null && r.proc.signalCode === null) return;
    r.proc = track(spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--enable-debug-command', 'local', '--dir', dir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ));
    r.proc.stdout.on('data', (d) => (r.out += d));
    r.proc.stderr.on('data', (d) => (r.out += d));
    const ok = await pollUntil(() => ping(port), { timeoutMs: 10000 * SLOW, intervalMs: 50 });
    if (!ok) throw new Error(`durable redis-server did not come up on ${port}: ${r.out}`);
  };
  r.kill = async () => {
    r.proc.kill('SIGKILL');
    await waitExit(r.proc, 5000 * SLOW).catch(() => {});
  };
  r.restart = () => r.start();
  r.stop = async () => {
    if (r.proc && r.proc.exitCode === null && r.proc.signalCode === null) {
      r.proc.kill('SIGCONT');
      r.proc.kill('SIGTERM');
      await waitExit(r.proc, 10000 * SLOW).catch(() => r.proc.kill('SIGKILL'));
    }
  };
  await r.start();
  return r;
}
