// A loopback mock OpenID Connect provider speaking the real wire format: a discovery
// document at <issuer>/.well-known/openid-configuration naming the issuer and jwks_uri,
// a JWKS of public keys (kid, kty, alg, use "sig") at <issuer>/jwks, and an "attacker"
// JWKS at <issuer>/attacker/jwks that no router may ever fetch. Keys are generated with
// `jose`; tokens are minted with jose's SignJWT, or built by hand (signRaw) when a test
// needs bytes jose would refuse to produce (duplicate members, alg none, odd encodings).
//
// Switches: addKey/dropKey/publish (rotation), setDown('500' | 'close' | null), counters
// and a log of every fetch with its time.
import http from 'node:http';
import crypto from 'node:crypto';
import { SignJWT, generateKeyPair, exportJWK } from 'jose';

/** Every asymmetric JWS algorithm the router verifies (SPEC §3, issue 3). */
export const ASYMMETRIC_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];

export const nowS = () => Math.floor(Date.now() / 1000);

export function b64url(data) {
  return Buffer.from(typeof data === 'string' ? Buffer.from(data, 'utf8') : data).toString('base64url');
}

/** A random kid (URL-safe). */
export function randomKid(prefix = 'kid') {
  return `${prefix}-${crypto.randomBytes(9).toString('base64url')}`;
}

function hashOf(alg) {
  if (alg === 'EdDSA') return null;
  return `sha${alg.slice(2)}`;
}

/**
 * Signs `${b64url(headerText)}.${b64url(payloadText)}` with node:crypto and returns the
 * compact token. headerText/payloadText are used byte for byte (strings or Buffers), so a
 * test can put duplicate members or any other oddity in them.
 *   alg: RS*, PS*, ES*, EdDSA (key: a private KeyObject) or HS* (key: the secret bytes)
 */
export function signRaw(alg, key, headerText, payloadText) {
  const input = `${b64url(headerText)}.${b64url(payloadText)}`;
  return `${input}.${b64url(signInput(alg, key, input))}`;
}

/** The raw JWS signature of `input` (the ASCII signing input) under alg. */
export function signInput(alg, key, input) {
  const data = Buffer.from(input, 'ascii');
  if (alg.startsWith('HS')) return crypto.createHmac(hashOf(alg), key).update(data).digest();
  if (alg.startsWith('RS')) return crypto.sign(hashOf(alg), data, key);
  if (alg.startsWith('PS'))
    return crypto.sign(hashOf(alg), data, {
      key,
      padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
      saltLength: Number(alg.slice(2)) / 8,
    });
  if (alg.startsWith('ES')) return crypto.sign(hashOf(alg), data, { key, dsaEncoding: 'ieee-p1363' });
  if (alg === 'EdDSA') return crypto.sign(null, data, key);
  throw new Error(`signInput: unsupported alg ${alg}`);
}

/** Generates a signing key for `alg` (RSA 2048, P-256/384/521, Ed25519) with a kid. */
export async function makeKey(alg, { kid = randomKid(alg.toLowerCase()), modulusLength = 2048 } = {}) {
  const opts = { extractable: true };
  if (alg === 'EdDSA') opts.crv = 'Ed25519';
  if (/^(RS|PS)/.test(alg)) opts.modulusLength = modulusLength;
  const { privateKey, publicKey } = await generateKeyPair(alg, opts);
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { alg, kid, privateKey, publicKey, jwk };
}

/** Standard claims for `issuer`/`audience`, valid now for 10 minutes; `extra` overrides. */
export function claimsFor(issuer, audience, extra = {}) {
  const now = nowS();
  return { iss: issuer, aud: audience, sub: 'user-1', iat: now, nbf: now - 5, exp: now + 600, jti: crypto.randomUUID(), ...extra };
}

/** Mints a token with jose: alg and kid from `key` unless `header` overrides them. */
export async function mintWith(key, claims, header = {}) {
  const h = { alg: key.alg, kid: key.kid, typ: 'JWT', ...header };
  for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
  return new SignJWT(claims).setProtectedHeader(h).sign(key.privateKey);
}

/**
 * Starts a mock OIDC provider on 127.0.0.1 (random port).
 *   name:  a path segment the issuer URL ends with (two providers on two ports still differ)
 *   algs:  keys to generate and publish at once (one per alg)
 *   audience: the default `aud` of minted tokens
 */
