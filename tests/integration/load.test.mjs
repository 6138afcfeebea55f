// Many concurrent HTTP/2 streams per connection with h2load.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRouter, backendFor, h2load, bodyFile, chatBody, stopAll, get } from './lib/harness.mjs';

let east, swc, router;

before(async () => {
  east = await startMock('eastus');
  swc = await startMock('swedencentral');
  router = await startRouter({
    config: {
      backends: [
        backendFor(east, { priority: 1, weight: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
        backendFor(swc, { priority: 1, weight: 1, deployments: { 'gpt-4o': 'gpt-4o' } }),
      ],
    },
  });
});

after(async () => {
  await stopAll(router, east, swc);
});

describe('h2load', () => {
  it('2000 requests, 4 connections x 16 streams: all 2xx', async () => {
    await Promise.all([east.reset(), swc.reset()]);
    const body = bodyFile(chatBody({ max_tokens: 5 }));
    const r = await h2load([
      '-n', '2000', '-c', '4', '-m', '16', '-d', body,
      '-H', 'content-type: application/json',
      `${router.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21`,
    ]);
    assert.equal(r.exitCode, 0, r.output);
    assert.match(r.output, /2000 succeeded, 0 failed, 0 errored/, r.output);
    assert.equal(r.requests.succeeded, 2000, r.output);
    assert.equal(r.status['2xx'], 2000, r.output);
    const [a, b] = await Promise.all([east.stats(), swc.stats()]);
    assert.equal(a.requests + b.requests, 2000);
    // same priority and weight: both share the load
    assert.ok(a.requests > 200 && b.requests > 200, `eastus ${a.requests}, swedencentral ${b.requests}`);
    assert.equal((await get(router.url, '/healthz')).status, 200);
  });

  it('streams under h2load: all 2xx', async () => {
    const body = bodyFile(chatBody({ max_tokens: 3, stream: true }));
    const r = await h2load([
      '-n', '400', '-c', '2', '-m', '32', '-d', body,
      '-H', 'content-type: application/json',
      `${router.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21`,
    ]);
    assert.match(r.output, /400 succeeded, 0 failed, 0 errored/, r.output);
    assert.equal(r.status['2xx'], 400, r.output);
  });
});
