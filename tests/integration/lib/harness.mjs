// Integration-test harness: real processes (aoai-router, aoai-mock regions, redis-server,
// curl, h2load) started on loopback with free ports, and small helpers to drive them.
//
// Binaries come from $AOR_BUILD (absolute build directory; default <repo>/build).
// Every process started here is tracked and SIGKILLed if the test process exits early.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export { sleep };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BUILD = process.env.AOR_BUILD ? path.resolve(process.env.AOR_BUILD) : path.join(ROOT, 'build');
export const ROUTER_BIN = path.join(BUILD, 'aoai-router');
export const MOCK_BIN = path.join(BUILD, 'aoai-mock');

/** A sanitizer build is several times slower: waits (never assertions) scale with this. */
export const SLOW = /asan|sanitize/i.test(BUILD) || process.env.AOR_SLOW === '1' ? 3 : 1;

export const SANITIZER_PATTERNS = [/AddressSanitizer/, /LeakSanitizer/, /runtime error:/];

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/** Kills the child when the test process exits, however it exits (see dev.sh's --test-force-exit). */
export function track(child) {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** A temporary directory removed when the test process exits. */
const tempDirs = [];
process.on('exit', () => {
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

export function tempDir(prefix = 'aor-it-') {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

const scratch = tempDir('aor-it-scratch-');
let scratchSeq = 0;
function scratchFile(name) {
  return path.join(scratch, `${process.pid}-${++scratchSeq}-${name}`);
}

/** A port nobody listens on right now (listen on 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves with {code, signal} when the child exits (at once if it already has). */
export function waitExit(child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null)
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve, reject) => {
    let timer;
    if (timeoutMs != null) {
      timer = setTimeout(() => reject(new Error(`process ${child.pid} did not exit within ${timeoutMs} ms`)), timeoutMs);
    }
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/** Polls fn until it returns a truthy value; returns that value, or the last one after timeoutMs. */
export async function pollUntil(fn, { timeoutMs = 5000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let v;
  for (;;) {
    v = await fn();
    if (v || Date.now() >= deadline) return v;
    await sleep(intervalMs);
  }
}

// ---- YAML (block style, enough for backends.yaml) ------------------------------------

function yamlScalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  const s = String(v);
  const plain =
    /^[A-Za-z0-9_/.][A-Za-z0-9_/.:@+-]*$/.test(s) &&
    !/^(true|false|yes|no|on|off|null|~|y|n)$/i.test(s) &&
    !/^[-+]?(\d|\.\d)/.test(s);
  return plain ? s : JSON.stringify(s);
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function yamlLines(v, indent) {
  const pad = ' '.repeat(indent);
  const out = [];
  if (Array.isArray(v)) {
    for (const item of v) {
      if ((isPlainObject(item) && Object.keys(item).length) || (Array.isArray(item) && item.length)) {
        const inner = yamlLines(item, indent + 2);
        inner[0] = `${pad}- ${inner[0].slice(indent + 2)}`;
        out.push(...inner);
      } else {
        out.push(`${pad}- ${isPlainObject(item) ? '{}' : Array.isArray(item) ? '[]' : yamlScalar(item)}`);
      }
    }
    return out;
  }
  for (const [k, val] of Object.entries(v)) {
    if (val === undefined) continue;
    const key = yamlScalar(k);
    if (isPlainObject(val) && Object.keys(val).length) {
      out.push(`${pad}${key}:`);
      out.push(...yamlLines(val, indent + 2));
    } else if (Array.isArray(val) && val.length) {
      out.push(`${pad}${key}:`);
      out.push(...yamlLines(val, indent + 2));
    } else {
      out.push(`${pad}${key}: ${isPlainObject(val) ? '{}' : Array.isArray(val) ? '[]' : yamlScalar(val)}`);
    }
  }
  return out;
}

/** Serialises a config object as block-style YAML. */
export function toYaml(obj) {
  return yamlLines(obj, 0).join('\n') + '\n';
}

// ---- small HTTP client for control endpoints -------------------------------------------

/**
 * One HTTP/1.1 request with node's client. Returns {status, headers, body, json()}.
 * `agent` false (default) means a fresh connection that is closed afterwards.
 */
export function httpRequest(url, { method = 'GET', headers = {}, body, agent = false, timeoutMs = 10000 * SLOW, tlsInsecure = false } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const opts = { method, headers: { ...headers }, agent };
    if (tlsInsecure) opts.rejectUnauthorized = false;
    if (body !== undefined) {
      body = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
      opts.headers['content-length'] = Buffer.byteLength(body);
      if (!opts.headers['content-type']) opts.headers['content-type'] = 'application/json';
    }
    const req = mod.request(u, opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: text,
          json() {
            return JSON.parse(text);
          },
        });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// ---- aoai-mock ----------------------------------------------------------------------------

/**
 * Starts `aoai-mock --port 0 --name NAME` and waits for its "listening on HOST:PORT" line.
 * Options: tpm, rpm (the simulated budget behind its x-ratelimit-remaining-* headers).
 */
export async function startMock(name, { tpm, rpm } = {}) {
  const args = ['--port', '0', '--host', '127.0.0.1', '--name', name];
  if (tpm != null) args.push('--tpm', String(tpm));
  if (rpm != null) args.push('--rpm', String(rpm));
  const proc = track(spawn(MOCK_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] }));
  let stderr = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`aoai-mock ${name} not listening after ${10 * SLOW} s: ${stderr}`)), 10000 * SLOW);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      stderr += d;
      const m = /listening on (\S+):(\d+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[2]));
      }
    });
    proc.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`aoai-mock ${name} exited with ${code}: ${stderr}`));
    });
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const mock = {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    agent,
    stderr: () => stderr,
    stats: () => mockStats(mock),
    setBehaviour: (b) => setBehaviour(mock, b),
    reset: () => resetMock(mock),
    async stop() {
      agent.destroy();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const { code, signal } = await waitExit(proc, 10000 * SLOW).catch((e) => {
        proc.kill('SIGKILL');
        throw e;
      });
      if (SANITIZER_PATTERNS.some((re) => re.test(stderr)))
        console.error(`warning: aoai-mock ${name} reported a sanitizer problem:\n${stderr}`);
      return { code, signal };
    },
  };
  return mock;
}

