// Client authentication with JWTs (SPEC §3 auth.jwt, §4 401/403, §7 auth failures; issue 3):
// real tokens minted with `jose` from keys served by loopback mock OIDC providers
// (discovery + JWKS), every algorithm, claims, an attack catalogue, key rotation with the
// refetch cooldown, the IdP going down, HS256 from secret_env, several issuers at once and
// the verified-token cache.
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import {
  startMock,
  startRouter,
  backendFor,
  resetMocks,
  post,
  httpRequest,
  chatBody,
  CHAT_PATH,
  stopAll,
  sleep,
  pollUntil,
  SLOW,
  authFailures,
  authFailureDelta,
  accessLogLine,
  tempDir,
} from './lib/harness.mjs';
import { startOidc, ASYMMETRIC_ALGS, signRaw, makeKey, mintWith, claimsFor, b64url, randomKid, nowS } from './lib/oidc.mjs';
import { SignJWT, exportJWK } from 'jose';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

const AUD = 'api://aoai-router';
const AUD2 = 'api://aoai-router-secondary';
const SKEW = 30;
const MAX_LIFETIME = 3600;
const COOLDOWN = 2; // jwks_refetch_cooldown_s of the rotation issuer
const HS_ISSUER = 'https://hs-issuer.example.test/v1';
const HS_SECRET = crypto.randomBytes(32).toString('hex'); // 64 bytes: HS256, HS384 and HS512
const FILE_ISSUER = 'https://file-issuer.example.test/';
const CHALLENGE_INVALID = /^Bearer error="invalid_token", error_description="[^"\r\n]+"$/;

let east, router;
let idpA, idpB, idpRoles, idpScp, idpRot, idpMis;
let fileKey; // the key of the jwks_file issuer
const odd = {}; // keys idpB publishes in unusual shapes
let seq = 0;
const rid = (what) => `it-jwt-${what}-${++seq}-${Date.now()}`;

function issuerConf(idp, extra = {}) {
  return { issuer: idp.issuer, openid_config: idp.openidConfig, audiences: [AUD], jwks_refetch_cooldown_s: COOLDOWN, ...extra };
}

/** POSTs a chat completion with `Authorization: Bearer <token>` (no header when token is undefined). */
function call(token, { id = rid('req'), proto = 'h1', headers = {}, target = router } = {}) {
  const h = { 'x-request-id': id, ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  return post(target.url, CHAT_PATH, chatBody({ max_tokens: 2 }), { proto, headers: h });
}

/** Asserts a 200 and returns the access-log line of the request. */
async function expectOk(token, what, opts = {}) {
  const id = opts.id ?? rid('ok');
  const res = await call(token, { ...opts, id });
  assert.equal(res.status, 200, `${what}: expected 200, got ${res.status} ${res.body} www-authenticate=${res.headers['www-authenticate']}`);
  assert.equal(res.headers['x-aoai-router-backend'], 'eastus', what);
  const line = await accessLogLine(opts.target ?? router, id);
  assert.ok(line, `${what}: no access-log line for ${id}`);
  return line;
}

/**
 * Asserts a refusal: the status, the JSON error code, WWW-Authenticate (the invalid_token
 * challenge unless `challenge` says otherwise), one of `reasons` counted in
 * aoai_router_auth_failures_total, and no request reaching the backend.
 */
async function expectRefused(token, what, { status = 401, reasons, challenge = 'invalid', target = router, headers } = {}) {
  const before = await authFailures(target);
  const backendBefore = (await east.stats()).requests;
  const id = rid('refused');
  const res = await call(token, { id, target, headers });
  assert.equal(res.status, status, `${what}: expected ${status}, got ${res.status} ${res.body}`);
  let body;
  assert.doesNotThrow(() => (body = res.json()), `${what}: error body is not JSON: ${res.body}`);
  assert.equal(body?.error?.code, status === 401 ? 'unauthorized' : 'forbidden', `${what}: ${res.body}`);
  assert.equal(typeof body.error.message, 'string');
  const wa = res.headers['www-authenticate'];
  if (challenge === 'invalid') assert.match(wa ?? '', CHALLENGE_INVALID, `${what}: WWW-Authenticate: ${wa}`);
  else if (challenge === 'bearer') assert.match(wa ?? '', /^Bearer\b/, `${what}: WWW-Authenticate: ${wa}`);
  const delta = authFailureDelta(before, await authFailures(target));
  if (reasons) {
    assert.ok(
      reasons.some((r) => delta[r] >= 1),
      `${what}: expected aoai_router_auth_failures_total{reason} in [${reasons}] to grow, it grew for ${JSON.stringify(delta)}`,
    );
  } else {
    assert.ok(Object.keys(delta).length >= 1, `${what}: aoai_router_auth_failures_total did not grow`);
  }
  assert.equal((await east.stats()).requests, backendBefore, `${what}: a refused request reached the backend`);
  const line = await accessLogLine(target, id);
  assert.ok(line, `${what}: no access-log line for the refusal`);
  assert.equal(line.status, status, `${what}: access-log status`);
  return { res, delta, line };
}

/** Polls until a fresh token of `idp` (alg) is accepted: the keystore has fetched its keys. */
async function waitKeys(idp, alg = 'RS256', target = router, extra = {}) {
  const ok = await pollUntil(
    async () => {
      const r = await call(await idp.mint({ tid: 'warmup', ...extra }, { alg }), { target });
      return r.status === 200;
    },
    { timeoutMs: 20000 * SLOW, intervalMs: 200 },
  );
  assert.ok(ok, `keys of ${idp.issuer} never became usable\nstderr:\n${target.stderr().slice(-3000)}`);
}

before(async () => {
  east = await startMock('eastus');
  idpA = await startOidc({ name: 'idp-a/v2.0', algs: ASYMMETRIC_ALGS });
  idpB = await startOidc({ name: 'idp-b', algs: ['RS256', 'ES256'] });
  // as Entra ID publishes them: no "alg", an "issuer" member
  odd.rsaNoAlg = await idpB.addKey('RS256', {
    jwk: (j) => {
      delete j.alg;
      return { ...j, issuer: idpB.issuer };
    },
  });
  odd.ecNoAlg = await idpB.addKey('ES384', {
    jwk: (j) => {
      delete j.alg;
      return j;
    },
  });
  odd.enc = await idpB.addKey('RS256', { jwk: (j) => ({ ...j, use: 'enc' }) });
  odd.leaked = await idpB.addKey('ES256', { jwk: async (j, k) => ({ ...(await exportJWK(k.privateKey)), kid: j.kid, alg: 'ES256', use: 'sig' }) });
  idpMis = await startOidc({ name: 'idp-mismatch', algs: ['RS256'] });
  idpMis.setDiscoveryIssuer('https://someone-else.example.test/');
  fileKey = await makeKey('ES256');
  const jwksFile = path.join(tempDir('aor-it-jwks-'), 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [fileKey.jwk] }));
  idpRoles = await startOidc({ name: 'idp-roles', algs: ['RS256'] });
  idpScp = await startOidc({ name: 'idp-scp', algs: ['ES256'] });
  idpRot = await startOidc({ name: 'idp-rot', algs: ['RS256'] });
  router = await startRouter({
    config: {
      backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      auth: {
        mode: 'jwt',
        jwt: [
          issuerConf(idpA, {
            audiences: [AUD, AUD2],
            tenant_claims: ['tid', 'azp', 'sub'],
            clock_skew_s: SKEW,
            max_token_lifetime_s: MAX_LIFETIME,
          }),
          { issuer: idpB.issuer, jwks_uri: idpB.jwksUri, audiences: [AUD], jwks_refetch_cooldown_s: COOLDOWN },
          issuerConf(idpMis),
          { issuer: FILE_ISSUER, jwks_file: jwksFile, audiences: [AUD] },
          issuerConf(idpRoles, { required_claims: { roles: ['Gateway.Use', 'Gateway.Admin'] } }),
          issuerConf(idpScp, { required_claims: { scp: ['gateway.use'] } }),
          issuerConf(idpRot),
          { issuer: HS_ISSUER, secret_env: 'AOR_IT_HS_SECRET', audiences: [AUD] },
        ],
      },
    },
    env: { AOR_IT_HS_SECRET: HS_SECRET },
  });
  await waitKeys(idpA, 'RS256');
  await waitKeys(idpB, 'RS256');
  await waitKeys(idpRoles, 'RS256', router, { roles: ['Gateway.Use'] });
  await waitKeys(idpScp, 'ES256', router, { scp: 'gateway.use' });
  await waitKeys(idpRot, 'RS256');
});

