// Backend identity (issue 9): keyless credentials against loopback IMDS / App Service / Entra ID /
// Auth0-style mocks, and a backend that checks every bearer it receives.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { startRouter, httpRequest, fetchMetrics, metricSum, pollUntil, sleep, tempDir, stopAll, run, SLOW, CHAT_PATH, startMock, ROUTER_BIN } from './lib/harness.mjs';
import { startIdentity, startTokenBackend } from './lib/identity_mocks.mjs';

const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const UAMI = '8a1b2c3d-0000-4000-8000-00000000a001';
const SP = '8a1b2c3d-0000-4000-8000-00000000b002';
const SP_SECRET = 'sp-secret-' + 'Zq8~xv3Wm0pLr5Tn2Yk7';
const WIF_APP = '8a1b2c3d-0000-4000-8000-00000000c003';
const FED_APP = '8a1b2c3d-0000-4000-8000-00000000d004';
const AUTH0_ID = 'auth0-client-7f3e';
const AUTH0_SECRET = 'auth0-secret-' + 'Hh4K9sPq2Lm8Vx1Nc6Rt';
const IDENTITY_HEADER = 'appsvc-hdr-' + '3b9f1e77c2d04a5a';

const cleanup = [];
after(() => stopAll(...cleanup));

function chat(router, headers = {}) {
  return httpRequest(`${router.url}${CHAT_PATH}`, { method: 'POST', body: { messages: [{ role: 'user', content: 'hi' }] }, headers });
}

function tokenBackendConf(b, auth, extra = {}) {
  return { name: b.name, url: b.url, priority: 1, weight: 1, auth, ...extra };
}

async function identityMocks(extra = {}) {
  const dir = tempDir('aor-id-');
  const tokenFile = path.join(dir, 'azure-identity-token');
  writeFileSync(tokenFile, 'sa-token-A-' + 'eyJhbGciOiJSUzI1NiJ9.first\n');
  const id = await startIdentity({
    clientIds: [UAMI],
    identityHeader: IDENTITY_HEADER,
    tenant: TENANT,
    entraClients: { [SP]: { secret: SP_SECRET }, [WIF_APP]: { assertionFile: tokenFile }, [FED_APP]: { assertionFrom: 'auth0' } },
    auth0: { clientId: AUTH0_ID, clientSecret: AUTH0_SECRET },
    ...extra,
  });
  cleanup.push(id);
  return { id, tokenFile };
}

test('managed identity: 20 concurrent requests at a cold start share one IMDS call; the backend gets the bearer and no api-key', async () => {
  const { id } = await identityMocks();
  id.imds.delayMs = 300; // the requests arrive before the first token
  const be = await startTokenBackend('mi', id);
  cleanup.push(be);
  const router = await startRouter({
    config: { backends: [tokenBackendConf(be, { type: 'managed_identity', client_id: UAMI, imds_endpoint: id.imdsUrl })] },
  });
  cleanup.push(router);
  const results = await Promise.all(Array.from({ length: 20 }, () => chat(router)));
  assert.deepEqual(
    results.map((r) => r.status),
    Array(20).fill(200),
  );
  assert.equal(id.imds.calls, 1, 'one token call for 20 requests and 2 workers');
  const q = id.imds.requests[0];
  assert.equal(q.headers.metadata, 'true');
  assert.equal(q.query['api-version'], '2018-02-01');
  assert.equal(q.query.resource, 'https://cognitiveservices.azure.com');
  assert.equal(q.query.client_id, UAMI);
  assert.equal(be.seen.length, 20);
  for (const s of be.seen) {
    assert.equal(s.authorization, `Bearer ${id.imds.issued[0]}`);
    assert.equal(s.apiKey, undefined);
  }
  assert.equal(be.unknown, 0);
  const m = await fetchMetrics(router);
  const left = metricSum(m, 'aoai_router_credential_expiry_seconds', { backend: 'mi' });
  assert.ok(left > 3500 && left <= 3600, `expiry gauge ${left}`);
  assert.equal(metricSum(m, 'aoai_router_credential_refresh_failures_total', { backend: 'mi' }), 0);
  assert.equal((await httpRequest(`${router.url}/readyz`)).status, 200);
});

