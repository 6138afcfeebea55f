// auth openai_wif (issue 10): a subject token from IMDS (resource = the Application ID URI) or a
// file, exchanged at OpenAI's token endpoint (JSON, RFC 8693); the access token is the bearer.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { startMock, startRouter, backendFor, startRedis, redisCli, pollUntil, stopAll, post, tempDir, sleep, CHAT_PATH, chatBody, SLOW } from './lib/harness.mjs';
import { startOpenAiMock, startOpenAiExchange } from './lib/openai_mock.mjs';
import { startIdentity } from './lib/identity_mocks.mjs';

const IDP = 'idp_0123456789abcdef';
const SA = 'svc_acct_fedcba9876543210';
const APP_URI = 'api://11111111-2222-3333-4444-555555555555';
const things = [];

after(async () => {
  await stopAll(...things.filter((t) => !t.server));
  for (const t of things.filter((t) => t.server)) await t.stop();
});

function oaiBackend(oai, ex, subject, { name = 'openai', priority = 1, extra = {} } = {}) {
  return {
    name,
    provider: 'openai',
    url: oai.url,
    region: name,
    priority,
    weight: 1,
    deployments: { 'gpt-4o': 'gpt-4o-2024-11-20' },
    auth: { type: 'openai_wif', identity_provider_id: IDP, service_account_id: SA, token_url: ex.tokenUrl, subject, ...extra },
  };
}

