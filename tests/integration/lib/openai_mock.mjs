// A loopback mock of the OpenAI API (api.openai.com /v1 surface) speaking its wire format:
// Authorization: Bearer checks, JSON and SSE answers with usage, 429 + retry-after and
// x-ratelimit-* headers. Test control through the returned object (not over HTTP).
import http from 'node:http';

const words = (n) => Array.from({ length: n }, (_, i) => `word${i}`);

function promptTokens(body) {
  const s = JSON.stringify(body.messages ?? body.input ?? body.prompt ?? '');
  return Math.max(1, Math.ceil(s.length / 4));
}

/**
 * startOpenAiMock({ bearer }) — `bearer` is the accepted token (a string, or a function
 * returning whether a token is accepted). The object: url, requests (every request seen:
 * method, path, query, headers, body), behaviour ({ status, retry_after, count, headers } for the
 * next `count` requests; `retry_after: null` sends none; `headers` replaces the x-ratelimit-*
 * set), rl (the x-ratelimit-* headers of a 200; null = the default), hook (req, res, body) →
 * true when it answered the request itself, reset(), stop().
 */
export async function startOpenAiMock({ bearer }) {
  const m = { requests: [], behaviour: null, rl: null, hook: null };
  const accepts = typeof bearer === 'function' ? bearer : (t) => t === bearer;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body = null;
      try {
        body = raw ? JSON.parse(raw) : null;
      } catch {
        body = null;
      }
      const u = new URL(req.url, 'http://x');
      m.requests.push({ method: req.method, path: u.pathname, query: u.search.slice(1), headers: req.headers, body });
      const err = (status, code, message, extra = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...extra });
        res.end(JSON.stringify({ error: { message, type: code, param: null, code } }));
      };
      const auth = req.headers.authorization ?? '';
      if (!auth.startsWith('Bearer ') || !accepts(auth.slice(7)))
        return err(401, 'invalid_api_key', 'Incorrect API key provided.');
      if (m.behaviour && m.behaviour.count > 0) {
        m.behaviour.count--;
        const ra = m.behaviour.retry_after === null ? {} : { 'retry-after': String(m.behaviour.retry_after ?? 1) };
        return err(m.behaviour.status, 'rate_limit_exceeded', 'Rate limit reached', {
          ...ra,
          ...(m.behaviour.headers ?? {
            'x-ratelimit-remaining-requests': '0',
            'x-ratelimit-remaining-tokens': '0',
            'x-ratelimit-reset-requests': `${m.behaviour.retry_after ?? 1}s`,
          }),
        });
      }
      if (m.hook && m.hook(req, res, body)) return;
      if (req.method !== 'POST' || body == null) return err(400, 'invalid_request_error', 'bad request');
      const rl = m.rl ?? { 'x-ratelimit-remaining-requests': '499', 'x-ratelimit-remaining-tokens': '29000', 'x-ratelimit-limit-tokens': '30000' };
      const pt = promptTokens(body);
      if (u.pathname === '/v1/embeddings') {
        res.writeHead(200, { 'content-type': 'application/json', ...rl });
        return res.end(JSON.stringify({ object: 'list', model: body.model, data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }], usage: { prompt_tokens: pt, total_tokens: pt } }));
      }
      const n = Math.max(1, Math.min(body.max_tokens ?? body.max_output_tokens ?? 5, 50));
      if (u.pathname === '/v1/responses') {
        res.writeHead(200, { 'content-type': 'application/json', ...rl });
        return res.end(JSON.stringify({ id: 'resp_1', object: 'response', model: body.model, status: 'completed', output: [{ type: 'message', role: 'assistant', content: [{ type: 'output_text', text: words(n).join(' ') }] }], usage: { input_tokens: pt, output_tokens: n, total_tokens: pt + n } }));
      }
      if (u.pathname === '/v1/completions') {
        // legacy completions: `prompt`, text choices; streamed, the usage chunk has choices []
        const usage = { prompt_tokens: pt, completion_tokens: n, total_tokens: pt + n };
        const base = { id: 'cmpl-1', object: 'text_completion', created: 1, model: body.model };
        if (!body.stream) {
          res.writeHead(200, { 'content-type': 'application/json', ...rl });
          return res.end(JSON.stringify({ ...base, choices: [{ index: 0, text: words(n).join(' '), logprobs: null, finish_reason: 'length' }], usage }));
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', ...rl });
        const ev = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
        words(n).forEach((t, i) => ev({ ...base, choices: [{ index: 0, text: i ? ` ${t}` : t, logprobs: null, finish_reason: i === n - 1 ? 'length' : null }] }));
        if (body.stream_options?.include_usage) ev({ ...base, choices: [], usage });
        return res.end('data: [DONE]\n\n');
      }
      if (u.pathname !== '/v1/chat/completions') return err(404, 'not_found', `no route ${u.pathname}`);
      const usage = { prompt_tokens: pt, completion_tokens: n, total_tokens: pt + n };
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json', ...rl });
        return res.end(JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: words(n).join(' ') }, finish_reason: 'stop' }], usage }));
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', ...rl });
      const base = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: body.model };
      const ev = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
      const w = words(n);
      w.forEach((t, i) => ev({ ...base, choices: [{ index: 0, delta: { content: i ? ` ${t}` : t }, finish_reason: null }] }));
      ev({ ...base, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
      if (body.stream_options?.include_usage) ev({ ...base, choices: [], usage });
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  m.url = `http://127.0.0.1:${server.address().port}`;
  m.reset = () => {
    m.requests = [];
    m.behaviour = null;
    m.rl = null;
    m.hook = null;
  };
  m.stop = () =>
    new Promise((r) => {
      server.closeAllConnections?.();
      server.close(() => r());
    });
  m.server = server;
  return m;
}

/**
 * A mock of OpenAI's workload identity federation token exchange (POST /oauth/token, JSON) and
 * of Azure IMDS (GET /metadata/identity/oauth2/token) in one server.
 * opts: { idp, sa, resource (IMDS: the Application ID URI expected), lifetimeS (issued tokens),
 *         subjectOk(token) (also accepted, besides any IMDS-issued token and `fileSubject`), fileSubject }
 * The object: url, tokenUrl, imdsUrl, exchanges (every exchange body), imdsCalls, failNext
 * (answers the next exchanges with {status, body} — or {status, raw} sent as is, or {hang: true}
 * never answered), valid(token) (issued and not expired), stop().
 */
export async function startOpenAiExchange(opts) {
  const m = { exchanges: [], imdsCalls: [], failNext: [], issued: new Map(), imdsIssued: new Set() };
  let seq = 0;
  const send = (res, status, o) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(o));
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url, 'http://x');
      if (req.method === 'GET' && u.pathname === '/metadata/identity/oauth2/token') {
        const q = Object.fromEntries(u.searchParams);
        m.imdsCalls.push(q);
        if (req.headers.metadata !== 'true' || q.resource !== opts.resource)
          return send(res, 400, { error: 'invalid_request', error_description: `bad resource ${q.resource}` });
        const t = `eyJhbGciOiJub25lIn0.imds-subject-${++seq}.sig`;
        m.imdsIssued.add(t);
        return send(res, 200, { access_token: t, expires_in: '3600', resource: q.resource, token_type: 'Bearer' });
      }
      if (req.method !== 'POST' || u.pathname !== '/oauth/token') return send(res, 404, { error: 'not_found' });
      let b = null;
      try {
        b = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        b = null;
      }
      m.exchanges.push({ headers: req.headers, body: b });
      if (m.failNext.length) {
        const f = m.failNext.shift();
        if (f.hang) return;
        if (f.raw !== undefined) {
          res.writeHead(f.status, { 'content-type': 'application/json' });
          return res.end(f.raw);
        }
        return send(res, f.status, f.body);
      }
      const bad =
        !/^application\/json/.test(req.headers['content-type'] ?? '') ? 'content-type is not JSON'
        : b == null ? 'body is not JSON'
        : b.grant_type !== 'urn:ietf:params:oauth:grant-type:token-exchange' ? `bad grant_type ${b.grant_type}`
        : b.subject_token_type !== 'urn:ietf:params:oauth:token-type:jwt' ? `bad subject_token_type ${b.subject_token_type}`
        : b.identity_provider_id !== opts.idp ? `unknown identity_provider_id ${b.identity_provider_id}`
        : b.service_account_id !== opts.sa ? `unknown service_account_id ${b.service_account_id}`
        : !(m.imdsIssued.has(b.subject_token) || opts.subjectOk?.(b.subject_token) || (opts.fileSubject && (b.subject_token === opts.fileSubject || b.subject_token === opts.fileSubject2))) ? 'subject_token not accepted'
        : null;
      if (bad) return send(res, 400, { error: 'invalid_grant', error_description: bad });
      const t = `oai-wif-${++seq}-${Math.random().toString(36).slice(2)}`;
      m.issued.set(t, Date.now() + (opts.lifetimeS ?? 3600) * 1000);
      send(res, 200, { access_token: t, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: opts.lifetimeS ?? 3600 });
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  m.url = `http://127.0.0.1:${server.address().port}`;
  m.tokenUrl = `${m.url}/oauth/token`;
  m.imdsUrl = `${m.url}/metadata/identity/oauth2/token`;
  m.valid = (t) => m.issued.has(t) && m.issued.get(t) > Date.now();
  m.stop = () =>
    new Promise((r) => {
      server.closeAllConnections?.();
      server.close(() => r());
    });
  return m;
}
