// Outside review of keyless backend identity (issue 9): a lying or broken identity endpoint, an
// operator's typo in the auth block, a token file that is not a file. Each test names what it attacks.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, rmSync, renameSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { startRouter, httpRequest, fetchMetrics, metricSum, pollUntil, sleep, tempDir, stopAll, run, h2load, bodyFile, chatBody, freePort, post, ROUTER_BIN, SLOW, CHAT_PATH } from './lib/harness.mjs';
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
  assert.match(router.stderr(), /warning: backends\[0\]\.auth\.token_file: cannot read ".*not-yet"( now)?: No such file or directory/);
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

// ---- lying identity endpoints (a raw IMDS stand-in of our own) ----------------------------

async function rawImds(handler) {
  const port = await freePort();
  const srv = { calls: 0, port, url: `http://127.0.0.1:${port}/metadata/identity/oauth2/token` };
  const server = http.createServer((req, res) => {
    srv.calls++;
    handler(req, res, srv.calls);
  });
  srv.close = () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); });
  srv.stop = srv.close;
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  cleanup.push(srv);
  return srv;
}

function json(res, status, obj, headers = {}) {
  const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

const nowS = () => Math.floor(Date.now() / 1000);

test('odd token answers: expires_on in the past, token_type odd, access_token not a string are refused; expires_in beats a past expires_on; floats and BEARER are fine', async () => {
  const T = 'tok-' + 'A1b2C3d4E5f6G7h8';
  const cases = [
    { body: { access_token: T, expires_on: String(nowS() - 60), token_type: 'Bearer' }, ok: false, log: /no usable expires_in\/expires_on/ },
    { body: { access_token: T, expires_on: nowS() + 1, token_type: 'Bearer' }, ok: false, log: /no usable expires_in\/expires_on/ }, // under 1 s left, or close
    { body: { access_token: T, expires_in: 3600, token_type: 'pop' }, ok: false, log: /token_type is not Bearer/ },
    { body: { access_token: T, expires_in: 3600, token_type: '' }, ok: false, log: /token_type is not Bearer/ },
    { body: { access_token: 12345, expires_in: 3600 }, ok: false, log: /no usable access_token/ },
    { body: { access_token: 'tok-\u00e9t\u00e9-AAAAAAAA', expires_in: 3600 }, ok: false, log: /no usable access_token/ },
    { body: `{"access_token":"${T}","expires_in":3600} {"access_token":"other","expires_in":3600}`, ok: false, log: /not a JSON object/ },
    { body: { access_token: T, expires_in: '3600', expires_on: '1', token_type: 'BEARER', refresh_in: 'soon' }, ok: true, left: [3500, 3600] },
    { body: { access_token: T, expires_in: 3600.75, refresh_in: -5 }, ok: true, left: [3500, 3601] },
    { body: { access_token: T, expires_in: '99999999999999999999999999' }, ok: true, left: [86000, 86400] },
  ];
  for (const c of cases) {
    const imds = await rawImds((req, res) => json(res, 200, c.body));
    const be = await startTokenBackend('odd');
    cleanup.push(be);
    const router = await startRouter({ config: { backends: [{ name: 'odd', url: be.url, auth: { type: 'managed_identity', imds_endpoint: imds.url } }] } });
    cleanup.push(router);
    const r = await chat(router);
    const what = JSON.stringify(c.body).slice(0, 120);
    if (c.ok) {
      assert.equal(r.status, 200, what);
      assert.equal(be.seen.at(-1).authorization, `Bearer ${T}`);
      const left = metricSum(await fetchMetrics(router), 'aoai_router_credential_expiry_seconds', { backend: 'odd' });
      assert.ok(left >= c.left[0] && left <= c.left[1], `${what}: expiry ${left}`);
    } else {
      assert.equal(r.status, 502, what);
      assert.equal(be.seen.length, 0, what);
      assert.ok(await router.waitStderr(c.log), `${what}: ${router.stderr().slice(-500)}`);
    }
    await router.stop();
  }
});

test('an identity endpoint that resets the connection mid-body, then one that redirects elsewhere: nothing reaches the other host, no token sent; recovers', async () => {
  let elsewhere = 0;
  const other = await rawImds((req, res) => {
    elsewhere++;
    json(res, 200, { access_token: 'evil-' + 'Zz9Yy8Xx7Ww6', expires_in: 3600 });
  });
  const T = 'good-' + 'Qq1Ww2Ee3Rr4';
  const imds = await rawImds((req, res, n) => {
    if (n === 1) {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 200 });
      res.write('{"access_token":"' + T);
      setTimeout(() => res.socket.destroy(), 50);
    } else if (n === 2) {
      json(res, 301, { access_token: 'redir-' + 'Aa1Ss2Dd3Ff4', expires_in: 3600 }, { location: other.url + '?steal=1' });
    } else {
      json(res, 200, { access_token: T, expires_in: '3600', token_type: 'Bearer' });
    }
  });
  const be = await startTokenBackend('reset');
  cleanup.push(be);
  const router = await startRouter({ config: { backends: [{ name: 'reset', url: be.url, auth: { type: 'managed_identity', imds_endpoint: imds.url } }] } });
  cleanup.push(router);
  assert.ok(await router.waitStderr(/token call failed: transport error/));
  assert.ok(await router.waitStderr(/token call failed: refused: HTTP 301/, 5000 * SLOW));
  assert.ok(await pollUntil(async () => (await chat(router)).status === 200, { timeoutMs: 8000 * SLOW, intervalMs: 200 }));
  assert.equal(elsewhere, 0, 'the redirect was not followed');
  assert.deepEqual([...new Set(be.seen.map((s) => s.authorization))], [`Bearer ${T}`]);
  assert.equal(imds.calls, 3);
});

