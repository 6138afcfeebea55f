// provider: openai backends (issue 10): the Azure and v1 surfaces translated to OpenAI's /v1,
// Bearer api keys, 429 + retry-after cooldowns, exact per-tenant usage.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { AzureOpenAI } from 'openai';
import { startMock, startRouter, backendFor, startRedis, redisCli, stopAll, post, curlStream, sseEvents, SLOW, sleep, fetchMetrics, metricSum, CHAT_PATH, chatBody } from './lib/harness.mjs';
import { startOpenAiMock } from './lib/openai_mock.mjs';

const OPENAI_KEY = `sk-proj-${crypto.randomBytes(16).toString('hex')}`;
const TENANT_KEY = `aor_${crypto.randomBytes(32).toString('base64url')}`;
const TENANT = 'oai-tenant';
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');

let east, oai, redis, router, client;

async function usageDay(tenant) {
  const d = new Date();
  const p2 = (n) => String(n).padStart(2, '0');
  const r = await redisCli(redis, 'HGETALL', `aoai:usage:{${tenant}}:day:${d.getUTCFullYear()}${p2(d.getUTCMonth() + 1)}${p2(d.getUTCDate())}`);
  const kv = r.stdout.split('\n');
  if (kv.at(-1) === '') kv.pop();
  const o = {};
  for (let i = 0; i + 1 < kv.length; i += 2) o[kv[i]] = Number(kv[i + 1]);
  return o;
}

before(async () => {
  east = await startMock('eastus');
  oai = await startOpenAiMock({ bearer: OPENAI_KEY });
  redis = await startRedis();
  router = await startRouter({
    env: { OPENAI_KEY },
    config: {
      redis: { url: redis.url, on_failure: 'closed' },
      auth: { mode: 'key', keys: { static: [{ sha256: sha256(TENANT_KEY), tenant: TENANT }] } },
      tenants: { default: { tpm: 1000000, rpm: 10000 } },
      backends: [
        backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb' } }),
        {
          name: 'openai',
          provider: 'openai',
          url: oai.url,
          region: 'openai',
          priority: 2,
          weight: 1,
          deployments: { 'gpt-4o': 'gpt-4o-2024-11-20', emb: 'text-embedding-3-small' },
          auth: { type: 'api_key', key_env: 'OPENAI_KEY' },
        },
      ],
    },
  });
  client = new AzureOpenAI({ endpoint: router.url, apiKey: TENANT_KEY, apiVersion: '2024-10-21', deployment: 'gpt-4o', maxRetries: 0, timeout: 30000 * SLOW });
});

after(async () => {
  await stopAll(router, east, redis);
  await oai?.stop();
});

beforeEach(async () => {
  await east.reset();
  oai.reset();
});

