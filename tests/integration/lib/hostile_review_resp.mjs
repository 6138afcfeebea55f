// A fake Redis for tests/integration/hostile_review_backend.test.mjs: it speaks RESP, answers
// the connection handshake (PING, AUTH, SELECT) honestly and every other command with what the
// test's `answer(socket, args)` writes — a 2 GB bulk string, a 2-billion-element array, ...
//
//   const fake = await startFakeResp((socket, args) => socket.write(':1\r\n'));
//   fake.url, fake.seen (commands by name), fake.stop()
import net from 'node:net';

export async function startFakeResp(answer) {
  const fake = { seen: {}, sockets: new Set(), answer };
  const server = net.createServer((s) => {
    fake.sockets.add(s);
    s.on('close', () => fake.sockets.delete(s));
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length === 0 || buf[0] !== 0x2a /* '*' */) return;
        let e = buf.indexOf('\r\n');
        if (e < 0) return;
        const n = Number(buf.subarray(1, e));
        let p = e + 2;
        const args = [];
        for (let i = 0; i < n; i++) {
          e = buf.indexOf('\r\n', p);
          if (e < 0) return;
          const len = Number(buf.subarray(p + 1, e));
          if (buf.length < e + 2 + len + 2) return;
          args.push(buf.subarray(e + 2, e + 2 + len).toString('latin1'));
          p = e + 2 + len + 2;
        }
        buf = buf.subarray(p);
        const cmd = args[0].toUpperCase();
        fake.seen[cmd] = (fake.seen[cmd] ?? 0) + 1;
        if (cmd === 'PING') s.write('+PONG\r\n');
        else if (cmd === 'AUTH' || cmd === 'SELECT') s.write('+OK\r\n');
        else fake.answer(s, args);
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.port = server.address().port;
  fake.url = `redis://127.0.0.1:${fake.port}/0`;
  fake.stop = async () => {
    for (const s of fake.sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  return fake;
}

/** writes `head`, then `block` until `total` bytes went out or the peer left, respecting backpressure */
export function streamFlood(socket, head, block, total) {
  socket.write(head);
  let sent = 0;
  const go = () => {
    while (!socket.destroyed && sent < total) {
      sent += block.length;
      if (!socket.write(block)) {
        socket.once('drain', go);
        return;
      }
    }
  };
  go();
}
