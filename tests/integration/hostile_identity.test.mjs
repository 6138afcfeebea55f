// Hostile and broken token endpoints (issue 9): whatever IMDS / Entra ID / the external IdP answer,
// the router stays bounded, never sends a bad token upstream, and never logs a secret.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startRouter, httpRequest, fetchMetrics, metricSum, pollUntil, sleep, tempDir, stopAll, h2load, bodyFile, chatBody, run, ROUTER_BIN, SLOW, CHAT_PATH } from './lib/harness.mjs';
import { startIdentity, startTokenBackend } from './lib/identity_mocks.mjs';

const TENANT = 'contoso.onmicrosoft.com';
const SP = 'sp-hostile-app';
const SP_SECRET = 'hostile-sp-secret-' + 'Qw3Er5Ty7Ui9';
const WIF_APP = 'wif-hostile-app';

const cleanup = [];
after(() => stopAll(...cleanup));

function chat(router) {
  return httpRequest(`${router.url}${CHAT_PATH}`, { method: 'POST', body: { messages: [{ role: 'user', content: 'hi' }] } });
}

async function setup({ auth = 'client_secret', limits, threads } = {}) {
  const dir = tempDir('aor-hid-');
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, 'projected-sa-token-' + 'Xy12Zz34Ww56\n');
  const id = await startIdentity({ tenant: TENANT, entraClients: { [SP]: { secret: SP_SECRET }, [WIF_APP]: { assertionFile: tokenFile } } });
  const be = await startTokenBackend('h', id);
  cleanup.push(id, be);
  const cred =
    auth === 'client_secret'
      ? { type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: id.authority }
      : auth === 'workload_identity'
        ? { type: 'workload_identity', tenant_id: TENANT, client_id: WIF_APP, token_file: tokenFile, authority_host: id.authority }
        : { type: 'managed_identity', imds_endpoint: id.imdsUrl };
  const start = async () => {
    const router = await startRouter({
      config: { ...(threads ? { threads } : {}), ...(limits ? { limits } : {}), backends: [{ name: 'h', url: be.url, auth: cred }] },
      env: { SP_SECRET },
    });
    cleanup.push(router);
    return router;
  };
  return { id, be, tokenFile, start };
}

test('a token endpoint answering garbage JSON: logged, counted, backend skipped, /readyz 503, nothing sent upstream', async () => {
  const { id, be, start } = await setup();
  id.entra.raw = { status: 200, body: '<html>{"access_token": oops' };
  const router = await start();
  assert.ok(await router.waitStderr(/token call failed: unusable answer: the answer is not a JSON object/));
  const r = await chat(router);
  assert.equal(r.status, 502);
  assert.match(r.json().error.message, /no backend credential is available/);
  assert.equal((await httpRequest(`${router.url}/readyz`)).status, 503);
  assert.equal(be.seen.length, 0);
  const m = await fetchMetrics(router);
  assert.ok(metricSum(m, 'aoai_router_credential_refresh_failures_total', { backend: 'h' }) >= 1);
  assert.ok(metricSum(m, 'aoai_router_failovers_total', { backend: 'h', reason: 'credential' }) >= 1);
});

test('a huge answer (2 MiB) is cut at 64 KiB and refused', async () => {
  const { id, start } = await setup();
  id.entra.raw = { status: 200, body: '{"access_token":"' + 'a'.repeat(2 * 1024 * 1024) + '","expires_in":3600}' };
  const router = await start();
  assert.ok(await router.waitStderr(/token call failed: answer too large/));
  assert.equal((await chat(router)).status, 502);
});

test('expires_in absurd (1e30) is cut to 24 h; negative or zero is refused', async () => {
  const { id, be, start } = await setup();
  id.entra.expiresValue = 1e30;
  const router = await start();
  assert.equal((await chat(router)).status, 200);
  const left = metricSum(await fetchMetrics(router), 'aoai_router_credential_expiry_seconds', { backend: 'h' });
  assert.ok(left > 86000 && left <= 86400, `expiry ${left}`);
  assert.equal(be.expired, 0);
  await router.stop();

  for (const v of [-3600, 0, '12h']) {
    const s = await setup();
    s.id.entra.expiresValue = v;
    const r2 = await s.start();
    assert.ok(await r2.waitStderr(/unusable answer: no usable expires_in\/expires_on/), `expires_in ${v}`);
    assert.equal((await chat(r2)).status, 502);
    assert.equal(s.be.seen.length, 0);
  }
});

test('an access_token with CR/LF (header injection) or spaces is refused; nothing reaches the backend', async () => {
  for (const bad of ['abc\r\nX-Evil: 1', 'abc def', 'abc\u0001']) {
    const { id, be, start } = await setup({ auth: 'managed_identity' });
    id.imds.raw = { status: 200, body: JSON.stringify({ access_token: bad, expires_in: '3600', token_type: 'Bearer' }) };
    const router = await start();
    assert.ok(await router.waitStderr(/unusable answer: no usable access_token/));
    assert.equal((await chat(router)).status, 502);
    assert.equal(be.seen.length, 0);
  }
});