describe('provider openai', () => {
  it('Azure primary 429 → the AzureOpenAI client is answered by OpenAI with the mapped model, the Bearer key and exact usage', async () => {
    const before = await usageDay(TENANT);
    await east.setBehaviour({ status: 429, retry_after: '30', count: 1 });
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hello there' }], max_tokens: 3 })
      .withResponse();
    assert.equal(response.headers.get('x-aoai-router-backend'), 'openai');
    assert.equal(data.choices[0].message.content, 'word0 word1 word2');
    assert.equal(oai.requests.length, 1);
    const r = oai.requests[0];
    assert.equal(r.path, '/v1/chat/completions');
    assert.equal(r.query, '', 'api-version is dropped');
    assert.equal(r.body.model, 'gpt-4o-2024-11-20');
    assert.equal(r.headers.authorization, `Bearer ${OPENAI_KEY}`);
    assert.equal(r.headers['api-key'], undefined, 'neither the tenant key nor an api-key header reaches OpenAI');
    const after = await usageDay(TENANT);
    assert.equal((after.prompt_tokens ?? 0) - (before.prompt_tokens ?? 0), data.usage.prompt_tokens);
    assert.equal((after.completion_tokens ?? 0) - (before.completion_tokens ?? 0), 3);
    // the primary is cooling down (retry-after 30): the next request goes straight to OpenAI
    const again = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 1 }).withResponse();
    assert.equal(again.response.headers.get('x-aoai-router-backend'), 'openai');
    assert.equal((await east.stats()).requests, 1, 'the cooling primary was not asked again');
  });

  it('streaming through OpenAI with include_usage; the v1 surface; embeddings', async () => {
    await east.setBehaviour({ status: 500, count: 100 });
    const stream = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'stream please' }],
      max_tokens: 4,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) text += c.choices[0].delta.content;
      if (c.usage) usage = c.usage;
    }
    assert.equal(text, 'word0 word1 word2 word3');
    assert.equal(usage.completion_tokens, 4);
    const sr = oai.requests.find((q) => q.body?.stream);
    assert.equal(sr.body.model, 'gpt-4o-2024-11-20');
    assert.equal(sr.path, '/v1/chat/completions');

    const v1 = await post(router.url, '/v1/chat/completions', { model: 'gpt-4o', messages: [{ role: 'user', content: 'v1' }], max_tokens: 2 }, { headers: { 'api-key': TENANT_KEY } });
    assert.equal(v1.status, 200, v1.body);
    assert.equal(oai.requests.at(-1).body.model, 'gpt-4o-2024-11-20');

    const emb = await post(router.url, '/openai/deployments/emb/embeddings?api-version=2024-10-21', { input: 'embed me' }, { headers: { 'api-key': TENANT_KEY } });
    assert.equal(emb.status, 200, emb.body);
    assert.equal(oai.requests.at(-1).path, '/v1/embeddings');
    assert.equal(oai.requests.at(-1).body.model, 'text-embedding-3-small');

    const resp = await post(router.url, '/openai/v1/responses', { model: 'gpt-4o', input: 'hi', max_output_tokens: 2 }, { headers: { 'api-key': TENANT_KEY } });
    assert.equal(resp.status, 200, resp.body);
    assert.equal(oai.requests.at(-1).path, '/v1/responses');
    assert.equal(oai.requests.at(-1).body.model, 'gpt-4o-2024-11-20');
  });

  it('OpenAI 429 + retry-after cools the OpenAI backend down (east still cooling from the first test)', async () => {
    oai.behaviour = { status: 429, retry_after: 30, count: 1 };
    const p = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
    const body = { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 };
    const res = await post(router.url, p, body, { headers: { 'api-key': TENANT_KEY } });
    assert.equal(res.status, 429, res.body);
    assert.equal(oai.requests.length, 1);
    const ra = Number(res.headers['retry-after']);
    assert.ok(ra >= 1 && ra <= 30, `retry-after ${res.headers['retry-after']}`);
    const r2 = await post(router.url, p, body, { headers: { 'api-key': TENANT_KEY } });
    assert.equal(r2.status, 429, r2.body);
    assert.equal(oai.requests.length, 1, 'OpenAI was asked again while cooling down');
  });
});