after(async () => {
  await stopAll(router, east, idpA, idpB, idpRoles, idpScp, idpRot, idpMis);
});

beforeEach(async () => {
  await resetMocks(east);
});

describe('JWT via OIDC discovery: accepted tokens', () => {
  it('discovery was used: the router fetched the openid-configuration, then the jwks_uri it names', () => {
    assert.ok(idpA.counts.discovery >= 1, 'no discovery fetch');
    assert.ok(idpA.counts.jwks >= 1, 'no JWKS fetch');
    const first = idpA.log.find((e) => e.kind !== 'other');
    assert.equal(first.kind, 'discovery');
    assert.equal(idpA.counts.attacker, 0);
  });

  for (const alg of ASYMMETRIC_ALGS) {
    it(`${alg}: 200, tenant from tid, identity in the access log`, async () => {
      const token = await idpA.mint({ tid: `tenant-${alg.toLowerCase()}`, azp: 'client-app', sub: 'user-42' }, { alg });
      const line = await expectOk(token, alg);
      assert.equal(line.tenant, `tenant-${alg.toLowerCase()}`);
      assert.equal(line.auth, 'jwt');
      assert.equal(line.subject, 'user-42');
      assert.equal(line.client_id, 'client-app');
      // the backend sees no client credential
      const h = (await east.stats()).last_request.headers;
      assert.equal(h.authorization, undefined);
      assert.ok(!JSON.stringify(h).includes(token.split('.')[2]));
    });
  }

  it('h2c: 200 with a bearer token', async () => {
    const line = await expectOk(await idpA.mint({ tid: 'tenant-h2c' }, { alg: 'ES256' }), 'h2c', { proto: 'h2c' });
    assert.equal(line.tenant, 'tenant-h2c');
  });

  it('a token without kid is verified by a key of the issuer that fits its alg', async () => {
    const key = idpA.key('RS256');
    const token = await mintWith(key, idpA.claims({ tid: 'tenant-nokid' }), { kid: undefined });
    assert.ok(!JSON.parse(Buffer.from(token.split('.')[0], 'base64url')).kid);
    const line = await expectOk(token, 'no kid');
    assert.equal(line.tenant, 'tenant-nokid');
  });

  it('tenant_claims: tid, else azp, else sub; client id from azp, else appid', async () => {
    let line = await expectOk(await idpA.mint({ tid: 'T-tid', azp: 'A-azp', sub: 'S-sub' }), 'tid');
    assert.deepEqual([line.tenant, line.client_id, line.subject], ['T-tid', 'A-azp', 'S-sub']);
    line = await expectOk(await idpA.mint({ azp: 'A-azp', sub: 'S-sub' }), 'azp');
    assert.deepEqual([line.tenant, line.client_id, line.subject], ['A-azp', 'A-azp', 'S-sub']);
    line = await expectOk(await idpA.mint({ sub: 'S-only' }), 'sub');
    assert.deepEqual([line.tenant, line.subject], ['S-only', 'S-only']);
    line = await expectOk(await idpA.mint({ tid: 'T-v1', appid: 'v1-app', sub: 'S-v1' }), 'appid');
    assert.equal(line.client_id, 'v1-app');
    assert.equal(line.tenant, 'T-v1');
  });

  it('a valid token that names no tenant at all is refused (403)', async () => {
    const token = await idpA.mint({ sub: undefined, tid: undefined, azp: undefined });
    await expectRefused(token, 'no tenant claim', { status: 403, challenge: 'any' });
  });

  it('aud as a string and as an array (any configured audience)', async () => {
    await expectOk(await idpA.mint({ tid: 't', aud: AUD }), 'aud string');
    await expectOk(await idpA.mint({ tid: 't', aud: AUD2 }), 'aud string, second audience');
    await expectOk(await idpA.mint({ tid: 't', aud: ['https://graph.microsoft.com', AUD2] }), 'aud array');
  });

  it('time claims within clock_skew_s are accepted (exp just past, nbf and iat just ahead)', async () => {
    const now = nowS();
    await expectOk(await idpA.mint({ tid: 't', iat: now - 100, exp: now - 5 }), 'exp 5 s ago');
    await expectOk(await idpA.mint({ tid: 't', nbf: now + 10 }), 'nbf in 10 s');
    await expectOk(await idpA.mint({ tid: 't', iat: now + 10, exp: now + 600 }), 'iat in 10 s');
  });

  it('the bearer scheme is case-insensitive; spaces before the token are skipped', async () => {
    const token = await idpA.mint({ tid: 'scheme' });
    let line = await expectOk(undefined, 'lowercase bearer', { headers: { authorization: `bearer ${token}` } });
    assert.equal(line.tenant, 'scheme');
    line = await expectOk(undefined, 'BEARER and two spaces', { headers: { authorization: `BEARER  ${token}` } });
    assert.equal(line.tenant, 'scheme');
  });

  it('identity claims with quotes and backslashes are logged as valid JSON', async () => {
    const sub = 'user "quoted" \\ back\\slash';
    const line = await expectOk(await idpA.mint({ tid: 'quoting', sub, azp: 'app"x' }), 'quotes');
    assert.ok(!line.unparsable, 'the access-log line is not JSON');
    assert.equal(line.subject, sub);
    assert.equal(line.client_id, 'app"x');
  });

  it('a tenant claim that is no safe tenant name (braces, spaces, quotes, too long, control bytes) is refused', async () => {
    for (const tid of ['evil}:x', '{t1}', 'two words', 'q"uote', 'x'.repeat(300), 'nl\nx', '']) {
      const backendBefore = (await east.stats()).requests;
      const res = await call(await idpA.mint({ tid, azp: undefined, sub: undefined }));
      assert.ok([401, 403].includes(res.status), `tid ${JSON.stringify(tid)}: ${res.status} ${res.body}`);
      assert.equal((await east.stats()).requests, backendBefore, `tid ${JSON.stringify(tid)} reached the backend`);
    }
  });
});