test('a token endpoint that never answers: waiting requests are bounded by connect_timeout_ms, one call in flight, the call times out', async () => {
  const { id, be, start } = await setup({ limits: { connect_timeout_ms: 800 } });
  id.entra.hang = true;
  const router = await start();
  let t0 = Date.now();
  const first = await Promise.all(Array.from({ length: 10 }, () => chat(router)));
  const waited = Date.now() - t0;
  for (const r of first) assert.equal(r.status, 502);
  assert.ok(waited >= 500 && waited < 2500 * SLOW, `cold-start wait ${waited} ms`);
  t0 = Date.now();
  assert.equal((await chat(router)).status, 502);
  assert.ok(Date.now() - t0 < 500 * SLOW, 'no second full wait for the same pending call');
  assert.equal(id.entra.calls, 1, 'single flight');
  assert.equal(be.seen.length, 0);
  assert.ok(await router.waitStderr(/token call failed: transport error: .*[Tt]imeout|timed out/, 15000 * SLOW), 'the call is ended by the 10 s timeout');
});

test('an endpoint echoing the assertion or the secret in error_description: logged with the secret cut', async () => {
  const { id, start } = await setup({ auth: 'workload_identity' });
  id.entra.failNext = [
    { status: 400, body: { error: 'invalid_client', error_description: 'AADSTS50027: bad assertion projected-sa-token-Xy12Zz34Ww56 for you' } },
  ];
  const router = await start();
  assert.ok(await router.waitStderr(/error=invalid_client error_description=AADSTS50027: bad assertion \[redacted\]/));
  assert.ok(!router.stderr().includes('Xy12Zz34Ww56'));
  assert.ok(await pollUntil(async () => (await chat(router)).status === 200, { timeoutMs: 5000 * SLOW }));
});

test('a token file that vanishes: the current token is kept while valid, then the backend is skipped, then it recovers', async () => {
  const { id, tokenFile, start } = await setup({ auth: 'workload_identity' });
  id.entra.lifetimeS = 6;
  const router = await start();
  assert.equal((await chat(router)).status, 200);
  const t0 = Date.now();
  rmSync(tokenFile);
  assert.ok(await router.waitStderr(/token call failed: token_file unreadable: No such file/, 6000 * SLOW));
  if (Date.now() - t0 < 4500) assert.equal((await chat(router)).status, 200, 'the token still valid is used');
  assert.ok(await pollUntil(async () => (await chat(router)).status === 502, { timeoutMs: 8000 * SLOW }), 'skipped once it expired');
  writeFileSync(tokenFile, 'projected-sa-token-' + 'Xy12Zz34Ww56\n');
  assert.ok(await pollUntil(async () => (await chat(router)).status === 200, { timeoutMs: 35000 * SLOW, intervalMs: 250 }));
});

test('a token file over 16 KiB is refused', async () => {
  const { tokenFile, start } = await setup({ auth: 'workload_identity' });
  writeFileSync(tokenFile, 'x'.repeat(16 * 1024 + 1));
  const router = await start();
  assert.ok(await router.waitStderr(/token_file unreadable: larger than 16 KiB/));
  assert.equal((await chat(router)).status, 502);
});

test('a redirect from the token endpoint is not followed', async () => {
  const { id, start } = await setup({ auth: 'managed_identity' });
  id.imds.raw = { status: 302, body: '{}' };
  const router = await start();
  assert.ok(await router.waitStderr(/token call failed: refused: HTTP 302/));
  assert.equal(id.imds.calls, 1);
});

test('a backend that answers 401 forever: at most one token drop per 10 s, not one IMDS call per request', async () => {
  const { id, be, start } = await setup({ auth: 'managed_identity' });
  const router = await start();
  assert.equal((await chat(router)).status, 200);
  be.fail401 = 1e9;
  for (let i = 0; i < 30; i++) await chat(router);
  assert.ok(id.imds.calls <= 3, `IMDS calls: ${id.imds.calls}`);
});

test('more than 1024 requests waiting for a first token on one worker: the 1025th is not queued (502 at once)', async () => {
  const { id, be, start } = await setup({ auth: 'managed_identity', threads: 1 });
  id.imds.delayMs = 2500;
  const router = await start();
  const t0 = Date.now();
  const r = await h2load(['-n', '1100', '-c', '11', '-m', '100', '-d', bodyFile(chatBody()), '-H', 'content-type: application/json', `${router.url}${CHAT_PATH}`]);
  assert.equal(r.requests.done, 1100, r.output);
  assert.equal(r.status['2xx'], 1024, r.output);
  assert.equal(r.status['5xx'], 76, r.output);
  assert.equal(id.imds.calls, 1);
  assert.equal(be.seen.length, 1024);
  assert.ok(Date.now() - t0 < 15000 * SLOW);
});

test('an IDENTITY_HEADER that could split a header line is refused at load, its value never printed', async () => {
  const dir = tempDir('aor-hid-env-');
  const cfg = path.join(dir, 'backends.yaml');
  writeFileSync(
    cfg,
    'listen: [{ address: 127.0.0.1, port: 18080 }]\nbackends:\n  - name: a\n    url: http://127.0.0.1:9\n    auth: { type: managed_identity }\n',
  );
  const r = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { IDENTITY_ENDPOINT: 'http://127.0.0.1:9/msi/token', IDENTITY_HEADER: 'hdr-secret\r\nX-Evil: 1' } });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /IDENTITY_HEADER has bytes that cannot go in an HTTP header/);
  assert.ok(!r.stderr.includes('hdr-secret') && !r.stderr.includes('X-Evil'));
  const ok = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { IDENTITY_ENDPOINT: 'http://127.0.0.1:9/msi/token', IDENTITY_HEADER: 'hdr-secret-ok' } });
  assert.equal(ok.code, 0, ok.stderr);
  assert.ok(!ok.stderr.includes('hdr-secret-ok'));
});