// OpenAI's x-ratelimit-* (remaining and reset, Go durations) drive cooldowns and headroom.
describe("provider openai: OpenAI's x-ratelimit-reset-* headers", () => {
  const own = [];
  after(async () => {
    await stopAll(...own);
  });
  const openaiFirst = (extra = {}) => ({
    name: 'openai',
    provider: 'openai',
    url: oai.url,
    priority: 1,
    weight: 1,
    deployments: { 'gpt-4o': 'gpt-4o-2024-11-20' },
    auth: { type: 'api_key', key_env: 'OPENAI_KEY' },
    ...extra,
  });
  const cooling = async (r) => metricSum(await fetchMetrics(r), 'aoai_router_backend_cooldown', { backend: 'openai' });

  it('a 429 without retry-after cools down until x-ratelimit-reset-tokens (1.5s) when tokens ran out, not the 10 s default', async () => {
    const r = await startRouter({
      env: { OPENAI_KEY },
      config: { backends: [openaiFirst(), backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } })] },
    });
    own.push(r);
    oai.behaviour = {
      status: 429,
      count: 1,
      retry_after: null,
      headers: {
        'x-ratelimit-remaining-tokens': '0',
        'x-ratelimit-remaining-requests': '12',
        'x-ratelimit-reset-tokens': '1.5s',
        'x-ratelimit-reset-requests': '20ms',
      },
    };
    const t0 = Date.now();
    const a = await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(a.status, 200, a.body);
    assert.equal(a.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(oai.requests.length, 1);
    // 20 ms (the requests' reset) has passed: only the tokens' reset keeps OpenAI out
    await sleep(100);
    const b = await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(b.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(oai.requests.length, 1, 'OpenAI was asked while its tokens were out');
    assert.equal(await cooling(r), 1);
    await sleep(Math.max(0, t0 + 1700 - Date.now()));
    assert.equal(await cooling(r), 0, 'still cooling after the reset (the 10 s default?)');
    const c = await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(c.status, 200, c.body);
    assert.equal(c.headers['x-aoai-router-backend'], 'openai');
    assert.equal(oai.requests.length, 2);
    await r.stop();
  });

  it('retry-after wins over the reset headers; "6m0s" is capped at limits.max_cooldown_ms', async () => {
    const r = await startRouter({
      env: { OPENAI_KEY },
      config: {
        limits: { max_cooldown_ms: 1200 },
        backends: [openaiFirst(), backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
    own.push(r);
    // retry-after 1 s beats reset-tokens 6m0s
    oai.behaviour = { status: 429, count: 1, retry_after: 1, headers: { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '6m0s' } };
    let t0 = Date.now();
    assert.equal((await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }))).headers['x-aoai-router-backend'], 'eastus');
    await sleep(Math.max(0, t0 + 1100 - Date.now()));
    assert.equal((await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }))).headers['x-aoai-router-backend'], 'openai');
    // no retry-after: 6m0s, capped at 1.2 s and logged
    oai.behaviour = { status: 429, count: 1, retry_after: null, headers: { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '6m0s' } };
    t0 = Date.now();
    assert.equal((await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }))).headers['x-aoai-router-backend'], 'eastus');
    assert.equal(await cooling(r), 1);
    await sleep(Math.max(0, t0 + 1300 - Date.now()));
    assert.equal((await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }))).headers['x-aoai-router-backend'], 'openai');
    assert.match(r.stderr(), /backend openai asked for an absurd retry-after or rate-limit reset; cooldown capped at 1200 ms/);
    await r.stop();
  });

  it('x-ratelimit-remaining-requests: 0 takes OpenAI to the headroom floor until x-ratelimit-reset-requests', async () => {
    const r = await startRouter({
      env: { OPENAI_KEY },
      config: { backends: [openaiFirst(), backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } })] },
    });
    own.push(r);
    oai.rl = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-remaining-tokens': '29000', 'x-ratelimit-reset-requests': '1m0s' };
    // until OpenAI answers once, the two share the traffic
    for (let i = 0; i < 40 && oai.requests.length === 0; ++i) await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(oai.requests.length, 1);
    const seen = { openai: 0, eastus: 0 };
    for (let i = 0; i < 30; ++i) {
      const x = await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
      assert.equal(x.status, 200, x.body);
      ++seen[x.headers['x-aoai-router-backend']];
    }
    // weight x 0.01 against weight x 1: about 0.3 of 30 (without the floor: about 15)
    assert.ok(seen.openai <= 3, JSON.stringify(seen));
    await r.stop();
  });

  it("the backend's x-ratelimit-limit-* and x-ratelimit-reset-* never reach the client: they describe the backend's capacity, not the tenant's", async () => {
    const r = await startRouter({ env: { OPENAI_KEY }, config: { backends: [openaiFirst()] } });
    own.push(r);
    oai.rl = {
      'x-ratelimit-limit-requests': '5000',
      'x-ratelimit-limit-tokens': '777777',
      'x-ratelimit-remaining-requests': '4999',
      'x-ratelimit-remaining-tokens': '766666',
      'x-ratelimit-reset-requests': '12ms',
      'x-ratelimit-reset-tokens': '6m0s',
    };
    const x = await post(r.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    oai.rl = null;
    assert.equal(x.status, 200, x.body);
    assert.equal(x.headers['x-aoai-router-backend'], 'openai');
    for (const h of ['x-ratelimit-limit-requests', 'x-ratelimit-limit-tokens', 'x-ratelimit-reset-requests', 'x-ratelimit-reset-tokens'])
      assert.equal(x.headers[h], undefined, `${h} passed through: ${x.headers[h]}`);
    assert.notEqual(x.headers['x-ratelimit-remaining-tokens'], '766666');
    assert.notEqual(x.headers['x-ratelimit-remaining-requests'], '4999');
    await r.stop();
  });
});
