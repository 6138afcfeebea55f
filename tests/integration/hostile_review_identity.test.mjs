// Outside review of keyless backend identity (issue 9): a lying or broken identity endpoint, an
// operator's typo in the auth block, a token file that is not a file. Each test names what it attacks.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, rmSync, renameSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { startRouter, httpRequest, fetchMetrics, metricSum, pollUntil, sleep, tempDir, stopAll, run, h2load, bodyFile, chatBody, ROUTER_BIN, SLOW, CHAT_PATH } from './lib/harness.mjs';
import { startIdentity, startTokenBackend } from './lib/identity_mocks.mjs';

const TENANT = 'contoso.onmicrosoft.com';
const SP = 'sp-review-app';
const SP_SECRET = 'review-sp-secret-' + 'Lk2Jh4Gf6Ds8';
const WIF_APP = 'wif-review-app';
const FED_APP = 'fed-review-app';
const AUTH0_ID = 'auth0-review-client';
const AUTH0_SECRET = 'auth0-review-secret-' + 'Po9Iu7Yt5Re3';
const SA_TOKEN = 'eyJhbGciOiJSUzI1NiIsImtpZCI6InJldmlldyJ9.' + 'eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YWk6cm91dGVyIn0' + '.c2lnbmF0dXJlLW9mLXRoZS1wcm9qZWN0ZWQtdG9rZW4';

const cleanup = [];
after(() => stopAll(...cleanup));

function chat(router) {
  return httpRequest(`${router.url}${CHAT_PATH}`, { method: 'POST', body: { messages: [{ role: 'user', content: 'hi' }] } });
}

async function mocks() {
  const dir = tempDir('aor-rid-');
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, SA_TOKEN + '\n');
  const id = await startIdentity({
    tenant: TENANT,
    entraClients: { [SP]: { secret: SP_SECRET }, [WIF_APP]: { assertionFile: tokenFile }, [FED_APP]: { assertionFrom: 'auth0' } },
    auth0: { clientId: AUTH0_ID, clientSecret: AUTH0_SECRET },
  });
  const be = await startTokenBackend('rid', id);
  cleanup.push(id, be);
  return { id, be, dir, tokenFile };
}

function wif(id, tokenFile) {
  return { type: 'workload_identity', tenant_id: TENANT, client_id: WIF_APP, token_file: tokenFile, authority_host: id.authority };
}

// ---- a token file that is not a readable regular file ----------------------------------------

test('token_file missing at load is a warning (as the issue says), not an error: --check exit 0, the router starts, uses the file once it appears', async () => {
  const { id, be, dir } = await mocks();
  const tokenFile = path.join(dir, 'not-yet');
  const router = await startRouter({ config: { backends: [{ name: 'rid', url: be.url, auth: wif(id, tokenFile) }] } });
  cleanup.push(router);
  assert.match(router.stderr(), /warning: backends\[0\]\.auth\.token_file: cannot read ".*not-yet": No such file or directory/);
  const check = await run(ROUTER_BIN, ['--check', '-c', router.configPath]);
  assert.equal(check.code, 0, check.stderr);
  assert.match(check.stderr, /warning: backends\[0\]\.auth\.token_file: cannot read/);
  assert.equal((await chat(router)).status, 502, 'no token yet: the backend is skipped');
  writeFileSync(tokenFile, SA_TOKEN + '\n');
  assert.ok(await pollUntil(async () => (await chat(router)).status === 200, { timeoutMs: 8000 * SLOW, intervalMs: 200 }), 'the file is read at the next retry');
  assert.equal(id.entra.requests.at(-1).form.client_assertion, SA_TOKEN);
});