// ---- many workers, shared identities, 401 patterns ---------------------------------------

test('4 workers, 400 requests on 16 connections at a cold start: exactly one IMDS call, every request 200 with that token', async () => {
  const { id } = await mocks();
  id.imds.delayMs = 400;
  const be = await startTokenBackend('cold', id);
  cleanup.push(be);
  const router = await startRouter({ config: { threads: 4, backends: [{ name: 'cold', url: be.url, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }] } });
  cleanup.push(router);
  const r = await h2load(['-n', '400', '-c', '16', '-m', '25', '-d', bodyFile(chatBody()), '-H', 'content-type: application/json', `${router.url}${CHAT_PATH}`]);
  assert.equal(r.status['2xx'], 400, r.output);
  assert.equal(id.imds.calls, 1);
  assert.deepEqual([...new Set(be.seen.map((s) => s.authorization))], [`Bearer ${id.imds.issued[0]}`]);
});

test('two backends share one identity; one answers 401 to every other request: no client request fails, token calls stay bounded, the other backend keeps its bearer', async () => {
  const { id } = await mocks();
  const flaky = await startTokenBackend('flaky', id);
  const good = await startTokenBackend('good', id);
  cleanup.push(flaky, good);
  const auth = { type: 'managed_identity', imds_endpoint: id.imdsUrl };
  const router = await startRouter({
    config: { limits: { max_attempts: 3 }, backends: [{ name: 'flaky', url: flaky.url, priority: 1, auth }, { name: 'good', url: good.url, priority: 2, auth }] },
  });
  cleanup.push(router);
  const statuses = [];
  const t0 = Date.now();
  for (let i = 0; i < 40; i++) {
    if (i % 2 === 0) flaky.fail401 = 1;
    const r = await chat(router);
    statuses.push(r.status === 200 ? 200 : `${r.status} ${r.body.slice(0, 200)}`);
  }
  assert.deepEqual([...new Set(statuses)], [200], router.stderr().slice(-3000));
  // one token drop per source per 10 s: the first token, plus one per started 10 s
  const bound = 2 + Math.floor((Date.now() - t0) / 10000);
  assert.ok(id.imds.calls <= bound, `IMDS calls ${id.imds.calls} for 20 401s in ${Date.now() - t0} ms (bound ${bound})`);
  assert.equal(flaky.expired + good.expired + flaky.unknown + good.unknown, 0);
  assert.ok(good.seen.length >= 1);
});

