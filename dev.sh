#!/usr/bin/env bash
# dev.sh — the two set-up commands (and their parts). On a fresh Debian 12 machine:
#   ./dev.sh run    install dependencies, build, start Redis + two mock regions + the router on :8080
#   ./dev.sh test   install dependencies, build, run every test: unit tests on the release and the
#                   ASan+UBSan builds, every integration file on ASan+UBSan, the speed/load/artifact
#                   files on the release build too (AOR_FULL=1: every file on both), fuzzing
#   ./dev.sh stack  install, build, then Redis + three mock regions + the router with tenants + Prometheus
#                   (alert rules loaded) + a traffic generator; prints the URLs; Ctrl-C stops it all
# Parts: ./dev.sh deps | build [--sanitize] | unit [dir] | integration [dir [file ...]] | fuzz | format
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

APT_PACKAGES=(build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
  libh2o-dev libuv1-dev libcurl4-openssl-dev libjansson-dev libhiredis-dev libyaml-dev libssl-dev
  redis-server redis-tools nginx-light wrk nghttp2-client curl ca-certificates openssl python3 nodejs npm procps
  prometheus chromium git)

# sanitizer runs: fail on the first report, keep going on nothing else
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan.supp:print_suppressions=0}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) for: $*" >&2; exit 1; fi
}

deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # node and npm may come from elsewhere (nodesource, nvm): only install Debian's when absent
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=($(printf '%s\n' "${missing[@]}" | grep -vx -e nodejs -e npm || true))
  fi
  if [ ${#missing[@]} -ne 0 ]; then
    log "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

build() {
  local dir=build type=RelWithDebInfo extra=()
  if [ "${1:-}" = --sanitize ]; then dir=build-asan; type=Debug; extra=(-DAOR_SANITIZE=ON); fi
  log "building in $dir"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=$type "${extra[@]}" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}

npm_deps() {
  if [ ! -d tests/integration/node_modules ] || [ tests/integration/package-lock.json -nt tests/integration/node_modules ]; then
    log "npm ci (tests/integration)"
    (cd tests/integration && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

unit() {
  local dir=${1:-build}
  log "unit tests ($dir)"
  ctest --test-dir "$dir" --output-on-failure
}

# The release build's integration pass in `./dev.sh test`: the shipped binary end to end — the
# files whose subject is speed, load, timing or the artifacts themselves, where the sanitizers'
# slowness would change what is tested. Every file (these too) runs under ASan+UBSan; AOR_FULL=1
# runs every file on both builds (twice as long: the suite should stay well under 20 minutes)
RELEASE_FILES=(artifacts basic streaming sdk load backpressure quota failover errors metrics status
  check ops_cli ops_devsh ops_stack prometheus openai tls upstream_tls redis_tls)

integration() {
  local dir=${1:-build} files=() f
  shift || true
  for f in "$@"; do files+=("./$f.test.mjs"); done
  if [ ${#files[@]} = 0 ]; then for f in tests/integration/*.test.mjs; do files+=("./${f#tests/integration/}"); done; fi
  npm_deps
  log "integration tests ($dir, ${#files[@]} files)"
  # a test that hangs fails after AOR_TEST_TIMEOUT_S (default 180 s) instead of holding CI until
  # its deadline; a whole pass is bounded too (AOR_PASS_TIMEOUT_S, default 40 min)
  # files run one at a time on the release build (its speed, load and timing files measure); the
  # ASan pass, whose tests mostly wait on clocks (the cores ~70 % idle one at a time), runs 2 files
  # at once unless AOR_TEST_CONCURRENCY says otherwise
  local t0=$SECONDS jobs=1
  case $dir in *asan*) jobs=2 ;; esac
  jobs=${AOR_TEST_CONCURRENCY:-$jobs}
  (cd tests/integration && AOR_BUILD="$ROOT/$dir" timeout --kill-after=10 "${AOR_PASS_TIMEOUT_S:-2400}" \
    node --test --test-concurrency="$jobs" --test-force-exit --test-timeout=$((${AOR_TEST_TIMEOUT_S:-180} * 1000)) \
    --test-reporter=spec "${files[@]}")
  log "integration tests ($dir) took $((SECONDS - t0)) s"
}

format_check() {
  log "clang-format check"
  local bad
  bad=$(clang-format --dry-run --Werror router/*.[ch] auth/*.[ch] tests/unit/*.[ch] tests/mocks/*.c 2>&1 | grep -c 'error:' || true)
  if [ "$bad" != 0 ]; then
    clang-format --dry-run router/*.[ch] auth/*.[ch] tests/unit/*.[ch] tests/mocks/*.c 2>&1 | head -20
    echo "clang-format: $bad places differ from .clang-format (run ./dev.sh format)" >&2
    return 1
  fi
}

fuzz() {
  # short bounded runs of every libFuzzer driver over its seed corpus (longer: FUZZ_SECONDS=600)
  local secs=${FUZZ_SECONDS:-20}
  log "fuzzing (${secs}s per driver)"
  CC=clang cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DAOR_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
  cmake --build build-fuzz -j"$(nproc)" --target fuzz_json fuzz_jwt fuzz_h1resp fuzz_cred_token
  # the scratch directory first: libFuzzer writes new inputs into its first corpus directory;
  # a failing driver shows its report and leaves the input in tests/fuzz/crashes/
  local d len out work rc=0
  mkdir -p tests/fuzz/crashes
  for d in json:8192 jwt:12000 h1resp:70000 cred_token:70000; do
    len=${d#*:} d=${d%%:*}
    work=$(mktemp -d) out=$(mktemp)
    if build-fuzz/fuzz_$d -max_total_time="$secs" -max_len="$len" -artifact_prefix=tests/fuzz/crashes/ "$work" "tests/fuzz/corpus/$d" >"$out" 2>&1; then
      echo "fuzz_$d: $(tail -1 "$out")"
    else
      echo "fuzz_$d FAILED:" >&2
      grep -v '^INFO\|^#[0-9]' "$out" | tail -40 >&2
      rc=1
    fi
    rm -rf "$work" "$out"
  done
  return $rc
}

# Redis for run and stack: one already answering on the port is used and left alone; otherwise one
# is started, and redis_stop stops that one (only)
redis_start() {
  local rport=$1
  DEV_REDIS_STARTED=0
  if redis-cli -p "$rport" ping >/dev/null 2>&1; then
    log "a Redis already answers on 127.0.0.1:$rport: using it (this script did not start it and will not stop it)"
  else
    log "starting redis-server on 127.0.0.1:$rport (stopped again when this script exits)"
    rm -f "$RUN_DIR/redis.pid"
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --logfile "$RUN_DIR/redis.log" --pidfile "$RUN_DIR/redis.pid"
    DEV_REDIS_STARTED=1
  fi
}

redis_stop() {
  if [ "${DEV_REDIS_STARTED:-0}" = 1 ]; then
    local pid=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$RUN_DIR/redis.pid" ] && break; sleep 0.1; done
    pid=$(cat "$RUN_DIR/redis.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      log "stopped the redis-server this script started (pid $pid)"
    fi
    DEV_REDIS_STARTED=0
  fi
}

run() {
  if [ "${AOR_DEV_SKIP_BUILD:-}" != 1 ]; then deps; build; fi
  # ports and the state directory can be moved (tests/integration/ops_devsh.test.mjs runs this
  # beside other work); the defaults are the repo's backends.yaml
  local rport=${AOR_DEV_REDIS_PORT:-6379} port=${AOR_DEV_PORT:-8080} m1=${AOR_DEV_MOCK1_PORT:-9001} m2=${AOR_DEV_MOCK2_PORT:-9002}
  RUN_DIR=${AOR_DEV_RUN_DIR:-$ROOT/.run}
  mkdir -p "$RUN_DIR"
  local config=backends.yaml
  if [ "$rport:$port:$m1:$m2" != 6379:8080:9001:9002 ]; then
    config=$RUN_DIR/backends.yaml
    sed -e "s/127\.0\.0\.1:6379/127.0.0.1:$rport/; s/port: 8080/port: $port/; s/127\.0\.0\.1:9001/127.0.0.1:$m1/; s/127\.0\.0\.1:9002/127.0.0.1:$m2/" \
      backends.yaml >"$config"
  fi
  MOCK1=; MOCK2=
  redis_start "$rport"
  # on any exit (Ctrl-C included): the mocks, and the Redis this script started — never one it found
  cleanup() {
    [ -n "$MOCK1$MOCK2" ] && kill $MOCK1 $MOCK2 2>/dev/null || true
    redis_stop
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  log "starting mock regions: eastus on :$m1, swedencentral on :$m2"
  build/aoai-mock --port "$m1" --name eastus >"$RUN_DIR/mock-eastus.log" 2>&1 &
  MOCK1=$!
  build/aoai-mock --port "$m2" --name swedencentral >"$RUN_DIR/mock-swc.log" 2>&1 &
  MOCK2=$!
  sleep 0.3
  for m in "$MOCK1:$m1" "$MOCK2:$m2"; do
    kill -0 "${m%%:*}" 2>/dev/null || { echo "a mock region could not start: is port ${m##*:} in use? ($RUN_DIR/mock-*.log)" >&2; exit 1; }
  done
  log "router on http://127.0.0.1:$port — try:"
  cat >&2 <<EX
  curl -s http://127.0.0.1:$port/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 \\
    -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hello"}]}'
  curl -s http://127.0.0.1:$port/v1/models
EX
  local rc=0
  build/aoai-router -c "$config" || rc=$?
  return $rc
}

# ./dev.sh stack: Redis, three mock regions (eastus throttles now and then), the router with three
# tenants (demo keys made up at start), Prometheus scraping its metrics listener with the alert
# rules of deploy/prometheus/, and deploy/stack/traffic.sh. Ports and the state directory can be
# moved (tests/integration/ops_stack.test.mjs does); Ctrl-C stops everything it started.
stack() {
  if [ "${AOR_DEV_SKIP_BUILD:-}" != 1 ]; then deps; build; fi
  local rport=${AOR_DEV_REDIS_PORT:-6379} port=${AOR_DEV_PORT:-8080} mport=${AOR_DEV_METRICS_PORT:-9090}
  local pport=${AOR_DEV_PROM_PORT:-9091} m1=${AOR_DEV_MOCK1_PORT:-9001} m2=${AOR_DEV_MOCK2_PORT:-9002} m3=${AOR_DEV_MOCK3_PORT:-9003}
  local scrape=${AOR_DEV_SCRAPE_INTERVAL:-5s}
  RUN_DIR=${AOR_DEV_RUN_DIR:-$ROOT/.run}
  mkdir -p "$RUN_DIR"
  command -v prometheus >/dev/null || { echo "prometheus is not installed (./dev.sh deps installs the Debian package)" >&2; exit 1; }
  STACK_PIDS=()
  cleanup() {
    local p
    # every part at once (the router drains within limits.drain_timeout_ms), then wait for each
    for p in "${STACK_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${STACK_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ ${#STACK_PIDS[@]} -ne 0 ] && log "stopped the stack (pids ${STACK_PIDS[*]})"
    STACK_PIDS=()
    redis_stop
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  redis_start "$rport"

  log "starting mock regions: eastus on :$m1 (throttles now and then), westeurope on :$m3, swedencentral on :$m2"
  build/aoai-mock --port "$m1" --name eastus >"$RUN_DIR/mock-eastus.log" 2>&1 &
  STACK_PIDS+=($!)
  build/aoai-mock --port "$m2" --name swedencentral >"$RUN_DIR/mock-swc.log" 2>&1 &
  STACK_PIDS+=($!)
  build/aoai-mock --port "$m3" --name westeurope >"$RUN_DIR/mock-weu.log" 2>&1 &
  STACK_PIDS+=($!)

  # three tenants with demo keys (static keys: only their SHA-256 is in the config)
  local keys=() t k lines=""
  for t in team-a team-b team-c; do
    k="demo_${t}_$(openssl rand -hex 16)"
    keys+=("$k")
    lines+="      - { sha256: \"$(printf %s "$k" | sha256sum | cut -d' ' -f1)\", tenant: $t }"$'\n'
  done
  (umask 077 && printf '%s\n' "${keys[@]}" >"$RUN_DIR/stack-keys.txt")
  cat >"$RUN_DIR/stack-backends.yaml" <<YAML
# written by ./dev.sh stack
listen:
  - { address: 127.0.0.1, port: $port }
threads: 2
metrics: { address: 127.0.0.1, port: $mport }
redis: { url: "redis://127.0.0.1:$rport/0", prefix: "aoai:", on_failure: open }
limits: { upstream_timeout_ms: 30000, max_attempts: 3, drain_timeout_ms: 2000 }
circuit: { failures: 5, open_ms: 10000 }
auth:
  mode: key
  keys:
    static:
$lines
tenants:
  default: { tpm: 100000, rpm: 600 }
  team-c: { tpm: 1500, rpm: 30 }
backends:
  - name: eastus
    url: "http://127.0.0.1:$m1"
    region: eastus
    priority: 1
    weight: 2
    deployments: { gpt-4o: gpt-4o, gpt-4o-mini: gpt-4o-mini, text-embedding-3-small: emb3 }
  - name: westeurope
    url: "http://127.0.0.1:$m3"
    region: westeurope
    priority: 1
    weight: 1
    deployments: { gpt-4o: gpt-4o, text-embedding-3-small: emb3 }
  - name: swedencentral
    url: "http://127.0.0.1:$m2"
    region: swedencentral
    priority: 2
    weight: 1
    deployments: { gpt-4o: gpt-4o-swc, gpt-4o-mini: gpt-4o-mini, text-embedding-3-small: emb3 }
YAML
  log "starting the router on http://127.0.0.1:$port (metrics on :$mport; logs: $RUN_DIR/router.log)"
  build/aoai-router -c "$RUN_DIR/stack-backends.yaml" >"$RUN_DIR/router.log" 2>&1 &
  STACK_PIDS+=($!)
  local router=$!
  for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    kill -0 "$router" 2>/dev/null || { tail -20 "$RUN_DIR/router.log" >&2; echo "the router exited (a port in use?)" >&2; exit 1; }
    sleep 0.1
  done

  cat >"$RUN_DIR/prometheus.yml" <<YAML
# written by ./dev.sh stack
global: { scrape_interval: $scrape, evaluation_interval: $scrape }
rule_files: ["$ROOT/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: aoai-router
    static_configs:
      - targets: ["127.0.0.1:$mport"]
        labels: { namespace: dev }
YAML
  log "starting prometheus on http://127.0.0.1:$pport (data: $RUN_DIR/prometheus-data)"
  prometheus --config.file="$RUN_DIR/prometheus.yml" --storage.tsdb.path="$RUN_DIR/prometheus-data" \
    --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$pport" --log.level=warn \
    >"$RUN_DIR/prometheus.log" 2>&1 &
  STACK_PIDS+=($!)

  log "starting the traffic generator (3 tenants; log: $RUN_DIR/traffic.log)"
  AOR_TRAFFIC_URL="http://127.0.0.1:$port" AOR_TRAFFIC_KEYS="${keys[*]}" AOR_TRAFFIC_THROTTLE="http://127.0.0.1:$m1" \
    deploy/stack/traffic.sh >"$RUN_DIR/traffic.log" 2>&1 &
  STACK_PIDS+=($!)
  sleep 0.5
  for t in "${STACK_PIDS[@]}"; do
    kill -0 "$t" 2>/dev/null || { echo "a part of the stack could not start (a port in use?): see $RUN_DIR/*.log" >&2; exit 1; }
  done
  log "the stack is up — Ctrl-C stops it"
  cat >&2 <<TXT
  router        http://127.0.0.1:$port   (demo keys, one per tenant: $RUN_DIR/stack-keys.txt)
  metrics       http://127.0.0.1:$mport/metrics
  status page   http://127.0.0.1:$mport/status
  prometheus    http://127.0.0.1:$pport   (alerts: http://127.0.0.1:$pport/alerts)
  mock regions  eastus :$m1, westeurope :$m3, swedencentral :$m2
  try: curl -s 'http://127.0.0.1:$port/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' \\
         -H "api-key: \$(head -1 $RUN_DIR/stack-keys.txt)" -H 'content-type: application/json' \\
         -d '{"messages":[{"role":"user","content":"hello"}]}'
TXT
  # until Ctrl-C, or until a part exits on its own
  wait -n "${STACK_PIDS[@]}" || true
  log "stopping the stack (Ctrl-C, or a part exited on its own: see $RUN_DIR/*.log)"
}

cmd=${1:-}
shift || true
case "$cmd" in
  deps) deps ;;
  build) deps; build "$@" ;;
  unit) unit "$@" ;;
  integration) integration "$@" ;;
  fuzz) fuzz ;;
  format) clang-format -i router/*.[ch] auth/*.[ch] tests/unit/*.[ch] tests/mocks/*.c ;;
  run) run ;;
  stack) stack ;;
  test)
    deps
    build
    format_check
    unit build
    if [ "${AOR_FULL:-}" = 1 ]; then integration build; else integration build "${RELEASE_FILES[@]}"; fi
    build --sanitize
    unit build-asan
    integration build-asan
    fuzz
    log "all tests passed"
    ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
