// A real Prometheus (the Debian package `prometheus`, installed by ./dev.sh deps) for the
// dashboard and stack tests: started on loopback with its own storage, stopped by stop().
// Also: every panel target and query variable of a Grafana dashboard, with Grafana's
// variables substituted, ready for /api/v1/query.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { freePort, tempDir, pollUntil, httpRequest, waitExit, SLOW } from './harness.mjs';

export const PROMETHEUS_BIN = process.env.AOR_PROMETHEUS ?? '/usr/bin/prometheus';

/**
 * Starts Prometheus scraping `targets` (["127.0.0.1:PORT"]) every `interval` under job `job`,
 * every target labelled namespace=`namespace` (as deploy/prometheus/prometheus.yml does);
 * `ruleFiles` (absolute paths) are loaded. Resolves once /-/ready answers 200.
 */
export async function startPrometheus({ targets, job = 'aoai-router', namespace = 'it', interval = '1s', ruleFiles = [], extraJobs = [] }) {
  if (!existsSync(PROMETHEUS_BIN)) throw new Error(`${PROMETHEUS_BIN} missing: ./dev.sh deps installs the Debian package prometheus`);
  const dir = tempDir('aor-it-prom-');
  const port = await freePort();
  const config = path.join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      `  scrape_interval: ${interval}`,
      `  evaluation_interval: ${interval}`,
      `  scrape_timeout: ${interval}`,
      ruleFiles.length ? `rule_files:\n${ruleFiles.map((f) => `  - ${JSON.stringify(f)}`).join('\n')}` : '',
      'scrape_configs:',
      `  - job_name: ${JSON.stringify(job)}`,
      '    static_configs:',
      `      - targets: ${JSON.stringify(targets)}`,
      `        labels: { namespace: ${JSON.stringify(namespace)} }`,
      ...extraJobs.flatMap((j) => [`  - job_name: ${JSON.stringify(j.job)}`, '    static_configs:', `      - targets: ${JSON.stringify(j.targets)}`]),
      '',
    ].join('\n'),
  );
  const proc = spawn(
    PROMETHEUS_BIN,
    [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => (stderr += d));
  const url = `http://127.0.0.1:${port}`;
  const prom = {
    url,
    proc,
    stderr: () => stderr,
    /** instant query: the result array (throws on an API error) */
    async query(expr) {
      const r = await httpRequest(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`, { timeoutMs: 10000 * SLOW });
      const j = JSON.parse(r.body);
      if (j.status !== 'success') throw new Error(`${expr}: ${j.errorType} ${j.error}`);
      return j.data.result;
    },
    async targets() {
      const r = await httpRequest(`${url}/api/v1/targets`, { timeoutMs: 5000 * SLOW });
      return JSON.parse(r.body).data.activeTargets;
    },
    async rules() {
      const r = await httpRequest(`${url}/api/v1/rules`, { timeoutMs: 5000 * SLOW });
      return JSON.parse(r.body).data.groups;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await waitExit(proc, 10000 * SLOW).catch(() => {
        proc.kill('SIGKILL');
        return waitExit(proc, 5000);
      });
    },
  };
  const ready = await pollUntil(
    () => (proc.exitCode !== null ? 'exited' : httpRequest(`${url}/-/ready`, { timeoutMs: 1000 }).then((r) => r.status === 200, () => false)),
    { timeoutMs: 20000 * SLOW, intervalMs: 100 },
  );
  if (ready !== true) {
    await prom.stop();
    throw new Error(`prometheus did not become ready: ${stderr}`);
  }
  return prom;
}

/** Every panel (nested in rows too) of a dashboard file. */
export function dashboardPanels(file) {
  const d = JSON.parse(readFileSync(file, 'utf8'));
  const out = [];
  for (const p of d.panels ?? []) {
    out.push(p);
    for (const q of p.panels ?? []) out.push(q);
  }
  return { dashboard: d, panels: out };
}

/**
 * Grafana's substitution for a test run: the multi-value variables at All (their allValue,
 * `.*`) — $job at `job` when given —, $__rate_interval and $__interval as `rate`, $__range as `range`.
 */
export function substitute(expr, { rate = '10s', range = '5m', job = '.*' } = {}) {
  return expr
    .replace(/\$\{?job\}?\b/g, job)
    .replace(/\$__rate_interval|\$\{__rate_interval\}/g, rate)
    .replace(/\$__interval|\$\{__interval\}/g, rate)
    .replace(/\$__range|\$\{__range\}/g, range)
    .replace(/\$\{?(tenant|deployment|backend|job|namespace)\}?\b/g, '.*');
}

/** [{dashboard, panel, refId, expr}] for every panel target; [{dashboard, variable, expr}] for every query variable (label_values' selector). */
export function dashboardQueries(file) {
  const { dashboard, panels } = dashboardPanels(file);
  const name = path.basename(file);
  const targets = [];
  for (const p of panels) for (const t of p.targets ?? []) if (t.expr) targets.push({ dashboard: name, panel: p.title, refId: t.refId, expr: t.expr });
  const variables = [];
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    const m = /^label_values\((.*),\s*(\w+)\s*\)$/.exec(q ?? '');
    if (m) variables.push({ dashboard: name, variable: v.name, expr: `count by (${m[2]}) (${m[1]})` });
  }
  return { targets, variables };
}
