// A raw TCP "backend" for tests/integration/hostile_backend.test.mjs: it reads HTTP/1.1
// requests off the socket itself (head + content-length body, keep-alive) and answers each
// with whatever the test's handler writes — including what no HTTP library would send: an
// endless header block, a body cut short, a chunked body without its last chunk, nothing.
//
//   const be = await startHostileBackend();
//   be.handler = (ctx) => ctx.ok(json)        // per request; ctx: {socket, conn, index, req, ...}
//   be.stats   → {connections, requests, posts, closedByPeer}
import net from 'node:net';

export const CHAT_JSON = JSON.stringify({
  id: 'chatcmpl-hostile',
  object: 'chat.completion',
  model: 'gpt-4o',
  choices: [{ index: 0, message: { role: 'assistant', content: 'from the hostile backend' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
});

/** one chunk of a chunked body */
export function chunk(s) {
  return `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
}

/** an SSE chat-completion event */
export function sseEvent(content) {
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}\n\n`;
}

export async function startHostileBackend() {
  const be = {
    stats: { connections: 0, requests: 0, posts: 0, closedByPeer: 0, bytesWritten: 0 },
    handler: (ctx) => ctx.ok(CHAT_JSON),
    sockets: new Set(),
    reset() {
      this.stats = { connections: 0, requests: 0, posts: 0, closedByPeer: 0, bytesWritten: 0 };
    },
  };
  const server = net.createServer((socket) => {
    const conn = { id: ++be.stats.connections, requests: 0, closed: false };
    be.sockets.add(socket);
    let buf = Buffer.alloc(0);
    let busy = false;
    socket.on('error', () => {});
    socket.on('close', () => {
      conn.closed = true;
      be.sockets.delete(socket);
    });
    socket.on('end', () => {
      be.stats.closedByPeer++;
      socket.end();
    });
    const pump = () => {
      if (busy) return;
      const at = buf.indexOf('\r\n\r\n');
      if (at < 0) return;
      const head = buf.subarray(0, at).toString('latin1');
      const m = /content-length:\s*(\d+)/i.exec(head);
      const len = m ? Number(m[1]) : 0;
      if (buf.length < at + 4 + len) return;
      const body = buf.subarray(at + 4, at + 4 + len).toString('utf8');
      buf = buf.subarray(at + 4 + len);
      const [method, path] = head.split('\r\n')[0].split(' ');
      be.stats.requests++;
      if (method === 'POST') be.stats.posts++;
      conn.requests++;
      busy = true;
      const write = (s) => {
        if (conn.closed) return false;
        be.stats.bytesWritten += Buffer.byteLength(s);
        return socket.write(s);
      };
      const ctx = {
        socket,
        conn,
        index: conn.requests, // 1 for the first request on this connection
        req: { method, path, head, body },
        write,
        done() {
          busy = false;
          setImmediate(pump);
        },
        ok(json, extraHeaders = '') {
          write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\n${extraHeaders}\r\n${json}`);
          ctx.done();
        },
        destroy() {
          socket.destroy();
        },
      };
      be.handler(ctx);
    };
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      pump();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  be.port = server.address().port;
  be.url = `http://127.0.0.1:${be.port}`;
  be.stop = async () => {
    for (const s of be.sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  return be;
}