async function mockCall(mock, method, p, body) {
  const res = await httpRequest(`${mock.url}${p}`, { method, body, agent: mock.agent });
  if (res.status !== 200) throw new Error(`${method} ${p} on mock ${mock.name}: ${res.status} ${res.body}`);
  return res.json();
}

/** GET /_mock/stats */
export function mockStats(mock) {
  return mockCall(mock, 'GET', '/_mock/stats');
}

/** POST /_mock/behaviour (replaces the previous switch as a whole) */
export function setBehaviour(mock, behaviour) {
  return mockCall(mock, 'POST', '/_mock/behaviour', behaviour);
}

/** POST /_mock/reset */
export function resetMock(mock) {
  return mockCall(mock, 'POST', '/_mock/reset', {});
}

/** Resets every mock given. */
export async function resetMocks(...mocks) {
  await Promise.all(mocks.flat().map((m) => resetMock(m)));
}

// ---- redis-server -------------------------------------------------------------------------

/** redis-server on a free loopback port, without persistence. */
export async function startRedis() {
  const port = await freePort();
  const dir = tempDir('aor-it-redis-');
  const proc = track(
    spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  let out = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const ok = await pollUntil(
    () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null) return resolve(false);
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => {
          s.write('PING\r\n');
        });
        s.once('data', (d) => {
          s.destroy();
          resolve(String(d).startsWith('+PONG'));
        });
        s.once('error', () => resolve(false));
      }),
    { timeoutMs: 10000 * SLOW, intervalMs: 50 },
  );
  if (!ok) {
    proc.kill('SIGKILL');
    throw new Error(`redis-server did not come up on ${port}: ${out}`);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await waitExit(proc, 10000 * SLOW).catch((e) => {
        proc.kill('SIGKILL');
        throw e;
      });
    },
  };
}

// ---- aoai-router ---------------------------------------------------------------------------

/** A backend entry pointing at a mock. */
export function backendFor(mock, { name = mock.name, priority = 1, ...rest } = {}) {
  return { name, url: mock.url, region: name, priority, weight: 1, ...rest };
}

/**
 * Starts the router with a config written to a temp dir.
 *   config: an object (listen/threads filled in when absent) or a YAML string (used as is;
 *           `port` must then be given so the harness knows where to look)
 *   env:    extra environment for the router process
 *   ready:  wait for GET /healthz 200 (default true)
 * The returned object's stop() SIGTERMs it, awaits its exit and throws when it did not exit 0
 * or its stderr shows a sanitizer report.
 */
