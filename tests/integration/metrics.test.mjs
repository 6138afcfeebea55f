// /metrics (SPEC §7): the binding names, counted by the real request path.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRouter, backendFor, chatBody, CHAT_PATH, stopAll, post, get, freePort, metricSum } from './lib/harness.mjs';

function sample(text, name, labels) {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(want)) return Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name} `) && want === '') return Number(line.slice(name.length + 1));
  }
  return undefined;
}

describe('metrics on every listener', () => {
  let east, swc, router;
  before(async () => {
    east = await startMock('eastus');
    swc = await startMock('swedencentral');
    router = await startRouter({
      config: {
        backends: [
          // two logical names for one deployment on eastus: one state, a series for each name
          backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o', 'gpt-4o-alias': 'gpt-4o', emb: 'emb3' } }),
          backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
  });
  after(async () => stopAll(router, east, swc));

  it('requests, tokens, failovers, cooldown and remaining tokens are exported', async () => {
    for (let i = 0; i < 3; i++) assert.equal((await post(router.url, CHAT_PATH, chatBody())).status, 200);
    await east.setBehaviour({ status: 429, retry_after: '30', count: 1 });
    const r = await post(router.url, CHAT_PATH, chatBody());
    assert.equal(r.headers['x-aoai-router-backend'], 'swedencentral');
    const m = await get(router.url, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.headers['content-type'], /text\/plain/);
    const text = m.body;
    assert.equal(sample(text, 'aoai_router_requests_total', { tenant: 'default', deployment: 'gpt-4o', backend: 'eastus', code: '200' }), 3);
    assert.equal(sample(text, 'aoai_router_requests_total', { backend: 'swedencentral', code: '200' }), 1);
    assert.equal(sample(text, 'aoai_router_failovers_total', { backend: 'eastus', reason: '429' }), 1);
    // cooldown and remaining tokens are per backend deployment (SPEC §7), labelled with the
    // logical name like every other series; an alias shares its deployment's state
    assert.equal(sample(text, 'aoai_router_backend_cooldown', { backend: 'eastus', deployment: 'gpt-4o' }), 1);
    assert.equal(sample(text, 'aoai_router_backend_cooldown', { backend: 'eastus', deployment: 'gpt-4o-alias' }), 1);
    assert.equal(sample(text, 'aoai_router_backend_cooldown', { backend: 'eastus', deployment: 'emb' }), 0);
    assert.equal(sample(text, 'aoai_router_backend_cooldown', { backend: 'swedencentral', deployment: 'gpt-4o' }), 0);
    assert.equal(text.split('\n').filter((l) => l.startsWith('aoai_router_backend_cooldown{')).length, 4);
    assert.ok(sample(text, 'aoai_router_tokens_total', { backend: 'eastus', type: 'completion' }) >= 30);
    assert.ok(sample(text, 'aoai_router_backend_remaining_tokens', { backend: 'swedencentral', deployment: 'gpt-4o' }) > 0);
    assert.equal(sample(text, 'aoai_router_backend_remaining_tokens', { backend: 'eastus', deployment: 'emb' }), -1);
    assert.equal(sample(text, 'aoai_router_request_duration_seconds_count', { deployment: 'gpt-4o', backend: 'eastus' }), 3);
    assert.equal(sample(text, 'aoai_router_inflight_requests', {}), 0);
    // every sample line is "name{labels} number" or "name number"
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#')))
      assert.match(line, /^[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+$/, line);
  });
});

describe('metrics on their own listener', () => {
  let east, router, mport;
  before(async () => {
    east = await startMock('eastus');
    mport = await freePort();
    router = await startRouter({ config: { metrics: { address: '127.0.0.1', port: mport }, backends: [backendFor(east)] } });
  });
  after(async () => stopAll(router, east));

  it('served on the metrics port, 404 on the data-plane port', async () => {
    assert.equal((await get(`http://127.0.0.1:${mport}`, '/metrics')).status, 200);
    const r = await get(router.url, '/metrics');
    assert.equal(r.status, 404);
  });
});