describe('JWT claims: refusals', () => {
  it('no token in jwt mode: 401 with a Bearer challenge', async () => {
    const { res } = await expectRefused(undefined, 'no token', { challenge: 'bearer', reasons: ['missing_credentials'] });
    assert.doesNotMatch(res.headers['www-authenticate'], /invalid_token/);
  });

  it('an Authorization header of another scheme is no bearer token: 401 with a Bearer challenge', async () => {
    await expectRefused(undefined, 'basic auth', {
      challenge: 'bearer',
      headers: { authorization: 'Basic dXNlcjpwYXNz' },
    });
  });

  it('expired (beyond clock_skew_s): 401 invalid_token', async () => {
    const now = nowS();
    await expectRefused(await idpA.mint({ tid: 't', iat: now - 600, nbf: now - 600, exp: now - SKEW - 60 }), 'expired', { reasons: ['expired'] });
  });

  it('exp missing: 401', async () => {
    await expectRefused(await idpA.mint({ tid: 't', exp: undefined }), 'no exp', { reasons: ['invalid_claims'] });
  });

  it('exp not a number: 401', async () => {
    await expectRefused(await idpA.mint({ tid: 't', exp: String(nowS() + 600) }), 'exp string', { reasons: ['invalid_claims'] });
  });

  it('nbf in the future (beyond clock_skew_s): 401 invalid_token', async () => {
    await expectRefused(await idpA.mint({ tid: 't', nbf: nowS() + SKEW + 120 }), 'nbf future', { reasons: ['not_yet_valid'] });
  });

  it('iat in the future (beyond clock_skew_s): 401 invalid_token', async () => {
    const now = nowS();
    await expectRefused(await idpA.mint({ tid: 't', iat: now + SKEW + 120, nbf: undefined, exp: now + 900 }), 'iat future', {
      reasons: ['not_yet_valid'],
    });
  });

  it('wrong aud (string, and an array without a configured audience): 401 invalid_token', async () => {
    await expectRefused(await idpA.mint({ tid: 't', aud: 'api://someone-else' }), 'aud string', { reasons: ['wrong_audience'] });
    await expectRefused(await idpA.mint({ tid: 't', aud: ['api://someone-else', 'api://aoai-router-x'] }), 'aud array', {
      reasons: ['wrong_audience'],
    });
    await expectRefused(await idpA.mint({ tid: 't', aud: undefined }), 'aud missing', { reasons: ['wrong_audience', 'invalid_claims'] });
    await expectRefused(await idpA.mint({ tid: 't', aud: `${AUD}/` }), 'aud with a trailing slash', { reasons: ['wrong_audience'] });
  });

  it('wrong iss (an issuer that is not configured): 401 invalid_token', async () => {
    const key = idpA.key('RS256');
    await expectRefused(await mintWith(key, claimsFor('https://evil.example.test/', AUD, { tid: 't' })), 'unknown iss', {
      reasons: ['wrong_issuer'],
    });
    await expectRefused(await mintWith(key, claimsFor(idpA.issuer.toUpperCase(), AUD, { tid: 't' })), 'iss in upper case', {
      reasons: ['wrong_issuer'],
    });
    await expectRefused(await mintWith(key, claimsFor(undefined, AUD, { tid: 't' })), 'no iss', {
      reasons: ['wrong_issuer', 'invalid_claims', 'malformed'],
    });
  });

  it('max_token_lifetime_s exceeded (exp - iat, and exp - now without iat): 401', async () => {
    const now = nowS();
    await expectRefused(await idpA.mint({ tid: 't', iat: now, exp: now + MAX_LIFETIME + 300 }), 'exp - iat', {
      reasons: ['lifetime_too_long'],
    });
    await expectRefused(await idpA.mint({ tid: 't', iat: undefined, exp: now + MAX_LIFETIME + 300 }), 'exp - now', {
      reasons: ['lifetime_too_long'],
    });
    await expectOk(await idpA.mint({ tid: 't', iat: now, exp: now + MAX_LIFETIME - 60 }), 'just under the limit');
  });

  it('required_claims with a roles array: any listed role admits, none is 403', async () => {
    let line = await expectOk(await idpRoles.mint({ tid: 'tr', roles: ['Other', 'Gateway.Use'] }), 'roles has Gateway.Use');
    assert.equal(line.tenant, 'tr');
    await expectOk(await idpRoles.mint({ tid: 'tr', roles: ['Gateway.Admin'] }), 'roles has Gateway.Admin');
    await expectOk(await idpRoles.mint({ tid: 'tr', roles: 'Gateway.Use' }), 'roles as a single string');
    const { res } = await expectRefused(await idpRoles.mint({ tid: 'tr', roles: ['Other', 'gateway.use'] }), 'roles without one', {
      status: 403,
      challenge: 'any',
      reasons: ['missing_claim'],
    });
    assert.match(res.json().error.message, /\S/);
    const { res: noRoles } = await expectRefused(await idpRoles.mint({ tid: 'tr' }), 'no roles claim', {
      status: 403,
      challenge: 'any',
      reasons: ['missing_claim'],
    });
    // RFC 6750 §3.1: a valid token lacking the grant is insufficient_scope, not invalid_token
    assert.match(noRoles.headers['www-authenticate'] ?? '', /^Bearer error="insufficient_scope"/);
    await expectRefused(await idpRoles.mint({ tid: 'tr', roles: 'Other Gateway.Use' }), 'roles is no space-separated claim', {
      status: 403,
      challenge: 'any',
      reasons: ['missing_claim'],
    });
  });

  it('required_claims with a space-separated scp: 200 when it holds the scope, 403 otherwise', async () => {
    await expectOk(await idpScp.mint({ tid: 'ts', scp: 'openid gateway.use profile' }, { alg: 'ES256' }), 'scp holds it');
    await expectOk(await idpScp.mint({ tid: 'ts', scp: 'gateway.use' }, { alg: 'ES256' }), 'scp is it');
    await expectRefused(await idpScp.mint({ tid: 'ts', scp: 'openid gateway.user gateway.use.all' }, { alg: 'ES256' }), 'scp without it', {
      status: 403,
      challenge: 'any',
      reasons: ['missing_claim'],
    });
    await expectRefused(await idpScp.mint({ tid: 'ts' }, { alg: 'ES256' }), 'no scp', { status: 403, challenge: 'any', reasons: ['missing_claim'] });
  });
});

