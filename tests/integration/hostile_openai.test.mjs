// Hostile token exchange for openai_wif (issue 10): an endpoint that echoes the subject token.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, unlinkSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { startMock, startRouter, backendFor, stopAll, post, tempDir, sleep, pollUntil, curlStream, fetchMetrics, metricSum, run, ROUTER_BIN, SLOW, CHAT_PATH, chatBody } from './lib/harness.mjs';
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

// ---- an outside review of openai_wif and provider openai (issue 10) ----

const SUBJECT = 'eyJhbGciOiJub25lIn0.hostile-subject-never-logged.sig';

function wifBackend(oai, ex, file, extra = {}) {
  return {
    name: 'openai',
    provider: 'openai',
    url: oai.url,
    priority: 1,
    deployments: { 'gpt-4o': 'gpt-4o-2024-11-20' },
    auth: { type: 'openai_wif', identity_provider_id: 'i', service_account_id: 's', token_url: ex.tokenUrl, subject: { type: 'file', path: file } },
    ...extra,
  };
}

// one router: openai (openai_wif, file subject) first, eastus second
// `prime(ex, oai)` runs before the router starts (it fetches its first token at once)
async function wifSetup({ exchange = {}, limits, file, prime } = {}) {
  if (!file) {
    file = path.join(tempDir('aor-it-wif-'), 'token');
    writeFileSync(file, SUBJECT);
  }
  const ex = await startOpenAiExchange({ idp: 'i', sa: 's', fileSubject: SUBJECT, ...exchange });
  const oai = await startOpenAiMock({ bearer: (t) => ex.valid(t) });
  const east = await startMock('eastus');
  things.push(ex, oai, east);
  prime?.(ex, oai);
  const router = await startRouter({
    config: {
      ...(limits ? { limits } : {}),
      backends: [wifBackend(oai, ex, file), backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } })],
    },
  });
  things.push(router);
  return { ex, oai, east, router, file };
}

const chat = (router) => post(router.url, CHAT_PATH, chatBody({ max_tokens: 1 }));

describe('hostile openai_wif: the exchange endpoint lies', () => {
  const lies = [
    ['200 with an OAuth error body', { status: 200, body: { error: 'invalid_grant', error_description: 'nope' } }, /unusable answer: no usable access_token/],
    ['an access_token with CRLF (header injection)', { status: 200, body: { access_token: 'tok\r\nX-Evil: 1', token_type: 'Bearer', expires_in: 3600 } }, /no usable access_token/],
    ['an access_token with a space', { status: 200, body: { access_token: 'tok en', token_type: 'Bearer', expires_in: 3600 } }, /no usable access_token/],
    ['an access_token of 20000 bytes', { status: 200, body: { access_token: 'a'.repeat(20000), token_type: 'Bearer', expires_in: 3600 } }, /no usable access_token/],
    ['expires_in negative', { status: 200, body: { access_token: 'tok-neg', token_type: 'Bearer', expires_in: -5 } }, /no usable expires_in/],
    ['expires_in 0', { status: 200, body: { access_token: 'tok-zero', token_type: 'Bearer', expires_in: 0 } }, /no usable expires_in/],
    ['expires_in "NaN"', { status: 200, body: { access_token: 'tok-nan', token_type: 'Bearer', expires_in: 'NaN' } }, /no usable expires_in/],
    ['no expires_in', { status: 200, body: { access_token: 'tok-none', token_type: 'Bearer' } }, /no usable expires_in/],
    ['token_type mac', { status: 200, body: { access_token: 'tok-mac', token_type: 'mac', expires_in: 3600 } }, /token_type is not Bearer/],
    ['not JSON', { status: 200, raw: '<html>hello</html>' }, /the answer is not a JSON object/],
    ['two access_token members', { status: 200, raw: '{"access_token":"a1","access_token":"a2","token_type":"Bearer","expires_in":3600}' }, /the answer is not a JSON object/],
    ['a body over 64 KiB', { status: 200, raw: JSON.stringify({ access_token: 'big', token_type: 'Bearer', expires_in: 3600, pad: 'x'.repeat(70000) }) }, /answer too large/],
    ['nesting 10000 deep', { status: 200, raw: '['.repeat(10000) + ']'.repeat(10000) }, /the answer is not a JSON object/],
  ];
  for (const [what, answer, logged] of lies) {
    it(`${what}: no token, OpenAI never asked, the next backend answers, logged without the subject`, async () => {
      const { ex, oai, router } = await wifSetup({ prime: (e) => (e.failNext = Array.from({ length: 20 }, () => answer)) });
      const r = await chat(router);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
      assert.equal(oai.requests.length, 0, 'OpenAI was sent a request with a refused token');
      assert.ok(ex.exchanges.length >= 1);
      await sleep(100);
      assert.match(router.stderr(), logged);
      assert.ok(!router.stderr().includes('hostile-subject-never-logged'), 'the subject reached the log');
      assert.ok(!router.stderr().includes('X-Evil'));
      await router.stop();
    });
  }

  it('expires_in 1e30: the token is used, but held for 24 h at most (logged as such)', async () => {
    const { oai, router } = await wifSetup({
      prime: (e) => {
        e.failNext = [{ status: 200, body: { access_token: 'tok-forever', token_type: 'Bearer', expires_in: 1e30 } }];
        e.issued.set('tok-forever', Date.now() + 3600000);
      },
    });
    const r = await chat(router);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'openai');
    assert.equal(oai.requests[0].headers.authorization, 'Bearer tok-forever');
    await sleep(100);
    assert.match(router.stderr(), /token acquired, expires in 86400 s/);
    await router.stop();
  });

  it('an exchange that never answers: requests wait at most connect_timeout_ms, then the next backend answers', async () => {
    const { ex, oai, router } = await wifSetup({ limits: { connect_timeout_ms: 400 }, prime: (e) => (e.failNext = Array.from({ length: 5 }, () => ({ hang: true }))) });
    const t0 = Date.now();
    const r = await chat(router);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.ok(Date.now() - t0 < 2500 * SLOW, `took ${Date.now() - t0} ms`);
    // the call is still in flight (single flight): no second exchange was started meanwhile
    const r2 = await chat(router);
    assert.equal(r2.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(ex.exchanges.length, 1);
    assert.equal(oai.requests.length, 0);
    await router.stop();
  });
});

