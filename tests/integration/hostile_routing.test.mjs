// Hostile cases for routing state (issue 6 items 4, 8, 10, 11, 12): a half-open circuit probe
// that ends without a result, max_tokens values built to overflow the headroom arithmetic,
// cooldowns in Redis holding garbage, per-deployment cooldowns, and metric labels fed from
// URLs by clients without credentials.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startMock,
  startRouter,
  startRedis,
  backendFor,
  resetMocks,
  post,
  get,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  redisCli,
  h2load,
  tempDir,
  bodyFile,
  metricSum,
  fetchMetrics,
  SLOW,
} from './lib/harness.mjs';

/**
 * Sends a POST over HTTP/2 (node:http2) and cancels it with RST_STREAM(CANCEL) once
 * `cancelWhen()` resolves true (polled every 20 ms), or after `cancelAfterMs`.
 * Resolves with 'cancelled' or the response status if one came first.
 */
function h2PostThenCancel(baseUrl, p, body, { cancelWhen, cancelAfterMs = 10000 * SLOW } = {}) {
  return new Promise((resolve, reject) => {
    const client = http2.connect(baseUrl);
    client.on('error', () => {});
    const req = client.request({ ':method': 'POST', ':path': p, 'content-type': 'application/json' });
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      clearInterval(iv);
      clearTimeout(t);
      // let the RST_STREAM leave before the connection goes
      setTimeout(() => client.close(), 100);
      resolve(v);
    };
    req.on('response', (h) => finish(h[':status']));
    req.on('error', () => {});
    req.end(typeof body === 'string' ? body : JSON.stringify(body));
    const cancel = () => {
      req.close(http2.constants.NGHTTP2_CANCEL);
      finish('cancelled');
    };
    const t = setTimeout(cancel, cancelAfterMs);
    const iv = setInterval(async () => {
      try {
        if (cancelWhen && (await cancelWhen())) cancel();
      } catch (e) {
        reject(e);
      }
    }, 20);
  });
}

/** A raw HTTP/2 request whose :path carries bytes node's own checks would refuse (HPACK literal, no Huffman). */
function h2RawPath(port, rawPath, body) {
  const hpackLiteral = (name, value) => {
    const n = Buffer.from(name, 'latin1');
    const v = Buffer.from(value, 'latin1');
    const len = (x) => {
      if (x < 127) return Buffer.from([x]);
      const out = [127];
      x -= 127;
      while (x >= 128) {
        out.push((x & 127) | 128);
        x >>= 7;
      }
      out.push(x);
      return Buffer.from(out);
    };
    return Buffer.concat([Buffer.from([0]), len(n.length), n, len(v.length), v]);
  };
  const frame = (type, flags, stream, payload) => {
    const h = Buffer.alloc(9);
    h.writeUIntBE(payload.length, 0, 3);
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(stream, 5);
    return Buffer.concat([h, payload]);
  };
  const block = Buffer.concat([
    hpackLiteral(':method', 'POST'),
    hpackLiteral(':scheme', 'http'),
    hpackLiteral(':authority', `127.0.0.1:${port}`),
    hpackLiteral(':path', rawPath),
    hpackLiteral('content-type', 'application/json'),
    hpackLiteral('content-length', String(Buffer.byteLength(body))),
  ]);
  return new Promise((resolve) => {
    import('node:net').then(({ default: net }) => {
      const s = net.connect(port, '127.0.0.1');
      let got = Buffer.alloc(0);
      const timer = setTimeout(() => {
        s.destroy();
        resolve({ status: null, raw: got });
      }, 5000 * SLOW);
      s.on('connect', () => {
        s.write(
          Buffer.concat([
            Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
            frame(4, 0, 0, Buffer.alloc(0)), // SETTINGS
            frame(1, 4, 1, block), // HEADERS, END_HEADERS
            frame(0, 1, 1, Buffer.from(body)), // DATA, END_STREAM
          ]),
        );
      });
      s.on('data', (d) => {
        got = Buffer.concat([got, d]);
        // a HEADERS frame for stream 1: the first byte of its block is an indexed :status (0x88 = 200, etc.)
        for (let off = 0; off + 9 <= got.length; ) {
          const len = got.readUIntBE(off, 3);
          const type = got[off + 3];
          const sid = got.readUInt32BE(off + 5) & 0x7fffffff;
          if (off + 9 + len > got.length) break;
          if ((type === 1 || type === 3) && sid === 1) {
            clearTimeout(timer);
            s.destroy();
            resolve({ status: type === 3 ? 'reset' : 'answered', raw: got });
            return;
          }
          off += 9 + len;
        }
      });
      s.on('error', () => {});
    });
  });
}

