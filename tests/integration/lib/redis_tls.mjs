// TLS Redis for the rediss:// tests: certificates made with openssl (a test CA, a server
// certificate for localhost/127.0.0.1, one for another host name, a self-signed one) and a real
// redis-server serving TLS only (--port 0 --tls-port N).
import { spawn, execFileSync } from 'node:child_process';
import path from 'node:path';
import tls from 'node:tls';
import { readFileSync, writeFileSync } from 'node:fs';
import { tempDir, freePort, pollUntil, waitExit, track, SLOW } from './harness.mjs';

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A CA and server certificates in a temp dir: {dir, ca, good:{cert,key}, wrongHost:{cert,key}, selfSigned:{cert,key}} (paths). */
export function makeCerts() {
  const dir = tempDir('aor-it-redis-tls-');
  const p = (f) => path.join(dir, f);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-days', '2', '-subj', '/CN=aor test redis CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  const leaf = (name, san, { selfSigned = false } = {}) => {
    if (selfSigned) {
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`,
        '-days', '2', '-subj', `/CN=${name}`, '-addext', `subjectAltName=${san}`], dir);
    } else {
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
      openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2',
        '-extfile', p(`${name}.ext`)], dir);
    }
    return { cert: p(`${name}.pem`), key: p(`${name}.key`) };
  };
  const ext = (name, san) => writeFileSync(p(`${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  ext('good', 'DNS:localhost,IP:127.0.0.1');
  ext('wronghost', 'DNS:redis.other.example');
  return {
    dir,
    ca: p('ca.pem'),
    good: leaf('good'),
    wrongHost: leaf('wronghost'),
    selfSigned: leaf('selfsigned', 'DNS:localhost,IP:127.0.0.1', { selfSigned: true }),
  };
}

/** TLS PING with the test CA: true once the server answers +PONG (or -NOAUTH: it is up) */
function tlsPing(port, ca) {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, ca: readFileSync(ca) });
    const done = (v) => {
      s.destroy();
      resolve(v);
    };
    s.once('secureConnect', () => s.write('PING\r\n'));
    s.once('data', (d) => done(/^(\+PONG|-NOAUTH)/.test(String(d))));
    s.once('error', () => done(false));
    setTimeout(() => done(false), 2000);
  });
}

/**
 * redis-server serving TLS only on `port` (a free one when absent) with `cert` ({cert,key});
 * `password` → requirepass. Returns {port, proc, url(host), stop(), output()}.
 */
export async function startTlsRedis({ cert, ca, port, password } = {}) {
  port = port ?? (await freePort());
  const dir = tempDir('aor-it-redis-tls-data-');
  const args = ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--tls-cert-file', cert.cert, '--tls-key-file', cert.key,
    '--tls-ca-cert-file', ca, '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', dir];
  if (password) args.push('--requirepass', password);
  const proc = track(spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const ok = await pollUntil(async () => proc.exitCode === null && (await tlsPing(port, ca)), { timeoutMs: 10000 * SLOW, intervalMs: 100 });
  if (!ok) {
    proc.kill('SIGKILL');
    throw new Error(`TLS redis-server did not come up on ${port}: ${out}`);
  }
  return {
    port,
    proc,
    url: (host = 'localhost', db = 0) => `rediss://${host}:${port}/${db}`,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGCONT');
        proc.kill('SIGTERM');
      }
      await waitExit(proc, 10000 * SLOW).catch((e) => {
        proc.kill('SIGKILL');
        throw e;
      });
    },
  };
}

/** redis-cli over TLS against startTlsRedis() (CA-verified) */
export function tlsRedisCliArgs(r, ca, password) {
  const a = ['--tls', '--cacert', ca, '--sni', 'localhost', '-h', '127.0.0.1', '-p', String(r.port), '--raw'];
  if (password) a.push('--no-auth-warning', '-a', password);
  return a;
}