test('managed identity on App Service: IDENTITY_ENDPOINT + X-IDENTITY-HEADER, api-version 2019-08-01, expires_on', async () => {
  const { id } = await identityMocks();
  const be = await startTokenBackend('appsvc', id);
  cleanup.push(be);
  const router = await startRouter({
    config: { backends: [tokenBackendConf(be, { type: 'managed_identity' })] },
    env: { IDENTITY_ENDPOINT: id.appServiceUrl, IDENTITY_HEADER },
  });
  cleanup.push(router);
  const r = await chat(router);
  assert.equal(r.status, 200, r.body);
  assert.equal(id.appsvc.calls, 1);
  assert.equal(id.imds.calls, 0);
  assert.equal(id.appsvc.requests[0].headers['x-identity-header'], IDENTITY_HEADER);
  assert.equal(id.appsvc.requests[0].query['api-version'], '2019-08-01');
  assert.equal(be.seen[0].authorization, `Bearer ${id.appsvc.issued[0]}`);
  assert.equal(be.seen[0].apiKey, undefined);
});

test('client_secret: 6 s tokens are refreshed ahead of expiry — no failed request, no expired token sent', async () => {
  const { id } = await identityMocks();
  id.entra.lifetimeS = 6;
  const be = await startTokenBackend('sp', id);
  cleanup.push(be);
  const router = await startRouter({
    config: { backends: [tokenBackendConf(be, { type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: id.authority })] },
    env: { SP_SECRET },
  });
  cleanup.push(router);
  const statuses = [];
  const until = Date.now() + 11000;
  while (Date.now() < until) {
    statuses.push((await chat(router)).status);
    await sleep(100);
  }
  assert.ok(statuses.length > 40);
  assert.deepEqual([...new Set(statuses)], [200], 'every request succeeded');
  assert.equal(be.expired, 0, 'no expired token reached the backend');
  assert.equal(be.unknown, 0);
  assert.ok(id.entra.calls >= 3 && id.entra.calls <= 6, `refreshes: ${id.entra.calls} token calls in 11 s of 6 s tokens`);
  assert.ok(new Set(be.bearers()).size >= 3, 'the backend saw the refreshed tokens');
  const f = id.entra.requests[0].form;
  assert.equal(f.grant_type, 'client_credentials');
  assert.equal(f.scope, 'https://cognitiveservices.azure.com/.default');
  assert.equal(f.client_secret, SP_SECRET);
});

test('a refresh slower than the token\'s margin: requests wait for it instead of failing', async () => {
  const { id } = await identityMocks();
  id.entra.lifetimeS = 6; // refreshed at 3 s, sent until 5 s
  const be = await startTokenBackend('slowrefresh', id);
  cleanup.push(be);
  const router = await startRouter({
    config: { backends: [tokenBackendConf(be, { type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: id.authority })] },
    env: { SP_SECRET },
  });
  cleanup.push(router);
  assert.equal((await chat(router)).status, 200);
  id.entra.delayMs = 2800; // the refresh started at ~3 s answers at ~5.8 s: 0.8 s without a sendable token
  const statuses = [];
  const until = Date.now() + 7000;
  while (Date.now() < until) {
    statuses.push((await chat(router)).status);
    await sleep(100);
  }
  assert.deepEqual([...new Set(statuses)], [200]);
  assert.equal(be.expired, 0);
  assert.ok(id.entra.calls >= 2);
});

