// Outside review of the operators' view (issue 11): a hostile client on the data plane reaching
// /status, /status.json or /metrics; the metrics listener's connections against the data plane's.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startMock, startRouter, backendFor, get, stopAll, freePort, sleep, SLOW } from './lib/harness.mjs';

const status = async (base, p, proto = 'h1') => String((await get(base, p, { proto })).status);

describe('hostile review: operators view', () => {
  let east;
  before(async () => {
    east = await startMock('eastus');
  });
  after(async () => stopAll(east));

  it('a data-plane listener on the metrics port at another address serves no /status, /status.json or /metrics', async () => {
    // listen 127.0.0.2:P (the data plane) and metrics 127.0.0.1:P: two sockets, one port
    const port = await freePort();
    const router = await startRouter({
      config: {
        listen: [{ address: '127.0.0.2', port }],
        metrics: { address: '127.0.0.1', port },
        backends: [backendFor(east)],
      },
      port,
    });
    after(async () => stopAll(router));
    const data = `http://127.0.0.2:${port}`;
    const mon = `http://127.0.0.1:${port}`;
    for (const p of ['/status', '/status.json', '/metrics'])
      for (const proto of ['h1', 'h2c']) assert.equal(await status(data, p, proto), '404', `${proto} ${p} on the data plane`);
    for (const p of ['/status', '/status.json', '/metrics']) assert.equal(await status(mon, p), '200', `${p} on the metrics listener`);
  });
});