// ---- item 8: a half-open probe ----------------------------------------------------------------

describe('a half-open probe is released however its attempt ends', () => {
  let east, router;
  const OPEN_MS = 1000;
  before(async () => {
    east = await startMock('eastus');
    router = await startRouter({
      config: {
        circuit: { failures: 2, open_ms: OPEN_MS },
        limits: { max_attempts: 2 },
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
  });
  after(async () => stopAll(router, east));

  /** opens the only backend's circuit, then waits until it is half-open (readyz 200 again) */
  async function openThenHalfOpen() {
    await resetMocks(east);
    await east.setBehaviour({ status: 500 });
    for (let i = 0; i < 2; i++) assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 502);
    assert.equal((await get(router.url, '/readyz')).status, 503, 'the only circuit is open: not ready');
    const r = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(r.status, 502, 'open circuit: nothing to try');
    assert.equal((await east.stats()).requests, 2, 'the open circuit was tried');
    assert.ok(await pollUntil(async () => (await get(router.url, '/readyz')).status === 200, { timeoutMs: OPEN_MS + 5000 * SLOW }));
  }

  async function assertNotStuck(what) {
    await east.setBehaviour({});
    const before = (await east.stats()).requests;
    const r = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(r.status, 200, `${what}: the backend is stuck half-open (${r.status} ${r.body})`);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal((await east.stats()).requests, before + 1);
    assert.equal((await get(router.url, '/readyz')).status, 200);
  }

  it('the client cancels the probe (HTTP/2 RST_STREAM) while the backend is slow', async () => {
    await openThenHalfOpen();
    await east.setBehaviour({ delay_ms: 3000 });
    const before = (await east.stats()).requests;
    const outcome = await h2PostThenCancel(router.url, CHAT_PATH, chatBody(), {
      cancelWhen: async () => (await east.stats()).requests > before,
    });
    assert.equal(outcome, 'cancelled');
    await sleep(100);
    await assertNotStuck('after a cancelled probe');
  });

  it('the probe request has a path too long to forward', async () => {
    await openThenHalfOpen();
    const r = await post(router.url, `${CHAT_PATH}&pad=${'a'.repeat(5000)}`, chatBody());
    assert.notEqual(r.status, 200);
    await assertNotStuck('after an over-long path');
  });

  it('the probe request has a control byte in its query (raw HTTP/2)', async () => {
    await openThenHalfOpen();
    const body = JSON.stringify(chatBody());
    // h2o itself refuses most control bytes in :path; a tab reaches the router, which cannot forward it
    const r = await h2RawPath(router.port, `${CHAT_PATH}&x=a\tb`, body);
    assert.equal(r.status, 'answered', 'no answer to the raw request');
    assert.match(r.raw.toString('latin1'), /cannot be forwarded/);
    await assertNotStuck('after a query with a control byte');
  });

  it('SIGHUP: an unchanged backend keeps its open circuit, a changed one starts afresh', async () => {
    const conf = (deployments) => ({
      circuit: { failures: 2, open_ms: 60000 },
      limits: { max_attempts: 2 },
      backends: [backendFor(east, { deployments })],
    });
    const reload = async (next) => {
      const from = router.stderr().length;
      router.writeConfig(next);
      router.signal('SIGHUP');
      assert.ok(await router.waitStderr(/reloaded/, undefined, from), 'no reload');
      await sleep(200); // every worker has taken the new generation
    };
    await resetMocks(east);
    await reload(conf({ 'gpt-4o': 'gpt-4o' }));
    await east.setBehaviour({ status: 500 });
    for (let i = 0; i < 2; i++) await post(router.url, CHAT_PATH, chatBody());
    assert.equal((await get(router.url, '/readyz')).status, 503);
    await east.setBehaviour({});
    // the same backend (open_ms alone changed): state survives the reload
    await reload({ ...conf({ 'gpt-4o': 'gpt-4o' }), circuit: { failures: 2, open_ms: 50000 } });
    assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 502, 'an unchanged backend lost its circuit on reload');
    assert.equal((await get(router.url, '/readyz')).status, 503);
    // its deployments map changed: another backend as far as its state goes
    await reload(conf({ 'gpt-4o': 'gpt-4o', other: 'other' }));
    const r = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(r.status, 200, `the changed backend kept its open circuit across the reload: ${r.status} ${r.body}`);
    assert.equal((await get(router.url, '/readyz')).status, 200);
  });
});

// ---- item 10: max_tokens overflow -------------------------------------------------------------

describe('max_tokens built to overflow the estimate', () => {
  let east, swc, router;
  before(async () => {
    east = await startMock('eastus');
    swc = await startMock('swedencentral');
  });
  after(async () => stopAll(router, east, swc));
  // each test gets a fresh router: what one test charged must not hide what the next one checks
  beforeEach(async () => {
    await resetMocks(east, swc);
    await router?.stop();
    router = await startRouter({
      config: {
        backends: [
          backendFor(east, { priority: 1, tpm: 100000, deployments: { 'gpt-4o': 'gpt-4o' } }),
          backendFor(swc, { priority: 1, tpm: 100000, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
  });

  const raw = (tokensField) =>
    `{"messages":[{"role":"user","content":"hi"}],${tokensField},"stream":true}`;

  it('ten streams with max_tokens near 10^18 (and other absurd values): no abort, still serving', async () => {
    const fields = [
      '"max_tokens":999999999999999999',
      '"max_completion_tokens":999999999999999999',
      '"max_tokens":1000000000000000000',
      '"max_tokens":123456789012345678901234567890',
      '"max_tokens":-999999999999999999',
      '"max_tokens":1.5e300',
      '"max_tokens":999999999999999999,"max_completion_tokens":999999999999999999',
      '"max_tokens":999999999999999999',
      '"max_completion_tokens":999999999999999999',
      '"max_tokens":999999999999999999',
    ];
    // (the mock's JSON parser refuses integers beyond 64 bits: 400 from the backend is fine)
    for (const f of [...fields, ...fields]) {
      const r = await post(router.url, CHAT_PATH, raw(f));
      assert.ok(r.status === 200 || (r.status === 400 && f.includes('12345678901234567890')), `${f}: ${r.status} ${r.body}`);
    }
    // concurrently too: ten at once
    const rs = await Promise.all(fields.map((f) => post(router.url, CHAT_PATH, raw(f), { proto: 'h2c' })));
    for (const r of rs) assert.ok(r.status === 200 || r.status === 400, `${r.status} ${r.body}`);
    assert.equal(router.proc.exitCode, null, 'the router died');
    assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 200);
    assert.equal((await get(router.url, '/healthz')).status, 200);
  });

  it('one such request does not pin a backend: the two equal backends still share the load', async () => {
    // a stream without usage: the estimate is never replaced by a reported figure (one request:
    // pinning both backends would look fair)
    assert.equal((await post(router.url, CHAT_PATH, raw('"max_tokens":999999999999999999'))).status, 200);
    const counts = { eastus: 0, swedencentral: 0 };
    for (let i = 0; i < 40; i++) {
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
      assert.equal(r.status, 200);
      counts[r.headers['x-aoai-router-backend']]++;
    }
    assert.ok(counts.eastus >= 8 && counts.swedencentral >= 8, `one backend is starved: ${JSON.stringify(counts)}`);
  });

  it('a 4xx answer releases the estimate', async () => {
    await east.setBehaviour({ status: 400 });
    await swc.setBehaviour({ status: 400 });
    assert.equal((await post(router.url, CHAT_PATH, chatBody({ max_tokens: 99999 }))).status, 400);
    await resetMocks(east, swc);
    const counts = { eastus: 0, swedencentral: 0 };
    for (let i = 0; i < 40; i++) counts[(await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }))).headers['x-aoai-router-backend']]++;
    assert.ok(counts.eastus >= 8 && counts.swedencentral >= 8, `a refused request pinned a backend: ${JSON.stringify(counts)}`);
  });
});

// ---- item 11: cooldowns read from Redis -------------------------------------------------------

describe('a cooldown in Redis holding garbage', () => {
  let east, redis, router;
  const KEY = 'aoai:backend:eastus:gpt-4o:cooldown_until';
  const GARBAGE = ['abc', '-5', '1', '12abc', '', ' 99', '1.5e12', '0x7fffffffffff'];
  const deployments = { 'gpt-4o': 'gpt-4o' };
  GARBAGE.forEach((_, i) => (deployments[`g${i}`] = `g${i}`));
  before(async () => {
    east = await startMock('eastus');
    redis = await startRedis();
    router = await startRouter({
      config: {
        redis: { url: `redis://127.0.0.1:${redis.port}/0` },
        limits: { max_cooldown_ms: 5000 },
        backends: [backendFor(east, { deployments })],
      },
    });
  });
  after(async () => stopAll(router, east, redis));

  it('non-numeric, negative, far past: ignored', async () => {
    // one deployment per value, so one poll interval covers them all
    for (const [i, v] of GARBAGE.entries()) await redisCli(redis, 'SET', `aoai:backend:eastus:g${i}:cooldown_until`, v);
    await sleep(1300 * SLOW); // every worker polled
    for (const [i, v] of GARBAGE.entries()) {
      const r = await post(router.url, `/openai/deployments/g${i}/chat/completions?api-version=2024-10-21`, chatBody());
      assert.equal(r.status, 200, `value ${JSON.stringify(v)} was adopted: ${r.status} ${r.body}`);
    }
  });

  it('99999999999999999999: capped at max_cooldown_ms from now', async () => {
    await redisCli(redis, 'SET', KEY, '99999999999999999999');
    const throttled = await pollUntil(
      async () => {
        const r = await post(router.url, CHAT_PATH, chatBody());
        return r.status === 429 ? r : null;
      },
      { timeoutMs: 3000 * SLOW, intervalMs: 100 },
    );
    assert.ok(throttled, 'the shared cooldown was not adopted');
    assert.equal(throttled.json().error.code, 'backends_throttled');
    const ra = Number(throttled.headers['retry-after']);
    assert.ok(ra >= 1 && ra <= 5, `retry-after ${throttled.headers['retry-after']} > max_cooldown_ms/1000`);
    // a far-future value for another deployment does not touch this one
    await redisCli(redis, 'DEL', KEY);
    const back = await pollUntil(async () => (await post(router.url, CHAT_PATH, chatBody())).status === 200, { timeoutMs: 8000 * SLOW, intervalMs: 200 });
    assert.ok(back, 'the backend did not come back within max_cooldown_ms after the key went');
  });
});

// ---- item 4: metric labels from unauthenticated requests ---------------------------------------

describe('metric labels: configuration and authenticated tenants only', () => {
  let east, open, router;
  const KEY = 'real-key-0123456789abcdef0123456789abcdef';
  const sha = (s) => createHash('sha256').update(s).digest('hex');
  before(async () => {
    east = await startMock('eastus');
    open = await startMock('anyname');
    router = await startRouter({
      config: {
        auth: { mode: 'key', keys: { static: [{ sha256: sha(KEY), tenant: 'real-tenant' }] } },
        backends: [backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }), backendFor(open, { priority: 2 })],
      },
    });
  });
  after(async () => stopAll(router, east, open));

  function uriFile(n, prefix) {
    const dir = tempDir('aor-it-uris-');
    const lines = [];
    for (let i = 0; i < n; i++) lines.push(`${router.url}/openai/deployments/${prefix}${i}x${Math.random().toString(36).slice(2, 8)}/chat/completions?api-version=1`);
    const f = path.join(dir, 'uris.txt');
    writeFileSync(f, lines.join('\n') + '\n');
    return f;
  }

  it('10,000 requests without credentials on random deployments: few series, bounded /metrics', async () => {
    const r = await h2load(['-n', '10000', '-c', '4', '-m', '16', '-d', bodyFile(chatBody()), '-H', 'content-type: application/json', '-i', uriFile(10000, 'junk')]);
    assert.equal(r.status['4xx'], 10000, r.output);
    const ok = await post(router.url, CHAT_PATH, chatBody(), { headers: { 'api-key': KEY } });
    assert.equal(ok.status, 200, ok.body);
    const text = await fetchMetrics(router);
    const series = text.split('\n').filter((l) => l && !l.startsWith('#'));
    assert.ok(series.length < 400, `${series.length} series`);
    assert.ok(text.length < 128 * 1024, `/metrics is ${text.length} bytes`);
    assert.ok(!/junk/.test(text), 'a deployment name from an unauthenticated URL became a label value');
    assert.equal(metricSum(text, 'aoai_router_requests_total', { tenant: 'real-tenant', deployment: 'gpt-4o', backend: 'eastus', code: '200' }), 1);
    assert.equal(metricSum(text, 'aoai_router_requests_total', { tenant: '', code: '401' }), 10000);
  });

  it('authenticated requests on a backend without a deployments map: a bounded set of deployment labels', async () => {
    const r = await h2load(['-n', '400', '-c', '2', '-m', '8', '-d', bodyFile(chatBody()), '-H', 'content-type: application/json', '-H', `api-key: ${KEY}`, '-i', uriFile(400, 'dyn')]);
    assert.equal(r.status['2xx'], 400, r.output);
    const text = await fetchMetrics(router);
    const deployments = new Set();
    for (const m of text.matchAll(/^aoai_router_requests_total\{[^}]*deployment="([^"]*)"/gm)) deployments.add(m[1]);
    assert.ok(deployments.size <= 110, `${deployments.size} deployment label values`);
    assert.ok(deployments.has('other'), 'names beyond the bound are labelled "other"');
    const gauges = text.split('\n').filter((l) => l.startsWith('aoai_router_backend_cooldown{backend="anyname"'));
    assert.ok(gauges.length >= 1 && gauges.length <= 65, `${gauges.length} cooldown gauges for the map-less backend`);
  });
});
