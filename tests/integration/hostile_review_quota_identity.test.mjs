// Outside review of issues 8/9/10 (quotas, exact accounting, backend identity, OpenAI backends):
// what a hostile tenant can do to its own accounting and to the shared quota.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { startMock, startRouter, backendFor, post, curlStream, chatBody, CHAT_PATH, stopAll, sleep, accessLogLine, run, SLOW } from './lib/harness.mjs';
import { startDurableRedis } from './lib/quota_redis.mjs';
import { startOpenAiMock } from './lib/openai_mock.mjs';

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const TENANTS = ['optout', 'tpmburst', 'failover'];
const KEYS = Object.fromEntries(TENANTS.map((t) => [t, `aor_${crypto.randomBytes(24).toString('base64url')}`]));
let seq = 0;
const rid = (w) => `it-hrqi-${w}-${++seq}-${Date.now()}`;
let east, west, redis, routerA, routerB, oai, oaiRouter;
const OPENAI_KEY = `sk-${crypto.randomBytes(16).toString('hex')}`;

const cli = (...args) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--raw', ...args]);

function config() {
  return {
    redis: { url: redis.url, on_failure: 'open' },
    backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } }), backendFor(west, { deployments: { 'gpt-4o': 'gpt-4o' } })],
    auth: { mode: 'key', keys: { static: TENANTS.map((t) => ({ sha256: sha256(KEYS[t]), tenant: t })) } },
    tenants: { default: { tpm: 1000000, rpm: 100000 }, tpmburst: { tpm: 3000, rpm: 100000 } },
  };
}

async function hash(key) {
  const kv = (await cli('HGETALL', key)).stdout.split('\n');
  if (kv.at(-1) === '') kv.pop();
  const o = {};
  for (let i = 0; i + 1 < kv.length; i += 2) o[kv[i]] = Number(kv[i + 1]);
  return o;
}

before(async () => {
  east = await startMock('eastus', { tpm: 100000000, rpm: 1000000 });
  west = await startMock('westus', { tpm: 100000000, rpm: 1000000 });
  redis = await startDurableRedis(); // already started: a second start() orphaned the first redis-server and held the file open
  routerA = await startRouter({ config: config() });
  routerB = await startRouter({ config: config() });
  oai = await startOpenAiMock({ bearer: OPENAI_KEY });
  oaiRouter = await startRouter({
    env: { OPENAI_KEY },
    config: {
      auth: { mode: 'key', keys: { static: TENANTS.map((t) => ({ sha256: sha256(KEYS[t]), tenant: t })) } },
      backends: [
        { name: 'openai', provider: 'openai', url: oai.url, region: 'openai', priority: 1, weight: 1, deployments: { 'gpt-4o': 'gpt-4o-2024-11-20' }, auth: { type: 'api_key', key_env: 'OPENAI_KEY' } },
      ],
    },
  });
});
after(async () => {
  await stopAll(routerA, routerB, oaiRouter, east, west);
  await oai?.stop();
  await redis.kill();
});

// What the backend got for request `id` (the mocks record the last request; x-request-id is forwarded).
async function backendSaw(id) {
  for (const m of [east, west]) {
    const lr = (await m.stats()).last_request;
    if (lr?.headers?.['x-request-id'] === id) return JSON.parse(lr.body);
  }
  return undefined;
}

// A streamed request that completes: 200, the client's stream has no usage at all, the charge is
// exact (the mock's numbers: 8 completion tokens), and the backend was asked for usage.
async function streamExactly(body, label) {
  const id = rid('optout');
  const s = curlStream(routerA.url, CHAT_PATH, body, { headers: { 'api-key': KEYS.optout, 'x-request-id': id } });
  const r = await s.done;
  assert.equal(r.status, 200, `${label}: ${r.body}`);
  assert.ok(!/"usage"/.test(r.body), `${label}: the client did not ask for usage: ${r.body}`);
  assert.ok(/data: \[DONE\]/.test(r.body), `${label}: stream not complete`);
  const line = await accessLogLine(routerA, id, 10000 * SLOW);
  assert.ok(line, `${label}: no access-log line`);
  assert.notEqual(line.usage, 'estimated', `${label}: charged as estimated: ${JSON.stringify(line)}`);
  assert.equal(line.completion_tokens, 8, JSON.stringify(line));
  const saw = await backendSaw(id);
  assert.ok(saw, `${label}: no backend saw ${id}`);
  assert.equal(saw.stream_options?.include_usage, true, `${label}: backend got ${JSON.stringify(saw.stream_options)}`);
  return { saw, line };
}