test('oidc_federation: the Auth0 secret goes only to the IdP, the Auth0 token only to Entra (as the assertion), the Entra token only to the backend', async () => {
  const { id, be } = await mocks();
  const router = await startRouter({
    config: {
      backends: [
        {
          name: 'rid',
          url: be.url,
          auth: { type: 'oidc_federation', token_url: id.auth0Url, client_id: AUTH0_ID, client_secret_env: 'AUTH0_SECRET', tenant_id: TENANT, azure_client_id: FED_APP, authority_host: id.authority },
        },
      ],
    },
    env: { AUTH0_SECRET },
  });
  cleanup.push(router);
  assert.equal((await chat(router)).status, 200);
  assert.equal(id.auth0.calls, 1);
  assert.equal(id.entra.calls, 1);
  const entraReq = JSON.stringify(id.entra.requests);
  const auth0Req = JSON.stringify(id.auth0.requests);
  assert.ok(!entraReq.includes(AUTH0_SECRET), 'the Auth0 secret never reaches Entra');
  assert.equal(id.entra.requests[0].form.client_assertion, id.auth0.issued[0]);
  assert.ok(!auth0Req.includes(id.entra.issued[0].split('.')[2]), 'the Entra token never reaches the IdP');
  assert.equal(id.auth0.requests[0].headers.authorization, undefined);
  assert.equal(id.entra.requests[0].headers.authorization, undefined);
  assert.equal(be.seen[0].authorization, `Bearer ${id.entra.issued[0]}`);
  assert.ok(!JSON.stringify(be.seen).includes(id.auth0.issued[0].split('.')[2]), 'the Auth0 token never reaches the backend');
});

// ---- operator typos ----------------------------------------------------------------------

test('an Entra identity on provider openai, or openai_wif on an Azure backend: --check says the backend can never get a token', async () => {
  const dir = tempDir('aor-rid-mix-');
  const cfg = path.join(dir, 'backends.yaml');
  writeFileSync(
    cfg,
    'listen: [{ address: 127.0.0.1, port: 18080 }]\nbackends:\n' +
      '  - name: oai\n    provider: openai\n    auth: { type: managed_identity, imds_endpoint: "http://127.0.0.1:9/t" }\n' +
      '  - name: az\n    url: http://127.0.0.1:9\n    auth: { type: openai_wif, identity_provider_id: p, service_account_id: s, subject: { type: file, path: /tmp/x } }\n',
  );
  const r = await run(ROUTER_BIN, ['--check', '-c', cfg]);
  assert.equal(r.code, 0, 'documented behaviour kept: such a backend is skipped; now said at load');
  assert.match(r.stderr, /:5: warning: backends\[0\]\.auth\.type: managed_identity .*provider openai/);
  assert.match(r.stderr, /backends\[1\]\.auth\.type: openai_wif .*provider azure/);
});

// ---- shutdown and reload while requests wait for a first token -------------------------------

test('SIGTERM while 60 requests on 2 workers wait for a first token from a silent IMDS: the drain ends with their bounded wait (502), exit 0', async () => {
  const { id } = await mocks();
  id.imds.hang = true;
  const be = await startTokenBackend('term', id);
  cleanup.push(be);
  const router = await startRouter({ config: { limits: { connect_timeout_ms: 1500 }, backends: [{ name: 'term', url: be.url, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }] } });
  cleanup.push(router);
  const waiting = Array.from({ length: 60 }, () => chat(router).then((r) => r.status, () => 'closed'));
  await sleep(300);
  const t0 = Date.now();
  await router.stop({ timeoutMs: 10000 * SLOW });
  assert.ok(Date.now() - t0 < 4000 * SLOW, `exit took ${Date.now() - t0} ms`);
  const got = await Promise.all(waiting);
  assert.equal(be.seen.length, 0);
  assert.deepEqual([...new Set(got)], [502]);
  assert.equal(id.imds.calls, 1);
});

test('a reload that drops the identity while requests wait for its first token: the waiters end (bounded), the new config serves', async () => {
  const { id } = await mocks();
  id.imds.hang = true;
  const be = await startTokenBackend('rl', id);
  const keyBe = await startTokenBackend('rlkey');
  cleanup.push(be, keyBe);
  const conf = { limits: { connect_timeout_ms: 2000 }, backends: [{ name: 'rl', url: be.url, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }] };
  const router = await startRouter({ config: conf, env: { RL_KEY: 'rl-key-' + 'Mn8Bv6Cx4Zl2' } });
  cleanup.push(router);
  const t0 = Date.now();
  const waiting = Array.from({ length: 20 }, () => chat(router));
  await sleep(200);
  router.writeConfig({ ...conf, backends: [{ name: 'rlkey', url: keyBe.url, auth: { type: 'api_key', key_env: 'RL_KEY' } }] });
  router.signal('SIGHUP');
  assert.ok(await router.waitStderr(/reloaded/));
  const got = await Promise.all(waiting);
  assert.ok(Date.now() - t0 < 4000 * SLOW, `waiters ended after ${Date.now() - t0} ms`);
  for (const r of got) assert.ok(r.status === 502 || r.status === 200, String(r.status));
  assert.equal((await chat(router)).status, 200);
  assert.equal(keyBe.seen.at(-1).apiKey, 'rl-key-Mn8Bv6Cx4Zl2');
  assert.equal(be.seen.length, 0);
});

