// A raw HTTP/2 (h2c, prior knowledge) frame client for hostile-client tests: it writes
// whatever frames a test asks for, in one write if asked (so that h2o reads them together),
// and parses what the server answers just enough to assert on it: per stream the :status,
// the DATA bytes and an RST_STREAM code; per connection GOAWAY and close.
//
// HPACK: a tiny encoder (indexed fields, literals with or without incremental indexing, no
// Huffman) so tests can build what node's http2 module refuses to send — e.g. one header
// added to the dynamic table and referenced thousands of times. The decoder reads only
// :status (h2o sends it as a static index or a non-Huffman literal without indexing).
import net from 'node:net';

export const FRAME = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 };
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4 };
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** HPACK integer with an N-bit prefix; `first` holds the pattern bits of the first byte */
export function hpackInt(value, prefixBits, first = 0) {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value & 0x7f) | 0x80);
    value >>= 7;
  }
  out.push(value);
  return Buffer.from(out);
}

function hpackStr(s) {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  return Buffer.concat([hpackInt(b.length, 7, 0), b]);
}

/** static-table index of a few names/pairs we use */
const STATIC = { ':authority': 1, ':method GET': 2, ':method POST': 3, ':path': 4, ':scheme http': 6, 'content-type': 31 };

export const hpack = {
  /** indexed field (static 1..61, dynamic 62..) */
  indexed: (idx) => hpackInt(idx, 7, 0x80),
  /** literal with incremental indexing, new name: enters the dynamic table (becomes index 62) */
  literalIndexed: (name, value) => Buffer.concat([Buffer.from([0x40]), hpackStr(name), hpackStr(value)]),
  /** literal without indexing, new name */
  literal: (name, value) => Buffer.concat([Buffer.from([0x00]), hpackStr(name), hpackStr(value)]),
  /** literal without indexing, name from the static table */
  literalNameIdx: (idx, value) => Buffer.concat([hpackInt(idx, 4, 0x00), hpackStr(value)]),
};

/** the pseudo-headers (and content-type) of a request, as an HPACK fragment */
export function requestHead({ method = 'POST', path = '/', authority = '127.0.0.1', contentType = 'application/json', extra = [] } = {}) {
  const parts = [
    method === 'POST' ? hpack.indexed(STATIC[':method POST']) : method === 'GET' ? hpack.indexed(STATIC[':method GET']) : hpack.literal(':method', method),
    hpack.indexed(STATIC[':scheme http']),
    hpack.literalNameIdx(STATIC[':path'], path),
    hpack.literalNameIdx(STATIC[':authority'], authority),
  ];
  if (contentType) parts.push(hpack.literalNameIdx(STATIC['content-type'], contentType));
  for (const [n, v] of extra) parts.push(hpack.literal(n, v));
  return Buffer.concat(parts);
}

export function frame(type, flags, streamId, payload = Buffer.alloc(0)) {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

export const frames = {
  settings: (pairs = []) => {
    const p = Buffer.alloc(6 * pairs.length);
    pairs.forEach(([id, v], i) => {
      p.writeUInt16BE(id, i * 6);
      p.writeUInt32BE(v, i * 6 + 2);
    });
    return frame(FRAME.SETTINGS, 0, 0, p);
  },
  settingsAck: () => frame(FRAME.SETTINGS, FLAG.ACK, 0),
  headers: (streamId, block, { endStream = false, endHeaders = true } = {}) =>
    frame(FRAME.HEADERS, (endStream ? FLAG.END_STREAM : 0) | (endHeaders ? FLAG.END_HEADERS : 0), streamId, block),
  continuation: (streamId, block, { endHeaders = true } = {}) => frame(FRAME.CONTINUATION, endHeaders ? FLAG.END_HEADERS : 0, streamId, block),
  data: (streamId, data, { endStream = true } = {}) => frame(FRAME.DATA, endStream ? FLAG.END_STREAM : 0, streamId, Buffer.from(data)),
  rst: (streamId, code = 8 /* CANCEL */) => {
    const p = Buffer.alloc(4);
    p.writeUInt32BE(code);
    return frame(FRAME.RST_STREAM, 0, streamId, p);
  },
  windowUpdate: (streamId, increment) => {
    const p = Buffer.alloc(4);
    p.writeUInt32BE(increment);
    return frame(FRAME.WINDOW_UPDATE, 0, streamId, p);
  },
  ping: () => frame(FRAME.PING, 0, 0, Buffer.alloc(8)),
};

/** reads :status out of a response header block (see the file comment for what is supported) */
function decodeStatus(block) {
  const STATIC_STATUS = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };
  let i = 0;
  const readInt = (prefixBits) => {
    const max = (1 << prefixBits) - 1;
    let v = block[i++] & max;
    if (v < max) return v;
    let m = 0;
    for (;;) {
      const b = block[i++];
      v += (b & 0x7f) << m;
      m += 7;
      if ((b & 0x80) === 0) return v;
    }
  };
  const readStr = () => {
    const huff = (block[i] & 0x80) !== 0;
    const len = readInt(7);
    const s = block.subarray(i, i + len);
    i += len;
    return { huff, s };
  };
  while (i < block.length) {
    const b = block[i];
    if (b & 0x80) {
      const idx = readInt(7);
      if (STATIC_STATUS[idx]) return STATIC_STATUS[idx];
    } else if ((b & 0xe0) === 0x20) {
      readInt(5); // table size update
    } else {
      const withIndexing = (b & 0xc0) === 0x40;
      const nameIdx = readInt(withIndexing ? 6 : 4);
      if (nameIdx === 0) readStr();
      const v = readStr();
      if (nameIdx === 8 && !v.huff) return Number(v.s.toString('latin1'));
    }
  }
  return undefined;
}