export async function startRouter({ config, env = {}, port, ready = true, tls = false } = {}) {
  const dir = tempDir('aor-it-router-');
  const configPath = path.join(dir, 'backends.yaml');
  let scheme = tls ? 'https' : 'http';
  if (typeof config === 'string') {
    if (port == null) throw new Error('startRouter: a YAML string config needs `port`');
    writeFileSync(configPath, config);
  } else {
    config = { ...config };
    if (!config.listen) {
      port = port ?? (await freePort());
      config.listen = [{ address: '127.0.0.1', port }];
    } else {
      port = port ?? config.listen[0].port;
      if (config.listen[0].tls) scheme = 'https';
    }
    if (config.threads === undefined) config.threads = 2;
    writeFileSync(configPath, toYaml(config));
  }
  const proc = track(
    spawn(ROUTER_BIN, ['-c', configPath], {
      cwd: dir,
      env: { ...sanitizerEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  let stdout = '';
  let stderr = '';
  let spawnError = null;
  proc.once('error', (e) => (spawnError = e));
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = waitExit(proc);
  const url = `${scheme}://127.0.0.1:${port}`;

  const router = {
    port,
    url,
    proc,
    dir,
    configPath,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    /** access-log lines (JSON) written so far */
    accessLog() {
      return stdout
        .split('\n')
        .filter((l) => l.trim().startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l);
          } catch {
            return { unparsable: l };
          }
        });
    },
    writeConfig(next) {
      writeFileSync(configPath, typeof next === 'string' ? next : toYaml({ threads: 2, listen: [{ address: '127.0.0.1', port }], ...next }));
    },
    signal(sig) {
      proc.kill(sig);
    },
    /** waits until stderr (from offset `from`) matches re (returns true) or the timeout passes (false) */
    async waitStderr(re, timeoutMs = 5000 * SLOW, from = 0) {
      return pollUntil(() => re.test(stderr.slice(from)), { timeoutMs, intervalMs: 50 });
    },
    async stop({ timeoutMs = 30000 * SLOW } = {}) {
      if (spawnError) return { code: null, signal: null };
      const alive = proc.exitCode === null && proc.signalCode === null;
      if (alive) proc.kill('SIGTERM');
      let res;
      try {
        res = await waitExit(proc, timeoutMs);
      } catch (e) {
        proc.kill('SIGKILL');
        await waitExit(proc, 5000);
        throw new Error(`aoai-router did not exit within ${timeoutMs} ms of SIGTERM\nstderr:\n${tail(stderr)}`);
      }
      checkSanitizers(stderr);
      if (res.code !== 0)
        throw new Error(
          `aoai-router exited with ${res.code ?? res.signal} ${alive ? 'after SIGTERM' : 'on its own, before the test stopped it (crash?)'}\nstderr:\n${tail(stderr)}`,
        );
      return res;
    },
  };

  if (ready) {
    const deadline = Date.now() + 15000 * SLOW;
    for (;;) {
      if (spawnError) throw new Error(`cannot start ${ROUTER_BIN}: ${spawnError.message}`);
      if (proc.exitCode !== null || proc.signalCode !== null) {
        checkSanitizers(stderr);
        throw new Error(`aoai-router exited with ${proc.exitCode ?? proc.signalCode} before it was ready\nconfig:\n${readFileSync(configPath, 'utf8')}\nstderr:\n${stderr}`);
      }
      const ok = await httpRequest(`${url}/healthz`, { timeoutMs: 2000 * SLOW, tlsInsecure: true }).then(
        (r) => r.status === 200,
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`aoai-router not healthy after ${15 * SLOW} s\nstderr:\n${stderr}`);
      }
      await sleep(50);
    }
  }
  return router;
}

function tail(s, n = 4000) {
  return s.length > n ? '…' + s.slice(-n) : s;
}

/** The environment a router process runs with: leak checks on, h2o's per-thread caches suppressed (tests/lsan.supp). */
export function sanitizerEnv() {
  return {
    ...process.env,
    ASAN_OPTIONS: process.env.ASAN_OPTIONS ?? 'detect_leaks=1',
    LSAN_OPTIONS: process.env.LSAN_OPTIONS ?? `suppressions=${path.join(ROOT, 'tests/lsan.supp')}`,
  };
}