test('token_file replaced by a FIFO: the read does not block the thread pool forever — refused as not a regular file, recovers, SIGTERM exits', async () => {
  const { id, be, dir, tokenFile } = await mocks();
  id.entra.lifetimeS = 3; // refreshed after 1.5 s
  const router = await startRouter({ config: { backends: [{ name: 'rid', url: be.url, auth: wif(id, tokenFile) }] } });
  cleanup.push(router);
  assert.equal((await chat(router)).status, 200);
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  renameSync(fifo, tokenFile); // nobody ever writes to it
  assert.ok(await router.waitStderr(/token call failed: token_file unreadable: not a regular file/, 6000 * SLOW), router.stderr().slice(-2000));
  rmSync(tokenFile);
  writeFileSync(tokenFile, SA_TOKEN + '\n');
  const calls = id.entra.calls;
  assert.ok(await pollUntil(() => id.entra.calls > calls, { timeoutMs: 8000 * SLOW, intervalMs: 100 }), 'the source is not stuck');
  assert.equal((await chat(router)).status, 200);
  const t0 = Date.now();
  await router.stop({ timeoutMs: 10000 * SLOW });
  assert.ok(Date.now() - t0 < 10000 * SLOW);
});

test('token_file a FIFO at load: a warning, the router starts and skips the backend; nothing hangs', async () => {
  const { id, be, dir } = await mocks();
  const fifo = path.join(dir, 'fifo-at-load');
  execFileSync('mkfifo', [fifo]);
  const router = await startRouter({ config: { backends: [{ name: 'rid', url: be.url, auth: wif(id, fifo) }] } });
  cleanup.push(router);
  assert.match(router.stderr(), /warning: backends\[0\]\.auth\.token_file: ".*fifo-at-load" is not a regular file/);
  assert.ok(await router.waitStderr(/token_file unreadable: not a regular file/));
  assert.equal((await chat(router)).status, 502);
  assert.equal(id.entra.calls, 0);
  await router.stop({ timeoutMs: 10000 * SLOW });
});

// ---- secrets echoed by a hostile endpoint --------------------------------------------------

test('an endpoint echoing the assertion without its (guessable) JWT header, or a secret minus its first bytes: still cut from the log', async () => {
  const headless = SA_TOKEN.slice(SA_TOKEN.indexOf('.') + 1); // payload.signature: with the header re-made, the whole credential
  const cases = [
    {
      auth: (id, tokenFile) => wif(id, tokenFile),
      fail: (id) => (id.entra.failNext = [{ status: 400, body: { error: 'invalid_client', error_description: `AADSTS50027: JWT is invalid: ${headless}` } }]),
      logged: /AADSTS50027: JWT is invalid: \[redacted\]/,
      frags: [headless.slice(0, 30), headless.slice(-30)],
    },
    {
      auth: (id) => ({ type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: id.authority }),
      fail: (id) => (id.entra.failNext = [{ status: 401, body: { error: 'invalid_client', error_description: `AADSTS7000215: Invalid client secret: x${SP_SECRET.slice(3)}` } }]),
      logged: /AADSTS7000215: Invalid client secret: x\[redacted\]/,
      frags: [SP_SECRET.slice(3)],
    },
    {
      auth: (id) => ({ type: 'oidc_federation', token_url: id.auth0Url, client_id: AUTH0_ID, client_secret_env: 'AUTH0_SECRET', tenant_id: TENANT, azure_client_id: FED_APP, authority_host: id.authority }),
      fail: (id) => (id.auth0.failNext = [{ status: 401, body: { error: 'access_denied', error_description: `client_secret=${AUTH0_SECRET.slice(5, 40)} is wrong` } }]),
      logged: /client_secret=\[redacted\]/,
      frags: [AUTH0_SECRET.slice(5, 30), AUTH0_SECRET.slice(-12)],
    },
  ];
  for (const c of cases) {
    const { id, be, tokenFile } = await mocks();
    c.fail(id);
    const router = await startRouter({ config: { backends: [{ name: 'rid', url: be.url, auth: c.auth(id, tokenFile) }] }, env: { SP_SECRET, AUTH0_SECRET } });
    cleanup.push(router);
    assert.ok(await router.waitStderr(c.logged), router.stderr().slice(-2000));
    assert.ok(await pollUntil(async () => (await chat(router)).status === 200, { timeoutMs: 5000 * SLOW }), 'recovers at the retry');
    const log = router.stderr() + router.stdout();
    for (const frag of c.frags) assert.ok(!log.includes(frag), `leaked: ${frag.slice(0, 8)}…`);
    await router.stop();
  }
});