describe('hostile openai_wif: the subject token file', () => {
  it('vanishes: the current token serves until it expires, then the backend is skipped; back when the file is', async () => {
    const { ex, oai, router, file } = await wifSetup({ exchange: { lifetimeS: 2, fileSubject2: 'eyJhbGciOiJub25lIn0.second-subject.sig' } });
    assert.equal((await chat(router)).headers['x-aoai-router-backend'], 'openai');
    unlinkSync(file);
    // 2 s tokens: refreshed after ~1 s (fails: no file), unusable after ~1.67 s
    await sleep(2200);
    const r = await chat(router);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.match(router.stderr(), /token_file unreadable: No such file or directory/);
    writeFileSync(file, 'eyJhbGciOiJub25lIn0.second-subject.sig\n');
    await pollUntil(async () => (await chat(router)).headers['x-aoai-router-backend'] === 'openai', { timeoutMs: 8000 * SLOW, intervalMs: 200 });
    assert.equal(ex.exchanges.at(-1).body.subject_token, 'eyJhbGciOiJub25lIn0.second-subject.sig');
    assert.ok(oai.requests.length >= 2);
    await router.stop();
  });

  for (const [what, content, logged] of [
    ['holds CRLF inside the token', 'eyJhbGciOiJub25lIn0.a\r\nX-Evil: 1.sig', /token_file unreadable: empty or not a token/],
    ['is empty', '\n', /token_file unreadable: empty or not a token/],
    ['is 20 KiB', 'a'.repeat(20000), /token_file unreadable: larger than 16 KiB/],
  ]) {
    it(`${what}: never sent to the exchange, the backend skipped`, async () => {
      const file = path.join(tempDir('aor-it-wif-'), 'token');
      writeFileSync(file, content);
      const { ex, oai, router } = await wifSetup({ file });
      const r = await chat(router);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
      assert.equal(ex.exchanges.length, 0);
      assert.equal(oai.requests.length, 0);
      await sleep(100);
      assert.match(router.stderr(), logged);
      await router.stop();
    });
  }

  it('is a directory: the backend skipped, the router keeps serving', async () => {
    const dir = tempDir('aor-it-wif-');
    const file = path.join(dir, 'token');
    mkdirSync(file);
    const { ex, router } = await wifSetup({ file });
    const r = await chat(router);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(ex.exchanges.length, 0);
    await sleep(100);
    assert.match(router.stderr(), /token_file unreadable: Is a directory/);
    await router.stop();
  });
});