describe('JWT attack catalogue (each refused with 401)', () => {
  const validClaims = () => idpA.claims({ tid: 'victim', roles: ['Gateway.Use'] });
  const json = (o) => JSON.stringify(o);

  for (const none of ['none', 'None', 'NONE', 'nOnE']) {
    it(`alg "${none}" (unsigned token)`, async () => {
      const h = b64url(json({ alg: none, typ: 'JWT' }));
      const p = b64url(json(validClaims()));
      await expectRefused(`${h}.${p}.`, `alg ${none}`, { reasons: ['alg_not_allowed'] });
      // the same with a kid of a real key, and with a bogus signature part
      const hk = b64url(json({ alg: none, kid: idpA.key('RS256').kid }));
      await expectRefused(`${hk}.${p}.`, `alg ${none} with kid`, { reasons: ['alg_not_allowed'] });
      await expectRefused(`${h}.${p}.${b64url('sig')}`, `alg ${none} with a signature`, { reasons: ['alg_not_allowed'] });
    });
  }

  it('HS256 signed with the RSA public key (PEM) as the HMAC secret', async () => {
    const rsa = idpA.key('RS256');
    const pems = [
      rsa.publicKey.export({ type: 'spki', format: 'pem' }),
      rsa.publicKey.export({ type: 'pkcs1', format: 'pem' }),
      String(rsa.publicKey.export({ type: 'spki', format: 'pem' })).trimEnd(),
    ];
    for (const [i, pem] of pems.entries()) {
      for (const kid of [rsa.kid, undefined]) {
        const header = kid ? { alg: 'HS256', typ: 'JWT', kid } : { alg: 'HS256', typ: 'JWT' };
        const token = signRaw('HS256', Buffer.from(pem), json(header), json(validClaims()));
        await expectRefused(token, `HS256 with PEM #${i} kid=${kid}`, { reasons: ['alg_not_allowed', 'unknown_kid'] });
      }
    }
    // and with the JWK's modulus bytes (another common confusion)
    const n = Buffer.from(rsa.jwk.n, 'base64url');
    await expectRefused(signRaw('HS256', n, json({ alg: 'HS256', kid: rsa.kid }), json(validClaims())), 'HS256 with n', {
      reasons: ['alg_not_allowed', 'unknown_kid'],
    });
  });

  it('an algorithm other than the key pins (RS256 key used with PS256, an EC kid with RS256)', async () => {
    const rsa = idpA.key('RS256');
    // PS256 signature by the RSA key whose JWK says alg RS256
    const ps = signRaw('PS256', rsa.privateKey, json({ alg: 'PS256', kid: rsa.kid }), json(validClaims()));
    await expectRefused(ps, 'PS256 under an RS256 key', { reasons: ['alg_not_allowed', 'bad_signature'] });
    // RS256 header naming the ES256 key's kid (signed with the RSA key)
    const es = idpA.key('ES256');
    const mixed = signRaw('RS256', rsa.privateKey, json({ alg: 'RS256', kid: es.kid }), json(validClaims()));
    await expectRefused(mixed, 'RS256 with an EC kid', { reasons: ['alg_not_allowed'] });
    // ES384 header with the ES256 (P-256) kid
    const es384 = signRaw('ES256', es.privateKey, json({ alg: 'ES384', kid: es.kid }), json(validClaims()));
    await expectRefused(es384, 'ES384 on a P-256 key', { reasons: ['alg_not_allowed', 'bad_signature'] });
  });

  it('signature stripped (header.payload. and header.payload)', async () => {
    const token = await mintWith(idpA.key('RS256'), validClaims());
    const [h, p] = token.split('.');
    await expectRefused(`${h}.${p}.`, 'empty signature', { reasons: ['bad_signature', 'malformed'] });
    await expectRefused(`${h}.${p}`, 'two parts', { reasons: ['malformed'] });
    await expectRefused(`${h}.${p}.${token.split('.')[2]}.`, 'four parts', { reasons: ['malformed'] });
  });

  it('payload tampered after signing (tenant changed, exp extended)', async () => {
    for (const alg of ['RS256', 'PS256', 'ES256', 'EdDSA']) {
      const token = await mintWith(idpA.key(alg), validClaims());
      const [h, , s] = token.split('.');
      const tampered = b64url(json({ ...validClaims(), tid: 'attacker', exp: nowS() + 3000 }));
      await expectRefused(`${h}.${tampered}.${s}`, `${alg} tampered`, { reasons: ['bad_signature'] });
    }
  });

  it('ECDSA r = s = 0 ("psychic signature") on ES256, ES384, ES512', async () => {
    for (const [alg, size] of [
      ['ES256', 64],
      ['ES384', 96],
      ['ES512', 132],
    ]) {
      const kid = idpA.key(alg).kid;
      const h = b64url(json({ alg, typ: 'JWT', kid }));
      const p = b64url(json(validClaims()));
      await expectRefused(`${h}.${p}.${b64url(Buffer.alloc(size))}`, `${alg} r=s=0`, { reasons: ['bad_signature'] });
      // r = s = n (the group order) would also be 0 mod n; r=0 with a real s
      const real = await mintWith(idpA.key(alg), validClaims());
      const sig = Buffer.from(real.split('.')[2], 'base64url');
      sig.fill(0, 0, size / 2);
      const [rh, rp] = real.split('.');
      await expectRefused(`${rh}.${rp}.${b64url(sig)}`, `${alg} r=0`, { reasons: ['bad_signature'] });
    }
  });

  it('embedded jwk header carrying the attacker key', async () => {
    const evil = await makeKey('RS256');
    const { kid, ...jwkNoKid } = evil.jwk;
    for (const header of [
      { alg: 'RS256', jwk: jwkNoKid },
      { alg: 'RS256', kid: evil.kid, jwk: evil.jwk },
      { alg: 'RS256', kid: idpA.key('RS256').kid, jwk: evil.jwk },
    ]) {
      const token = signRaw('RS256', evil.privateKey, json(header), json(validClaims()));
      await expectRefused(token, `jwk header ${JSON.stringify(Object.keys(header))}`, { reasons: ['bad_header'] });
    }
  });

  it('jku / x5u pointing at an attacker JWKS on the mock: refused, and the attacker URL is never fetched', async () => {
    const evil = await idpA.addAttackerKey('RS256');
    const before = idpA.counts.attacker;
    for (const header of [
      { alg: 'RS256', kid: evil.kid, jku: idpA.attackerJwksUri },
      { alg: 'RS256', jku: idpA.attackerJwksUri },
      { alg: 'RS256', kid: evil.kid, x5u: `${idpA.base}/idp-a/attacker/cert.pem` },
    ]) {
      const token = signRaw('RS256', evil.privateKey, json(header), json(validClaims()));
      await expectRefused(token, `header ${Object.keys(header)}`, { reasons: ['bad_header'] });
    }
    // an x5c chain in the header is refused too
    const x5c = signRaw('RS256', evil.privateKey, json({ alg: 'RS256', kid: evil.kid, x5c: ['MIIB'] }), json(validClaims()));
    await expectRefused(x5c, 'x5c header', { reasons: ['bad_header'] });
    await sleep(1000 * SLOW);
    assert.equal(idpA.counts.attacker, before, 'the router fetched the attacker JWKS');
  });

  it('an unknown crit header parameter is refused', async () => {
    const key = idpA.key('RS256');
    const token = signRaw('RS256', key.privateKey, json({ alg: 'RS256', kid: key.kid, crit: ['exp'], exp: 1 }), json(validClaims()));
    await expectRefused(token, 'crit', { reasons: ['bad_header'] });
    const b64 = signRaw('RS256', key.privateKey, json({ alg: 'RS256', kid: key.kid, b64: false, crit: ['b64'] }), json(validClaims()));
    await expectRefused(b64, 'b64:false', { reasons: ['bad_header'] });
  });

  it('kid with path traversal (also with HS256 and an empty secret, the /dev/null trick)', async () => {
    const rsa = idpA.key('RS256');
    for (const kid of ['../../../../../../etc/passwd', '/dev/null', '..\\..\\..\\windows\\win.ini', `../jwks#${rsa.kid}`, `${rsa.kid}/../${rsa.kid}`, "x' OR '1'='1"]) {
      const token = signRaw('RS256', rsa.privateKey, json({ alg: 'RS256', kid }), json(validClaims()));
      await expectRefused(token, `kid ${kid}`, { reasons: ['unknown_kid', 'bad_header'] });
      const hs = signRaw('HS256', Buffer.alloc(0), json({ alg: 'HS256', kid }), json(validClaims()));
      await expectRefused(hs, `HS256 kid ${kid}`, { reasons: ['alg_not_allowed', 'bad_header', 'unknown_kid'] });
    }
  });

  it('oversized token (> 8 KiB), validly signed', async () => {
    const token = await mintWith(idpA.key('RS256'), { ...validClaims(), pad: 'x'.repeat(9000) });
    assert.ok(token.length > 8192);
    await expectRefused(token, `token of ${token.length} bytes`, { reasons: ['too_large'] });
    const huge = await mintWith(idpA.key('ES256'), { ...validClaims(), pad: 'y'.repeat(40000) });
    const res = await call(huge);
    assert.ok([401, 400, 413, 431].includes(res.status), `a 54 KB token: ${res.status}`);
    assert.notEqual(res.status, 200);
  });

  it('non-base64url bytes, padding and non-canonical encodings', async () => {
    const key = idpA.key('RS256');
    const token = await mintWith(key, validClaims());
    const [h, p, s] = token.split('.');
    const std = (x) => x.replace(/-/g, '+').replace(/_/g, '/');
    const pad = (4 - (s.length % 4)) % 4 || 4;
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const cases = {
      'padding on the signature': `${h}.${p}.${s}${'='.repeat(pad)}`,
      'a + in the payload': `${h}.+${p.slice(1)}.${s}`,
      'a / in the header': `${h.slice(0, -2)}/${h.slice(-1)}.${p}.${s}`,
      'standard base64 alphabet in the signature': `${h}.${p}.+${std(s).slice(1)}`,
      'a space inside': `${h}.${p.slice(0, 10)} ${p.slice(10)}.${s}`,
      'a non-ASCII byte': `${h}.${p}.${s.slice(0, 20)}é${s.slice(21)}`,
      'a % escape': `${h}.${p}.%41${s.slice(3)}`,
      'a backslash escape in the header': `${h}\\u0000.${p}.${s}`,
    };
    // the last character of a segment whose length is not a multiple of 4 has unused low
    // bits: setting one keeps the bytes a lenient decoder returns, so only a strict one refuses
    assert.notEqual(s.length % 4, 0, 'an RS256 (2048-bit) signature is 342 characters');
    cases['non-canonical last character of the signature'] = `${h}.${p}.${s.slice(0, -1)}${alphabet[alphabet.indexOf(s.at(-1)) | 1]}`;
    for (const [what, t] of Object.entries(cases)) {
      assert.notEqual(t, token, what);
      await expectRefused(t, what, { reasons: ['malformed', 'bad_signature'] });
    }
  });

  it('duplicate JSON members in the header and in the (validly signed) payload', async () => {
    const key = idpA.key('RS256');
    const c = validClaims();
    const body = json(c);
    const dupHeader = `{"alg":"RS256","kid":${json(key.kid)},"alg":"RS256"}`;
    await expectRefused(signRaw('RS256', key.privateKey, dupHeader, body), 'duplicate alg', { reasons: ['malformed'] });
    const dupKid = `{"alg":"RS256","kid":"unknown-kid-x","kid":${json(key.kid)}}`;
    await expectRefused(signRaw('RS256', key.privateKey, dupKid, body), 'duplicate kid', { reasons: ['malformed'] });
    const header = json({ alg: 'RS256', kid: key.kid });
    const dupTid = `${body.slice(0, -1)},"tid":"attacker"}`;
    await expectRefused(signRaw('RS256', key.privateKey, header, dupTid), 'duplicate tid', { reasons: ['malformed'] });
    const dupExp = `${body.slice(0, -1)},"exp":${nowS() + 86400 * 365}}`;
    await expectRefused(signRaw('RS256', key.privateKey, header, dupExp), 'duplicate exp', { reasons: ['malformed'] });
    // the control: the same bytes without the duplicate verify
    await expectOk(signRaw('RS256', key.privateKey, header, body), 'hand-built control token');
  });

  it('a header or payload that is not a JSON object, or too deeply nested', async () => {
    const key = idpA.key('RS256');
    const header = json({ alg: 'RS256', kid: key.kid });
    await expectRefused(signRaw('RS256', key.privateKey, '["RS256"]', json(validClaims())), 'header array', { reasons: ['malformed'] });
    await expectRefused(signRaw('RS256', key.privateKey, header, '"just a string"'), 'payload string', { reasons: ['malformed'] });
    await expectRefused(signRaw('RS256', key.privateKey, header, 'not json'), 'payload not JSON', { reasons: ['malformed'] });
    const deep = { ...validClaims(), x: JSON.parse('['.repeat(40) + ']'.repeat(40)) };
    await expectRefused(signRaw('RS256', key.privateKey, header, json(deep)), 'payload depth 41', { reasons: ['malformed'] });
  });

  it('a token signed by a key the issuer never published', async () => {
    const evil = await makeKey('RS256', { kid: idpA.key('RS256').kid });
    await expectRefused(await mintWith(evil, validClaims()), 'same kid, other key', { reasons: ['bad_signature'] });
    const evilNoKid = await makeKey('ES256');
    await expectRefused(await mintWith(evilNoKid, validClaims(), { kid: undefined }), 'no kid, other key', {
      reasons: ['bad_signature', 'unknown_kid'],
    });
  });

  it('the router is still serving after the catalogue, and never logged a token', async () => {
    const token = await idpA.mint({ tid: 'after-attacks' });
    await expectOk(token, 'after the catalogue');
    assert.equal(router.proc.exitCode, null);
    const sig = token.split('.')[2];
    assert.ok(!router.stdout().includes(sig), 'a token signature is in stdout');
    assert.ok(!router.stderr().includes(sig), 'a token signature is in stderr');
    assert.ok(!router.stdout().includes(token.split('.')[1]), 'a token payload is in stdout');
  });
});

