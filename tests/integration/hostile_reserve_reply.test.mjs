// The reserve script's answer is one string the router parses itself (router/admit.c
// parse_reserve_reply: "<code> <what> <rt> <rr> <4 usage numbers> <6 field lengths>\n<values>").
// A Redis — or a proxy in front of it, or a script of someone else's loaded under our SHA —
// that answers anything else must not be believed: the router treats the answer as Redis being
// unavailable (on_failure decides: closed → 503 quota_store_unavailable). And a well-formed
// answer must be read exactly: the numbers become the client's x-ratelimit-remaining-* headers,
// the limit named picks the message and the retry-after, the reason picks the 403.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startMock, startRouter, backendFor, post, chatBody, CHAT_PATH, stopAll, fetchMetrics, metricSum, pollUntil, h2Burst } from './lib/harness.mjs';
import { startFakeResp } from './lib/hostile_review_resp.mjs';

const bulk = (s) => `$${Buffer.byteLength(s, 'latin1')}\r\n${s}\r\n`;

describe('the reserve reply is parsed strictly and exactly', () => {
  let mock, fake, router;
  let reserveAnswer = '';
  const reserves = [];

  before(async () => {
    mock = await startMock('rr-east');
    fake = await startFakeResp((s, args) => {
      const cmd = args[0].toUpperCase();
      if (cmd === 'MGET') {
        s.write(`*${args.length - 1}\r\n` + '$-1\r\n'.repeat(args.length - 1));
      } else if ((cmd === 'EVALSHA' || cmd === 'EVAL') && args[2] === '1') {
        s.write('*5\r\n' + '$-1\r\n'.repeat(5)); // the tenant:{default} poll (router/deftenant.c): no such hash
      } else if ((cmd === 'EVALSHA' || cmd === 'EVAL') && args[3].includes('tenant:{')) {
        reserves.push(args);
        s.write(typeof reserveAnswer === 'function' ? reserveAnswer(args) : reserveAnswer);
      } else if (cmd === 'EVALSHA' || cmd === 'EVAL') {
        s.write(':1\r\n'); // the settle
      } else {
        s.write('-ERR unexpected\r\n');
      }
    });
    router = await startRouter({
      config: {
        threads: 1,
        redis: { url: fake.url, on_failure: 'closed' },
        tenants: { default: { tpm: 1000, rpm: 10 } },
        backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })],
      },
    });
  });
  after(async () => {
    await stopAll(router, mock);
    await fake.stop();
  });

  async function ask(answer) {
    reserveAnswer = answer;
    return post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }));
  }

  it('sends the reserve as one EVALSHA with the tenant key first and the numbers in one argument', async () => {
    const r = await ask(bulk('0 - 123 4 10 1 10 10 -1 -1 -1 -1 -1 -1\n'));
    assert.equal(r.status, 200, r.body);
    const a = reserves.at(-1);
    assert.equal(a[0], 'EVALSHA');
    assert.match(a[1], /^[0-9a-f]{40}$/);
    const nkeys = Number(a[2]);
    assert.ok(nkeys >= 5 && nkeys <= 14, `numkeys ${nkeys}`);
    assert.equal(a[3], 'aoai:tenant:{default}');
    assert.match(a[4], /^aoai:usage:\{default\}:minute:\d{12}$/);
    assert.match(a[5], /^aoai:usage:\{default\}:day:\d{8}$/);
    assert.match(a[6], /^aoai:usage:\{default\}:month:\d{6}$/);
    for (let i = 7; i < 3 + nkeys; i++) assert.match(a[i], /^aoai:reserved:\{default\}:\d{12}$/);
    assert.equal(a[3 + nkeys], '*');
    // fallback tpm rpm day month, buckets today, buckets this month, bucket TTL
    const n = a[4 + nkeys].split(' ').map(Number);
    assert.equal(n.length, 7, a[4 + nkeys]);
    assert.deepEqual(n.slice(0, 4), [1000, 10, -1, -1]);
    // the batch's requests: "<estimate> <reservation id> =<deployment> " — one request here
    assert.match(a[5 + nkeys], /^\d+ [0-9a-f]{16}\.[0-9a-f]+ =gpt-4o $/);
    assert.equal(a.length, 6 + nkeys);
  });

  /** the requests of a reserve call: [[estimate, id], ...] */
  const membersOf = (args) => [...args.at(-1).matchAll(/(\d+) (\S+) =(\S*) /g)].map((m) => [Number(m[1]), m[2], m[3]]);

  /** `n` requests at once on one h2c connection, max_tokens 100 + i (bodies of one length) */
  const burst = (n) => h2Burst(router.url, CHAT_PATH, Array.from({ length: n }, (_, i) => chatBody({ max_tokens: 100 + i })));

  it('requests that arrive together leave in one reserve call, and each gets its own record of the reply', async () => {
    // each record answers the request's own estimate as its remaining tokens: a record given to
    // the wrong request shows as remaining - max_tokens differing between requests
    reserveAnswer = (args) => bulk(membersOf(args).map(([est]) => `0 - ${est} 9 10 1 10 10 `).join('') + '-1 -1 -1 -1 -1 -1\n');
    const from = reserves.length;
    const res = await burst(40);
    reserveAnswer = '';
    const prompt = new Set();
    for (let i = 0; i < res.length; ++i) {
      assert.equal(res[i].status, 200, res[i].body);
      prompt.add(Number(res[i].headers['x-ratelimit-remaining-tokens']) - (100 + i));
    }
    assert.equal(prompt.size, 1, `records crossed between requests: ${[...prompt]}`);
    const sizes = reserves.slice(from).map((a) => membersOf(a).length);
    assert.equal(sizes.reduce((x, y) => x + y, 0), 40, `members ${sizes}`);
    assert.ok(Math.max(...sizes) > 1, `no call carried more than one request: ${sizes}`);
    assert.ok(Math.max(...sizes) <= 32, `a call over the batch bound: ${sizes}`);
    const ids = reserves.slice(from).flatMap((a) => membersOf(a).map(([, id]) => id));
    assert.equal(new Set(ids).size, 40, 'reservation ids repeat');
  });

  it('a reply with fewer records than its call has requests is not believed: every request of that call is refused (closed), none admitted on a stranger\'s record', async () => {
    reserveAnswer = () => bulk('0 - 500 9 10 1 10 10 -1 -1 -1 -1 -1 -1\n'); // always one record
    const from = reserves.length;
    const res = await burst(30);
    reserveAnswer = '';
    const sizes = reserves.slice(from).map((a) => membersOf(a).length);
    assert.ok(Math.max(...sizes) > 1, `no call carried more than one request: ${sizes}`);
    const ok = res.filter((r) => r.status === 200).length;
    const refused = res.filter((r) => r.status === 503 && r.json().error.code === 'quota_store_unavailable').length;
    assert.equal(ok, sizes.filter((n) => n === 1).length, `200s ${ok}, call sizes ${sizes}`);
    assert.equal(refused, sizes.filter((n) => n > 1).reduce((x, y) => x + y, 0), `503s ${refused}, call sizes ${sizes}`);
  });

  it('an admitting reply: its remaining numbers are the client headers', async () => {
    const r = await ask(bulk('0 - 123 4 10 1 10 10 -1 -1 -1 -1 -1 -1\n'));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-ratelimit-remaining-tokens'], '123');
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '4');
    const u = await ask(bulk('0 - -1 -1 10 1 10 10 -1 -1 -1 -1 -1 -1\n'));
    assert.equal(u.status, 200);
    assert.equal(u.headers['x-ratelimit-remaining-tokens'], undefined, 'unlimited: no header');
  });

  it('an over-quota reply: the limit named gives the message and retry-after', async () => {
    const day = await ask(bulk('1 day -1 -1 10 1 500 500 -1 -1 -1 -1 -1 -1\n'));
    assert.equal(day.status, 429, day.body);
    assert.equal(day.json().error.code, 'tenant_quota_exceeded');
    assert.match(day.json().error.message, /tokens per day/);
    const now = new Date();
    const dayEnd = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1);
    const ra = Number(day.headers['retry-after']);
    assert.ok(Math.abs(ra - Math.ceil((dayEnd - Date.now()) / 1000)) <= 3, `retry-after ${ra}`);
    const rpm = await ask(bulk('1 rpm -1 -1 10 10 10 10 -1 -1 -1 -1 -1 -1\n'));
    assert.equal(rpm.status, 429);
    assert.match(rpm.json().error.message, /requests per minute/);
    assert.ok(Number(rpm.headers['retry-after']) >= 1 && Number(rpm.headers['retry-after']) <= 60);
  });

  it('a forbidding reply: 403 with the reason', async () => {
    const d = await ask(bulk('2 disabled -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 1\n1'));
    assert.equal(d.status, 403, d.body);
    assert.match(d.json().error.message, /disabled/);
    const z = await ask(bulk('2 zero -1 -1 -1 -1 -1 -1 1 -1 -1 -1 -1 -1\n0'));
    assert.equal(z.status, 403);
    assert.match(z.json().error.message, /quota is 0/);
  });

  it('field values with blanks, newlines and bytes of every kind are data, not structure', async () => {
    // tpm "1\n2" (3 bytes), deployments "a b,\r\n" (6 bytes): invalid values count as absent
    const r = await ask(bulk('0 - 5 5 1 1 1 1 3 -1 -1 -1 6 -1\n1\n2a b,\r\n'));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-ratelimit-remaining-tokens'], '5');
  });

  for (const [what, answer] of [
    ['the old array shape', '*7\r\n:0\r\n$0\r\n\r\n:0\r\n:5\r\n:5\r\n*0\r\n*0\r\n'],
    ['an integer', ':0\r\n'],
    ['a status', '+OK\r\n'],
    ['an empty string', bulk('')],
    ['lengths that promise more bytes than follow', bulk('0 - 1 1 1 1 1 1 5 -1 -1 -1 -1 -1\n12')],
    ['lengths that leave bytes over', bulk('0 - 1 1 1 1 1 1 1 -1 -1 -1 -1 -1\n12')],
    ['a length below -1', bulk('0 - 1 1 1 1 1 1 -2 -1 -1 -1 -1 -1\n')],
    ['a length over 2 KiB', bulk(`0 - 1 1 1 1 1 1 2049 -1 -1 -1 -1 -1\n${'7'.repeat(2049)}`)],
    ['five lengths', bulk('0 - 1 1 1 1 1 1 -1 -1 -1 -1 -1\n')],
    ['a 20-digit number', bulk('0 - 99999999999999999999 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
    ['a number with a sign in the middle', bulk('0 - 1-2 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
    ['two blanks', bulk('0 -  1 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
    ['no reason word', bulk('0  1 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
    ['a code out of range', bulk('7 - 1 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
    ['a NUL in a number', bulk('0 - 1\u00001 1 1 1 1 1 -1 -1 -1 -1 -1 -1\n')],
  ]) {
    it(`${what}: not believed — 503 quota_store_unavailable with on_failure closed`, async () => {
      const before = metricSum(await fetchMetrics(router), 'aoai_router_requests_total', { code: '200' });
      const r = await ask(answer);
      assert.equal(r.status, 503, `${r.status} ${r.body}`);
      assert.equal(r.json().error.code, 'quota_store_unavailable');
      assert.equal(metricSum(await fetchMetrics(router), 'aoai_router_requests_total', { code: '200' }), before);
      // and the connection still serves the next well-formed answer
      const ok = await ask(bulk('0 - 9 9 1 1 1 1 -1 -1 -1 -1 -1 -1\n'));
      assert.equal(ok.status, 200, ok.body);
      assert.equal(ok.headers['x-ratelimit-remaining-tokens'], '9');
    });
  }
});

// Each worker keeps the key arguments of a tenant's calls for the minute (router/admit.c
// key_block): a cached block must never name another tenant, an old prefix or an old minute.
describe('the cached key arguments follow the tenant, the config and the minute', () => {
  let mock, fake, router;
  const calls = [];
  const sha = (s) => crypto.createHash('sha256').update(s).digest('hex');
  // tenants t-a and t-b share a cache slot (FNV-1a of the name mod 16, as key_block_of picks
  // it): a block kept for one must not be taken for the other; t-c sits elsewhere
  const fnv = (str) => [...Buffer.from(str)].reduce((h, b) => Math.imul(h ^ b, 16777619) >>> 0, 2166136261) % 16;
  const names = Array.from({ length: 400 }, (_, i) => `t-${i}`);
  const first = names[0];
  const twin = names.find((n) => n !== first && fnv(n) === fnv(first));
  const other = names.find((n) => fnv(n) !== fnv(first));
  const TENANT = { a: first, b: twin, c: other };
  const KEY = { a: 'aor_cache_test_key_tenant_a_0123456789', b: 'aor_cache_test_key_tenant_b_0123456789', c: 'aor_cache_test_key_tenant_c_0123456789' };
  const config = (prefix) => ({
    threads: 1,
    redis: { url: fake.url, on_failure: 'closed', ...(prefix ? { prefix } : {}) },
    auth: { mode: 'key', keys: { static: Object.entries(KEY).map(([t, k]) => ({ sha256: sha(k), tenant: TENANT[t] })) } },
    tenants: { default: { tpm: 100000, rpm: 1000 } },
    backends: [backendFor(mock, { deployments: { 'gpt-4o': 'gpt-4o' } })],
  });

  before(async () => {
    mock = await startMock('rr-cache');
    fake = await startFakeResp((s, args) => {
      const cmd = args[0].toUpperCase();
      if (cmd === 'MGET') return s.write(`*${args.length - 1}\r\n` + '$-1\r\n'.repeat(args.length - 1));
      if (cmd !== 'EVALSHA' && cmd !== 'EVAL') return s.write('-ERR unexpected\r\n');
      if (args[2] === '1') return s.write('*5\r\n' + '$-1\r\n'.repeat(5)); // the tenant:{default} poll
      const nkeys = Number(args[2]);
      calls.push({ keys: args.slice(3, 3 + nkeys), reserve: /tenant:\{/.test(args[3]) });
      if (/tenant:\{/.test(args[3])) s.write(bulk('0 - 100 10 1 1 1 1 -1 -1 -1 -1 -1 -1\n'));
      else s.write(':1\r\n');
    });
    router = await startRouter({ config: config() });
  });
  after(async () => {
    await stopAll(router, mock);
    await fake.stop();
  });

  const send = (t) => post(router.url, CHAT_PATH, chatBody({ max_tokens: 5 }), { headers: { 'api-key': KEY[t] } });

  it('tenants interleaved: every call names its own tenant, reserve and settle', async () => {
    for (const t of ['a', 'b', 'a', 'c', 'b', 'b', 'a', 'c']) {
      calls.length = 0;
      const r = await send(t);
      assert.equal(r.status, 200, r.body);
      await pollUntil(() => calls.length >= 2, { timeoutMs: 5000 });
      const [reserve, settle] = calls;
      assert.ok(reserve.reserve && !settle.reserve, JSON.stringify(calls));
      for (const k of [...reserve.keys, ...settle.keys]) assert.ok(k.startsWith('aoai:') && k.includes(`{${TENANT[t]}}`), `${t}: ${k}`);
      assert.equal(reserve.keys[0], `aoai:tenant:{${TENANT[t]}}`);
      assert.deepEqual(settle.keys.slice(0, 3), reserve.keys.slice(1, 4), 'settled in the windows it was admitted in');
      assert.match(settle.keys.at(-1), new RegExp(`^aoai:settled:\\{${TENANT[t]}\\}:\\d{12}$`));
    }
  });

  it('a reload that changes the prefix: the next calls use the new one', async () => {
    assert.equal((await send('a')).status, 200);
    const from = router.stderr().length;
    router.writeConfig(config('other-'));
    router.signal('SIGHUP');
    assert.ok(await router.waitStderr(/reloaded/, 10000, from), 'reloaded');
    calls.length = 0;
    const r = await send('a');
    assert.equal(r.status, 200, r.body);
    await pollUntil(() => calls.length >= 2, { timeoutMs: 5000 });
    for (const c of calls) for (const k of c.keys) assert.ok(k.startsWith('other-') && k.includes(`{${TENANT.a}}`), k);
  });
});
