// Loopback mocks for backend identity (issue 9), speaking the real wire formats:
//   IMDS            GET  /metadata/identity/oauth2/token?api-version=2018-02-01&resource=..[&client_id=..]  (Metadata: true)
//   App Service     GET  /msi/token?api-version=2019-08-01&resource=..[&client_id=..]                       (X-IDENTITY-HEADER)
//   Entra ID v2.0   POST /{tenant}/oauth2/v2.0/token  form: grant_type=client_credentials, client_id, scope,
//                        client_secret | client_assertion_type=urn:..:jwt-bearer + client_assertion
//   Auth0-style     POST /oauth/token  form or JSON: grant_type=client_credentials, client_id, client_secret, audience
// Every token is a JWT with exp (jose, HS256). Each endpoint counts calls and can fail, delay,
// answer garbage or drop the connection. `startTokenBackend` is an Azure OpenAI stand-in that
// records every request's credential headers and checks each bearer against the issued tokens.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { SignJWT, decodeJwt } from 'jose';
import { freePort } from './harness.mjs';

export const SCOPE = 'https://cognitiveservices.azure.com/.default';
export const RESOURCE = 'https://cognitiveservices.azure.com';
export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

const signingKey = randomBytes(32);
let seq = 0;

async function mint(kind, lifetimeS, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ kind, n: ++seq, ...extra })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt(now)
    .setExpirationTime(now + lifetimeS)
    .setJti(randomBytes(8).toString('hex'))
    .sign(signingKey);
}

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