describe('HS256 issuer with secret_env', () => {
  const hsClaims = (extra = {}) => claimsFor(HS_ISSUER, AUD, { tid: 'tenant-hs', ...extra });
  const secret = new TextEncoder().encode(HS_SECRET);

  for (const alg of ['HS256', 'HS384', 'HS512']) {
    it(`${alg} with the configured secret: 200`, async () => {
      const token = await new SignJWT(hsClaims()).setProtectedHeader({ alg, typ: 'JWT' }).sign(secret);
      const line = await expectOk(token, alg);
      assert.equal(line.tenant, 'tenant-hs');
      assert.equal(line.auth, 'jwt');
    });
  }

  it('another secret, a truncated secret, and an asymmetric alg claiming this issuer: 401', async () => {
    const other = new TextEncoder().encode(crypto.randomBytes(32).toString('hex'));
    await expectRefused(await new SignJWT(hsClaims()).setProtectedHeader({ alg: 'HS256' }).sign(other), 'other secret', {
      reasons: ['bad_signature', 'unknown_kid'],
    });
    const short = new TextEncoder().encode(HS_SECRET.slice(0, 32));
    await expectRefused(await new SignJWT(hsClaims()).setProtectedHeader({ alg: 'HS256' }).sign(short), 'truncated secret', {
      reasons: ['bad_signature', 'unknown_kid'],
    });
    await expectRefused(await mintWith(idpA.key('RS256'), hsClaims()), 'RS256 for the HS issuer', { reasons: ['alg_not_allowed', 'unknown_kid'] });
    const tampered = await new SignJWT(hsClaims()).setProtectedHeader({ alg: 'HS256' }).sign(secret);
    const [h, , s] = tampered.split('.');
    await expectRefused(`${h}.${b64url(JSON.stringify(hsClaims({ tid: 'attacker' })))}.${s}`, 'HS256 tampered', {
      reasons: ['bad_signature', 'unknown_kid'],
    });
  });

  it('the HS secret does not verify tokens of the JWKS issuers (no cross-issuer HMAC)', async () => {
    const token = await new SignJWT(idpA.claims({ tid: 'x' })).setProtectedHeader({ alg: 'HS256' }).sign(secret);
    await expectRefused(token, 'HS256 for issuer A with the HS secret', { reasons: ['alg_not_allowed', 'unknown_kid'] });
  });

  it('the secret never appears in router output', () => {
    assert.ok(!router.stdout().includes(HS_SECRET));
    assert.ok(!router.stderr().includes(HS_SECRET));
  });
});