describe('exact accounting of streams', () => {
  for (const [label, opts] of [
    ['{"include_usage":false}', { include_usage: false }],
    ['{}', {}],
    ['null', null],
    ['{"include_usage":null}', { include_usage: null }],
  ]) {
    // Review finding (fixed): the router only injected include_usage when the body had no
    // stream_options member at all; any other value turned exact accounting into the estimate.
    it(`stream_options ${label}: rewritten in place to include_usage:true upstream; the client's stream has no usage; charged exactly`, async () => {
      await streamExactly(chatBody({ max_tokens: 8, stream: true, stream_options: opts }), label);
    });
  }

  it('stream_options with another member keeps it (include_usage added first); whitespace and member order kept', async () => {
    const body = `{"stream_options" : { "include_obfuscation" : false } , "stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`;
    const { saw } = await streamExactly(body, 'include_obfuscation');
    assert.deepEqual(saw.stream_options, { include_usage: true, include_obfuscation: false });
  });

  it('a 2 MB stream_options object (40000 members, include_usage:false last) is rewritten, not refused or truncated; charged exactly', async () => {
    const members = Array.from({ length: 40000 }, (_, i) => `"k${i}":"${'x'.repeat(40)}"`).join(',');
    const body = `{"stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}],"stream_options":{${members},"include_usage":false}}`;
    assert.ok(body.length > 2e6);
    const { saw } = await streamExactly(body, 'huge');
    assert.equal(Object.keys(saw.stream_options).length, 40001);
    assert.equal(saw.stream_options.k39999, 'x'.repeat(40));
  });

  it('the client asked for usage itself (include_usage:true): its usage chunk reaches it, charged exactly', async () => {
    const id = rid('optin');
    const s = curlStream(routerA.url, CHAT_PATH, chatBody({ max_tokens: 8, stream: true, stream_options: { include_usage: true } }), {
      headers: { 'api-key': KEYS.optout, 'x-request-id': id },
    });
    const r = await s.done;
    assert.equal(r.status, 200);
    assert.ok(/"usage":\{"prompt_tokens":\d+,"completion_tokens":8,/.test(r.body), r.body);
    const line = await accessLogLine(routerA, id, 10000 * SLOW);
    assert.notEqual(line.usage, 'estimated');
    assert.equal(line.completion_tokens, 8);
  });

  // Each value the router cannot read as the backend would gets 400 before anything goes upstream:
  // a backend that took the other reading would send no usage chunk (charged an estimate) or one the
  // client never asked for.
  for (const [label, so] of [
    ['a string', '"include_usage"'],
    ['a number', '1'],
    ['an array', '[{"include_usage":true}]'],
    ['a boolean', 'true'],
    ['include_usage twice (true, then false)', '{"include_usage":true,"include_usage":false}'],
    ['include_usage twice (false, then true)', '{"include_usage":false,"include_usage":true}'],
    ['an escaped member name (include_\\u0075sage)', '{"include_\\u0075sage":false}'],
    ['an escaped name beside a plain one', '{"include_usage":true,"include_\\u0075sage":false}'],
    ['include_usage "true" (a string)', '{"include_usage":"true"}'],
    ['include_usage 1', '{"include_usage":1}'],
  ]) {
    it(`stream_options as ${label}: refused 400 invalid_request, nothing sent upstream`, async () => {
      const before = (await east.stats()).requests + (await west.stats()).requests;
      const body = `{"stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}],"stream_options":${so}}`;
      const r = await post(routerA.url, CHAT_PATH, body, { headers: { 'api-key': KEYS.optout, 'x-request-id': rid('bad') } });
      assert.equal(r.status, 400, r.body);
      assert.equal(JSON.parse(r.body).error.code, 'invalid_request');
      assert.equal((await east.stats()).requests + (await west.stats()).requests, before, 'reached a backend');
    });
  }
  it('a stream_options member twice is refused 400 (the backend might read the other one)', async () => {
    const body = `{"stream":true,"messages":[],"stream_options":{},"stream_options":{"include_usage":true}}`;
    const r = await post(routerA.url, CHAT_PATH, body, { headers: { 'api-key': KEYS.optout } });
    assert.equal(r.status, 400, r.body);
  });

  it('OpenAI backend (/v1, model rewritten) with stream_options {}: one body carries both rewrites; usage exact, client sees none', async () => {
    const id = rid('oai');
    const body = { model: 'gpt-4o', stream: true, max_tokens: 6, stream_options: {}, messages: [{ role: 'user', content: 'hi' }] };
    const s = curlStream(oaiRouter.url, '/openai/v1/chat/completions', body, { headers: { 'api-key': KEYS.optout, 'x-request-id': id } });
    const r = await s.done;
    assert.equal(r.status, 200, r.body);
    assert.ok(!/"usage"/.test(r.body), r.body);
    // an unlimited tenant has no x-ratelimit-remaining-*; OpenAI's (29000 / 499) never reach the client
    assert.equal(r.headers['x-ratelimit-remaining-tokens'], undefined, JSON.stringify(r.headers));
    assert.equal(r.headers['x-ratelimit-remaining-requests'], undefined);
    const seen = oai.requests.at(-1).body;
    assert.equal(seen.model, 'gpt-4o-2024-11-20');
    assert.deepEqual(seen.stream_options, { include_usage: true });
    const line = await accessLogLine(oaiRouter, id, 10000 * SLOW);
    assert.notEqual(line.usage, 'estimated', JSON.stringify(line));
    assert.equal(line.completion_tokens, 6);
  });
});

describe('legacy completions (the other operation that takes stream_options)', () => {
  for (const [label, extra] of [
    ['JSON', {}],
    ['streamed, no stream_options', { stream: true }],
    ['streamed, stream_options {"include_usage":false}', { stream: true, stream_options: { include_usage: false } }],
  ]) {
    it(`completions ${label}: usage reported exactly (the mock's 4 completion tokens); a stream the client sees has no usage`, async () => {
      const id = rid('cmpl');
      const body = { model: 'gpt-4o', prompt: 'Say hi', max_tokens: 4, ...extra };
      const r = extra.stream
        ? await curlStream(oaiRouter.url, '/openai/v1/completions', body, { headers: { 'api-key': KEYS.optout, 'x-request-id': id } }).done
        : await post(oaiRouter.url, '/openai/v1/completions', body, { headers: { 'api-key': KEYS.optout, 'x-request-id': id } });
      assert.equal(r.status, 200, r.body);
      const seen = oai.requests.at(-1);
      assert.equal(seen.path, '/v1/completions');
      if (extra.stream) {
        assert.deepEqual(seen.body.stream_options, { include_usage: true });
        assert.ok(!/"usage"/.test(r.body), r.body);
        assert.ok(/"text":"word0"/.test(r.body), r.body);
      }
      const line = await accessLogLine(oaiRouter, id, 10000 * SLOW);
      assert.equal(line.usage, 'reported', JSON.stringify(line));
      assert.equal(line.completion_tokens, 4);
    });
  }
});

describe('one tpm across replicas and deployments', () => {
  it('a failover (east 429, then west answers) is counted once: one request, the usage west reported; reservation released', async () => {
    const day = `aoai:usage:{failover}:day:${new Date().toISOString().slice(0, 10).replaceAll('-', '')}`;
    await east.setBehaviour({ status: 429, retry_after: '1', count: 1 });
    try {
      const id = rid('fo');
      const r = await post(routerA.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEYS.failover, 'x-request-id': id } });
      assert.equal(r.status, 200, r.body);
      const line = await accessLogLine(routerA, id, 10000 * SLOW);
      assert.ok(line.attempts >= 1);
      await sleep(300);
      const h = await hash(day);
      assert.equal(h.requests, 1, JSON.stringify(h));
      assert.equal(h.total_tokens, line.total_tokens, JSON.stringify({ h, line }));
      assert.equal(h.completion_tokens, 5);
      const reserved = (await cli('--scan', '--pattern', 'aoai:reserved:{failover}:*')).stdout.split('\n').filter(Boolean);
      for (const k of reserved) for (const [f, v] of Object.entries(await hash(k))) assert.equal(v, 0, `${k} ${f}=${v}`);
    } finally {
      await east.setBehaviour({});
      await west.setBehaviour({});
    }
  });

  it('two routers, two backends, 80 concurrent requests (max_tokens 100) of a tenant with tpm 3000: minute total within one estimate of 3000; reserved keys drain to 0', async () => {
    const body = chatBody({ max_tokens: 100 });
    const all = [];
    for (let i = 0; i < 80; i++) {
      const router = i % 2 ? routerB : routerA;
      all.push(post(router.url, CHAT_PATH, body, { headers: { 'api-key': KEYS.tpmburst, 'x-request-id': rid('tpm') } }));
    }
    const rs = await Promise.all(all);
    const ok = rs.filter((r) => r.status === 200).length;
    const q = rs.filter((r) => r.status === 429).length;
    assert.equal(ok + q, 80, JSON.stringify(rs.map((r) => r.status)));
    await sleep(300);
    const keys = (await cli('--scan', '--pattern', 'aoai:usage:{tpmburst}:*')).stdout.split('\n').filter(Boolean);
    const minute = keys.filter((k) => /:minute:/.test(k));
    let total = 0;
    for (const k of minute) total += (await hash(k)).total_tokens ?? 0;
    const estimate = Math.ceil(JSON.stringify(body).length / 4) + 100;
    assert.ok(ok > 0, 'nothing admitted');
    assert.ok(total <= 3000 + estimate, `minute total ${total} over 3000 + ${estimate} (admitted ${ok}) keys ${minute}`);
    const reserved = (await cli('--scan', '--pattern', 'aoai:reserved:{tpmburst}:*')).stdout.split('\n').filter(Boolean);
    for (const k of reserved) {
      const h = await hash(k);
      for (const [f, v] of Object.entries(h)) assert.equal(v, 0, `${k} ${f}=${v}`);
    }
  });
});