/** Throws when a sanitizer reported anything. */
export function checkSanitizers(stderr) {
  const hits = SANITIZER_PATTERNS.map((re) => stderr.search(re)).filter((i) => i >= 0);
  if (hits.length === 0) return;
  const first = Math.min(...hits);
  // the report starts at the "==PID==ERROR:" line (or the source location of a UBSan report)
  const start = Math.max(0, stderr.lastIndexOf('\n', Math.max(0, first - 1)) + 1, stderr.lastIndexOf('=================', first));
  const keep = path.join(os.tmpdir(), `aor-it-sanitizer-${process.pid}-${Date.now()}.log`);
  try {
    writeFileSync(keep, stderr);
  } catch {
    /* best effort */
  }
  const excerpt = stderr.slice(start, start + 8000);
  throw new Error(`sanitizer report in router stderr (full stderr kept in ${keep}):\n${excerpt}`);
}

// ---- curl --------------------------------------------------------------------------------

function parseHeaderBlocks(raw) {
  // every response header block (1xx ones included); the caller wants the last final one
  const blocks = [];
  let cur = null;
  for (const line of raw.split(/\r?\n/)) {
    if (/^HTTP\/\S+\s+\d{3}/.test(line)) {
      cur = { statusLine: line, status: Number(line.split(/\s+/)[1]), headers: {}, list: [] };
      blocks.push(cur);
    } else if (cur && line.includes(':')) {
      const i = line.indexOf(':');
      const name = line.slice(0, i).trim().toLowerCase();
      const value = line.slice(i + 1).trim();
      cur.list.push([name, value]);
      cur.headers[name] = name in cur.headers ? `${cur.headers[name]}, ${value}` : value;
    }
  }
  const finals = blocks.filter((b) => b.status >= 200);
  return finals.length ? finals[finals.length - 1] : blocks[blocks.length - 1] ?? { status: 0, headers: {}, list: [] };
}

/**
 * Runs the real curl binary. Returns {exitCode, status, httpVersion, headers, headerList,
 * body, stderr, json()}. `args` are curl arguments (URL included); -sS, -D, -o and -w are added.
 */