describe('JWKS sources and key shapes', () => {
  it('jwks_uri without discovery: issuer B was never asked for a discovery document', async () => {
    assert.equal(idpB.counts.discovery, 0);
    assert.ok(idpB.counts.jwks >= 1);
    await expectOk(await idpB.mint({ tid: 'b' }), 'issuer B');
  });

  it('an RSA key without "alg" (as Entra ID publishes them) verifies RS256', async () => {
    const line = await expectOk(await mintWith(odd.rsaNoAlg, idpB.claims({ tid: 'entra-like' })), 'no alg, RS256');
    assert.equal(line.tenant, 'entra-like');
  });

  it('an EC key without "alg" verifies the algorithm of its curve (P-384: ES384)', async () => {
    await expectOk(await mintWith(odd.ecNoAlg, idpB.claims({ tid: 'ec-no-alg' })), 'no alg, ES384');
    const es256 = signRaw('ES384', odd.ecNoAlg.privateKey, JSON.stringify({ alg: 'ES256', kid: odd.ecNoAlg.kid }), JSON.stringify(idpB.claims({ tid: 'x' })));
    await expectRefused(es256, 'ES256 header on a P-384 key', { reasons: ['alg_not_allowed', 'bad_signature'] });
  });

  it('a key published with use "enc" is not trusted for signatures', async () => {
    await expectRefused(await mintWith(odd.enc, idpB.claims({ tid: 'enc' })), 'use enc', { reasons: ['unknown_kid', 'bad_signature'] });
  });

  it('a key published with its private part (compromised) is not trusted', async () => {
    await expectRefused(await mintWith(odd.leaked, idpB.claims({ tid: 'leaked' })), 'private JWK', { reasons: ['unknown_kid', 'bad_signature'] });
  });

  it('jwks_file issuer: its key verifies, another key does not', async () => {
    const line = await expectOk(await mintWith(fileKey, claimsFor(FILE_ISSUER, AUD, { tid: 'from-file' })), 'jwks_file');
    assert.equal(line.tenant, 'from-file');
    await expectRefused(await mintWith(idpA.key('ES256'), claimsFor(FILE_ISSUER, AUD, { tid: 'x' })), 'jwks_file, other key', {
      reasons: ['unknown_kid', 'bad_signature'],
    });
  });

  it('a discovery document naming another issuer is refused: no JWKS fetched, its tokens refused', async () => {
    assert.ok(await pollUntil(() => idpMis.counts.discovery >= 1, { timeoutMs: 10000 * SLOW }), 'no discovery fetch');
    await sleep(300);
    assert.equal(idpMis.counts.jwks, 0, 'the router fetched the JWKS a mismatched discovery document named');
    // issue 7.1: keys that cannot be had are the router's fault: 503 not_ready with retry-after
    // after a bounded wait, never a 401 for a token that may be valid
    const res = await call(await idpMis.mint({ tid: 'mis' }));
    assert.equal(res.status, 503, res.body);
    assert.equal(res.json().error.code, 'not_ready');
    assert.ok(Number(res.headers['retry-after']) >= 1, `retry-after: ${res.headers['retry-after']}`);
    assert.equal(res.headers['www-authenticate'], undefined);
  });
});