/**
 * Opens an h2c connection (prior knowledge) and sends the preface and an empty SETTINGS.
 * Returns { sock, write(buf), streams: Map(id → {status, body, rst, ended}), goaway, closed,
 * waitStream(id, ms), waitClosed(ms), close() }.
 */
export async function connectH2(port, { host = '127.0.0.1', settings = [] } = {}) {
  const sock = net.connect({ port, host });
  await new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  const conn = {
    sock,
    streams: new Map(),
    goaway: null,
    closed: false,
    error: null,
    bytesIn: 0,
    write: (buf) => new Promise((resolve) => (sock.write(buf, () => resolve()) ? undefined : undefined)),
    stream(id) {
      let s = this.streams.get(id);
      if (!s) {
        s = { status: undefined, body: [], rst: undefined, ended: false };
        this.streams.set(id, s);
      }
      return s;
    },
    async waitStream(id, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = this.streams.get(id);
        if (s && (s.ended || s.rst !== undefined)) return { ...s, body: Buffer.concat(s.body) };
        if (this.closed || Date.now() > deadline) return s ? { ...s, body: Buffer.concat(s.body), incomplete: true } : undefined;
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async waitClosed(timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      return this.closed;
    },
    close() {
      sock.destroy();
    },
  };
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    conn.bytesIn += d.length;
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const type = buf[3];
      const flags = buf[4];
      const id = buf.readUInt32BE(5) & 0x7fffffff;
      const payload = buf.subarray(9, 9 + len);
      buf = buf.subarray(9 + len);
      if (type === FRAME.SETTINGS && !(flags & FLAG.ACK)) sock.write(frames.settingsAck());
      else if (type === FRAME.HEADERS) {
        const s = conn.stream(id);
        let p = payload;
        if (flags & 0x8) p = p.subarray(1, p.length - p[0]); // padded
        if (flags & 0x20) p = p.subarray(5); // priority
        if (s.status === undefined) s.status = decodeStatus(p);
        if (flags & FLAG.END_STREAM) s.ended = true;
      } else if (type === FRAME.DATA) {
        const s = conn.stream(id);
        s.body.push(Buffer.from(payload));
        if (flags & FLAG.END_STREAM) s.ended = true;
        // keep the windows open so long answers are not stalled by us
        if (len > 0) sock.write(Buffer.concat([frames.windowUpdate(0, len), frames.windowUpdate(id, len)]));
      } else if (type === FRAME.RST_STREAM) {
        const s = conn.stream(id);
        if (s.rst === undefined) s.rst = payload.readUInt32BE(0); // the first one: later DATA draws STREAM_CLOSED
      }
      else if (type === FRAME.GOAWAY) conn.goaway = { lastStreamId: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4) };
      else if (type === FRAME.PING && !(flags & FLAG.ACK)) sock.write(frame(FRAME.PING, FLAG.ACK, 0, payload));
    }
  });
  sock.on('error', (e) => (conn.error = e));
  sock.on('close', () => (conn.closed = true));
  await conn.write(Buffer.concat([PREFACE, frames.settings(settings)]));
  return conn;
}

/** VmRSS of a process in KiB (Linux /proc) */
export async function rssKiB(pid) {
  const { readFileSync } = await import('node:fs');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}
