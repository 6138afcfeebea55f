#!/usr/bin/env bash
# bench/syscalls_d0.sh — syscalls the router makes per proxied request with one request in
# flight (d0): one aoai-mock, the router (threads: 1, one backend), `wrk -t1 -c1` (one
# keep-alive client connection, non-streaming chat completion) for N seconds while
# `strace -c -f` counts every syscall of every router thread. Prints calls per request by
# syscall. strace slows the router down; the counts per request are what matter.
# Usage: [QUOTA=1] [CONNS=n] bench/syscalls_d0.sh [build dir, default build-bench] [seconds, default 3]
#   QUOTA=1: with a local redis-server and a tenants.default quota (reserve + settle per request)
#   CONNS=n: n client connections instead of one (how the Redis commands of concurrent requests
#            share writes)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-bench}
DUR=${2:-3}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf $TMP' EXIT
MOCK_PORT=19101 ROUTER_PORT=18180 REDIS_PORT=19379 CONNS=${CONNS:-1}
if [ "${QUOTA:-}" = 1 ]; then
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --dir $TMP >$TMP/redis.log 2>&1 &
fi

$B/aoai-mock --port $MOCK_PORT --name bench 2>$TMP/mock.log &
cat >$TMP/router.yaml <<YAML
listen: [ { address: 127.0.0.1, port: $ROUTER_PORT } ]
threads: 1
auth: { mode: none }
backends:
  - { name: bench, url: "http://127.0.0.1:$MOCK_PORT", deployments: { gpt-4o: gpt-4o } }
YAML
if [ "${QUOTA:-}" = 1 ]; then
  cat >>$TMP/router.yaml <<YAML
redis: { url: "redis://127.0.0.1:$REDIS_PORT/0", on_failure: open }
tenants: { default: { tpm: 1000000000, rpm: 100000000, tokens_per_day: 100000000000, tokens_per_month: 1000000000000 } }
YAML
fi
$B/aoai-router -c $TMP/router.yaml >/dev/null 2>$TMP/router.log &
ROUTER_PID=$!
sleep 0.5
if ! kill -0 $ROUTER_PID 2>/dev/null; then # an older build without auth.mode none
  sed -i '/^auth:/d' $TMP/router.yaml
  $B/aoai-router -c $TMP/router.yaml >/dev/null 2>$TMP/router.log &
  ROUTER_PID=$!
  sleep 0.5
fi
BODY='{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12}'
cat >$TMP/chat.lua <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$BODY]]
LUA
URL="http://127.0.0.1:$ROUTER_PORT/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
wrk -t1 -c1 -d1s -s $TMP/chat.lua "$URL" >/dev/null # warm: the upstream connection exists
strace -c -f -q -p $ROUTER_PID -o $TMP/strace.txt &
STRACE_PID=$!
sleep 0.5
wrk -t1 -c$CONNS -d${DUR}s -s $TMP/chat.lua "$URL" >$TMP/wrk.out
sleep 0.2
kill -INT $STRACE_PID
wait $STRACE_PID 2>/dev/null || true
REQS=$(awk '/requests in/ {print $1}' $TMP/wrk.out)
echo "== $B: $REQS requests, $CONNS connection(s), quota ${QUOTA:-0}; syscalls per request (strace -c -f)"
awk -v r="$REQS" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { name = $NF; calls = $4;
    printf "%-16s %8.2f\n", name, calls / r; total += calls }
  END { printf "%-16s %8.2f\n", "total", total / r }' $TMP/strace.txt