describe('several issuers at once', () => {
  it('each token is verified with its own issuer keys', async () => {
    let line = await expectOk(await idpA.mint({ tid: 'from-a' }, { alg: 'RS256' }), 'issuer A');
    assert.equal(line.tenant, 'from-a');
    line = await expectOk(await idpB.mint({ tid: 'from-b' }, { alg: 'RS256' }), 'issuer B RS256');
    assert.equal(line.tenant, 'from-b');
    line = await expectOk(await idpB.mint({ tid: 'from-b' }, { alg: 'ES256' }), 'issuer B ES256');
    assert.equal(line.tenant, 'from-b');
  });

  it('a token of issuer A signed with B key is refused (kid of B, kid of A, no kid)', async () => {
    const bKey = idpB.key('RS256');
    const claimsA = idpA.claims({ tid: 'cross' });
    await expectRefused(await mintWith(bKey, claimsA), 'A claims, B key and kid', { reasons: ['unknown_kid', 'bad_signature'] });
    await expectRefused(await mintWith(bKey, claimsA, { kid: idpA.key('RS256').kid }), 'A claims, B key, A kid', { reasons: ['bad_signature'] });
    await expectRefused(await mintWith(bKey, claimsA, { kid: undefined }), 'A claims, B key, no kid', {
      reasons: ['bad_signature', 'unknown_kid'],
    });
    // and the other way round
    await expectRefused(await mintWith(idpA.key('ES256'), idpB.claims({ tid: 'cross' })), 'B claims, A key', {
      reasons: ['unknown_kid', 'bad_signature'],
    });
  });

  it("B's audience list does not include A's second audience", async () => {
    await expectRefused(await idpB.mint({ tid: 'b', aud: AUD2 }), 'B with AUD2', { reasons: ['wrong_audience'] });
  });
});

describe('key rotation, refetch cooldown, IdP down', () => {
  let k1;
  let k2;

  before(() => {
    k1 = idpRot.key('RS256');
  });

  async function waitCooldown() {
    const last = idpRot.log.filter((e) => e.kind === 'jwks' || e.kind === 'discovery').at(-1);
    const wait = last ? last.t + COOLDOWN * 1000 + 300 - Date.now() : 0;
    if (wait > 0) await sleep(wait);
  }

  it('a new kid is accepted after rotation, without a restart', async () => {
    await expectOk(await idpRot.mint({ tid: 'rot' }, { key: k1 }), 'k1 before rotation');
    k2 = await idpRot.addKey('ES256');
    await waitCooldown();
    const fetchesBefore = idpRot.counts.jwks;
    const t0 = Date.now();
    const first = await call(await idpRot.mint({ tid: 'rot' }, { key: k2 }));
    // the first request may already see the new key or be refused while it is fetched
    assert.ok([200, 401].includes(first.status), `first k2 request: ${first.status} ${first.body}`);
    const ok = await pollUntil(async () => (await call(await idpRot.mint({ tid: 'rot' }, { key: k2 }))).status === 200, {
      timeoutMs: (COOLDOWN * 1000 + 3000) * SLOW,
      intervalMs: 100,
    });
    assert.ok(ok, `k2 never accepted; JWKS fetches ${idpRot.counts.jwks}\n${router.stderr().slice(-2000)}`);
    assert.ok(idpRot.counts.jwks > fetchesBefore, 'no JWKS refetch happened');
    assert.ok(Date.now() - t0 < (COOLDOWN * 1000 + 3000) * SLOW);
    await expectOk(await idpRot.mint({ tid: 'rot' }, { key: k1 }), 'k1 still published');
  });

  it(`a flood of 50 unknown kids causes at most one JWKS fetch per cooldown (${COOLDOWN} s)`, async () => {
    await waitCooldown();
    const t0 = Date.now();
    const evil = await makeKey('RS256');
    const tokens = await Promise.all(
      Array.from({ length: 50 }, () => mintWith({ ...evil, kid: randomKid('flood') }, idpRot.claims({ tid: 'flood' }))),
    );
    const before = await authFailures(router);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 10 });
    const statuses = await Promise.all(
      tokens.map((t) =>
        httpRequest(`${router.url}${CHAT_PATH}`, { method: 'POST', body: chatBody(), agent, headers: { authorization: `Bearer ${t}` } }).then((r) => r.status),
      ),
    );
    const tFlood = Date.now();
    agent.destroy();
    assert.deepEqual([...new Set(statuses)], [401]);
    const delta = authFailureDelta(before, await authFailures(router));
    assert.equal(delta.unknown_kid, 50, `auth failures: ${JSON.stringify(delta)}`);
    // wait for any deferred fetch (one is allowed at the end of the cooldown)
    await sleep((COOLDOWN * 1000 + 1500) * SLOW);
    const fetches = idpRot.fetchesSince(t0).concat(idpRot.fetchesSince(t0, 'discovery')).sort((a, b) => a.t - b.t);
    const inFirstCooldown = fetches.filter((f) => f.t < t0 + COOLDOWN * 1000 - 100);
    assert.ok(inFirstCooldown.length <= 1, `${inFirstCooldown.length} fetches within the first cooldown: ${JSON.stringify(fetches.map((f) => f.t - t0))}`);
    const span = Date.now() - t0;
    assert.ok(
      fetches.length <= Math.floor(span / (COOLDOWN * 1000)) + 1,
      `${fetches.length} fetches in ${span} ms (flood took ${tFlood - t0} ms): ${JSON.stringify(fetches.map((f) => f.t - t0))}`,
    );
    for (let i = 1; i < fetches.length; ++i)
      assert.ok(fetches[i].t - fetches[i - 1].t >= COOLDOWN * 1000 - 150, `two fetches ${fetches[i].t - fetches[i - 1].t} ms apart`);
    assert.ok(fetches.length >= 1, 'the unknown kids caused no refetch at all');
    // still serving the real keys
    await expectOk(await idpRot.mint({ tid: 'rot' }, { key: k2 }), 'k2 after the flood');
  });

  it('a key the IdP dropped is refused after the next fetch', async () => {
    idpRot.dropKey(k1.kid);
    // until the router fetches again, k1 still verifies (a fresh token: no cache involved)
    await waitCooldown();
    const n = idpRot.counts.jwks;
    // an unknown kid makes the router fetch; the new JWKS no longer has k1
    await call(await mintWith({ ...k2, kid: randomKid('trigger') }, idpRot.claims({ tid: 'rot' })));
    assert.ok(await pollUntil(() => idpRot.counts.jwks > n, { timeoutMs: 5000 * SLOW }), 'no refetch after an unknown kid');
    const refused = await pollUntil(async () => (await call(await idpRot.mint({ tid: 'rot' }, { key: k1 }))).status === 401, {
      timeoutMs: 3000 * SLOW,
    });
    assert.ok(refused, 'a token signed with the dropped key is still accepted');
    await expectRefused(await idpRot.mint({ tid: 'rot' }, { key: k1 }), 'dropped k1', { reasons: ['unknown_kid'] });
    await expectOk(await idpRot.mint({ tid: 'rot' }, { key: k2 }), 'k2 after the drop');
  });

  for (const mode of ['500', 'close']) {
    it(`IdP down (${mode === '500' ? 'HTTP 500' : 'connections closed'}): the cached keys keep working`, async () => {
      await waitCooldown();
      idpRot.setDown(mode);
      try {
        const t0 = Date.now();
        // make the router try: an unknown kid asks for a refetch, which fails
        await call(await mintWith({ ...k2, kid: randomKid('while-down') }, idpRot.claims({ tid: 'rot' })));
        const tried = await pollUntil(() => idpRot.log.some((e) => e.t >= t0 && !e.served), { timeoutMs: 5000 * SLOW });
        assert.ok(tried, 'the router did not try the IdP');
        await sleep(200);
        for (let i = 0; i < 3; ++i) {
          const line = await expectOk(await idpRot.mint({ tid: `rot-down-${i}` }, { key: k2 }), `k2 while the IdP is down (${i})`);
          assert.equal(line.tenant, `rot-down-${i}`);
        }
        assert.equal(router.proc.exitCode, null);
      } finally {
        idpRot.setDown(null);
      }
    });
  }
});