export function curl(args, { timeoutMs = 60000 * SLOW } = {}) {
  const hdr = scratchFile('h.txt');
  const out = scratchFile('b.bin');
  const full = ['-sS', '-D', hdr, '-o', out, '-w', '%{http_code} %{http_version}', '--max-time', String(Math.ceil(timeoutMs / 1000)), ...args];
  return new Promise((resolve, reject) => {
    const proc = track(spawn('curl', full, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let so = '';
    let se = '';
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => (so += d));
    proc.stderr.on('data', (d) => (se += d));
    proc.once('error', reject);
    proc.once('exit', (code) => {
      const [codeStr, version] = so.trim().split(/\s+/);
      const raw = existsSync(hdr) ? readFileSync(hdr, 'utf8') : '';
      const body = existsSync(out) ? readFileSync(out, 'utf8') : '';
      rmSync(hdr, { force: true });
      rmSync(out, { force: true });
      const block = parseHeaderBlocks(raw);
      resolve({
        exitCode: code,
        status: Number(codeStr) || block.status || 0,
        httpVersion: version,
        headers: block.headers,
        headerList: block.list,
        rawHeaders: raw,
        body,
        stderr: se,
        json() {
          return JSON.parse(body);
        },
      });
    });
  });
}

/** Writes body (object → JSON) to a scratch file and returns its path, for --data-binary @file. */
export function bodyFile(body) {
  const f = scratchFile('req.json');
  writeFileSync(f, typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
  return f;
}

export const CHAT_PATH = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

export function chatBody(extra = {}) {
  return { messages: [{ role: 'user', content: 'hello there, router' }], ...extra };
}

/**
 * POSTs a JSON body through curl.
 *   proto: 'h1' (--http1.1, default) | 'h2c' (--http2-prior-knowledge) | 'h2' (--http2, TLS)
 *   headers: {name: value}; args: extra curl arguments
 */
export function post(baseUrl, p, body, { proto = 'h1', headers = {}, args = [], contentType = 'application/json', timeoutMs } = {}) {
  const a = [...protoArgs(proto), '-X', 'POST'];
  if (contentType) a.push('-H', `content-type: ${contentType}`);
  for (const [k, v] of Object.entries(headers)) a.push('-H', `${k}: ${v}`);
  a.push('--data-binary', `@${bodyFile(body)}`, ...args, `${baseUrl}${p}`);
  return curl(a, { timeoutMs });
}

/** GET through curl. */
export function get(baseUrl, p, { proto = 'h1', args = [], timeoutMs } = {}) {
  return curl([...protoArgs(proto), ...args, `${baseUrl}${p}`], { timeoutMs });
}

function protoArgs(proto) {
  switch (proto) {
    case 'h1':
      return ['--http1.1'];
    case 'h2c':
      return ['--http2-prior-knowledge'];
    case 'h2':
      return ['--http2'];
    default:
      throw new Error(`unknown proto ${proto}`);
  }
}

/**
 * Starts a streaming request with `curl -N` and records SSE events as they arrive.
 * Returns {proc, events: [{data, t}], waitEvents(n, timeoutMs), done: Promise<{exitCode,
 * status, headers, body, stderr}>, abort()}.
 */
export function curlStream(baseUrl, p, body, { proto = 'h1', headers = {}, args = [], timeoutMs = 60000 * SLOW } = {}) {
  const hdr = scratchFile('sh.txt');
  const a = ['-sS', '-N', '-D', hdr, '--max-time', String(Math.ceil(timeoutMs / 1000)), ...protoArgs(proto), '-X', 'POST', '-H', 'content-type: application/json'];
  for (const [k, v] of Object.entries(headers)) a.push('-H', `${k}: ${v}`);
  a.push('--data-binary', `@${bodyFile(body)}`, ...args, `${baseUrl}${p}`);
  const proc = track(spawn('curl', a, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const started = Date.now();
  const events = [];
  const waiters = [];
  let body_ = '';
  let pendingText = '';
  let se = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => (se += d));
  proc.stdout.on('data', (d) => {
    const t = Date.now();
    body_ += d;
    pendingText += d;
    let i;
    while ((i = pendingText.search(/\r?\n\r?\n/)) >= 0) {
      const raw = pendingText.slice(0, i);
      pendingText = pendingText.slice(i).replace(/^\r?\n\r?\n/, '');
      const data = raw
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (raw.trim() !== '') events.push({ data, t, since: t - started });
    }
    for (const w of [...waiters]) w();
  });
  const done = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      for (const w of [...waiters]) w();
      const raw = existsSync(hdr) ? readFileSync(hdr, 'utf8') : '';
      rmSync(hdr, { force: true });
      const block = parseHeaderBlocks(raw);
      resolve({ exitCode: code, signal, status: block.status, headers: block.headers, body: body_, stderr: se });
    });
  });
  return {
    proc,
    events,
    started,
    done,
    /** resolves true once at least n events arrived, false if curl ended or the time ran out first */
    waitEvents(n, waitMs = 20000 * SLOW) {
      return new Promise((resolve) => {
        const check = () => {
          if (events.length >= n) return finish(true);
          if (proc.exitCode !== null || proc.signalCode !== null) return finish(false);
        };
        const timer = setTimeout(() => finish(false), waitMs);
        const finish = (v) => {
          clearTimeout(timer);
          const k = waiters.indexOf(check);
          if (k >= 0) waiters.splice(k, 1);
          resolve(v);
        };
        waiters.push(check);
        check();
      });
    },
    abort() {
      proc.kill('SIGKILL');
    },
  };
}

/** Parses the chat-completion chunks of an SSE body: {chunks, text, done, usage}. */
export function parseSse(events) {
  const chunks = [];
  let done = false;
  for (const e of events) {
    if (e.data === '[DONE]') {
      done = true;
      continue;
    }
    if (e.data) chunks.push(JSON.parse(e.data));
  }
  const text = chunks.map((c) => c.choices?.[0]?.delta?.content ?? '').join('');
  const usageChunk = chunks.find((c) => c.usage);
  return { chunks, text, done, usage: usageChunk?.usage };
}

/** Splits a raw SSE body (as curl printed it) into events like curlStream's. */
export function sseEvents(body) {
  return body
    .split(/\r?\n\r?\n/)
    .filter((raw) => raw.trim() !== '')
    .map((raw) => ({
      data: raw
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n'),
    }));
}

// ---- h2load ------------------------------------------------------------------------------

