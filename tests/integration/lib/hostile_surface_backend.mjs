// A raw HTTP/1.1 "backend" over node's net module, for tests/integration/hostile_surface.test.mjs:
// it records every request head exactly as received (raw header list, duplicates kept) and
// answers with whatever header list a test gives it — including headers a well-behaved
// HTTP library would refuse to send (Connection: x-secret, two x-request-id, ...).
import net from 'node:net';

/**
 * Starts the backend on 127.0.0.1:0. `respond(req)` returns {status, headers: [[name, value], ...],
 * body} for a request {method, path, headers: [[name, value], ...], header(name), body (Buffer)};
 * content-length is added. Returns {url, port, requests: [...], setResponder(fn), close()}.
 */
export async function startRawBackend(respond) {
  const requests = [];
  let responder = respond;
  const sockets = new Set();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const [method, path] = lines[0].split(' ');
        const headers = lines.slice(1).map((l) => {
          const i = l.indexOf(':');
          return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
        });
        const cl = headers.find(([n]) => n === 'content-length');
        const len = cl ? Number(cl[1]) : 0;
        if (buf.length < end + 4 + len) return;
        const body = buf.subarray(end + 4, end + 4 + len);
        buf = buf.subarray(end + 4 + len);
        const req = {
          method,
          path,
          headers,
          body,
          header(name) {
            return headers.filter(([n]) => n === name).map(([, v]) => v);
          },
        };
        requests.push(req);
        const res = responder(req);
        const payload = Buffer.from(res.body ?? '');
        let head = `HTTP/1.1 ${res.status} X\r\n`;
        for (const [n, v] of res.headers ?? []) head += `${n}: ${v}\r\n`;
        head += `content-length: ${payload.length}\r\n\r\n`;
        sock.write(Buffer.concat([Buffer.from(head, 'latin1'), payload]));
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    name: 'raw',
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    setResponder(fn) {
      responder = fn;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A JSON reply echoing the request head: {"method", "path", "headers": [[n, v], ...]}. */
export function echoResponder(extraHeaders = []) {
  return (req) => ({
    status: 200,
    headers: [['content-type', 'application/json'], ...extraHeaders],
    body: JSON.stringify({ method: req.method, path: req.path, headers: req.headers, body_len: req.body.length }),
  });
}