test('env typos: AZURE_CLIENT_ID with a trailing newline is refused at load; a client secret env value ending in a newline is warned about; neither value printed', async () => {
  const dir = tempDir('aor-rid-env-');
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, SA_TOKEN + '\n');
  const cfg = path.join(dir, 'backends.yaml');
  writeFileSync(
    cfg,
    'listen: [{ address: 127.0.0.1, port: 18080 }]\nbackends:\n' +
      '  - name: sp\n    url: http://127.0.0.1:9\n    auth: { type: client_secret, tenant_id: t1, client_id: c1, secret_env: RID_SP_SECRET }\n' +
      `  - name: wi\n    url: http://127.0.0.1:9\n    auth: { type: workload_identity, token_file: ${tokenFile} }\n`,
  );
  const env = { RID_SP_SECRET: SP_SECRET + '\n', AZURE_TENANT_ID: 't1', AZURE_CLIENT_ID: 'wi-client-id\n' };
  const bad = await run(ROUTER_BIN, ['--check', '-c', cfg], { env });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /:8: backends\[1\]\.auth\.client_id: AZURE_CLIENT_ID has a control character/);
  assert.match(bad.stderr, /:5: warning: backends\[0\]\.auth\.secret_env: the value of RID_SP_SECRET ends with a line break/);
  const ok = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { ...env, AZURE_CLIENT_ID: 'wi-client-id' } });
  assert.equal(ok.code, 0, ok.stderr);
  for (const out of [bad.stderr + bad.stdout, ok.stderr + ok.stdout]) assert.ok(!out.includes(SP_SECRET.slice(-12)));
});

test('slowloris IMDS (headers, then a byte every 400 ms): waiting requests end at connect_timeout_ms, the call at its 10 s bound; a hostile client_id stays one query value', async () => {
  const CID = 'uami&resource=https://evil.example&x=';
  const seen = [];
  const imds = await rawImds((req, res) => {
    seen.push(new URL(req.url, 'http://x').searchParams);
    res.writeHead(200, { 'content-type': 'application/json' });
    const t = setInterval(() => (res.destroyed ? clearInterval(t) : res.write(' ')), 400);
    res.on('close', () => clearInterval(t));
  });
  const be = await startTokenBackend('slow');
  cleanup.push(be);
  const router = await startRouter({ config: { limits: { connect_timeout_ms: 1000 }, backends: [{ name: 'slow', url: be.url, auth: { type: 'managed_identity', client_id: CID, imds_endpoint: imds.url } }] } });
  cleanup.push(router);
  const t0 = Date.now();
  const got = await Promise.all(Array.from({ length: 10 }, () => chat(router)));
  assert.ok(Date.now() - t0 < 2500 * SLOW, `waited ${Date.now() - t0} ms`);
  assert.deepEqual([...new Set(got.map((r) => r.status))], [502]);
  assert.ok(await router.waitStderr(/token call failed: transport error: .*(timed out|[Tt]imeout)/, 13000 * SLOW));
  assert.equal(imds.calls, 1);
  assert.equal(seen[0].get('client_id'), CID);
  assert.deepEqual(seen[0].getAll('resource'), ['https://cognitiveservices.azure.com']);
  assert.equal(be.seen.length, 0);
});