describe('hostile provider openai: OpenAI misbehaves', () => {
  it('401 forever: each token is dropped at most once per 10 s (exchanges bounded), every request answered by the next backend', async () => {
    const { ex, oai, router } = await wifSetup();
    oai.hook = (req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'Invalid token', type: 'invalid_request_error', code: 'invalid_api_key' } }));
      return true;
    };
    for (let i = 0; i < 20; ++i) {
      const r = await chat(router);
      assert.equal(r.status, 200, `request ${i}: ${r.body}`);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    }
    assert.ok(ex.exchanges.length <= 2, `${ex.exchanges.length} exchanges for 20 requests`);
    // the circuit opened on repeated credential failures: OpenAI is not asked for every request
    assert.ok(oai.requests.length >= 1 && oai.requests.length <= 6, `OpenAI asked ${oai.requests.length} times`);
    const m = await fetchMetrics(router);
    assert.ok(metricSum(m, 'aoai_router_failovers_total', { backend: 'openai', reason: 'credential' }) >= 1);
    await router.stop();
  });

  it('the connection dropped before any answer: the next backend answers the same request', async () => {
    const { oai, router } = await wifSetup();
    oai.hook = (req) => {
      req.socket.destroy();
      return true;
    };
    const r = await chat(router);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-aoai-router-backend'], 'eastus');
    assert.equal(oai.requests.length, 1);
    await router.stop();
  });

  it('an SSE stream cut mid-way: the client gets what came and an incomplete stream (no [DONE]); the router keeps serving', async () => {
    const { oai, router } = await wifSetup();
    oai.hook = (req, res, body) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', model: body.model, choices: [{ index: 0, delta: { content: 'partial' } }] })}\n\n`);
      setTimeout(() => req.socket.destroy(), 100);
      return true;
    };
    const s = curlStream(router.url, CHAT_PATH, chatBody({ stream: true, max_tokens: 5 }));
    const d = await s.done;
    assert.equal(d.status, 200);
    assert.match(d.body, /partial/);
    assert.ok(!d.body.includes('[DONE]'));
    assert.notEqual(d.exitCode, 0, 'curl saw a complete response');
    oai.hook = null;
    const r = await chat(router);
    assert.equal(r.status, 200, r.body);
    await sleep(100);
    assert.match(router.stderr(), /backend openai failed mid-response/);
    await router.stop();
  });
});

