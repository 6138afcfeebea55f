// The official `openai` npm package's AzureOpenAI client, unchanged, against the router.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { AzureOpenAI } from 'openai';
import { startMock, startRouter, backendFor, resetMocks, stopAll, SLOW } from './lib/harness.mjs';

let east, swc, router, client;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  router = await startRouter({
    config: {
      backends: [
        backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
        backendFor(swc, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o-swc' } }),
      ],
    },
  });
  client = new AzureOpenAI({
    endpoint: router.url,
    apiKey: 'anything',
    apiVersion: '2024-10-21',
    deployment: 'gpt-4o',
    maxRetries: 0,
    timeout: 30000 * SLOW,
  });
});

after(async () => {
  await stopAll(router, east, swc);
});

beforeEach(async () => {
  await resetMocks(east, swc);
});

describe('openai AzureOpenAI client', () => {
  it('chat.completions.create', async () => {
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Say something nice.' }], max_tokens: 5 })
      .withResponse();
    assert.equal(data.choices[0].message.content, 'word0 word1 word2 word3 word4');
    assert.equal(data.choices[0].finish_reason, 'stop');
    assert.equal(data.usage.completion_tokens, 5);
    assert.ok(data.usage.prompt_tokens >= 1);
    assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + 5);
    assert.equal(response.headers.get('x-aoai-router-backend'), 'eastus');
    assert.ok(response.headers.get('x-request-id'));
    const s = await east.stats();
    assert.equal(s.requests, 1);
    assert.equal(s.last_request.path, '/openai/deployments/gpt-4o/chat/completions');
    assert.equal(s.last_request.query, 'api-version=2024-10-21');
    // the SDK's api-key is a client credential: never forwarded
    assert.equal(s.last_request.headers['api-key'], undefined);
  });

  it('chat.completions.create with stream and include_usage', async () => {
    const stream = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'Count for me.' }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    // role chunk + 6 words + finish + usage
    assert.ok(chunks.length >= 8, `only ${chunks.length} chunks`);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text, 'word0 word1 word2 word3 word4 word5 ');
    const last = chunks[chunks.length - 1];
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.completion_tokens, 6);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + 6);
    assert.ok(chunks.some((c) => c.choices[0]?.finish_reason === 'stop'));
    const s = await east.stats();
    assert.equal(s.requests, 1);
    assert.equal(s.completed, 1);
  });

  it('fails over transparently for the SDK (primary 429)', async () => {
    await east.setBehaviour({ status: 429, retry_after: '1', count: 1 });
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })
      .withResponse();
    assert.equal(data.choices[0].message.content, 'word0 word1 word2');
    assert.equal(response.headers.get('x-aoai-router-backend'), 'swedencentral');
    assert.equal(data.model, 'gpt-4o-swc');
  });

  it('an unknown deployment surfaces as a 404 NotFoundError', async () => {
    const other = new AzureOpenAI({ endpoint: router.url, apiKey: 'anything', apiVersion: '2024-10-21', deployment: 'nope', maxRetries: 0 });
    await assert.rejects(
      other.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'hi' }] }),
      (e) => e.status === 404 && e.code === 'deployment_not_found',
    );
  });
});