// OpenTelemetry GenAI series beside ours (issue 11): exact bucket counts after known requests.
// The mock's usage: prompt = characters / 4 + 1 per message ("hello there, router": 19 / 4 + 1 = 5),
// completion = max_tokens; embeddings: characters / 4 + 1 per input.
describe('OpenTelemetry GenAI histograms', () => {
  let east, router;
  const EMB = '/openai/deployments/emb/embeddings?api-version=2024-10-21';
  before(async () => {
    east = await startMock('eastus');
    router = await startRouter({ config: { backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o', emb: 'emb3' } })] } });
  });
  after(async () => stopAll(router, east));

  it('gen_ai_client_token_usage and gen_ai_server_time_to_first_token_seconds count each request once, in the right bucket', async () => {
    for (let i = 0; i < 2; i++) assert.equal((await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }))).status, 200);
    // a stream, with and without the client asking for usage (the router asks for it upstream)
    for (const extra of [{ stream_options: { include_usage: true } }, {}]) {
      const s = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 3, stream: true, ...extra }));
      assert.equal(s.status, 200);
      assert.match(s.body, /data: \[DONE\]/);
    }
    assert.equal((await post(router.url, EMB, { input: 'abcdefgh' })).status, 200); // 8 / 4 + 1 = 3
    // a failed stream: no tokens, no time to first token
    await east.setBehaviour({ status: 500, count: 1 });
    assert.equal((await post(router.url, CHAT_PATH, chatBody({ stream: true }))).status, 502);

    // made-up deployment names (refused) and a made-up operation: no series of their own
    for (let i = 0; i < 20; i++)
      assert.equal((await post(router.url, `/openai/deployments/made-up-${i}-${Date.now()}/chat/completions?api-version=2024-10-21`, chatBody())).status, 404);

    const text = (await get(router.url, '/metrics')).body;
    assert.doesNotMatch(text, /made-up-/);
    const genaiSeries = new Set(text.split('\n').filter((l) => l.startsWith('gen_ai_')).map((l) => l.replace(/_(bucket|sum|count)\{/, '{').replace(/,?le="[^"]*"/, '').replace(/ \S+$/, '')));
    assert.equal(genaiSeries.size, 4, [...genaiSeries].join('\n')); // chat input/output, embeddings input, chat TTFT
    const chat = { gen_ai_operation_name: 'chat', gen_ai_request_model: 'gpt-4o' };
    const bucket = (labels, le) => sample(text, 'gen_ai_client_token_usage_bucket', { ...labels, le });
    const input = { ...chat, gen_ai_token_type: 'input' };
    const output = { ...chat, gen_ai_token_type: 'output' };
    assert.equal(bucket(input, '4'), 0);
    assert.equal(bucket(input, '16'), 4); // 4 chats of 5 prompt tokens
    assert.equal(bucket(input, '+Inf'), 4);
    assert.equal(sample(text, 'gen_ai_client_token_usage_sum', input), 20);
    assert.equal(bucket(output, '1'), 0);
    assert.equal(bucket(output, '4'), 4); // 2 and 3 completion tokens
    assert.equal(bucket(output, '+Inf'), 4);
    assert.equal(sample(text, 'gen_ai_client_token_usage_sum', output), 2 + 2 + 3 + 3);
    const emb = { gen_ai_operation_name: 'embeddings', gen_ai_request_model: 'emb', gen_ai_token_type: 'input' };
    assert.equal(bucket(emb, '1'), 0);
    assert.equal(bucket(emb, '4'), 1);
    assert.equal(sample(text, 'gen_ai_client_token_usage_sum', emb), 3);
    assert.equal(sample(text, 'gen_ai_client_token_usage_count', { gen_ai_operation_name: 'embeddings', gen_ai_token_type: 'output' }), undefined);
    // the same totals as aoai_router_tokens_total
    assert.equal(metricSum(text, 'aoai_router_tokens_total', { type: 'prompt' }), 23);
    assert.equal(metricSum(text, 'aoai_router_tokens_total', { type: 'completion' }), 10);
    // time to first token: the two successful streams only
    assert.equal(sample(text, 'gen_ai_server_time_to_first_token_seconds_count', chat), 2);
    assert.equal(sample(text, 'gen_ai_server_time_to_first_token_seconds_bucket', { ...chat, le: '+Inf' }), 2);
    assert.equal(sample(text, 'gen_ai_server_time_to_first_token_seconds_bucket', { ...chat, le: '10' }), 2);
    assert.ok(sample(text, 'gen_ai_server_time_to_first_token_seconds_sum', chat) > 0);
    assert.equal(text.split('\n').filter((l) => l.startsWith('gen_ai_server_time_to_first_token_seconds_bucket{')).length, 17);
    assert.equal(text.split('\n').filter((l) => l.startsWith('gen_ai_server_time_to_first_token_seconds_count{')).length, 1);
  });
});