describe('the model the backend sees', () => {
  it('the client\'s own Authorization, api-key and odd query reach no OpenAI header; every api-version is dropped from the query', async () => {
    oai.reset();
    const r = await post(oaiRouter.url, '/openai/deployments/gpt-4o/chat/completions?api-version=2099-01-01-preview&api-version=x&foo=bar%0d%0aX-Evil:1', chatBody({ model: 'other-model', max_tokens: 2 }), {
      headers: { 'api-key': KEYS.optout, authorization: 'Bearer client-secret-token-zz9', 'x-request-id': rid('hdr') },
    });
    assert.equal(r.status, 200, r.body);
    assert.equal(oai.requests.length, 1);
    const q = oai.requests[0];
    assert.equal(q.path, '/v1/chat/completions');
    assert.equal(q.query, 'foo=bar%0d%0aX-Evil:1', 'every api-version dropped, the rest verbatim (still percent-encoded)');
    assert.equal(q.body.model, 'gpt-4o-2024-11-20', 'the client-sent model is replaced by the mapping');
    assert.equal(q.headers.authorization, `Bearer ${OPENAI_KEY}`);
    assert.equal(q.headers['api-key'], undefined);
    assert.ok(!JSON.stringify(q.headers).includes('client-secret-token-zz9'));
    assert.ok(!JSON.stringify(q.headers).includes(KEYS.optout));
    assert.equal(q.headers['x-evil'], undefined);
  });

  it('a member name spelled with an escape ("m\\u006fdel") cannot smuggle a second model past the mapping: refused 400, nothing sent upstream', async () => {
    oai.reset();
    const raw = '{"model":"gpt-4o","m\\u006fdel":"o1-pro","messages":[{"role":"user","content":"hi"}],"max_tokens":2}';
    assert.equal(JSON.parse(raw).model, 'o1-pro', 'a JSON parser takes the escaped duplicate');
    const r = await post(oaiRouter.url, CHAT_PATH, raw, { headers: { 'api-key': KEYS.optout, 'x-request-id': rid('model') } });
    const seen = oai.requests.map((q) => q.body?.model);
    assert.deepEqual(seen, [], `OpenAI was asked for ${JSON.stringify(seen)}`);
    assert.equal(r.status, 400, r.body);
  });

  it('"str\\u0065am": true cannot hide a stream from the accounting: refused 400', async () => {
    const raw = '{"str\\u0065am":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":2}';
    const r = await post(routerA.url, CHAT_PATH, raw, { headers: { 'api-key': KEYS.optout, 'x-request-id': rid('stream') } });
    assert.equal(r.status, 400, r.body);
  });
});