describe('openai_wif', () => {
  it('managed identity subject: IMDS with the Application ID URI, every exchange field, the access token as bearer', async () => {
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, resource: APP_URI });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    things.push(ex, oai);
    const router = await startRouter({
      config: { backends: [oaiBackend(oai, ex, { type: 'managed_identity', resource: APP_URI }, { extra: { imds_endpoint: ex.imdsUrl } })] },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(ex.imdsCalls[0].resource, APP_URI);
    assert.ok(ex.exchanges.length >= 1);
    const b = ex.exchanges[0].body;
    assert.ok(ex.imdsIssued.has(b.subject_token), 'the subject is the IMDS token');
    const bearer = oai.requests[0].headers.authorization.slice(7);
    assert.ok(ex.valid(bearer), 'the bearer is the exchanged token');
    assert.equal(oai.requests[0].body.model, 'gpt-4o-2024-11-20');
    await router.stop();
  });

  it('file subject, short-lived tokens: refreshed before expiry, the file re-read, no failed request', async () => {
    const dir = tempDir('aor-it-wif-');
    const file = path.join(dir, 'token');
    const subject1 = 'eyJhbGciOiJub25lIn0.file-subject-1.sig';
    writeFileSync(file, subject1 + '\n');
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, lifetimeS: 3, fileSubject: subject1, fileSubject2: 'eyJhbGciOiJub25lIn0.file-subject-2.sig' });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    things.push(ex, oai);
    const router = await startRouter({ config: { backends: [oaiBackend(oai, ex, { type: 'file', path: file })] } });
    things.push(router);
    const end = Date.now() + 7000 * SLOW;
    let n = 0;
    let rotated = false;
    while (Date.now() < end) {
      if (!rotated && Date.now() > end - 3500 * SLOW) {
        // the projected token rotates: the next refresh must send the new one
        writeFileSync(file, 'eyJhbGciOiJub25lIn0.file-subject-2.sig\n');
        rotated = true;
      }
      const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
      assert.equal(r.status, 200, `request ${n}: ${r.status} ${r.body}`);
      ++n;
      await sleep(100);
    }
    const bearers = new Set(oai.requests.map((q) => q.headers.authorization));
    assert.ok(ex.exchanges.length >= 3, `only ${ex.exchanges.length} exchanges in 7 s with 3 s tokens`);
    assert.ok(bearers.size >= 3, `bearers used: ${bearers.size}`);
    assert.equal(oai.requests.filter((q) => q.headers.authorization == null).length, 0);
    assert.ok(ex.exchanges.some((e) => e.body?.subject_token === 'eyJhbGciOiJub25lIn0.file-subject-2.sig'), 'the file was re-read');
    await router.stop();
  });

  it('exchange refused: the backend is skipped, the next candidate answers; the error is logged, never the subject', async () => {
    const dir = tempDir('aor-it-wif-');
    const file = path.join(dir, 'token');
    const subject = 'eyJhbGciOiJub25lIn0.never-log-me-subject.sig';
    writeFileSync(file, subject);
    const ex = await startOpenAiExchange({ idp: 'idp_other', sa: SA, fileSubject: subject });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    const east = await startMock('eastus');
    things.push(ex, oai, east);
    const router = await startRouter({
      config: { backends: [oaiBackend(oai, ex, { type: 'file', path: file }), backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } })] },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(oai.requests.length, 0, 'nothing reached OpenAI without a token');
    assert.ok(ex.exchanges.length >= 1);
    await sleep(200);
    assert.match(router.stderr(), /error=invalid_grant/);
    assert.match(router.stderr(), /unknown identity_provider_id/);
    assert.ok(!router.stderr().includes('never-log-me'), 'the subject token reached the log');
    await router.stop();
  });

  it('workload identity subject: the projected token as client_assertion at Entra ID for <resource>/.default, that token exchanged at OpenAI', async () => {
    const file = path.join(tempDir('aor-it-wif-'), 'azure-identity-token');
    const projected = 'eyJhbGciOiJub25lIn0.aks-projected-token.sig';
    writeFileSync(file, projected + '\n');
    const idn = await startIdentity({ tenant: 'tid-1', entraClients: { 'wi-app': { assertionFile: file } }, scope: `${APP_URI}/.default` });
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, subjectOk: (t) => idn.entra.issued.includes(t) });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    things.push(idn, ex, oai);
    const router = await startRouter({
      config: {
        backends: [
          oaiBackend(oai, ex, { type: 'workload_identity', resource: APP_URI }, { extra: { tenant_id: 'tid-1', client_id: 'wi-app', token_file: file, authority_host: idn.authority } }),
        ],
      },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 2 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(idn.entra.requests.length, 1);
    const f = idn.entra.requests[0].form;
    assert.equal(idn.entra.requests[0].tenant, 'tid-1');
    assert.equal(f.client_id, 'wi-app');
    assert.equal(f.scope, `${APP_URI}/.default`);
    assert.equal(f.client_assertion, projected);
    assert.equal(ex.exchanges.length, 1);
    assert.equal(ex.exchanges[0].body.subject_token, idn.entra.issued[0], 'the subject is the Entra token, not the projected one');
    assert.ok(ex.valid(oai.requests[0].headers.authorization.slice(7)));
    await router.stop();
  });

  it('workload identity subject: Entra refuses the assertion — logged (subject token), never the projected token; the backend skipped', async () => {
    const file = path.join(tempDir('aor-it-wif-'), 'azure-identity-token');
    writeFileSync(file, 'eyJhbGciOiJub25lIn0.stale-projected-never-logged.sig');
    const idn = await startIdentity({ tenant: 'tid-1', entraClients: { 'other-app': { assertionFile: file } }, scope: `${APP_URI}/.default` });
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, subjectOk: (t) => idn.entra.issued.includes(t) });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    const east = await startMock('eastus');
    things.push(idn, ex, oai, east);
    const router = await startRouter({
      config: {
        backends: [
          oaiBackend(oai, ex, { type: 'workload_identity', resource: APP_URI }, { extra: { tenant_id: 'tid-1', client_id: 'wi-app', token_file: file, authority_host: idn.authority } }),
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(ex.exchanges.length, 0, 'the projected token went to OpenAI without Entra');
    assert.equal(oai.requests.length, 0);
    await sleep(100);
    assert.match(router.stderr(), /token call failed \(subject token\): refused: HTTP 400 error=unauthorized_client/);
    assert.ok(!router.stderr().includes('stale-projected-never-logged'));
    await router.stop();
  });

  it('Azure throttled → the AzureOpenAI client is answered by OpenAI with the exchanged bearer (plain and streamed), usage exact for the tenant', async () => {
    const crypto = await import('node:crypto');
    const { AzureOpenAI } = await import('openai');
    const file = path.join(tempDir('aor-it-wif-'), 'token');
    const subject = 'eyJhbGciOiJub25lIn0.failover-subject.sig';
    writeFileSync(file, subject);
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, fileSubject: subject });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    const east = await startMock('eastus');
    const redis = await startRedis();
    things.push(ex, oai, east, redis);
    const key = `aor_${crypto.randomBytes(32).toString('base64url')}`;
    const router = await startRouter({
      config: {
        redis: { url: redis.url, on_failure: 'closed' },
        auth: { mode: 'key', keys: { static: [{ sha256: crypto.createHash('sha256').update(key).digest('hex'), tenant: 'wif-tenant' }] } },
        tenants: { default: { tpm: 1000000, rpm: 10000 } },
        backends: [backendFor(east, { priority: 1, deployments: { 'gpt-4o': 'gpt-4o' } }), oaiBackend(oai, ex, { type: 'file', path: file }, { priority: 2 })],
      },
    });
    things.push(router);
    await east.setBehaviour({ status: 429, retry_after: '30', count: 1 });
    const client = new AzureOpenAI({ endpoint: router.url, apiKey: key, apiVersion: '2024-10-21', deployment: 'gpt-4o', maxRetries: 0, timeout: 30000 * SLOW });
    const a = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hello there' }], max_tokens: 3 });
    assert.equal(a.choices[0].message.content, 'word0 word1 word2');
    assert.equal(oai.requests.length, 1);
    assert.equal(oai.requests[0].body.model, 'gpt-4o-2024-11-20');
    assert.ok(ex.valid(oai.requests[0].headers.authorization.slice(7)), 'not the exchanged bearer');
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'stream' }], max_tokens: 4, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) text += c.choices[0].delta.content;
      if (c.usage) usage = c.usage;
    }
    assert.equal(text, 'word0 word1 word2 word3');
    assert.equal(oai.requests.length, 2, 'east (cooling 30 s) was asked again');
    const d = new Date();
    const p2 = (n) => String(n).padStart(2, '0');
    const day = `aoai:usage:{wif-tenant}:day:${d.getUTCFullYear()}${p2(d.getUTCMonth() + 1)}${p2(d.getUTCDate())}`;
    await pollUntil(async () => Number((await redisCli(redis, 'HGET', day, 'total_tokens')).stdout.trim()) === a.usage.total_tokens + usage.total_tokens, { timeoutMs: 3000 * SLOW });
    assert.equal(Number((await redisCli(redis, 'HGET', day, 'requests')).stdout.trim()), 2);
    assert.equal(Number((await redisCli(redis, 'HGET', day, 'completion_tokens')).stdout.trim()), 3 + 4);
    await router.stop();
  });

  it('managed identity subject with client_id: IMDS is asked for that identity', async () => {
    const ex = await startOpenAiExchange({ idp: IDP, sa: SA, resource: APP_URI });
    const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
    things.push(ex, oai);
    const router = await startRouter({
      config: { backends: [oaiBackend(oai, ex, { type: 'managed_identity', resource: APP_URI }, { extra: { imds_endpoint: ex.imdsUrl, client_id: 'uami-123' } })] },
    });
    things.push(router);
    const r = await post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));
    assert.equal(r.status, 200, r.body);
    assert.equal(ex.imdsCalls[0].client_id, 'uami-123');
    assert.equal(ex.imdsCalls[0].resource, APP_URI);
    await router.stop();
  });
});