describe('hostile provider openai: model names', () => {
  it('odd upstream names (a fine-tune id with colons, non-ASCII) reach OpenAI as that exact model, in valid JSON', async () => {
    const key = 'sk-odd-' + 'x'.repeat(20);
    const oai = await startOpenAiMock({ bearer: key });
    things.push(oai);
    const odd = { 'gpt-4o': 'ft:gpt-4o-mini-2024-07-18:org:custom-suffix:9aBc', 'gpt-4.1': 'modèle-ünï' };
    const router = await startRouter({
      env: { ODD_KEY: key },
      config: { backends: [{ name: 'openai', provider: 'openai', url: oai.url, priority: 1, deployments: odd, auth: { type: 'api_key', key_env: 'ODD_KEY' } }] },
    });
    things.push(router);
    const a = await chat(router);
    assert.equal(a.status, 200, a.body);
    assert.equal(oai.requests[0].body.model, odd['gpt-4o']);
    const b = await post(router.url, '/v1/chat/completions', JSON.stringify({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 }));
    assert.equal(b.status, 200, b.body);
    assert.equal(oai.requests[1].body?.model, odd['gpt-4.1']);
    await router.stop();
  });

  it('a deployment name with a double quote (it would break the JSON body sent upstream) is a config error', async () => {
    const file = path.join(tempDir('aor-it-cfg-'), 'backends.yaml');
    writeFileSync(
      file,
      'listen: [{ address: 127.0.0.1, port: 1 }]\nbackends:\n  - name: openai\n    provider: openai\n    url: http://127.0.0.1:1\n' +
        '    deployments: { gpt-4o: \'x","stream":true,"y":"z\', \'a"b\': gpt-4o }\n    auth: { type: api_key, key_env: NOPE }\n',
    );
    const r = await run(ROUTER_BIN, ['--check', '--no-secrets', '-c', file]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const out = r.stdout + r.stderr;
    assert.match(out, /backends\.yaml:6: backends\[0\]\.deployments\.gpt-4o: must be 1 to 256 characters without \/ \? # % \\ ", spaces/);
    assert.match(out, /backends\.yaml:6: backends\[0\]\.deployments\.a"b: deployment name must be/);
  });

  it("the body's model naming another mapping (or OpenAI's own name) never overrides the path's deployment", async () => {
    const key = 'sk-map-' + 'y'.repeat(20);
    const oai = await startOpenAiMock({ bearer: key });
    things.push(oai);
    const router = await startRouter({
      env: { MAP_KEY: key },
      config: {
        backends: [
          { name: 'openai', provider: 'openai', url: oai.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o-2024-11-20', o1: 'o1-pricey' }, auth: { type: 'api_key', key_env: 'MAP_KEY' } },
        ],
      },
    });
    things.push(router);
    for (const m of ['o1', 'o1-pricey', 'gpt-4o-2024-11-20']) {
      const r = await post(router.url, CHAT_PATH, JSON.stringify({ model: m, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 }));
      assert.equal(r.status, 200, r.body);
      assert.equal(oai.requests.at(-1).body.model, 'gpt-4o-2024-11-20', `body model ${m} reached OpenAI`);
    }
    // on the v1 surface the body names the logical deployment: OpenAI's own name is not one
    const v = await post(router.url, '/v1/chat/completions', JSON.stringify({ model: 'o1-pricey', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 }));
    assert.equal(v.status, 404, v.body);
    assert.equal(oai.requests.length, 3);
    await router.stop();
  });
});

describe("hostile provider openai: OpenAI's x-ratelimit-reset-* values", () => {
  const raw429 = (reset) => (req) => {
    const b = '{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}';
    req.socket.end(
      'HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n' +
        `content-length: ${b.length}\r\nx-ratelimit-remaining-tokens: 0\r\nx-ratelimit-reset-tokens: ${reset}\r\n\r\n${b}`,
      'latin1',
    );
    return true;
  };
  const values = [
    ['-1s', '-1s'],
    ['1e3s', '1e3s'],
    ['NaN', 'NaN'],
    ['60 (a bare number)', '60'],
    ['1s1s', '1s1s'],
    ['a torn µ (latin-1 0xB5)', '1\xb5s'],
    ['200 digits', '9'.repeat(199) + 's'],
  ];
  it('a 429 without retry-after and a reset that is not a duration: ignored (default cooldown) and logged, printable and cut', async () => {
    const key = 'sk-rl-' + 'z'.repeat(20);
    const oai = await startOpenAiMock({ bearer: key });
    const east = await startMock('eastus');
    things.push(oai, east);
    const router = await startRouter({
      env: { RL_KEY: key },
      config: {
        limits: { default_cooldown_ms: 700, max_cooldown_ms: 5000 },
        backends: [
          { name: 'openai', provider: 'openai', url: oai.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' }, auth: { type: 'api_key', key_env: 'RL_KEY' } },
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
    things.push(router);
    const cooling = async () => metricSum(await fetchMetrics(router), 'aoai_router_backend_cooldown', { backend: 'openai' });
    for (const [what, value] of values) {
      oai.hook = raw429(value);
      const t0 = Date.now();
      const r = await chat(router);
      assert.equal(r.status, 200, `${what}: ${r.body}`);
      assert.equal(r.headers['x-aoai-router-backend'], 'eastus', what);
      assert.equal(await cooling(), 1, `${what}: not cooling`);
      await pollUntil(async () => (await cooling()) === 0, { timeoutMs: 3000 * SLOW, intervalMs: 50 });
      const took = Date.now() - t0;
      assert.ok(took >= 600 && took < 2000 * SLOW, `${what}: cooled ${took} ms, not the 700 ms default`);
      oai.hook = null;
    }
    const log = router.stderr();
    assert.match(log, /sent x-ratelimit-reset-tokens "1e3s" \(4 bytes\): not a duration, ignored/);
    assert.match(log, /sent x-ratelimit-reset-tokens "1\?s" \(3 bytes\): not a duration, ignored/);
    assert.match(log, /sent x-ratelimit-reset-tokens "9{39}" \(200 bytes\): not a duration, ignored/);
    await router.stop();
  });

  it('a well-formed but absurd reset ("9999999999h", Go\'s largest duration) is capped at max_cooldown_ms and logged', async () => {
    const key = 'sk-rl2-' + 'z'.repeat(20);
    const oai = await startOpenAiMock({ bearer: key });
    const east = await startMock('eastus');
    things.push(oai, east);
    const router = await startRouter({
      env: { RL_KEY: key },
      config: {
        limits: { default_cooldown_ms: 30000, max_cooldown_ms: 800 },
        backends: [
          { name: 'openai', provider: 'openai', url: oai.url, priority: 1, deployments: { 'gpt-4o': 'gpt-4o' }, auth: { type: 'api_key', key_env: 'RL_KEY' } },
          backendFor(east, { priority: 2, deployments: { 'gpt-4o': 'gpt-4o' } }),
        ],
      },
    });
    things.push(router);
    for (const value of ['9999999999h', '2562047h47m16.854775807s']) {
      oai.hook = raw429(value);
      const t0 = Date.now();
      assert.equal((await chat(router)).headers['x-aoai-router-backend'], 'eastus');
      oai.hook = null;
      await pollUntil(async () => (await chat(router)).headers['x-aoai-router-backend'] === 'openai', { timeoutMs: 3000 * SLOW, intervalMs: 50 });
      const took = Date.now() - t0;
      assert.ok(took >= 700 && took < 2500 * SLOW, `${value}: back after ${took} ms`);
    }
    assert.match(router.stderr(), /backend openai asked for an absurd retry-after or rate-limit reset; cooldown capped at 800 ms/);
    await router.stop();
  });
});
