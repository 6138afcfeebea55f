// Hostile token exchange for openai_wif (issue 10): an endpoint that echoes the subject token.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { startMock, startRouter, backendFor, stopAll, post, tempDir, sleep, CHAT_PATH, chatBody } from './lib/harness.mjs';
import { startOpenAiMock, startOpenAiExchange } from './lib/openai_mock.mjs';

const things = [];
after(async () => {
  await stopAll(...things.filter((t) => !t.server));
  for (const t of things.filter((t) => t.server)) await t.stop();
});

describe('hostile openai_wif exchange', () => {
  it('a refusal that echoes the subject token: logged redacted, the backend skipped, the next one answers', async () => {
    const file = path.join(tempDir('aor-it-wif-'), 'token');
    const subject = 'eyJhbGciOiJub25lIn0.echoed-subject-secret.sig';
    writeFileSync(file, subject);
    const ex = await startOpenAiExchange({ idp: 'i', sa: 's', fileSubject: subject });
    ex.failNext = Array.from({ length: 50 }, () => ({ status: 401, body: { error: 'invalid_token', error_description: `bad subject ${subject}` } }));
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    const east = await startMock('eastus');
    things.push(ex, oai, east);
    const router = await startRouter({
      config: {
        backends: [
          {
            name: 'openai',
            provider: 'openai',
            url: oai.url,
            priority: 1,
            deployments: { 'gpt-4o': 'gpt-4o-2024-11-20' },
            auth: { type: 'openai_wif', identity_provider_id: 'i', service_account_id: 's', token_url: ex.tokenUrl, subject: { type: 'file', path: file } },
          },
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(oai.requests.length, 0);
    await sleep(200);
    assert.match(router.stderr(), /error=invalid_token/);
    assert.match(router.stderr(), /\[redacted\]/);
    assert.ok(!router.stderr().includes('echoed-subject-secret'), 'the subject token reached the log');
    assert.ok(!r.body.includes('echoed-subject-secret'));
    await router.stop();
  });
});