/** Runs h2load; returns {exitCode, output, requests: {total, started, done, succeeded, failed, errored, timeout}, status: {2xx, 3xx, 4xx, 5xx}}. */
export function h2load(args, { timeoutMs = 120000 * SLOW } = {}) {
  return new Promise((resolve, reject) => {
    const proc = track(spawn('h2load', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('error', reject);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      const requests = {};
      const m = /requests:\s*(.*)/.exec(out);
      if (m) for (const part of m[1].matchAll(/(\d+)\s+(\w+)/g)) requests[part[2]] = Number(part[1]);
      const status = {};
      const s = /status codes:\s*(.*)/.exec(out);
      if (s) for (const part of s[1].matchAll(/(\d+)\s+(\dxx)/g)) status[part[2]] = Number(part[1]);
      resolve({ exitCode: code, output: out, requests, status });
    });
  });
}

/**
 * POSTs every body at once as streams of one h2c connection (node:http2): written together, so
 * they reach the router in one read and start in one loop iteration. Resolves, in order, to
 * [{status, headers, body, json()}].
 */
export async function h2Burst(baseUrl, p, bodies, headers = {}) {
  const session = http2.connect(baseUrl);
  try {
    return await Promise.all(
      bodies.map(
        (b) =>
          new Promise((resolve, reject) => {
            const st = session.request({ ':method': 'POST', ':path': p, 'content-type': 'application/json', ...headers });
            let h = {},
              body = '';
            st.on('response', (x) => (h = x));
            st.setEncoding('utf8');
            st.on('data', (d) => (body += d));
            st.on('end', () => resolve({ status: h[':status'], headers: h, body, json: () => JSON.parse(body) }));
            st.on('error', reject);
            st.end(JSON.stringify(b));
          }),
      ),
    );
  } finally {
    session.close();
  }
}

// ---- misc ------------------------------------------------------------------------------------

/** Runs a command to completion: {code, stdout, stderr}. */
export function run(cmd, args, { cwd, env, timeoutMs = 60000 * SLOW } = {}) {
  return new Promise((resolve, reject) => {
    const proc = track(spawn(cmd, args, { cwd, env: env ? { ...process.env, ...env } : process.env, stdio: ['ignore', 'pipe', 'pipe'] }));
    let so = '';
    let se = '';
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => (so += d));
    proc.stderr.on('data', (d) => (se += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: so, stderr: se });
    });
  });
}

/** Stops everything given (routers, mocks, redis), collecting errors; throws the first. */
export async function stopAll(...things) {
  const errors = [];
  for (const t of things.flat()) {
    if (!t) continue;
    try {
      await t.stop();
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length) throw errors[0];
}

// ---- client authentication helpers (auth_*.test.mjs) ------------------------------------------

/** GET /metrics of a router (or a metrics URL): the Prometheus text. */
export async function fetchMetrics(routerOrUrl, { tlsInsecure = true } = {}) {
  const base = typeof routerOrUrl === 'string' ? routerOrUrl : routerOrUrl.url;
  const res = await httpRequest(`${base}/metrics`, { tlsInsecure });
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${res.body}`);
  return res.body;
}

/** Sums the samples of `name` whose labels include every label in `labels` (0 when none). */
export function metricSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = {};
    for (const p of (m[3] ?? '').matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have[p[1]] = p[2];
    if (Object.entries(labels).every(([k, v]) => have[k] === String(v))) sum += Number(m[4]);
  }
  return sum;
}

/** {reason: count} of aoai_router_auth_failures_total. */
export async function authFailures(router) {
  const text = await fetchMetrics(router);
  const out = {};
  for (const m of text.matchAll(/^aoai_router_auth_failures_total\{[^}]*reason="([^"]*)"[^}]*\}\s+(\S+)/gm)) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  return out;
}

/** The reasons whose auth-failure count grew between two authFailures() snapshots: {reason: delta}. */
export function authFailureDelta(before, after) {
  const d = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) d[k] = v - (before[k] ?? 0);
  return d;
}

/** Waits for the access-log line of request `id` (x-request-id); undefined if none came. */
export async function accessLogLine(router, id, timeoutMs = 5000 * SLOW) {
  return pollUntil(() => router.accessLog().find((l) => l.request_id === id), { timeoutMs, intervalMs: 25 });
}

/** redis-cli against a startRedis() instance: {code, stdout, stderr}. */
export function redisCli(redis, ...args) {
  return run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--raw', ...args]);
}