test('workload identity: the token file is read again at each refresh — a rotated file gives a new assertion', async () => {
  const { id, tokenFile } = await identityMocks();
  id.entra.lifetimeS = 4;
  const be = await startTokenBackend('wif', id);
  cleanup.push(be);
  const router = await startRouter({
    config: { backends: [tokenBackendConf(be, { type: 'workload_identity', authority_host: id.authority })] },
    env: { AZURE_TENANT_ID: TENANT, AZURE_CLIENT_ID: WIF_APP, AZURE_FEDERATED_TOKEN_FILE: tokenFile },
  });
  cleanup.push(router);
  assert.equal((await chat(router)).status, 200);
  assert.equal(id.entra.requests[0].form.client_assertion, 'sa-token-A-eyJhbGciOiJSUzI1NiJ9.first');
  assert.equal(id.entra.requests[0].form.client_assertion_type, 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
  assert.equal(id.entra.requests[0].form.client_id, WIF_APP);
  writeFileSync(tokenFile, 'sa-token-B-' + 'eyJhbGciOiJSUzI1NiJ9.rotated\n');
  assert.ok(await pollUntil(() => id.entra.requests.some((r) => r.form.client_assertion === 'sa-token-B-eyJhbGciOiJSUzI1NiJ9.rotated'), { timeoutMs: 8000 * SLOW }));
  const r = await chat(router);
  assert.equal(r.status, 200);
  assert.equal(be.seen.at(-1).authorization, `Bearer ${id.entra.issued.at(-1)}`);
  assert.equal(be.expired, 0);
});

test('oidc_federation: an Auth0 client-credentials token is the client_assertion at Entra ID; both cached', async () => {
  const { id } = await identityMocks();
  const be = await startTokenBackend('fed', id);
  cleanup.push(be);
  const router = await startRouter({
    config: {
      backends: [
        tokenBackendConf(be, {
          type: 'oidc_federation',
          token_url: id.auth0Url,
          client_id: AUTH0_ID,
          client_secret_env: 'AUTH0_SECRET',
          tenant_id: TENANT,
          azure_client_id: FED_APP,
          authority_host: id.authority,
        }),
      ],
    },
    env: { AUTH0_SECRET },
  });
  cleanup.push(router);
  for (let i = 0; i < 5; i++) assert.equal((await chat(router)).status, 200);
  assert.equal(id.auth0.calls, 1);
  assert.equal(id.entra.calls, 1);
  assert.equal(id.auth0.requests[0].form.audience, 'api://AzureADTokenExchange');
  assert.equal(id.entra.requests[0].form.client_assertion, id.auth0.issued[0]);
  assert.equal(id.entra.requests[0].form.client_id, FED_APP);
  assert.ok(be.seen.every((s) => s.authorization === `Bearer ${id.entra.issued[0]}` && s.apiKey === undefined));
});

test('IMDS down at start: requests fail over to the api_key backend (reason credential), then return when IMDS does', async () => {
  const { id } = await identityMocks();
  id.imds.down = true;
  const be = await startTokenBackend('mi-down', id);
  cleanup.push(be);
  const keyed = await startMock('keyed');
  cleanup.push(keyed);
  const router = await startRouter({
    config: {
      backends: [
        tokenBackendConf(be, { type: 'managed_identity', imds_endpoint: id.imdsUrl }),
        { name: 'keyed', url: keyed.url, priority: 2, auth: { type: 'api_key', key_env: 'KEYED_KEY' } },
      ],
    },
    env: { KEYED_KEY: 'k-123' },
  });
  cleanup.push(router);
  for (let i = 0; i < 5; i++) {
    const r = await chat(router);
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-aoai-router-backend'], 'keyed');
  }
  assert.equal(be.seen.length, 0);
  assert.equal((await httpRequest(`${router.url}/readyz`)).status, 200, 'the api_key backend can serve');
  let m = await fetchMetrics(router);
  assert.ok(metricSum(m, 'aoai_router_failovers_total', { backend: 'mi-down', reason: 'credential' }) >= 5);
  assert.ok(metricSum(m, 'aoai_router_credential_refresh_failures_total', { backend: 'mi-down' }) >= 1);
  assert.equal(metricSum(m, 'aoai_router_credential_expiry_seconds', { backend: 'mi-down' }), 0);
  const callsWhileDown = id.imds.calls;
  assert.ok(callsWhileDown >= 1 && callsWhileDown <= 6, `IMDS retried with backoff, not per request: ${callsWhileDown}`);
  id.imds.down = false;
  assert.ok(
    await pollUntil(async () => (await chat(router)).headers['x-aoai-router-backend'] === 'mi-down', { timeoutMs: 20000 * SLOW, intervalMs: 250 }),
    'back on the managed identity backend',
  );
  m = await fetchMetrics(router);
  assert.ok(metricSum(m, 'aoai_router_credential_expiry_seconds', { backend: 'mi-down' }) > 3000);
});

test('no backend usable (IMDS down, only keyless backends): /readyz 503 and requests 502 at once', async () => {
  const { id } = await identityMocks();
  id.imds.down = true;
  const be = await startTokenBackend('only-mi', id);
  cleanup.push(be);
  const router = await startRouter({ config: { backends: [tokenBackendConf(be, { type: 'managed_identity', imds_endpoint: id.imdsUrl })] } });
  cleanup.push(router);
  assert.ok(await pollUntil(() => id.imds.calls >= 1));
  await sleep(100);
  const ready = await httpRequest(`${router.url}/readyz`);
  assert.equal(ready.status, 503);
  assert.match(ready.body, /credential/);
  const t0 = Date.now();
  const r = await chat(router);
  assert.equal(r.status, 502);
  assert.match(r.body, /credential/);
  assert.ok(Date.now() - t0 < 1000, 'no wait once the token call failed');
  assert.equal(be.seen.length, 0);
});

test('backend 401: the token is dropped and refreshed once; the request fails over meanwhile', async () => {
  const { id } = await identityMocks();
  const be = await startTokenBackend('mi-401', id);
  cleanup.push(be);
  const keyed = await startMock('keyed401');
  cleanup.push(keyed);
  const router = await startRouter({
    config: {
      backends: [
        tokenBackendConf(be, { type: 'managed_identity', imds_endpoint: id.imdsUrl }),
        { name: 'keyed401', url: keyed.url, priority: 2, auth: { type: 'api_key', key_env: 'KEYED_KEY' } },
      ],
    },
    env: { KEYED_KEY: 'k-401' },
  });
  cleanup.push(router);
  assert.equal((await chat(router)).headers['x-aoai-router-backend'], 'mi-401');
  assert.equal(id.imds.calls, 1);
  be.fail401 = 3; // three concurrent requests see the same token refused
  const rs = await Promise.all([chat(router), chat(router), chat(router)]);
  for (const r of rs) {
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-aoai-router-backend'], 'keyed401');
  }
  assert.ok(await pollUntil(() => id.imds.calls === 2));
  await sleep(500);
  assert.equal(id.imds.calls, 2, 'one refresh for the refused token');
  const r = await chat(router);
  assert.equal(r.headers['x-aoai-router-backend'], 'mi-401');
  assert.equal(be.seen.at(-1).authorization, `Bearer ${id.imds.issued[1]}`);
  assert.notEqual(id.imds.issued[1], id.imds.issued[0]);
  const m = await fetchMetrics(router);
  assert.ok(metricSum(m, 'aoai_router_failovers_total', { backend: 'mi-401', reason: 'credential' }) >= 3);
});

test('IMDS 429 and 5xx are retried with backoff and jitter until a token comes', async () => {
  const { id } = await identityMocks();
  id.imds.failNext = [{ status: 429 }, { status: 500 }, { status: 503 }];
  const be = await startTokenBackend('mi-retry', id);
  cleanup.push(be);
  const router = await startRouter({ config: { backends: [tokenBackendConf(be, { type: 'managed_identity', imds_endpoint: id.imdsUrl })] } });
  cleanup.push(router);
  assert.ok(await pollUntil(async () => (await httpRequest(`${router.url}/readyz`)).status === 200, { timeoutMs: 15000 * SLOW, intervalMs: 100 }));
  assert.equal(id.imds.calls, 4);
  const gaps = id.imds.requests.slice(1).map((r, i) => r.time - id.imds.requests[i].time);
  assert.ok(gaps[0] >= 400, `first retry after ${gaps[0]} ms`);
  assert.ok(gaps[2] >= gaps[0], `backoff grows: ${gaps}`);
  const m = await fetchMetrics(router);
  assert.equal(metricSum(m, 'aoai_router_credential_refresh_failures_total', { backend: 'mi-retry' }), 3);
  assert.match(router.stderr(), /HTTP 429 error=temporarily_unavailable error_description=mock failure 429/);
  assert.equal((await chat(router)).status, 200);
});

test('backends with the same identity share one token source; a reload keeps the token', async () => {
  const { id } = await identityMocks();
  const b1 = await startTokenBackend('share1', id);
  const b2 = await startTokenBackend('share2', id);
  cleanup.push(b1, b2);
  const auth = { type: 'managed_identity', client_id: UAMI, imds_endpoint: id.imdsUrl };
  const conf = { backends: [tokenBackendConf(b1, auth), tokenBackendConf(b2, auth)] };
  const router = await startRouter({ config: conf });
  cleanup.push(router);
  for (let i = 0; i < 10; i++) assert.equal((await chat(router)).status, 200);
  assert.ok(b1.seen.length > 0 && b2.seen.length > 0);
  assert.equal(id.imds.calls, 1);
  router.writeConfig({ ...conf, backends: [...conf.backends].reverse() });
  router.signal('SIGHUP');
  assert.ok(await router.waitStderr(/reloaded/));
  for (let i = 0; i < 4; i++) assert.equal((await chat(router)).status, 200);
  assert.equal(id.imds.calls, 1);
});

test('secrets: no token, assertion, client secret or IDENTITY_HEADER in any log line, /metrics or --check', async () => {
  const { id, tokenFile } = await identityMocks();
  id.entra.lifetimeS = 3;
  id.auth0.lifetimeS = 3;
  const bes = await Promise.all(['s-mi', 's-sp', 's-wif', 's-fed'].map((n) => startTokenBackend(n, id)));
  cleanup.push(...bes);
  // one failed call of each kind, so error paths log too
  id.entra.failNext = [{ status: 401, body: { error: 'invalid_client', error_description: `AADSTS7000215: Invalid client secret provided: ${SP_SECRET}` } }];
  id.imds.failNext = [{ status: 500 }];
  const conf = {
    backends: [
      tokenBackendConf(bes[0], { type: 'managed_identity', client_id: UAMI, imds_endpoint: id.imdsUrl }),
      tokenBackendConf(bes[1], { type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: id.authority }),
      tokenBackendConf(bes[2], { type: 'workload_identity', tenant_id: TENANT, client_id: WIF_APP, token_file: tokenFile, authority_host: id.authority }),
      tokenBackendConf(bes[3], {
        type: 'oidc_federation',
        token_url: id.auth0Url,
        client_id: AUTH0_ID,
        client_secret_env: 'AUTH0_SECRET',
        tenant_id: TENANT,
        azure_client_id: FED_APP,
        authority_host: id.authority,
      }),
    ],
  };
  const env = { SP_SECRET, AUTH0_SECRET, AOR_LOG_LEVEL: 'debug' };
  const router = await startRouter({ config: conf, env });
  cleanup.push(router);
  const until = Date.now() + 5000;
  while (Date.now() < until) {
    await chat(router);
    await sleep(50);
  }
  bes[0].fail401 = 1;
  await chat(router);
  await chat(router);
  const metrics = await fetchMetrics(router);
  const check = await run(ROUTER_BIN, ['--check', '-c', router.configPath], { env });
  await router.stop();
  const secrets = [SP_SECRET, AUTH0_SECRET, IDENTITY_HEADER, 'sa-token-A-eyJhbGciOiJSUzI1NiJ9', ...id.allIssued()];
  assert.ok(id.allIssued().length >= 8, `tokens issued: ${id.allIssued().length}`);
  const lines = (router.stdout() + '\n' + router.stderr() + '\n' + metrics + '\n' + check.stdout + '\n' + check.stderr).split('\n');
  for (const s of secrets)
    for (const l of lines) {
      assert.ok(!l.includes(s), `a secret (${s.slice(0, 6)}…) leaked in: ${l.slice(0, 200)}`);
      // a token's signature part alone is a secret too
      const sig = s.split('.')[2];
      if (sig && sig.length > 20) assert.ok(!l.includes(sig), `a token signature leaked in: ${l.slice(0, 200)}`);
    }
  assert.match(router.stderr(), /invalid_client/, 'the OAuth error is logged');
  assert.match(router.stderr(), /\[redacted\]/, 'the echoed secret was cut');
});