function send(res, status, obj, headers = {}) {
  const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** behaviour of one endpoint; tests mutate it */
function endpointState() {
  return {
    calls: 0,
    requests: [], // {time, query/form, headers}
    lifetimeS: 3600,
    delayMs: 0,
    down: false, // destroy the socket at once
    hang: false, // never answer
    failNext: [], // [{status, body}] consumed one per call
    raw: null, // {status, body} answered to every call (garbage, huge)
    issued: [], // tokens handed out
    expiresField: 'expires_in', // or 'expires_on'
    expiresValue: null, // overrides the lifetime in the answer (absurd values)
  };
}

/**
 * One server for all four identity endpoints.
 * opts: {clientIds: [..] accepted by IMDS/App Service (absent client_id always ok), identityHeader,
 *        tenant, entraClients: {client_id: {secret} | {assertionFile} | {assertionFrom: 'auth0'}},
 *        auth0: {clientId, clientSecret, audience},
 *        scope (Entra's only accepted scope; default: each of `resources` + '/.default'),
 *        resources: [..] accepted (default [RESOURCE]; keyless Redis: ['https://redis.azure.com']),
 *        onIssue: async (token, endpointName) => .. awaited before a token is answered (e.g. ACL SETUSER)}
 */
export async function startIdentity(opts = {}) {
  const port = await freePort();
  const st = { imds: endpointState(), appsvc: endpointState(), entra: endpointState(), auth0: endpointState() };
  const mock = {
    port,
    url: `http://127.0.0.1:${port}`,
    imdsUrl: `http://127.0.0.1:${port}/metadata/identity/oauth2/token`,
    appServiceUrl: `http://127.0.0.1:${port}/msi/token`,
    authority: `http://127.0.0.1:${port}/`,
    auth0Url: `http://127.0.0.1:${port}/oauth/token`,
    ...st,
    opts,
    /** every token any endpoint issued */
    allIssued() {
      return [...st.imds.issued, ...st.appsvc.issued, ...st.entra.issued, ...st.auth0.issued];
    },
    close() {
      return new Promise((r) => {
        server.closeAllConnections?.();
        server.close(() => r());
      });
    },
    stop() {
      return this.close();
    },
  };

  const resources = opts.resources ?? [RESOURCE];
  async function answer(ep, res, check, build) {
    ep.calls++;
    if (ep.down) {
      res.socket.destroy();
      return;
    }
    if (ep.hang) return; // the router's own timeout must end it
    if (ep.delayMs) await new Promise((r) => setTimeout(r, ep.delayMs));
    if (ep.failNext.length) {
      const f = ep.failNext.shift();
      send(res, f.status, f.body ?? { error: 'temporarily_unavailable', error_description: `mock failure ${f.status}` });
      return;
    }
    if (ep.raw) {
      res.writeHead(ep.raw.status ?? 200, { 'content-type': 'application/json' });
      res.end(ep.raw.body);
      return;
    }
    const problem = check();
    if (problem) {
      send(res, 400, { error: problem.error ?? 'invalid_request', error_description: problem.description ?? problem });
      return;
    }
    const token = await build();
    if (opts.onIssue) await opts.onIssue(token, Object.keys(st).find((k) => st[k] === ep));
    ep.issued.push(token);
    return { life: ep.expiresValue ?? ep.lifetimeS };
  }

  const server = http.createServer(async (req, res) => {
    const u = new URL(req.url, mock.url);
    const body = await readBody(req);
    const headers = req.headers;
    try {
      if (req.method === 'GET' && u.pathname === '/metadata/identity/oauth2/token') {
        const ep = st.imds;
        const q = Object.fromEntries(u.searchParams);
        ep.requests.push({ time: Date.now(), query: q, headers });
        let token;
        const ans = await answer(
          ep,
          res,
          () => {
            if (headers.metadata !== 'true') return { description: 'Required metadata header not specified' };
            if (q['api-version'] !== '2018-02-01') return { description: `bad api-version ${q['api-version']}` };
            if (!resources.includes(q.resource)) return { description: `bad resource ${q.resource}` };
            if (q.client_id !== undefined && !(opts.clientIds ?? []).includes(q.client_id))
              return { error: 'invalid_request', description: 'Identity not found' };
            return null;
          },
          async () => (token = await mint('imds', ep.lifetimeS, { client_id: q.client_id ?? 'system' })),
        );
        if (!ans) return;
        const life = ans.life;
        const exp = ep.expiresField === 'expires_on' ? { expires_on: String(Math.floor(Date.now() / 1000) + life) } : { expires_in: String(life) };
        send(res, 200, { access_token: token, client_id: q.client_id ?? 'system', ...exp, ext_expires_in: String(life), not_before: String(Math.floor(Date.now() / 1000)), resource: q.resource, token_type: 'Bearer' });
        return;
      }
      if (req.method === 'GET' && u.pathname === '/msi/token') {
        const ep = st.appsvc;
        const q = Object.fromEntries(u.searchParams);
        ep.requests.push({ time: Date.now(), query: q, headers });
        let token;
        const ans = await answer(
          ep,
          res,
          () => {
            if (headers['x-identity-header'] !== opts.identityHeader) return { description: 'bad X-IDENTITY-HEADER' };
            if (q['api-version'] !== '2019-08-01') return { description: `bad api-version ${q['api-version']}` };
            if (q.resource !== RESOURCE) return { description: `bad resource ${q.resource}` };
            return null;
          },
          async () => (token = await mint('appsvc', ep.lifetimeS)),
        );
        if (!ans) return;
        const life = ans.life;
        send(res, 200, { access_token: token, expires_on: String(Math.floor(Date.now() / 1000) + life), resource: q.resource, token_type: 'Bearer', client_id: q.client_id ?? 'system' });
        return;
      }
      const m = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(u.pathname);
      if (req.method === 'POST' && m) {
        const ep = st.entra;
        const f = Object.fromEntries(new URLSearchParams(body));
        ep.requests.push({ time: Date.now(), form: f, tenant: m[1], headers });
        let token;
        const ans = await answer(
          ep,
          res,
          () => {
            if (m[1] !== opts.tenant) return { error: 'invalid_tenant', description: `AADSTS90002: Tenant '${m[1]}' not found.` };
            if (!/^application\/x-www-form-urlencoded/.test(headers['content-type'] ?? '')) return { description: 'not a form' };
            if (f.grant_type !== 'client_credentials') return { error: 'unsupported_grant_type', description: f.grant_type };
            const scopes = opts.scope !== undefined ? [opts.scope] : resources.map((r) => `${r}/.default`);
            if (!scopes.includes(f.scope)) return { error: 'invalid_scope', description: `bad scope ${f.scope}` };
            const client = (opts.entraClients ?? {})[f.client_id];
            if (!client) return { error: 'unauthorized_client', description: 'AADSTS700016: Application not found' };
            if (client.secret !== undefined) {
              if (f.client_secret !== client.secret) return { error: 'invalid_client', description: 'AADSTS7000215: Invalid client secret provided.' };
              if (f.client_assertion !== undefined) return { description: 'both secret and assertion' };
            } else {
              if (f.client_assertion_type !== JWT_BEARER) return { error: 'invalid_client', description: 'bad client_assertion_type' };
              const expected = client.assertionFile ? readFileSync(client.assertionFile, 'utf8').trim() : st.auth0.issued.at(-1);
              if (f.client_assertion !== expected) return { error: 'invalid_client', description: 'AADSTS700211: assertion is not the current one' };
              if (f.client_secret !== undefined) return { description: 'both secret and assertion' };
            }
            return null;
          },
          async () => (token = await mint('entra', ep.lifetimeS, { appid: f.client_id })),
        );
        if (!ans) return;
        const life = ans.life;
        const exp = ep.expiresField === 'expires_on' ? { expires_on: Math.floor(Date.now() / 1000) + life } : { expires_in: life };
        send(res, 200, { token_type: 'Bearer', ...exp, ext_expires_in: life, access_token: token });
        return;
      }
      if (req.method === 'POST' && u.pathname === '/oauth/token') {
        const ep = st.auth0;
        const f = /json/.test(headers['content-type'] ?? '') ? JSON.parse(body) : Object.fromEntries(new URLSearchParams(body));
        ep.requests.push({ time: Date.now(), form: f, headers });
        const a = opts.auth0 ?? {};
        let token;
        const ans = await answer(
          ep,
          res,
          () => {
            if (f.grant_type !== 'client_credentials') return { error: 'unsupported_grant_type', description: String(f.grant_type) };
            if (f.client_id !== a.clientId || f.client_secret !== a.clientSecret) return { error: 'access_denied', description: 'Unauthorized' };
            if (f.audience !== (a.audience ?? 'api://AzureADTokenExchange')) return { error: 'access_denied', description: `Service not found: ${f.audience}` };
            return null;
          },
          async () => (token = await mint('auth0', ep.lifetimeS, { aud: f.audience, sub: `${f.client_id}@clients` })),
        );
        if (!ans) return;
        const life = ans.life;
        send(res, 200, { access_token: token, expires_in: life, token_type: 'Bearer' });
        return;
      }
      send(res, 404, { error: 'not_found' });
    } catch (e) {
      if (!res.headersSent) send(res, 500, { error: 'mock_bug', error_description: String(e) });
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return mock;
}

/**
 * An Azure OpenAI stand-in: answers chat completions, records every request's authorization and
 * api-key, and counts bearers that were expired (exp <= now) or never issued by `identity`.
 * `fail401` answers that many next requests with 401.
 */
export async function startTokenBackend(name, identity) {
  const port = await freePort();
  const b = {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    seen: [], // {time, authorization, apiKey}
    expired: 0,
    unknown: 0,
    fail401: 0,
    close() {
      return new Promise((r) => {
        server.closeAllConnections?.();
        server.close(() => r());
      });
    },
    stop() {
      return this.close();
    },
    bearers() {
      return this.seen.map((s) => (s.authorization ?? '').replace(/^Bearer /, ''));
    },
  };
  const server = http.createServer(async (req, res) => {
    await readBody(req);
    const authz = req.headers.authorization;
    b.seen.push({ time: Date.now(), authorization: authz, apiKey: req.headers['api-key'] });
    if (authz?.startsWith('Bearer ')) {
      const tok = authz.slice(7);
      try {
        if (decodeJwt(tok).exp * 1000 <= Date.now()) b.expired++;
      } catch {
        b.unknown++;
      }
      if (identity && !identity.allIssued().includes(tok)) b.unknown++;
    }
    if (b.fail401 > 0) {
      b.fail401--;
      send(res, 401, { error: { code: '401', message: 'Access denied due to invalid subscription key or wrong API endpoint.' } });
      return;
    }
    send(res, 200, {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      model: 'gpt-4o',
      choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 },
    });
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return b;
}
