#!/usr/bin/env bash
# bench/callgrind_req.sh — instructions per proxied request (callgrind; exact where CPU time on
# this shared VM is not): the router (threads: 1, the bench/run.sh configuration) under
# callgrind, a warm-up, then `h2load --h1 -n N -c 16` of the h1 chat completion between
# callgrind_control -z and -d. Prints PROGRAM TOTALS / N and the inclusive cost per request of
# the aor_metrics_* functions. QUOTA=1: quotas and accounting on (a redis-server and a
# tenants.default quota every request is checked against, as bench/quota.sh "on").
# Usage: [QUOTA=1] [KEEP=file] bench/callgrind_req.sh [builddir, default build] [N, default 3000]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
N=${2:-3000}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; [ -n "${KEEP:-}" ] && cp $TMP/ann.txt "$KEEP"; rm -rf $TMP' EXIT
MOCK_PORT=${MOCK_PORT:-29401} ROUTER_PORT=${ROUTER_PORT:-29400}
REDIS_PORT=${REDIS_PORT:-29402}
$B/aoai-mock --port $MOCK_PORT --name bench --tpm 1000000000 --rpm 1000000000 2>$TMP/mock.log &
if [ -n "${QUOTA:-}" ]; then
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --dir $TMP >$TMP/redis.log 2>&1 &
fi
cat >$TMP/router.yaml <<YAML
listen: [ { address: 127.0.0.1, port: $ROUTER_PORT } ]
threads: 1
backends:
  - { name: bench, url: "http://127.0.0.1:$MOCK_PORT", deployments: { gpt-4o: gpt-4o } }
YAML
if [ -n "${QUOTA:-}" ]; then
  cat >>$TMP/router.yaml <<YAML
redis: { url: "redis://127.0.0.1:$REDIS_PORT/0", on_failure: open }
tenants: { default: { tpm: 1000000000, rpm: 100000000, tokens_per_day: 100000000000, tokens_per_month: 1000000000000 } }
YAML
fi
valgrind --tool=callgrind --callgrind-out-file=$TMP/cg.out $B/aoai-router -c $TMP/router.yaml >/dev/null 2>$TMP/router.log &
VG=$!
BODY='{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12}'
printf '%s' "$BODY" >$TMP/body.json
URL="http://127.0.0.1:$ROUTER_PORT/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ROUTER_PORT/healthz" && break; sleep 0.2; done
h2load --h1 -n 1000 -c 16 -d $TMP/body.json -H 'content-type: application/json' "$URL" | grep '^requests:'
callgrind_control -z $VG >/dev/null 2>&1
h2load --h1 -n $N -c 16 -d $TMP/body.json -H 'content-type: application/json' "$URL" | grep '^requests:'
callgrind_control -d $VG >/dev/null 2>&1
sleep 0.5
F=$(ls $TMP/cg.out* | grep -v '\.out$' | tail -1 || true)
[ -n "$F" ] || F=$TMP/cg.out
callgrind_annotate --inclusive=yes --threshold=100 "$F" >$TMP/ann.txt 2>/dev/null
[ -n "${KEEP_RAW:-}" ] && cp "$F" "$KEEP_RAW"
awk -v n=$N '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "instructions per request (PROGRAM TOTALS / %d): %.0f\n", n, $1 / n }' $TMP/ann.txt
# the metrics' entry points the request path calls (router/metrics.h), inclusive: what metrics cost a request
awk -v n=$N '$0 ~ /:aor_metrics_[a-z_]+ / { v = $1; gsub(",", "", v); f = $0; sub(/^[^:]*:/, "", f); sub(/ .*/, "", f);
    if (f != "aor_metrics_tenant_label") { t += v; printf "  %8.0f  %s\n", v / n, f } }
  END { printf "metrics instructions per request (sum of the above): %.0f\n", t / n }' $TMP/ann.txt
