// The operator artifacts, checked against the code they describe (no router process runs):
//   dashboards/aoai-router.json and aoai-router-tenants.json — parse; every aoai_router_* and
//     gen_ai_* name in a panel or variable exists in router/metrics.c (the tenants dashboard may
//     also use the agreed, not yet rendered quota gauges, PENDING_DASHBOARD_METRICS); every label
//     in a {…} selector, by/without (…) clause or label_values() is a label that metric has; every
//     exported metric has a panel on the overview.
//   deploy/kubernetes/ — every manifest parses (a strict block-YAML subset parser below:
//     no YAML library is installed); the Deployment's probes, ports, scrape annotations,
//     security context, grace period, ConfigMap mount and key_env secrets agree with each
//     other and with the embedded backends.yaml, which `aoai-router --check` accepts.
//   deploy/systemd/aoai-router.service — reload by SIGHUP, stop by SIGTERM within the drain.
//   deploy/prometheus/ — promtool checks the config and rules and runs the rules' unit tests;
//     the PrometheusRule carries the same groups; alert rules use real metric names.
//   deploy/Dockerfile, deploy/compose.yaml — Debian 12, multi-stage, non-root, HEALTHCHECK; the
//     runtime packages cover what the binaries link; compose's pieces agree with each other.
//   Release: LICENSE, CHANGELOG's newest version = CMake's = the image tags.
// promtool is required (./dev.sh deps installs the Debian `prometheus` package): no skip.
// Optional tools make some checks stronger and are skipped when absent: kubectl (kustomize
// builds), systemd-analyze (unit verifies).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync, writeFileSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT, ROUTER_BIN, run, checkSanitizers, tempDir } from './lib/harness.mjs';

const DASHBOARD = path.join(ROOT, 'dashboards/aoai-router.json');
const TENANTS_DASHBOARD = path.join(ROOT, 'dashboards/aoai-router-tenants.json');
/* agreed with the quota-gauges work (issue 11), not rendered by this router/metrics.c yet: the
 * tenants dashboard may use them; once metrics.c renders them they are read from it instead */
const PENDING_DASHBOARD_METRICS = { aoai_router_tenant_quota_limit: ['tenant', 'limit'], aoai_router_tenant_quota_used: ['tenant', 'limit'] };
const DASHBOARD_README = path.join(ROOT, 'dashboards/README.md');
const K8S = path.join(ROOT, 'deploy/kubernetes');
const UNIT = path.join(ROOT, 'deploy/systemd/aoai-router.service');
const METRICS_C = path.join(ROOT, 'router/metrics.c');

/** Labels Prometheus attaches to every scraped series (target labels), valid in any `by`. */
const TARGET_LABELS = new Set(['instance', 'job', 'namespace']);