describe('the verified-token cache', () => {
  it('the same token 200 times: 200 every time', async () => {
    const token = await idpA.mint({ tid: 'cached' }, { alg: 'PS512' });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    const statuses = [];
    try {
      for (let batch = 0; batch < 20; ++batch) {
        const res = await Promise.all(
          Array.from({ length: 10 }, () =>
            httpRequest(`${router.url}${CHAT_PATH}`, { method: 'POST', body: chatBody({ max_tokens: 1 }), agent, headers: { authorization: `Bearer ${token}` } }),
          ),
        );
        statuses.push(...res.map((r) => r.status));
      }
    } finally {
      agent.destroy();
    }
    assert.equal(statuses.length, 200);
    assert.deepEqual([...new Set(statuses)], [200]);
    assert.equal((await east.stats()).requests, 200);
  });

  it('a cached refusal stays a refusal, and a cached success does not admit a tampered copy', async () => {
    const token = await idpA.mint({ tid: 'cached2' });
    await expectOk(token, 'first');
    await expectOk(token, 'second (cached)');
    const [h, p, s] = token.split('.');
    const flipped = s.slice(0, -3) + (s.at(-3) === 'A' ? 'B' : 'A') + s.slice(-2);
    for (let i = 0; i < 3; ++i) await expectRefused(`${h}.${p}.${flipped}`, `tampered copy ${i}`, { reasons: ['bad_signature', 'malformed'] });
  });
});

describe('a single issuer: the verifier itself checks iss', () => {
  let single;

  before(async () => {
    single = await startRouter({
      config: {
        backends: [backendFor(east, { deployments: { 'gpt-4o': 'gpt-4o' } })],
        auth: { mode: 'jwt', jwt: [issuerConf(idpA, { audiences: [AUD] })] },
      },
    });
    await waitKeys(idpA, 'RS256', single);
  });

  after(async () => {
    await stopAll(single);
  });

  it('a token signed with the issuer key but naming another iss: 401 invalid_token', async () => {
    const key = idpA.key('RS256');
    for (const iss of [`${idpA.issuer}/`, 'https://login.microsoftonline.com/common/v2.0', idpA.issuer.replace('127.0.0.1', 'localhost')]) {
      await expectRefused(await mintWith(key, claimsFor(iss, AUD, { tid: 't' })), `iss ${iss}`, { target: single, reasons: ['wrong_issuer'] });
    }
    const line = await expectOk(await mintWith(key, claimsFor(idpA.issuer, AUD, { tid: 'single' })), 'right iss', { target: single });
    assert.equal(line.tenant, 'single');
  });

  it('structural refusals carry their own reason (malformed, too_large), as with several issuers', async () => {
    const key = idpA.key('RS256');
    const c = idpA.claims({ tid: 't' });
    const header = JSON.stringify({ alg: 'RS256', kid: key.kid });
    const token = await mintWith(key, c);
    const [h, p] = token.split('.');
    await expectRefused(`${h}.${p}`, 'two parts', { target: single, reasons: ['malformed'] });
    await expectRefused(`${h}.+${p.slice(1)}.${token.split('.')[2]}`, 'a + in the payload', { target: single, reasons: ['malformed'] });
    const dup = `${JSON.stringify(c).slice(0, -1)},"tid":"attacker"}`;
    await expectRefused(signRaw('RS256', key.privateKey, header, dup), 'duplicate tid', { target: single, reasons: ['malformed'] });
    const big = await mintWith(key, { ...c, pad: 'x'.repeat(9000) });
    await expectRefused(big, 'oversized', { target: single, reasons: ['too_large'] });
  });

  it('expired and wrong-audience tokens: 401 with the invalid_token challenge', async () => {
    const now = nowS();
    await expectRefused(await idpA.mint({ tid: 't', iat: now - 3600, exp: now - 600 }), 'expired', { target: single, reasons: ['expired'] });
    await expectRefused(await idpA.mint({ tid: 't', aud: AUD2 }), 'AUD2 not configured here', { target: single, reasons: ['wrong_audience'] });
  });
});