test('IDENTITY_ENDPOINT (or AZURE_AUTHORITY_HOST) on plain http:// off loopback / link-local (X-IDENTITY-HEADER, a secret would cross the network in the clear): warned at load, the header never printed', async () => {
  const dir = tempDir('aor-rid-as-');
  const cfg = path.join(dir, 'backends.yaml');
  writeFileSync(cfg, 'listen: [{ address: 127.0.0.1, port: 18080 }]\nbackends:\n  - name: a\n    url: http://127.0.0.1:9\n    auth: { type: managed_identity }\n');
  const hdr = 'appsvc-hdr-' + 'Review77Zx';
  const remote = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { IDENTITY_ENDPOINT: 'http://10.1.2.3:8081/msi/token', IDENTITY_HEADER: hdr } });
  assert.equal(remote.code, 0);
  assert.match(remote.stderr, /:5: warning: backends\[0\]\.auth\.imds_endpoint \(IDENTITY_ENDPOINT\): plain http:\/\/ to a host that is not loopback/);
  for (const ep of ['http://127.0.0.1:41123/msi/token', 'http://169.254.129.5:8081/msi/token', 'http://localhost:42356/msi/token']) {
    const local = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { IDENTITY_ENDPOINT: ep, IDENTITY_HEADER: hdr } });
    assert.equal(local.code, 0);
    assert.ok(!/warning/.test(local.stderr), `${ep}: ${local.stderr}`);
  }
  assert.ok(!remote.stderr.includes(hdr) && !remote.stdout.includes(hdr));
  // the same for the Entra authority taken from the environment (the client secret or assertion goes there)
  writeFileSync(cfg, 'listen: [{ address: 127.0.0.1, port: 18080 }]\nbackends:\n  - name: a\n    url: http://127.0.0.1:9\n    auth: { type: client_secret, tenant_id: t1, client_id: c1, secret_env: RID_S }\n');
  const auth = await run(ROUTER_BIN, ['--check', '-c', cfg], { env: { RID_S: SP_SECRET, AZURE_AUTHORITY_HOST: 'http://login.example.net/' } });
  assert.equal(auth.code, 0, auth.stderr);
  assert.match(auth.stderr, /:5: warning: backends\[0\]\.auth\.authority_host \(AZURE_AUTHORITY_HOST\): plain http:\/\/ to a host that is not loopback/);
});

test('30 h2c clients that leave while waiting for a first token: nothing is sent for them, the token still comes once, the next request is served (clean under ASan)', async () => {
  const { id } = await mocks();
  id.imds.delayMs = 2500; // every client has left before the token comes, even on a loaded machine
  const be = await startTokenBackend('gone', id);
  cleanup.push(be);
  const router = await startRouter({ config: { limits: { connect_timeout_ms: 5000 }, backends: [{ name: 'gone', url: be.url, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }] } });
  cleanup.push(router);
  // h2c: the client's leaving is a RST_STREAM the router sees (an HTTP/1.1 client that closes is seen only when written to)
  const left = await Promise.all(Array.from({ length: 30 }, () => post(router.url, CHAT_PATH, chatBody(), { proto: 'h2c', args: ['--max-time', '0.25'] })));
  for (const r of left) assert.ok(r.exitCode !== 0 && r.status !== 200, JSON.stringify(r).slice(0, 300));
  assert.equal(id.imds.issued.length, 0, 'all clients left before the token came');
  assert.ok(await pollUntil(async () => (await httpRequest(`${router.url}/readyz`)).status === 200, { timeoutMs: 5000 * SLOW }));
  await sleep(100);
  assert.equal(be.seen.length, 0, 'no attempt for a client that left');
  assert.equal((await chat(router)).status, 200);
  assert.equal(id.imds.calls, 1);
  await router.stop();
});

test("a client's own Authorization, api-key and a second Authorization never reach a keyless backend: only the router's bearer does", async () => {
  const { id } = await mocks();
  const raw = [];
  const port = await freePort();
  const server = http.createServer((req, res) => {
    raw.push(req.rawHeaders);
    req.resume();
    req.on('end', () =>
      json(res, 200, { id: 'c', object: 'chat.completion', model: 'gpt-4o', choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }),
    );
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  cleanup.push({ stop: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }) });
  const router = await startRouter({ config: { backends: [{ name: 'own', url: `http://127.0.0.1:${port}`, auth: { type: 'managed_identity', imds_endpoint: id.imdsUrl } }] } });
  cleanup.push(router);
  const r = await post(router.url, CHAT_PATH, chatBody(), {
    proto: 'h2c',
    headers: { authorization: 'Bearer client-own-token-Aa11', 'api-key': 'client-own-key-Bb22', 'Ocp-Apim-Subscription-Key': 'client-sub-Cc33' },
    args: ['-H', 'Authorization: Basic Y2xpZW50OnNlY29uZA=='],
  });
  assert.equal(r.status, 200, r.body);
  assert.equal(raw.length, 1);
  const pairs = [];
  for (let i = 0; i < raw[0].length; i += 2) pairs.push([raw[0][i].toLowerCase(), raw[0][i + 1]]);
  assert.deepEqual(pairs.filter(([k]) => k === 'authorization').map(([, v]) => v), [`Bearer ${id.imds.issued[0]}`]);
  assert.deepEqual(pairs.filter(([k]) => k === 'api-key' || k === 'ocp-apim-subscription-key'), []);
  assert.ok(!JSON.stringify(raw).includes('client-own') && !JSON.stringify(raw).includes('Y2xpZW50'));
});