function haveTool(name) {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

// ---- the metric registry, read from router/metrics.c ----------------------------------------

/** name -> { type, labels:Set } for every series router/metrics.c can render. */
function metricRegistry() {
  const src = readFileSync(METRICS_C, 'utf8');
  const reg = new Map();
  // the table: [M_X] = {"name", "help", "type", {"l1", "l2", ...}[, bounds, num_bounds]},
  // (the help text may be split into adjacent string literals)
  const defRe = /\[M_\w+\]\s*=\s*\{\s*"((?:aoai_router|gen_ai)_\w+)"\s*,\s*(?:"(?:[^"\\]|\\.)*"\s*)+,\s*"(\w+)"\s*,\s*\{([^}]*)\}\s*(?:,[^{}]*)?\}/g;
  for (const m of src.matchAll(defRe)) {
    const labels = [...m[3].matchAll(/"(\w+)"/g)].map((x) => x[1]);
    reg.set(m[1], { type: m[2], labels: new Set(labels) });
  }
  // the series rendered directly: "# TYPE name type" and name{label=\"%s\"} / name %llu
  for (const m of src.matchAll(/# TYPE (aoai_router_\w+) (\w+)/g)) {
    if (reg.has(m[1])) continue;
    const labels = new Set();
    for (const sel of src.matchAll(new RegExp(`${m[1]}\\{([^}]*)\\}`, 'g')))
      for (const l of sel[1].matchAll(/(\w+)=\\"/g)) labels.add(l[1]);
    reg.set(m[1], { type: m[2], labels });
  }
  return reg;
}

/** The registry entry for a name as written in PromQL (histogram suffixes resolved). */
function resolveMetric(reg, name) {
  if (reg.has(name)) return { base: name, labels: reg.get(name).labels };
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m && reg.get(m[1])?.type === 'histogram') {
    const labels = new Set(reg.get(m[1]).labels);
    if (m[2] === 'bucket') labels.add('le');
    return { base: m[1], labels };
  }
  return null;
}

// ---- a little PromQL reading -------------------------------------------------------------

// metric names: ours, and the OpenTelemetry GenAI ones (gen_ai_client_*/gen_ai_server_*; their labels are gen_ai_* too)
const METRIC_REF = /\b((?:aoai_router|gen_ai_client|gen_ai_server)_\w+)\b(\s*\{([^}]*)\})?/g;

/** The index just past the parenthesis group opening at `open` (expr[open] === '('). */
function closeParen(expr, open) {
  let depth = 0;
  let quote = null;
  for (let i = open; i < expr.length; ++i) {
    const c = expr[i];
    if (quote) {
      if (c === '\\') ++i;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '(') ++depth;
    else if (c === ')' && --depth === 0) return i + 1;
  }
  throw new Error(`unbalanced parentheses in: ${expr}`);
}

/** The index of the '(' whose group ends just before `end` (expr[end-1] === ')'). */
function openParen(expr, end) {
  let depth = 0;
  for (let i = end - 1; i >= 0; --i) {
    if (expr[i] === ')') ++depth;
    else if (expr[i] === '(' && --depth === 0) return i;
  }
  throw new Error(`unbalanced parentheses in: ${expr}`);
}

function matchers(selector) {
  return [...selector.matchAll(/(\w+)\s*(=~|!~|!=|=)\s*"/g)].map((m) => m[1]);
}

/** Every problem with the names and labels one expression uses (empty: none). */
function exprProblems(reg, expr) {
  const problems = [];
  const refs = (s) => [...s.matchAll(METRIC_REF)].map((m) => ({ name: m[1], selector: m[3] ?? '' }));
  const all = refs(expr);
  for (const r of all) {
    const metric = resolveMetric(reg, r.name);
    if (!metric) {
      problems.push(`${r.name} is not a metric of router/metrics.c`);
      continue;
    }
    for (const l of matchers(r.selector))
      if (!metric.labels.has(l) && !TARGET_LABELS.has(l)) problems.push(`${r.name}{${l}=…}: ${r.name} has no label "${l}"`);
  }
  // by/without (labels): the labels must exist on every metric the aggregation reads
  for (const m of expr.matchAll(/\b(by|without|on|ignoring)\s*\(([^)]*)\)/g)) {
    const labels = m[2].split(',').map((s) => s.trim()).filter(Boolean);
    let body;
    const after = m.index + m[0].length;
    const next = /^\s*\(/.exec(expr.slice(after));
    if ((m[1] === 'by' || m[1] === 'without') && next) {
      const open = after + next[0].length - 1;
      body = expr.slice(open, closeParen(expr, open)); // sum by (x) (body)
    } else if (m[1] === 'by' || m[1] === 'without') {
      const end = expr.slice(0, m.index).trimEnd().length; // sum (body) by (x)
      body = expr.slice(openParen(expr, end), end);
    } else {
      body = expr; // vector matching: both sides
    }
    for (const r of refs(body)) {
      const metric = resolveMetric(reg, r.name);
      if (!metric) continue;
      for (const l of labels)
        if (!metric.labels.has(l) && !TARGET_LABELS.has(l)) problems.push(`${m[1]} (${l}) over ${r.name}: it has no label "${l}"`);
    }
  }
  // label_values(metric{…}, label)
  for (const m of expr.matchAll(/label_values\(\s*(aoai_router_\w+)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)/g)) {
    const metric = resolveMetric(reg, m[1]);
    if (metric && !metric.labels.has(m[2]) && !TARGET_LABELS.has(m[2])) problems.push(`label_values(${m[1]}, ${m[2]}): no such label`);
  }
  return problems;
}

// ---- the dashboard -------------------------------------------------------------------------

function loadDashboard(file = DASHBOARD) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** the registry plus the pending gauges the tenants dashboard may use (those metrics.c does not render yet) */
function registryWithPending(reg) {
  const r = new Map(reg);
  for (const [name, labels] of Object.entries(PENDING_DASHBOARD_METRICS)) if (!r.has(name)) r.set(name, { type: 'gauge', labels: new Set(labels), pending: true });
  return r;
}

/** Every panel, rows' nested panels included (a collapsed row keeps its panels inside). */
function allPanels(d) {
  const out = [];
  for (const p of d.panels ?? []) {
    out.push(p);
    for (const q of p.panels ?? []) out.push(q);
  }
  return out;
}

/** [{where, expr}] for every panel target and every query variable. */
function allExpressions(d) {
  const out = [];
  for (const p of allPanels(d))
    for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const v of d.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (q) out.push({ where: `variable $${v.name}`, expr: q });
  }
  return out;
}

/** [{where, expr}] for the alert examples in dashboards/README.md (```promql blocks). */
function readmeExpressions() {
  const out = [];
  for (const block of readFileSync(DASHBOARD_README, 'utf8').matchAll(/```promql\n([\s\S]*?)```/g))
    for (const line of block[1].split('\n'))
      if (line.trim() && !line.trim().startsWith('#')) out.push({ where: 'dashboards/README.md', expr: line.trim() });
  return out;
}

describe('dashboards/aoai-router.json', () => {
  const reg = metricRegistry();

  it('router/metrics.c is read: the SPEC §7 series with their labels', () => {
    const expect = {
      aoai_router_requests_total: ['tenant', 'deployment', 'backend', 'code'],
      aoai_router_request_duration_seconds: ['deployment', 'backend'],
      aoai_router_upstream_duration_seconds: ['backend'],
      aoai_router_time_to_first_byte_seconds: ['backend'],
      aoai_router_tokens_total: ['tenant', 'deployment', 'backend', 'type'],
      aoai_router_failovers_total: ['backend', 'reason'],
      aoai_router_backend_cooldown: ['backend', 'deployment'],
      aoai_router_backend_remaining_tokens: ['backend', 'deployment'],
      aoai_router_backend_circuit_open: ['backend'],
      aoai_router_quota_rejections_total: ['tenant', 'limit'],
      aoai_router_auth_failures_total: ['reason'],
      aoai_router_redis_errors_total: [],
      aoai_router_inflight_requests: [],
    };
    for (const [name, labels] of Object.entries(expect)) {
      assert.ok(reg.has(name), `${name} not found in router/metrics.c (found: ${[...reg.keys()].join(', ')})`);
      assert.deepEqual([...reg.get(name).labels].sort(), [...labels].sort(), `${name}'s labels`);
    }
    for (const h of ['aoai_router_request_duration_seconds', 'aoai_router_upstream_duration_seconds', 'aoai_router_time_to_first_byte_seconds'])
      assert.equal(reg.get(h).type, 'histogram', h);
    // the OpenTelemetry GenAI histograms beside them
    assert.deepEqual([...(reg.get('gen_ai_client_token_usage')?.labels ?? [])].sort(), ['gen_ai_operation_name', 'gen_ai_request_model', 'gen_ai_token_type']);
    assert.deepEqual([...(reg.get('gen_ai_server_time_to_first_token_seconds')?.labels ?? [])].sort(), ['gen_ai_operation_name', 'gen_ai_request_model']);
    for (const h of ['gen_ai_client_token_usage', 'gen_ai_server_time_to_first_token_seconds']) assert.equal(reg.get(h).type, 'histogram', h);
  });

  it('parses; schemaVersion >= 36; a uid and a title', () => {
    const d = loadDashboard();
    assert.ok(Number.isInteger(d.schemaVersion) && d.schemaVersion >= 36, `schemaVersion ${d.schemaVersion}`);
    assert.equal(typeof d.uid, 'string');
    assert.ok(d.uid.length > 0 && d.uid.length <= 40, 'uid: 1–40 characters');
    assert.equal(typeof d.title, 'string');
    assert.equal(d.id ?? null, null, 'no instance-specific id: import assigns one');
  });

  it('variables: a prometheus data source; job, namespace, tenant, deployment, backend from label_values', () => {
    const vars = Object.fromEntries((loadDashboard().templating?.list ?? []).map((v) => [v.name, v]));
    assert.equal(vars.datasource?.type, 'datasource');
    assert.equal(vars.datasource?.query, 'prometheus');
    for (const [name, label] of [['job', 'job'], ['namespace', 'namespace'], ['tenant', 'tenant'], ['deployment', 'deployment'], ['backend', 'backend']]) {
      const v = vars[name];
      assert.ok(v, `no $${name} variable`);
      assert.equal(v.type, 'query', `$${name}`);
      assert.deepEqual(v.datasource, { type: 'prometheus', uid: '${datasource}' }, `$${name} data source`);
      const q = typeof v.query === 'string' ? v.query : v.query?.query;
      assert.match(q, new RegExp(`^label_values\\(\\s*aoai_router_\\w+\\s*(\\{[^}]*\\})?\\s*,\\s*${label}\\s*\\)$`), `$${name}: ${q}`);
      assert.ok(v.includeAll && v.multi, `$${name}: multi-value with All`);
      assert.equal(v.allValue, '.*', `$${name}: All must also match the empty label (requests refused before any backend)`);
    }
  });

  it('panels: unique ids, inside the 24-column grid, not overlapping, each on the $datasource variable', () => {
    const d = loadDashboard();
    const ids = new Set();
    const cells = new Map();
    for (const p of allPanels(d)) {
      assert.ok(Number.isInteger(p.id) && !ids.has(p.id), `panel id ${p.id} ("${p.title}") missing or repeated`);
      ids.add(p.id);
      const g = p.gridPos;
      assert.ok(g && g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0 && g.y >= 0, `"${p.title}": gridPos ${JSON.stringify(g)}`);
      for (let x = g.x; x < g.x + g.w; ++x)
        for (let y = g.y; y < g.y + g.h; ++y) {
          const k = `${x},${y}`;
          assert.ok(!cells.has(k), `"${p.title}" overlaps "${cells.get(k)}" at ${k}`);
          cells.set(k, p.title);
        }
      if (p.type === 'row') continue;
      assert.ok(p.title && p.description, `panel ${p.id}: a title and a description (what it answers)`);
      assert.deepEqual(p.datasource, { type: 'prometheus', uid: '${datasource}' }, `"${p.title}" data source`);
      assert.ok((p.targets ?? []).length > 0, `"${p.title}" has no query`);
      for (const t of p.targets) {
        assert.deepEqual(t.datasource, { type: 'prometheus', uid: '${datasource}' }, `"${p.title}" ${t.refId} data source`);
        assert.ok(typeof t.expr === 'string' && t.expr.length > 0, `"${p.title}" ${t.refId}: no expr`);
      }
    }
  });

  it('every aoai_router_* name exists in router/metrics.c and every label used is one it has', () => {
    const exprs = allExpressions(loadDashboard());
    assert.ok(exprs.length > 20, `only ${exprs.length} expressions`);
    const problems = exprs.flatMap(({ where, expr }) => exprProblems(reg, expr).map((p) => `${where}: ${p}\n    ${expr}`));
    assert.deepEqual(problems, []);
  });

  it("dashboards/README.md's alert examples use real names and labels too", () => {
    const exprs = readmeExpressions();
    assert.ok(exprs.length > 0, 'no promql block');
    assert.deepEqual(exprs.flatMap(({ expr }) => exprProblems(reg, expr).map((p) => `${p}\n    ${expr}`)), []);
  });

  it('the checker itself refuses a wrong name, a wrong selector label and a wrong by() label', () => {
    assert.notDeepEqual(exprProblems(reg, 'sum(rate(aoai_router_request_total[5m]))'), []);
    assert.notDeepEqual(exprProblems(reg, 'sum(rate(aoai_router_failovers_total{tenant="a"}[5m]))'), []);
    assert.notDeepEqual(exprProblems(reg, 'sum by (tenant) (rate(aoai_router_failovers_total[5m]))'), []);
    assert.notDeepEqual(exprProblems(reg, 'sum(rate(aoai_router_failovers_total[5m])) by (code)'), []);
    assert.notDeepEqual(exprProblems(reg, 'histogram_quantile(0.9, sum by (le) (rate(aoai_router_tokens_total_bucket[5m])))'), []);
    assert.notDeepEqual(exprProblems(reg, 'sum by (le) (rate(aoai_router_request_duration_seconds_count[5m]))'), []);
    assert.notDeepEqual(exprProblems(reg, 'label_values(aoai_router_backend_cooldown, tenant)'), []);
    assert.deepEqual(exprProblems(reg, 'histogram_quantile(0.9, sum by (le, backend) (rate(aoai_router_upstream_duration_seconds_bucket{backend=~"a"}[5m])))'), []);
  });

  it('every metric router/metrics.c exports has a panel (on the overview or, for the per-tenant quota gauges, the tenants dashboard)', () => {
    const used = new Set();
    for (const file of [DASHBOARD, TENANTS_DASHBOARD])
      for (const { expr } of allExpressions(loadDashboard(file)).filter((e) => e.where.startsWith('panel')))
        for (const m of expr.matchAll(METRIC_REF)) used.add(resolveMetric(reg, m[1])?.base);
    const missing = [...reg.keys()].filter((n) => !used.has(n));
    assert.deepEqual(missing, [], 'metrics without a panel');
  });

  it('the panels the operator needs are there', () => {
    const exprs = allExpressions(loadDashboard())
      .filter((e) => e.where.startsWith('panel'))
      .map((e) => e.expr.replace(/\s+/g, ' '));
    const has = (re, what) => assert.ok(exprs.some((e) => re.test(e)), `no panel for ${what} (${re})`);
    has(/sum by \(code\) \(rate\(aoai_router_requests_total/, 'request rate by code');
    has(/code=~"5\.\."[^/]*\/ sum\(rate\(aoai_router_requests_total/, 'the 5xx ratio');
    for (const q of ['0.50', '0.95', '0.99']) has(new RegExp(`histogram_quantile\\(${q}, .*aoai_router_request_duration_seconds_bucket`), `request p${q.slice(2)}`);
    has(/histogram_quantile\(0\.95, .*aoai_router_time_to_first_byte_seconds_bucket/, 'TTFB p95');
    has(/histogram_quantile\(0\.95, .*aoai_router_upstream_duration_seconds_bucket/, 'upstream p95');
    has(/sum by \(tenant\) \(rate\(aoai_router_tokens_total.*\* 60/, 'tokens/min by tenant');
    has(/sum by \(deployment\b.*\) \(rate\(aoai_router_tokens_total.*\* 60/, 'tokens/min by deployment');
    has(/sum by \(backend, reason\) \(rate\(aoai_router_failovers_total/, 'failovers by backend and reason');
    has(/aoai_router_backend_cooldown/, 'backends cooling down');
    has(/aoai_router_backend_circuit_open/, 'circuits open');
    has(/aoai_router_backend_remaining_tokens\{[^}]*\} >= 0/, 'remaining tokens (unknown = -1 hidden)');
    has(/sum by \(reason\) \(rate\(aoai_router_auth_failures_total/, 'auth failures by reason');
    has(/aoai_router_quota_rejections_total/, 'quota rejections');
    has(/aoai_router_inflight_requests/, 'in-flight');
    has(/rate\(aoai_router_redis_errors_total/, 'Redis errors');
  });

  it('every selector of every panel and variable (but $job\'s) carries job=~"$job" and namespace=~"$namespace"', () => {
    const unfiltered = [];
    for (const { where, expr } of allExpressions(loadDashboard())) {
      if (where.includes('$job') || /^label_values\(aoai_router_\w+, job\)$/.test(expr)) continue;
      for (const m of expr.matchAll(METRIC_REF)) {
        const sel = m[3] ?? '';
        if (!/\bjob=~"\$job"/.test(sel) || (!/\bnamespace=~"\$namespace"/.test(sel) && !/, namespace\)$/.test(expr)))
          unfiltered.push(`${where}: ${m[0]}`);
      }
    }
    assert.deepEqual(unfiltered, [], 'staging and production would sum together');
  });

  it('filters apply only where the metric has the label: $tenant/$deployment/$backend', () => {
    // the inverse is covered above (a selector label the metric lacks is an error); here:
    // every selector on a metric with tenant/deployment/backend uses the variable
    for (const { where, expr } of allExpressions(loadDashboard()).filter((e) => e.where.startsWith('panel'))) {
      for (const m of expr.matchAll(METRIC_REF)) {
        const metric = resolveMetric(reg, m[1]);
        for (const l of ['tenant', 'deployment', 'backend'])
          if (metric.labels.has(l))
            assert.match(m[3] ?? '', new RegExp(`\\b${l}=~"\\$${l}"`), `${where}: ${m[1]} is not filtered by $${l}`);
      }
    }
  });

  it('dashboards/README.md explains every panel', () => {
    const readme = readFileSync(DASHBOARD_README, 'utf8');
    for (const p of allPanels(loadDashboard()))
      if (p.type !== 'row') assert.ok(readme.includes(p.title), `dashboards/README.md does not mention "${p.title}"`);
  });

  it('promtool is installed (./dev.sh deps: the Debian prometheus package); nothing here is skipped without it', () => {
    assert.ok(haveTool('promtool'), 'promtool not installed: ./dev.sh deps installs the Debian package prometheus');
  });

  it('every expression is valid PromQL (promtool check rules)', async () => {
    const dir = tempDir('aor-it-promql-');
    const rules = [...allExpressions(loadDashboard()), ...readmeExpressions()].map(({ expr }, i) => {
      const e = expr
        .replace(/^label_values\((.*),\s*\w+\s*\)$/, '$1') // a variable: its series selector
        .replace(/\$__rate_interval|\$__interval/g, '5m')
        .replace(/\$(tenant|deployment|backend|job|namespace)\b/g, '.*');
      return `      - record: aoai_router_dashboard_check_${i}\n        expr: ${JSON.stringify(e)}\n`;
    });
    const file = path.join(dir, 'rules.yml');
    writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('')}`);
    const r = await run('promtool', ['check', 'rules', file]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });
});

describe('dashboards/aoai-router-tenants.json', () => {
  const reg = registryWithPending(metricRegistry());
  const d = () => loadDashboard(TENANTS_DASHBOARD);

  it('parses; schemaVersion >= 36; its own uid; no instance id; links to the overview', () => {
    const t = d();
    assert.ok(Number.isInteger(t.schemaVersion) && t.schemaVersion >= 36);
    assert.equal(t.uid, 'aoai-router-tenants');
    assert.notEqual(t.uid, loadDashboard().uid);
    assert.equal(t.id ?? null, null);
    assert.ok(t.links.some((l) => l.url === `/d/${loadDashboard().uid}`), 'a link to the overview');
  });

  it('variables: the data source, and job, namespace as the overview has them; tenant', () => {
    const vars = Object.fromEntries(d().templating.list.map((v) => [v.name, v]));
    const ov = Object.fromEntries(loadDashboard().templating.list.map((v) => [v.name, v]));
    for (const n of ['datasource', 'job', 'namespace']) assert.deepEqual(vars[n], ov[n], `$${n} differs from the overview's`);
    assert.match(vars.tenant.query, /^label_values\(aoai_router_\w+\{job=~"\$job",namespace=~"\$namespace"\}, tenant\)$/);
    assert.ok(vars.tenant.includeAll && vars.tenant.multi && vars.tenant.allValue === '.*');
  });

  it('panels: unique ids, inside the grid, not overlapping, described, on $datasource', () => {
    const ids = new Set();
    const cells = new Map();
    for (const p of allPanels(d())) {
      assert.ok(Number.isInteger(p.id) && !ids.has(p.id), `panel id ${p.id}`);
      ids.add(p.id);
      const g = p.gridPos;
      assert.ok(g && g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0 && g.y >= 0, `"${p.title}": gridPos`);
      for (let x = g.x; x < g.x + g.w; ++x)
        for (let y = g.y; y < g.y + g.h; ++y) {
          assert.ok(!cells.has(`${x},${y}`), `"${p.title}" overlaps "${cells.get(`${x},${y}`)}"`);
          cells.set(`${x},${y}`, p.title);
        }
      if (p.type === 'row') continue;
      assert.ok(p.title && p.description, `panel ${p.id}: title and description`);
      assert.deepEqual(p.datasource, { type: 'prometheus', uid: '${datasource}' });
      assert.ok((p.targets ?? []).length > 0, `"${p.title}" has no query`);
      for (const t of p.targets) assert.deepEqual(t.datasource, { type: 'prometheus', uid: '${datasource}' });
    }
  });

  it('names and labels exist (metrics.c, or the agreed pending quota gauges); every selector filters job, namespace and tenant', () => {
    const exprs = allExpressions(d());
    const problems = exprs.flatMap(({ where, expr }) => exprProblems(reg, expr).map((p) => `${where}: ${p}`));
    assert.deepEqual(problems, []);
    for (const { where, expr } of exprs) {
      if (where.startsWith('variable $job') || /^label_values\(aoai_router_\w+, job\)$/.test(expr)) continue;
      for (const m of expr.matchAll(METRIC_REF)) {
        const sel = m[3] ?? '';
        assert.match(sel, /\bjob=~"\$job"/, `${where}: ${m[0]}`);
        if (!/, namespace\)$/.test(expr)) assert.match(sel, /\bnamespace=~"\$namespace"/, `${where}: ${m[0]}`);
        if (where.startsWith('panel') && reg.get(m[1].replace(/_(bucket|sum|count)$/, ''))?.labels.has('tenant')) assert.match(sel, /\btenant=~"\$tenant"/, `${where}: ${m[0]}`);
      }
    }
  });

  it('the panels the issue asks for: tokens per tenant and deployment, usage vs quota, rejections by limit, top tenants, remaining tokens', () => {
    const exprs = allExpressions(d()).filter((e) => e.where.startsWith('panel')).map((e) => e.expr);
    const has = (re, what) => assert.ok(exprs.some((e) => re.test(e)), `no panel for ${what}`);
    has(/sum by \(tenant, deployment\) \(rate\(aoai_router_tokens_total/, 'tokens per tenant and deployment');
    has(/aoai_router_tenant_quota_used\{[^}]*\}\) \/ max by \(tenant, limit\) \(aoai_router_tenant_quota_limit\{[^}]*\} > 0\)/, 'usage against quota (unlimited/blocked left out)');
    has(/sum by \(limit\) \(rate\(aoai_router_quota_rejections_total/, 'quota rejections by limit');
    has(/topk\(10, sum by \(tenant\) \(increase\(aoai_router_tokens_total/, 'top tenants by tokens');
    has(/clamp_min\(.*aoai_router_tenant_quota_limit.* - .*aoai_router_tenant_quota_used/, 'remaining tokens');
  });

  it('dashboards/README.md explains every panel', () => {
    const readme = readFileSync(DASHBOARD_README, 'utf8');
    for (const p of allPanels(d())) if (p.type !== 'row') assert.ok(readme.includes(p.title), `dashboards/README.md does not mention "${p.title}"`);
  });

  it('every expression is valid PromQL (promtool check rules)', async () => {
    const dir = tempDir('aor-it-promql-');
    const rules = allExpressions(d()).map(({ expr }, i) => {
      const e = expr
        .replace(/^label_values\((.*),\s*\w+\s*\)$/, '$1')
        .replace(/\$__rate_interval|\$__interval/g, '5m')
        .replace(/\$__range/g, '1h')
        .replace(/\$(tenant|job|namespace)\b/g, '.*');
      return `      - record: aoai_router_tenants_check_${i}\n        expr: ${JSON.stringify(e)}\n`;
    });
    const file = path.join(dir, 'rules.yml');
    writeFileSync(file, `groups:\n  - name: tenants\n    rules:\n${rules.join('')}`);
    const r = await run('promtool', ['check', 'rules', file]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });
});

// ---- a strict block-YAML subset (what Kubernetes manifests use) -----------------------------
// Block mappings and sequences, plain/quoted scalars, `|`/`|-` literals, one-line flow
// sequences and mappings, comments, `---` documents. Anything else (anchors, aliases, tags,
// folded scalars, tabs, duplicate keys, bad indentation) throws, so a manifest that parses
// here is plain YAML that any parser reads the same way.

function stripComment(s) {
  let quote = null;
  for (let i = 0; i < s.length; ++i) {
    const c = s[i];
    if (quote) {
      if (quote === '"' && c === '\\') ++i;
      else if (c === quote) quote = null;
    } else if ((c === '"' || c === "'") && (i === 0 || /[\s[{,:]/.test(s[i - 1]))) quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]))) return s.slice(0, i).trimEnd();
  }
  if (quote) throw new Error(`unterminated quote: ${s}`);
  return s.trimEnd();
}

function splitTop(s, sep) {
  const parts = [];
  let depth = 0;
  let quote = null;
  let start = 0;
  for (let i = 0; i < s.length; ++i) {
    const c = s[i];
    if (quote) {
      if (quote === '"' && c === '\\') ++i;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === '[' || c === '{') ++depth;
    else if (c === ']' || c === '}') --depth;
    else if (c === sep && depth === 0) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(s.slice(start));
  return parts.map((p) => p.trim());
}

/** The index of the ':' that ends a mapping key in `s`, or -1. */
function keyColon(s) {
  let quote = null;
  for (let i = 0; i < s.length; ++i) {
    const c = s[i];
    if (quote) {
      if (quote === '"' && c === '\\') ++i;
      else if (c === quote) quote = null;
    } else if ((c === '"' || c === "'") && i === 0) quote = c;
    else if (c === '[' || c === '{') return -1;
    else if (c === ':' && (i + 1 === s.length || s[i + 1] === ' ')) return i;
  }
  return -1;
}

function scalar(s) {
  s = s.trim();
  if (s.startsWith('"')) return JSON.parse(s);
  if (s.startsWith("'")) {
    if (!s.endsWith("'") || s.length < 2) throw new Error(`bad single-quoted scalar: ${s}`);
    return s.slice(1, -1).replace(/''/g, "'");
  }
  if (/^[&*!|>%@`]/.test(s)) throw new Error(`unsupported YAML: ${s}`);
  if (s === '' || s === '~' || s === 'null') return null;
  if (s === 'true') return true;
  if (s === 'false') return false;
  if (/^-?\d+$/.test(s)) return Number(s);
  if (/^-?\d+\.\d+$/.test(s)) return Number(s);
  return s;
}

function flow(s) {
  s = s.trim();
  if (s.startsWith('[')) {
    if (!s.endsWith(']')) throw new Error(`bad flow sequence: ${s}`);
    const inner = s.slice(1, -1).trim();
    return inner === '' ? [] : splitTop(inner, ',').map(flow);
  }
  if (s.startsWith('{')) {
    if (!s.endsWith('}')) throw new Error(`bad flow mapping: ${s}`);
    const inner = s.slice(1, -1).trim();
    const out = {};
    if (inner === '') return out;
    for (const part of splitTop(inner, ',')) {
      const i = keyColon(part);
      if (i < 0) throw new Error(`bad flow mapping entry: ${part}`);
      const k = scalar(part.slice(0, i));
      if (Object.hasOwn(out, k)) throw new Error(`duplicate key ${k}`);
      out[k] = flow(part.slice(i + 1));
    }
    return out;
  }
  return scalar(s);
}

function parseYamlDocs(text, file = 'yaml') {
  if (text.includes('\t')) throw new Error(`${file}: tab character`);
  const docs = [];
  let cur = [];
  for (const raw of text.split('\n')) {
    if (/^---\s*$/.test(raw)) {
      docs.push(cur);
      cur = [];
    } else cur.push(raw);
  }
  docs.push(cur);
  return docs
    .map((lines) => parseDoc(lines, file))
    .filter((d) => d !== undefined);
}

function parseDoc(rawLines, file) {
  const lines = rawLines.map((raw, n) => ({ raw, n: n + 1 }));
  let pos = 0;
  const significant = (l) => l.raw.trim() !== '' && !/^\s*#/.test(l.raw);
  const indentOf = (l) => l.raw.length - l.raw.trimStart().length;
  const skip = () => {
    while (pos < lines.length && !significant(lines[pos])) ++pos;
  };
  const fail = (msg) => {
    throw new Error(`${file}:${lines[Math.min(pos, lines.length - 1)]?.n ?? 0}: ${msg}`);
  };

  function literal(parentIndent, chomp) {
    const body = [];
    let ind = -1;
    while (pos < lines.length) {
      const l = lines[pos];
      if (l.raw.trim() === '') {
        body.push('');
        ++pos;
        continue;
      }
      const i = indentOf(l);
      if (i <= parentIndent) break;
      if (ind < 0) ind = i;
      if (i < ind) fail('literal block: less indented line');
      body.push(l.raw.slice(ind));
      ++pos;
    }
    while (body.length && body[body.length - 1] === '') body.pop();
    return body.join('\n') + (chomp === '-' ? '' : '\n');
  }

  // the value after "key:" or "- key:"; `indent` is the key's column
  function value(rest, indent) {
    if (rest === '|' || rest === '|-') {
      ++pos;
      return literal(indent, rest.slice(1));
    }
    if (rest !== '') {
      ++pos;
      return flow(rest);
    }
    ++pos;
    skip();
    if (pos >= lines.length) return null;
    const i = indentOf(lines[pos]);
    const t = lines[pos].raw.trim();
    if (i > indent) return block(i);
    if (i === indent && (t === '-' || t.startsWith('- '))) return sequence(i);
    return null;
  }

  function mapping(indent, first) {
    const out = {};
    let text = first;
    for (;;) {
      const i = keyColon(text);
      if (i < 0) fail(`expected "key: value": ${text}`);
      const k = scalar(text.slice(0, i));
      if (Object.hasOwn(out, k)) fail(`duplicate key "${k}"`);
      out[k] = value(stripComment(text.slice(i + 1)).trim(), indent);
      skip();
      if (pos >= lines.length) return out;
      const l = lines[pos];
      const li = indentOf(l);
      if (li < indent) return out;
      if (li > indent) fail('unexpected indentation');
      text = stripComment(l.raw.trim());
      if (text === '-' || text.startsWith('- ')) return out; // "key:\n- item" at the same column
    }
  }

  function sequence(indent) {
    const out = [];
    for (;;) {
      skip();
      if (pos >= lines.length) return out;
      const l = lines[pos];
      const li = indentOf(l);
      if (li < indent) return out;
      if (li > indent) fail('unexpected indentation in a sequence');
      const text = stripComment(l.raw.trim());
      if (!(text === '-' || text.startsWith('- '))) return out;
      const rest = text.slice(1).trimStart();
      const col = indent + (l.raw.trim().length - l.raw.trim().slice(1).trimStart().length);
      if (rest === '') {
        out.push(value('', indent));
      } else if (keyColon(rest) >= 0 && !/^[[{]/.test(rest)) {
        out.push(mapping(col, rest));
      } else {
        ++pos;
        out.push(flow(rest));
      }
    }
  }

  function block(indent) {
    skip();
    const l = lines[pos];
    if (indentOf(l) !== indent) fail('bad indentation');
    const text = stripComment(l.raw.trim());
    if (text === '-' || text.startsWith('- ')) return sequence(indent);
    return mapping(indent, text);
  }

  skip();
  if (pos >= lines.length) return undefined;
  const root = block(indentOf(lines[pos]));
  skip();
  if (pos < lines.length) fail('trailing content');
  return root;
}

// ---- Kubernetes --------------------------------------------------------------------------

function walk(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

function manifests() {
  return walk(K8S)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .flatMap((file) => parseYamlDocs(readFileSync(file, 'utf8'), path.relative(ROOT, file)).map((doc) => ({ file, doc })));
}

function find(kind, dir = 'base') {
  const all = manifests().filter((m) => m.doc.kind === kind && path.relative(K8S, m.file).startsWith(dir + path.sep));
  assert.equal(all.length, 1, `one ${kind} in deploy/kubernetes/${dir}`);
  return all[0].doc;
}

/** The value of a duration-ish setting: "45", "45s", "1min", "1min 30s" -> seconds. */
function seconds(v) {
  let total = 0;
  const s = String(v).trim();
  if (/^\d+$/.test(s)) return Number(s);
  for (const m of s.matchAll(/(\d+)\s*(ms|s|sec|min|m|h)\b/g))
    total += Number(m[1]) * { ms: 0.001, s: 1, sec: 1, min: 60, m: 60, h: 3600 }[m[2]];
  return total;
}

/** key_env names, drain and ports of a backends.yaml text (the router validates the rest). */
function configFacts(yaml) {
  const doc = parseYamlDocs(yaml, 'backends.yaml')[0];
  const backends = doc.backends ?? [];
  return {
    doc,
    keyEnvs: backends.map((b) => b.auth?.key_env).filter(Boolean),
    drainMs: doc.limits?.drain_timeout_ms ?? 30000,
    listenPorts: (doc.listen ?? []).map((l) => l.port),
    metricsPort: doc.metrics?.port ?? null,
    threads: doc.threads ?? 0,
  };
}

async function checkConfig(yaml, env, name) {
  const dir = tempDir('aor-it-artifacts-');
  const file = path.join(dir, name);
  writeFileSync(file, yaml);
  const r = await run(ROUTER_BIN, ['--check', '-c', file], { env });
  checkSanitizers(r.stderr);
  assert.equal(r.code, 0, `aoai-router --check ${name}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r;
}

describe('deploy/kubernetes', () => {
  it('the YAML parser reads what it must and refuses what it cannot', () => {
    const d = parseYamlDocs(
      'a: 1\nb:\n  - x: "q # not a comment"\n    y: [1, "two"]\n  - plain # comment\nc: |\n  l1\n    l2\nd: { e: f, g: [h] }\nk:\n- z\n',
    )[0];
    assert.deepEqual(d, { a: 1, b: [{ x: 'q # not a comment', y: [1, 'two'] }, 'plain'], c: 'l1\n  l2\n', d: { e: 'f', g: ['h'] }, k: ['z'] });
    assert.throws(() => parseYamlDocs('a: 1\na: 2\n'), /duplicate key/);
    assert.throws(() => parseYamlDocs('a: &x 1\n'), /unsupported/);
    assert.throws(() => parseYamlDocs('a:\n  b: 1\n c: 2\n'), /indentation|key: value/);
    assert.throws(() => parseYamlDocs('a: "open\n'), /quote|JSON/);
  });

  it('every manifest parses and names its apiVersion, kind and metadata.name', () => {
    const all = manifests();
    assert.ok(all.length >= 10, `only ${all.length} documents`);
    for (const { file, doc } of all) {
      const where = path.relative(ROOT, file);
      assert.equal(typeof doc, 'object', where);
      assert.ok(doc.apiVersion && doc.kind, `${where}: apiVersion and kind`);
      if (doc.kind !== 'Kustomization') assert.ok(doc.metadata?.name, `${where}: metadata.name`);
    }
  });

  it('the kustomizations list files that exist', () => {
    for (const { file, doc } of manifests().filter((m) => m.doc.kind === 'Kustomization')) {
      const dir = path.dirname(file);
      for (const r of doc.resources ?? []) assert.ok(existsSync(path.join(dir, r)), `${path.relative(ROOT, file)}: resource ${r}`);
      for (const p of doc.patches ?? []) assert.ok(existsSync(path.join(dir, p.path)), `${path.relative(ROOT, file)}: patch ${p.path}`);
    }
  });

  it('probes: liveness /healthz, readiness /readyz, on the data-plane port', () => {
    const dep = find('Deployment');
    const c = dep.spec.template.spec.containers[0];
    const cm = configFacts(find('ConfigMap').data['backends.yaml']);
    assert.equal(c.livenessProbe.httpGet.path, '/healthz');
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    const portOf = (p) => (typeof p === 'number' ? p : c.ports.find((x) => x.name === p)?.containerPort);
    for (const probe of [c.livenessProbe, c.readinessProbe, c.startupProbe].filter(Boolean))
      assert.ok(cm.listenPorts.includes(portOf(probe.httpGet.port)), `probe port ${probe.httpGet.port} is a listen port`);
    // and by regex on the file itself, as a reader would grep it
    const text = readFileSync(path.join(K8S, 'base/deployment.yaml'), 'utf8');
    assert.match(text, /livenessProbe:\s*\n\s*httpGet:\s*\n\s*path: \/healthz/);
    assert.match(text, /readinessProbe:\s*\n\s*httpGet:\s*\n\s*path: \/readyz/);
  });

  it('ports, the scrape annotations and the PodMonitor agree with backends.yaml', () => {
    const dep = find('Deployment');
    const c = dep.spec.template.spec.containers[0];
    const cm = configFacts(find('ConfigMap').data['backends.yaml']);
    const ports = Object.fromEntries(c.ports.map((p) => [p.name, p.containerPort]));
    assert.ok(cm.listenPorts.includes(ports.http), `container port http ${ports.http} vs listen ${cm.listenPorts}`);
    assert.equal(ports.metrics, cm.metricsPort, 'container port metrics = metrics.port');
    const ann = dep.spec.template.metadata.annotations;
    assert.equal(ann['prometheus.io/scrape'], 'true');
    assert.equal(ann['prometheus.io/port'], String(cm.metricsPort));
    assert.equal(ann['prometheus.io/path'], '/metrics');
    const pm = find('PodMonitor');
    assert.equal(pm.spec.podMetricsEndpoints[0].port, 'metrics');
    assert.equal(pm.spec.podMetricsEndpoints[0].path, '/metrics');
  });

  it('Service and PodDisruptionBudget select the pods; the Service targets the data plane only', () => {
    const dep = find('Deployment');
    const podLabels = dep.spec.template.metadata.labels;
    const matches = (sel) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);
    assert.ok(matches(dep.spec.selector.matchLabels), 'Deployment selector');
    const svc = find('Service');
    assert.ok(matches(svc.spec.selector), 'Service selector');
    assert.deepEqual(svc.spec.ports.map((p) => p.targetPort), ['http'], 'the Service exposes the http port, not metrics');
    const pdb = find('PodDisruptionBudget');
    assert.ok(matches(pdb.spec.selector.matchLabels), 'PDB selector');
    assert.ok(pdb.spec.maxUnavailable !== undefined || pdb.spec.minAvailable !== undefined);
    assert.ok(dep.spec.replicas >= 2, 'a PDB needs more than one replica to leave one up');
  });

  it('non-root, read-only root filesystem, no privilege escalation, no capabilities; resources set', () => {
    const dep = find('Deployment');
    const pod = dep.spec.template.spec;
    const c = pod.containers[0];
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.ok(pod.securityContext.runAsUser > 0);
    assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
    assert.equal(pod.automountServiceAccountToken, false);
    for (const k of ['cpu', 'memory']) {
      assert.ok(c.resources.requests[k], `requests.${k}`);
      assert.ok(c.resources.limits[k], `limits.${k}`);
    }
    const cm = configFacts(find('ConfigMap').data['backends.yaml']);
    const cpus = Number(String(c.resources.limits.cpu).replace(/m$/, '')) / (/m$/.test(c.resources.limits.cpu) ? 1000 : 1);
    assert.ok(cm.threads >= 1 && cm.threads <= Math.ceil(cpus), `threads ${cm.threads}: explicit, at most the CPU limit ${cpus}`);
  });

  it('the grace period covers preStop and the SIGTERM drain (limits.drain_timeout_ms)', () => {
    const dep = find('Deployment');
    const pod = dep.spec.template.spec;
    const pre = pod.containers[0].lifecycle.preStop;
    const preStop = pre.sleep ? pre.sleep.seconds : Number((pre.exec?.command ?? []).find((a) => /^\d+$/.test(a)) ?? 0);
    const cm = configFacts(find('ConfigMap').data['backends.yaml']);
    const grace = pod.terminationGracePeriodSeconds;
    assert.ok(preStop > 0, 'a preStop pause while the endpoint is removed');
    assert.ok(grace > preStop + cm.drainMs / 1000, `terminationGracePeriodSeconds ${grace} <= preStop ${preStop} + drain ${cm.drainMs / 1000}`);
  });

  it('backends.yaml comes from the ConfigMap, mounted as a directory where -c points', () => {
    const dep = find('Deployment');
    const pod = dep.spec.template.spec;
    const c = pod.containers[0];
    const cmName = find('ConfigMap').metadata.name;
    const vol = pod.volumes.find((v) => v.configMap?.name === cmName);
    assert.ok(vol, `a volume from ConfigMap ${cmName}`);
    const mount = c.volumeMounts.find((m) => m.name === vol.name);
    assert.ok(mount && mount.readOnly, 'mounted read-only');
    assert.equal(mount.subPath, undefined, 'no subPath: ConfigMap edits must reach the pod');
    const i = c.args.indexOf('-c');
    assert.equal(c.args[i + 1], path.posix.join(mount.mountPath, 'backends.yaml'));
  });

  it('every key_env is an env var from the Secret, and the Secret has that key', () => {
    const dep = find('Deployment');
    const c = dep.spec.template.spec.containers[0];
    const secret = find('Secret');
    const keys = new Set(Object.keys({ ...(secret.data ?? {}), ...(secret.stringData ?? {}) }));
    const cm = configFacts(find('ConfigMap').data['backends.yaml']);
    assert.ok(cm.keyEnvs.length > 0, 'the example uses api_key backends');
    for (const name of cm.keyEnvs) {
      const e = c.env.find((x) => x.name === name);
      assert.ok(e, `container env ${name}`);
      assert.equal(e.valueFrom?.secretKeyRef?.name, secret.metadata.name, `${name} from Secret ${secret.metadata.name}`);
      assert.ok(keys.has(e.valueFrom.secretKeyRef.key), `Secret has key ${e.valueFrom.secretKeyRef.key}`);
    }
  });

  it('the ConfigMap backends.yaml passes aoai-router --check', async () => {
    const yaml = find('ConfigMap').data['backends.yaml'];
    const env = Object.fromEntries(configFacts(yaml).keyEnvs.map((k) => [k, 'test-key-value']));
    const r = await checkConfig(yaml, env, 'k8s-backends.yaml');
    assert.match(r.stdout + r.stderr, /OK/);
  });

  it('without the Secret, --check names the missing key_env (the check really reads the file)', async () => {
    const yaml = find('ConfigMap').data['backends.yaml'];
    const dir = tempDir('aor-it-artifacts-');
    const file = path.join(dir, 'no-secrets.yaml');
    writeFileSync(file, yaml);
    const env = { ...process.env };
    for (const k of configFacts(yaml).keyEnvs) delete env[k];
    const p = spawnSync(ROUTER_BIN, ['--check', '-c', file], { env, encoding: 'utf8', timeout: 60000 });
    const r = { code: p.status, stderr: p.stderr };
    checkSanitizers(r.stderr);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(configFacts(yaml).keyEnvs[0]));
  });

  it('workload identity overlay: pod label, annotated service account, SPEC token file; --check with what the webhook injects', async () => {
    const sa = find('ServiceAccount', 'workload-identity');
    assert.equal(sa.metadata.name, find('Deployment').spec.template.spec.serviceAccountName);
    assert.match(sa.metadata.annotations['azure.workload.identity/client-id'], /^[0-9a-f-]{36}$/);
    const patch = find('Deployment', 'workload-identity');
    assert.equal(patch.spec.template.metadata.labels['azure.workload.identity/use'], 'true', 'the label value is the string "true"');
    const yaml = find('ConfigMap', 'workload-identity').data['backends.yaml'];
    const facts = configFacts(yaml);
    const wi = facts.doc.backends.filter((b) => b.auth?.type === 'workload_identity');
    assert.ok(wi.length > 0, 'a workload_identity backend');
    const TOKEN = '/var/run/secrets/azure/tokens/azure-identity-token';
    for (const b of wi) assert.equal(b.auth.token_file ?? TOKEN, TOKEN, `${b.name}: the webhook's token path`);
    // the webhook's environment, with the projected token as a temporary file
    const dir = tempDir('aor-it-wi-');
    const token = path.join(dir, 'azure-identity-token');
    writeFileSync(token, 'eyJhbGciOiJSUzI1NiJ9.e30.sig\n');
    const env = {
      ...Object.fromEntries(facts.keyEnvs.map((k) => [k, 'test-key-value'])),
      AZURE_TENANT_ID: sa.metadata.annotations['azure.workload.identity/tenant-id'] ?? '00000000-0000-0000-0000-000000000000',
      AZURE_CLIENT_ID: sa.metadata.annotations['azure.workload.identity/client-id'],
      AZURE_FEDERATED_TOKEN_FILE: token,
    };
    await checkConfig(yaml.split(TOKEN).join(token), env, 'k8s-wi-backends.yaml');
  });

  it('kubectl kustomize builds base and overlay', { skip: !haveTool('kubectl') && 'kubectl not installed' }, async () => {
    for (const dir of ['base', 'workload-identity']) {
      const r = await run('kubectl', ['kustomize', path.join(K8S, dir)]);
      assert.equal(r.code, 0, `${dir}: ${r.stderr}`);
      assert.match(r.stdout, /kind: Deployment/);
    }
  });
});

// ---- systemd ---------------------------------------------------------------------------

function unitFile() {
  const sections = {};
  let cur = null;
  for (const raw of readFileSync(UNIT, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) {
      cur = sections[s[1]] = {};
      continue;
    }
    const i = line.indexOf('=');
    assert.ok(cur && i > 0, `bad unit line: ${line}`);
    (cur[line.slice(0, i)] ??= []).push(line.slice(i + 1));
  }
  return sections;
}

describe('deploy/systemd/aoai-router.service', () => {
  it('reload = SIGHUP, stop = SIGTERM within TimeoutStopSec >= the drain', () => {
    const svc = unitFile().Service;
    assert.ok(svc.ExecStart?.[0].match(/aoai-router\b.*-c \S+backends\.yaml/), 'ExecStart runs aoai-router -c …backends.yaml');
    assert.ok(svc.ExecReload.some((l) => /\bkill -HUP \$MAINPID$/.test(l)), 'ExecReload=kill -HUP $MAINPID');
    assert.deepEqual(svc.KillSignal, ['SIGTERM']);
    const drainS = 30; // limits.drain_timeout_ms default; the unit comment says raise both together
    assert.ok(seconds(svc.TimeoutStopSec[0]) > drainS, `TimeoutStopSec ${svc.TimeoutStopSec} must exceed the ${drainS} s drain`);
  });

  it('runs unprivileged and hardened', () => {
    const svc = unitFile().Service;
    assert.ok(svc.User && svc.User[0] !== 'root', 'a non-root User');
    for (const [k, v] of Object.entries({
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      RestrictSUIDSGID: 'yes',
      MemoryDenyWriteExecute: 'yes',
      SystemCallArchitectures: 'native',
    }))
      assert.deepEqual(svc[k], [v], k);
    assert.deepEqual(svc.CapabilityBoundingSet, [''], 'no capabilities');
    assert.ok(svc.SystemCallFilter?.includes('@system-service'));
  });

  it('systemd-analyze verify accepts it', { skip: !haveTool('systemd-analyze') && 'systemd-analyze not installed' }, async () => {
    const dir = tempDir('aor-it-unit-');
    const unit = path.join(dir, 'aoai-router.service');
    writeFileSync(unit, readFileSync(UNIT, 'utf8').split('/usr/local/bin/aoai-router').join(ROUTER_BIN));
    const r = await run('systemd-analyze', ['verify', unit]);
    const problems = (r.stdout + r.stderr)
      .split('\n')
      .filter((l) => l.includes('aoai-router.service'));
    assert.deepEqual(problems, []);
  });
});

// ---- deploy/prometheus: scrape config, alert rules and their unit tests ---------------------

const PROM = path.join(ROOT, 'deploy/prometheus');
/** alert-rule metric names agreed with work not on this branch yet (README "Alert rules"): none
 * since the quota gauges landed (status.test.mjs). Every other name must be one router/metrics.c renders. */
const PENDING_METRICS = new Set();
const PENDING_WITH_IDENTITY = new Set(['aoai_router_credential_refresh_failures_total', 'aoai_router_credential_expiry_seconds']);

function alertRules() {
  const doc = parseYamlDocs(readFileSync(path.join(PROM, 'alerts.yml'), 'utf8'), 'alerts.yml')[0];
  return { doc, rules: doc.groups.flatMap((g) => g.rules) };
}

describe('deploy/prometheus', () => {
  it('promtool check config: prometheus.yml (and the rule file it loads)', async () => {
    const r = await run('promtool', ['check', 'config', path.join(PROM, 'prometheus.yml')]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS: \d+ rules found/);
  });

  it('promtool check rules alerts.yml; promtool test rules alerts.test.yml passes', async () => {
    const c = await run('promtool', ['check', 'rules', path.join(PROM, 'alerts.yml')]);
    assert.equal(c.code, 0, c.stdout + c.stderr);
    const t = await run('promtool', ['test', 'rules', path.join(PROM, 'alerts.test.yml')]);
    assert.equal(t.code, 0, t.stdout + t.stderr);
    assert.match(t.stdout + t.stderr, /SUCCESS/);
  });

  it('the unit tests are real: a rule with a broken threshold fails them', async () => {
    const dir = tempDir('aor-it-rules-');
    writeFileSync(path.join(dir, 'alerts.yml'), readFileSync(path.join(PROM, 'alerts.yml'), 'utf8').replace(') > 0.05', ') > 0.5'));
    writeFileSync(path.join(dir, 'alerts.test.yml'), readFileSync(path.join(PROM, 'alerts.test.yml'), 'utf8'));
    const t = await run('promtool', ['test', 'rules', path.join(dir, 'alerts.test.yml')]);
    assert.notEqual(t.code, 0, 'a 50 % threshold still passed the error-ratio test');
  });

  it('the alerts the issue asks for, each with a firing and a quiet case in alerts.test.yml', () => {
    const { rules } = alertRules();
    const names = rules.map((r) => r.alert);
    for (const a of [
      'AoaiRouterNoBackendAvailable',
      'AoaiRouterHighErrorRatio',
      'AoaiRouterCredentialRefreshFailing',
      'AoaiRouterCredentialNearExpiry',
      'AoaiRouterRedisErrors',
      'AoaiRouterTenantNearQuota',
    ])
      assert.ok(names.includes(a), `no alert ${a}`);
    const tests = parseYamlDocs(readFileSync(path.join(PROM, 'alerts.test.yml'), 'utf8'), 'alerts.test.yml')[0];
    const cases = tests.tests.flatMap((t) => t.alert_rule_test);
    for (const r of rules) {
      const mine = cases.filter((c) => c.alertname === r.alert);
      assert.ok(mine.some((c) => c.exp_alerts.length > 0), `${r.alert}: no test where it fires`);
      assert.ok(mine.some((c) => c.exp_alerts.length === 0), `${r.alert}: no test where it stays quiet`);
      assert.ok(r.labels?.severity && r.annotations?.summary && r.annotations?.description, `${r.alert}: severity, summary, description`);
      assert.match(r.expr, /by \([^)]*\bjob\b[^)]*\bnamespace\b/, `${r.alert}: aggregates by job and namespace (environments never sum)`);
    }
  });

  it('every metric name in the rules is one router/metrics.c renders (or an agreed pending one)', () => {
    const reg = metricRegistry();
    const problems = [];
    for (const r of alertRules().rules)
      for (const m of r.expr.matchAll(METRIC_REF))
        if (!PENDING_METRICS.has(m[1]) && !PENDING_WITH_IDENTITY.has(m[1])) problems.push(...exprProblems(reg, m[0]).map((p) => `${r.alert}: ${p}`));
    assert.deepEqual(problems, []);
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    for (const n of PENDING_METRICS) assert.ok(readme.includes(n), `README must name the agreed metric ${n}`);
  });

  it('the PrometheusRule beside the manifests has the same groups as alerts.yml', () => {
    const pr = find('PrometheusRule');
    assert.equal(pr.apiVersion, 'monitoring.coreos.com/v1');
    assert.deepEqual(pr.spec.groups, alertRules().doc.groups);
  });

  it('kubernetes-scrape.yml keeps the pods the Deployment annotates and labels their namespace', () => {
    const doc = parseYamlDocs(readFileSync(path.join(PROM, 'kubernetes-scrape.yml'), 'utf8'), 'kubernetes-scrape.yml')[0];
    const job = doc.scrape_configs[0];
    const relabel = JSON.stringify(job.relabel_configs);
    const dep = find('Deployment');
    assert.equal(dep.spec.template.metadata.annotations['prometheus.io/scrape'], 'true');
    assert.match(relabel, /__meta_kubernetes_pod_annotation_prometheus_io_scrape/);
    assert.match(relabel, /__meta_kubernetes_pod_annotation_prometheus_io_port/);
    assert.ok(relabel.includes(dep.spec.template.metadata.labels['app.kubernetes.io/name']));
    assert.ok(job.relabel_configs.some((r) => r.target_label === 'namespace' && r.source_labels[0] === '__meta_kubernetes_namespace'));
  });
});

// ---- HPA, image, compose, release --------------------------------------------------------------

describe('deploy: HPA, Dockerfile, compose.yaml, release', () => {
  const DOCKERFILE = path.join(ROOT, 'deploy/Dockerfile');
  const cmakeVersion = () => /project\(aoai-router VERSION (\d+\.\d+\.\d+)/.exec(readFileSync(path.join(ROOT, 'CMakeLists.txt'), 'utf8'))[1];

  it('the HPA scales the Deployment, from at least its replicas, and is in the kustomization', () => {
    const hpa = find('HorizontalPodAutoscaler');
    const dep = find('Deployment');
    assert.equal(hpa.apiVersion, 'autoscaling/v2');
    assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: dep.metadata.name });
    assert.ok(hpa.spec.minReplicas >= dep.spec.replicas && hpa.spec.maxReplicas > hpa.spec.minReplicas);
    assert.ok(dep.spec.template.spec.containers[0].resources.requests.cpu, 'CPU utilisation needs a CPU request');
    assert.ok(find('Kustomization').resources.includes('hpa.yaml'));
    assert.ok(!find('Kustomization').resources.includes('prometheusrule.yaml'), 'a CRD resource would break kubectl apply -k without the Operator');
  });

  it('Dockerfile: Debian 12, multi-stage, non-root, HEALTHCHECK on /healthz, version = CMake', () => {
    const df = readFileSync(DOCKERFILE, 'utf8');
    assert.match(df, /^ARG DEBIAN_IMAGE=debian:12-slim$/m);
    const froms = [...df.matchAll(/^FROM (\S+)(?: AS (\w+))?$/gm)];
    assert.ok(froms.length >= 3, 'build, runtime and final stages');
    assert.ok(froms.every((f) => f[1] === '${DEBIAN_IMAGE}' || ['runtime'].includes(f[1])), froms.map((f) => f[0]).join('; '));
    assert.equal(froms.at(-1)[2], 'router', 'the last stage (the default target) is the router');
    const final = df.slice(df.lastIndexOf('FROM '));
    assert.match(final, /^USER 65532:65532$/m);
    assert.match(final, /^COPY --from=build \/src\/build\/aoai-router /m);
    assert.match(final, /HEALTHCHECK[\s\S]*\/healthz/);
    assert.match(final, /^ENTRYPOINT \["\/usr\/local\/bin\/aoai-router"\]$/m);
    assert.match(df, new RegExp(`^ARG AOR_VERSION=${cmakeVersion().replace(/\./g, '\\.')}$`, 'm'));
    const dep = find('Deployment');
    assert.equal(dep.spec.template.spec.containers[0].image.split(':').at(-1), cmakeVersion(), 'the Deployment names the current version');
    assert.equal(dep.spec.template.spec.securityContext.runAsUser, 65532);
  });

  it("Dockerfile's runtime packages provide every library the router and mock link (readelf NEEDED, dpkg -S)", async () => {
    const df = readFileSync(DOCKERFILE, 'utf8');
    const runtime = df.slice(df.indexOf('AS runtime'), df.indexOf('AS mock'));
    const pkgs = new Set(runtime.replace(/\\\n/g, ' ').match(/--no-install-recommends([^&]*)/)[1].trim().split(/\s+/));
    const missing = [];
    for (const bin of [ROUTER_BIN, path.join(path.dirname(ROUTER_BIN), 'aoai-mock')]) {
      const r = spawnSync('readelf', ['-d', bin], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const needed = [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
      assert.ok(needed.includes('libh2o.so.0.13'), needed.join(' '));
      for (const lib of needed) {
        if (/^(libc|libm|libpthread|libdl|ld-linux|librt)[.-]/.test(lib)) continue; // libc6: in every image
        if (/^lib(asan|ubsan|lsan|tsan)\./.test(lib)) continue; // a sanitizer build (the image is RelWithDebInfo)
        const path2 = spawnSync('sh', ['-c', `readlink -f "$(ldconfig -p | awk '$1 == "${lib}" { print $NF; exit }')"`], { encoding: 'utf8' }).stdout.trim();
        const owner = spawnSync('dpkg', ['-S', path2], { encoding: 'utf8' }).stdout.split(':')[0].trim();
        // libcrypto.so.3 and libssl.so.3 are both libssl3
        if (!pkgs.has(owner)) missing.push(`${lib} (${path2}) from ${owner || '?'}`);
      }
    }
    assert.deepEqual(missing, [], `runtime stage installs: ${[...pkgs].join(' ')}`);
    assert.ok(pkgs.has('ca-certificates') && pkgs.has('curl'), 'CA certificates (TLS upstreams) and curl (HEALTHCHECK)');
  });

  it('compose.yaml: redis, mocks, router, prometheus with the rules, grafana with the dashboards; the router config passes --check', async () => {
    const compose = parseYamlDocs(readFileSync(path.join(ROOT, 'deploy/compose.yaml'), 'utf8'), 'compose.yaml')[0];
    const s = compose.services;
    for (const n of ['redis', 'router', 'prometheus', 'grafana']) assert.ok(s[n], `service ${n}`);
    const mocks = Object.keys(s).filter((n) => n.startsWith('mock-'));
    assert.ok(mocks.length >= 2, 'two mock regions');
    assert.equal(s.router.build.dockerfile, 'deploy/Dockerfile');
    for (const [n, svc] of Object.entries(s))
      for (const p of svc.ports ?? []) assert.match(p, /^127\.0\.0\.1:/, `${n} publishes ${p} beyond loopback`);
    const vol = (svc, target) => (svc.volumes ?? []).find((v) => v.split(':')[1] === target);
    const routerConf = vol(s.router, '/etc/aoai-router/backends.yaml');
    assert.ok(routerConf, 'the router config is mounted where the image looks');
    const confFile = path.join(ROOT, 'deploy', routerConf.split(':')[0]);
    const r = await run(ROUTER_BIN, ['--check', '-c', confFile]);
    assert.equal(r.code, 0, r.stderr);
    const facts = configFacts(readFileSync(confFile, 'utf8'));
    for (const b of facts.doc.backends) assert.ok(mocks.some((m) => b.url.includes(`//${m}:`)), `${b.name}: ${b.url} is no mock service`);
    for (const m of mocks) assert.ok(s[m].command.includes('0.0.0.0'), `${m} listens beyond its container's loopback`);
    assert.match(facts.doc.redis.url, /^redis:\/\/redis:/);
    assert.ok(vol(s.prometheus, '/etc/prometheus/prometheus.yml') && vol(s.prometheus, '/etc/prometheus/alerts.yml'));
    const prom = parseYamlDocs(readFileSync(path.join(PROM, 'prometheus.yml'), 'utf8'), 'prometheus.yml')[0];
    assert.ok(prom.scrape_configs[0].static_configs[0].targets.includes(`router:${facts.metricsPort}`), 'Prometheus scrapes the router metrics port');
    assert.ok(vol(s.grafana, '/var/lib/grafana/dashboards') && vol(s.grafana, '/etc/grafana/provisioning'));
    const prov = parseYamlDocs(readFileSync(path.join(ROOT, 'deploy/grafana/provisioning/dashboards/aoai-router.yaml'), 'utf8'), 'dashboards.yaml')[0];
    assert.equal(prov.providers[0].options.path, '/var/lib/grafana/dashboards');
    const ds = parseYamlDocs(readFileSync(path.join(ROOT, 'deploy/grafana/provisioning/datasources/prometheus.yaml'), 'utf8'), 'datasources.yaml')[0];
    assert.equal(ds.datasources[0].type, 'prometheus');
    assert.equal(ds.datasources[0].url, 'http://prometheus:9090');
  });

  it('compose.yaml has the pieces of ./dev.sh stack: three mock regions, the traffic generator with tenants\' keys, both dashboards', () => {
    const compose = parseYamlDocs(readFileSync(path.join(ROOT, 'deploy/compose.yaml'), 'utf8'), 'compose.yaml')[0];
    const s = compose.services;
    assert.ok(Object.keys(s).filter((n) => n.startsWith('mock-')).length >= 3, 'three mock regions');
    const t = s.traffic;
    assert.ok(t, 'a traffic service');
    const script = (t.volumes ?? []).find((v) => v.split(':')[1] === '/usr/local/bin/traffic.sh');
    assert.ok(script && existsSync(path.join(ROOT, 'deploy', script.split(':')[0])), 'traffic.sh mounted from the repo');
    assert.equal(t.environment.AOR_TRAFFIC_URL, 'http://router:8080');
    assert.match(t.environment.AOR_TRAFFIC_THROTTLE, /^http:\/\/mock-\w+:\d+$/);
    assert.ok(s[t.environment.AOR_TRAFFIC_THROTTLE.split('//')[1].split(':')[0]], 'the throttled region is a service');
    assert.deepEqual(t.entrypoint, ['/usr/local/bin/traffic.sh']);
    assert.ok(t.environment.AOR_TRAFFIC_TENANTS.split(' ').length >= 3, 'several tenants');
    assert.match(t.environment.AOR_TRAFFIC_REDIS, /^redis:\/\/redis:/);
    const facts = configFacts(readFileSync(path.join(ROOT, 'deploy/compose/backends.yaml'), 'utf8'));
    assert.equal(facts.doc.auth.mode, 'key', 'keys name the tenants');
    assert.deepEqual(t.depends_on.router, { condition: 'service_healthy' });
    // Grafana provisions every dashboard of dashboards/: both are there
    for (const f of ['aoai-router.json', 'aoai-router-tenants.json']) assert.ok(existsSync(path.join(ROOT, 'dashboards', f)), f);
  });

  it('release: LICENSE (MIT), CHANGELOG newest version = CMake = --version', async () => {
    assert.match(readFileSync(path.join(ROOT, 'LICENSE'), 'utf8'), /^MIT License\n/);
    const cl = readFileSync(path.join(ROOT, 'CHANGELOG.md'), 'utf8');
    const versions = [...cl.matchAll(/^## \[(\d+\.\d+\.\d+)\]/gm)].map((m) => m[1]);
    assert.ok(versions.length >= 2, 'several versions');
    assert.equal(versions[0], cmakeVersion(), 'the newest CHANGELOG version is the CMake version');
    const r = await run(ROUTER_BIN, ['--version']);
    assert.match(r.stdout, new RegExp(`^aoai-router ${cmakeVersion().replace(/\./g, '\\.')} \\(commit `));
  });
});