// a backend that lies about usage (Azure wire format, answers what `liar.answer` says)
async function startLiar() {
  const liar = { answer: null, seen: 0 };
  liar.server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      liar.seen++;
      liar.answer(res);
    });
  });
  await new Promise((r) => liar.server.listen(0, '127.0.0.1', r));
  liar.url = `http://127.0.0.1:${liar.server.address().port}`;
  liar.name = 'liar';
  return liar;
}

describe('a backend that lies about usage', () => {
  it('usage near INT64_MAX twice (non-streamed), then negative, then two usage chunks in a stream: no reservation left behind, the router keeps answering', async () => {
    const liar = await startLiar();
    const router = await startRouter({
      config: {
        redis: { url: redis.url, on_failure: 'open' },
        backends: [backendFor(liar, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'key', keys: { static: TENANTS.map((t) => ({ sha256: sha256(KEYS[t]), tenant: t })) } },
        tenants: { default: { tpm: -1, rpm: 100000, tokens_per_day: -1, tokens_per_month: -1 } },
      },
    });
    try {
      const json = (usage) => (res) => {
        const b = JSON.stringify({ id: 'x', object: 'chat.completion', model: 'gpt-4o', choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }], usage });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
        res.end(b);
      };
      const big = 999999999999999999;
      liar.answer = (res) => {
        const b = '{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":999999999999999999,"completion_tokens":999999999999999999,"total_tokens":999999999999999999}}';
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
        res.end(b);
      };
      void big;
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': KEYS.optout, 'x-request-id': rid('liar') } })).status);
      liar.answer = json({ prompt_tokens: -5, completion_tokens: -7, total_tokens: -12 });
      statuses.push((await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': KEYS.optout, 'x-request-id': rid('liar') } })).status);
      liar.answer = (res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const ev = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
        ev({ id: 'x', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'hi' } }] });
        ev({ id: 'x', object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 10, completion_tokens: 1, total_tokens: 11 } });
        ev({ id: 'x', object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 10, completion_tokens: 1, total_tokens: 11 } });
        res.end('data: [DONE]\n\n');
      };
      const id = rid('liar2');
      const s = await curlStream(router.url, CHAT_PATH, chatBody({ max_tokens: 2, stream: true }), { headers: { 'api-key': KEYS.optout, 'x-request-id': id } }).done;
      statuses.push(s.status);
      assert.deepEqual(statuses, [200, 200, 200, 200, 200]);
      const line = await accessLogLine(router, id, 10000 * SLOW);
      assert.equal(line.total_tokens, 11, JSON.stringify(line));
      assert.ok(!/"usage":\{/.test(s.body), 'the usage chunks the client did not ask for are dropped');
      await sleep(300);
      const reserved = (await cli('--scan', '--pattern', 'aoai:reserved:{optout}:*')).stdout.split('\n').filter(Boolean);
      for (const k of reserved) {
        const h = await hash(k);
        for (const [f, v] of Object.entries(h)) assert.equal(v, 0, `${k} ${f}=${v}`);
      }
      assert.equal((await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { headers: { 'api-key': KEYS.optout } })).status, 200);
    } finally {
      await stopAll(router);
      liar.server.closeAllConnections();
      await new Promise((r) => liar.server.close(r));
    }
  });
});