test('an https Entra authority whose certificate the system CA bundle does not trust (self-signed; a private CA): the handshake fails, the client secret is never sent, the failure is logged', async () => {
  const { makeCerts } = await import('./lib/redis_tls.mjs');
  const https = await import('node:https');
  const { readFileSync } = await import('node:fs');
  const certs = makeCerts();
  for (const which of ['selfSigned', 'wrongHost']) {
    const port = await freePort();
    const got = [];
    const server = https.createServer({ cert: readFileSync(certs[which].cert), key: readFileSync(certs[which].key) }, (req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        got.push(body);
        json(res, 200, { access_token: 'tls-' + 'Ab12Cd34Ef56', expires_in: 3600, token_type: 'Bearer' });
      });
    });
    await new Promise((r) => server.listen(port, '127.0.0.1', r));
    cleanup.push({ stop: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }) });
    const be = await startTokenBackend('tls');
    cleanup.push(be);
    const router = await startRouter({
      config: { backends: [{ name: 'tls', url: be.url, auth: { type: 'client_secret', tenant_id: TENANT, client_id: SP, secret_env: 'SP_SECRET', authority_host: `https://127.0.0.1:${port}/` } }] },
      env: { SP_SECRET },
    });
    cleanup.push(router);
    assert.ok(await router.waitStderr(/token call failed: transport error: .*(SSL|certificate)/i), `${which}: ${router.stderr().slice(-800)}`);
    assert.equal((await chat(router)).status, 502);
    assert.deepEqual(got, [], `${which}: nothing reached the endpoint`);
    assert.equal(be.seen.length, 0);
    assert.ok(!router.stderr().includes(SP_SECRET));
    await router.stop();
  }
});

test('refresh_in "1" on a 1 h token does not turn the router into a 1-per-second poller of IMDS (refresh_in is honoured, no sooner than 30 s)', async () => {
  const T = 'tok-' + 'Rf1Rf2Rf3Rf4';
  const imds = await rawImds((req, res) => json(res, 200, { access_token: T, expires_in: '3600', refresh_in: '1', token_type: 'Bearer' }));
  const be = await startTokenBackend('ri');
  cleanup.push(be);
  const router = await startRouter({ config: { backends: [{ name: 'ri', url: be.url, auth: { type: 'managed_identity', imds_endpoint: imds.url } }] } });
  cleanup.push(router);
  assert.equal((await chat(router)).status, 200);
  await sleep(3500);
  assert.equal(imds.calls, 1, `IMDS calls in 3.5 s: ${imds.calls}`);
  assert.equal((await chat(router)).status, 200);
});

test('cold start + a 401 from the first backend (its role missing) with a healthy second backend on the same identity: the request that waited for the first token may wait for the next one — 200, not 502', async () => {
  const { id } = await mocks();
  id.imds.delayMs = 400; // the first requests wait for the first token
  const flaky = await startTokenBackend('norole', id);
  const good = await startTokenBackend('hasrole', id);
  cleanup.push(flaky, good);
  flaky.fail401 = 1e9;
  const auth = { type: 'managed_identity', imds_endpoint: id.imdsUrl };
  const router = await startRouter({
    config: { limits: { connect_timeout_ms: 3000 }, backends: [{ name: 'norole', url: flaky.url, priority: 1, auth }, { name: 'hasrole', url: good.url, priority: 2, auth }] },
  });
  cleanup.push(router);
  const got = await Promise.all(Array.from({ length: 5 }, () => chat(router)));
  assert.deepEqual(got.map((r) => r.status), [200, 200, 200, 200, 200], got.map((r) => r.body).join('\n'));
  assert.ok(flaky.seen.length >= 1 && good.seen.length === 5);
  assert.equal(id.imds.calls, 2, 'the first token, and one after the 401 dropped it');
  assert.equal(good.expired + good.unknown, 0);
});