export async function startOidc({ name = 'idp', algs = ['RS256'], audience = 'api://aoai-router' } = {}) {
  const keys = new Map(); // kid -> key
  const published = new Set(); // kids served at /jwks
  const attackerKeys = [];
  const counts = { discovery: 0, jwks: 0, attacker: 0, other: 0 };
  const log = []; // {path, t, served}
  let down = null; // null | '500' | 'close'
  let extraHeaders = {};
  let discoveryIssuer = null; // when set, the discovery document names this issuer instead
  const sockets = new Set();

  let jwksDelayMs = 0; // > 0: the JWKS answer comes this late (a slow IdP at cold start)
  const server = http.createServer((req, res) => {
    if (jwksDelayMs > 0 && new URL(req.url, 'http://x').pathname === `/${name}/jwks`) {
      const ms = jwksDelayMs;
      setTimeout(() => handle(req, res), ms);
      return;
    }
    handle(req, res);
  });
  function handle(req, res) {
    const u = new URL(req.url, 'http://x');
    const p = u.pathname;
    const kind =
      p === `/${name}/.well-known/openid-configuration` ? 'discovery' : p === `/${name}/jwks` ? 'jwks' : p.includes('/attacker') ? 'attacker' : 'other';
    counts[kind]++;
    log.push({ path: p, kind, t: Date.now(), served: down === null });
    if (down === 'close') {
      req.socket.destroy();
      return;
    }
    if (down === '500') {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('identity provider unavailable');
      return;
    }
    let body;
    if (kind === 'discovery') {
      body = {
        issuer: discoveryIssuer ?? provider.issuer,
        authorization_endpoint: `${provider.issuer}/authorize`,
        token_endpoint: `${provider.issuer}/token`,
        jwks_uri: provider.jwksUri,
        response_types_supported: ['code', 'id_token', 'code id_token'],
        subject_types_supported: ['pairwise'],
        id_token_signing_alg_values_supported: [...new Set([...keys.values()].map((k) => k.alg))],
        scopes_supported: ['openid', 'profile', 'email'],
        claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nbf', 'tid', 'azp', 'roles', 'scp'],
      };
    } else if (kind === 'jwks') {
      body = { keys: [...published].map((kid) => keys.get(kid).jwk) };
    } else if (kind === 'attacker') {
      body = { keys: attackerKeys.map((k) => k.jwk) };
    } else {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":"not_found"}');
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extraHeaders });
    res.end(text);
  }
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = server.address().port;
  const base = `http://127.0.0.1:${port}`;

  const provider = {
    name,
    port,
    base,
    issuer: `${base}/${name}`,
    openidConfig: `${base}/${name}/.well-known/openid-configuration`,
    jwksUri: `${base}/${name}/jwks`,
    attackerJwksUri: `${base}/${name}/attacker/jwks`,
    audience,
    keys,
    counts,
    log,
    /**
     * adds a generated key (published unless publish: false) and returns it; `jwk(jwk, key)`
     * may return another JWK to publish (drop alg, add fields, set use, leak private parts...)
     */
    async addKey(alg, { kid, publish = true, jwk } = {}) {
      const k = await makeKey(alg, { kid });
      if (jwk) k.jwk = await jwk({ ...k.jwk }, k);
      keys.set(k.kid, k);
      if (publish) published.add(k.kid);
      return k;
    },
    /** stops serving a key (it stays usable for minting, as a stolen or retired key would) */
    dropKey(kid) {
      published.delete(kid);
    },
    publish(kid) {
      published.add(kid);
    },
    publishedKids: () => [...published],
    key(alg) {
      for (const k of keys.values()) if (k.alg === alg && published.has(k.kid)) return k;
      throw new Error(`no published ${alg} key on ${name}`);
    },
    /** a key served only at the attacker path */
    async addAttackerKey(alg = 'RS256') {
      const k = await makeKey(alg, { kid: randomKid('attacker') });
      attackerKeys.push(k);
      return k;
    },
    /** null: serve; '500': answer 500; 'close': drop every connection without an answer */
    setDown(mode) {
      down = mode;
      if (mode === 'close') for (const s of sockets) s.destroy();
    },
    /** the discovery document names `iss` as its issuer (null: the real one) */
    setDiscoveryIssuer(iss) {
      discoveryIssuer = iss;
    },
    /** the JWKS is answered `ms` late (0: at once) */
    setJwksDelay(ms) {
      jwksDelayMs = ms;
    },
    setHeaders(h) {
      extraHeaders = { ...h };
    },
    claims(extra = {}) {
      return claimsFor(provider.issuer, audience, extra);
    },
    /** a token of this issuer signed with the published key for `alg` (or `key`) */
    async mint(extra = {}, { alg = 'RS256', key, header = {} } = {}) {
      return mintWith(key ?? provider.key(alg), provider.claims(extra), header);
    },
    /** fetches of the JWKS (or of `kind`) since `t` (ms since the epoch) */
    fetchesSince(t, kind = 'jwks') {
      return log.filter((e) => e.kind === kind && e.t >= t);
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  for (const alg of algs) await provider.addKey(alg);
  return provider;
}
