#!/usr/bin/env bash
# bench/run.sh — the router and nginx side by side, same mock, same load, one run.
# Reports req/s, p50/p99 latency and proxy CPU µs per request (utime+stime from
# /proc/PID/stat over the run ÷ completed requests) for:
#   h1    wrk, HTTP/1.1, 64 connections, non-streaming chat completion
#   h2c   h2load, 16 connections × 4 streams, non-streaming chat completion
#   sse   wrk, HTTP/1.1, 64 connections, streamed chat completion (14 events)
#   direct  the same h1 load straight at the mock (the baseline for "added latency")
# Usage: bench/run.sh [seconds per run, default 10]   (results also in bench/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-10}
B=build-bench
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f $TMP/nginx.pid ] && kill $(cat $TMP/nginx.pid) 2>/dev/null; sleep 0.3; rm -rf $TMP' EXIT

cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build $B -j"$(nproc)" >/dev/null

MOCK_PORT=19001 ROUTER_PORT=18080 NGINX_PORT=18081 NGINX_H2_PORT=18082
CLK_TCK=$(getconf CLK_TCK)

$B/aoai-mock --port $MOCK_PORT --name bench 2>$TMP/mock.log &
cat >$TMP/router.yaml <<YAML
listen: [ { address: 127.0.0.1, port: $ROUTER_PORT } ]
threads: 1
backends:
  - { name: bench, url: "http://127.0.0.1:$MOCK_PORT", deployments: { gpt-4o: gpt-4o } }
YAML
$B/aoai-router -c $TMP/router.yaml >$TMP/router-access.log 2>$TMP/router.log &
ROUTER_PID=$!

cat >$TMP/nginx.conf <<NGX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $TMP/nginx-access.log;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    listen 127.0.0.1:$NGINX_H2_PORT http2;
    client_body_buffer_size 64k;
    keepalive_requests 10000000;
    http2_max_requests 10000000;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
nginx -c $TMP/nginx.conf -p $TMP
sleep 0.5
# this nginx only (its master from the pid file, and the master's children): other nginx on the machine are not ours
NGINX_MASTER=$(cat $TMP/nginx.pid)
NGINX_PIDS="$NGINX_MASTER $(pgrep -P $NGINX_MASTER | tr '\n' ' ')"

BODY='{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12}'
SBODY='{"messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12,"stream":true,"stream_options":{"include_usage":true}}'
PATHQ='/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21'
printf '%s' "$BODY" >$TMP/body.json
mk_lua() { cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$2]]
LUA
}
mk_lua $TMP/chat.lua "$BODY"
mk_lua $TMP/sse.lua "$SBODY"

cpu_ticks() { # sum of utime+stime over pids
  local t=0 p
  for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done
  echo $t
}

# warm up both paths (connections, caches)
for u in "http://127.0.0.1:$ROUTER_PORT" "http://127.0.0.1:$NGINX_PORT"; do
  wrk -t1 -c64 -d2s -s $TMP/chat.lua "$u$PATHQ" >/dev/null
done

results=$OUT/latest.tsv
printf 'scenario\tproxy\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\n' >$results

run_wrk() { # scenario proxy url lua pids...
  local sc=$1 px=$2 url=$3 lua=$4; shift 4
  local before after reqs rps p50 p99 cpu
  before=$(cpu_ticks "$@")
  wrk -t1 -c64 -d${DUR}s --latency -s "$lua" "$url" >$TMP/wrk.out
  after=$(cpu_ticks "$@")
  reqs=$(awk '/requests in/ {print $1}' $TMP/wrk.out)
  rps=$(awk '/Requests\/sec/ {print $2}' $TMP/wrk.out)
  p50=$(awk '$1=="50%" {print $2}' $TMP/wrk.out)
  p99=$(awk '$1=="99%" {print $2}' $TMP/wrk.out)
  if grep -q 'Non-2xx' $TMP/wrk.out || grep -q 'Socket errors' $TMP/wrk.out; then grep -E 'Non-2xx|Socket errors' $TMP/wrk.out >&2; fi
  cpu=$(awk -v d=$((after - before)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { if (r > 0) printf "%.1f", d * 1e6 / hz / r; else print "nan" }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$px" "$rps" "$(to_ms $p50)" "$(to_ms $p99)" "$cpu" | tee -a $results
}

to_ms() { # wrk prints 1.23ms / 456.00us / 1.2s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

run_h2load() { # scenario proxy url pids...
  local sc=$1 px=$2 url=$3; shift 3
  local before after reqs rps cpu p50 p99
  before=$(cpu_ticks "$@")
  h2load -c16 -m4 -t1 -D $DUR -d $TMP/body.json -H 'content-type: application/json' "$url" >$TMP/h2.out 2>&1
  after=$(cpu_ticks "$@")
  reqs=$(awk '/^requests:/ {print $8}' $TMP/h2.out)   # "requests: N total, N started, N done, N succeeded"
  rps=$(awk '/^finished in/ {print $4}' $TMP/h2.out)
  # h2load reports mean/sd/max per request, not percentiles: report mean as p50 column, max as p99 column is wrong; print mean and "-"
  p50=$(awk '/^time for request:/ {print $6}' $TMP/h2.out)
  p99="-"
  cpu=$(awk -v d=$((after - before)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { if (r > 0) printf "%.1f", d * 1e6 / hz / r; else print "nan" }')
  printf '%s\t%s\t%s\t%s(mean)\t%s\t%s\n' "$sc" "$px" "$rps" "$(to_ms $p50)" "$p99" "$cpu" | tee -a $results
  grep -E '^requests:' $TMP/h2.out >&2
}

echo "== $DUR s per run; CPU µs/request = proxy utime+stime / completed requests" >&2
MOCK_PID=$(pgrep -f "aoai-mock --port $MOCK_PORT")
run_wrk direct mock "http://127.0.0.1:$MOCK_PORT$PATHQ" $TMP/chat.lua $MOCK_PID
run_wrk h1 router "http://127.0.0.1:$ROUTER_PORT$PATHQ" $TMP/chat.lua $ROUTER_PID
run_wrk h1 nginx "http://127.0.0.1:$NGINX_PORT$PATHQ" $TMP/chat.lua $NGINX_PIDS
run_h2load h2c router "http://127.0.0.1:$ROUTER_PORT$PATHQ" $ROUTER_PID
run_h2load h2c nginx "http://127.0.0.1:$NGINX_H2_PORT$PATHQ" $NGINX_PIDS
run_wrk sse router "http://127.0.0.1:$ROUTER_PORT$PATHQ" $TMP/sse.lua $ROUTER_PID
run_wrk sse nginx "http://127.0.0.1:$NGINX_PORT$PATHQ" $TMP/sse.lua $NGINX_PIDS

echo >&2
awk -F'\t' 'NR > 1 { cpu[$1 "/" $2] = $6; p99[$1 "/" $2] = $5 }
  END {
    for (s in cpu) split(s, a, "/");
    n = split("h1 h2c sse", sc, " ");
    for (i = 1; i <= n; i++)
      if ((sc[i] "/nginx") in cpu && cpu[sc[i] "/nginx"] > 0)
        printf "%-4s router/nginx CPU per request: %.2fx (%s vs %s µs)\n", sc[i], cpu[sc[i] "/router"] / cpu[sc[i] "/nginx"], cpu[sc[i] "/router"], cpu[sc[i] "/nginx"];
    if (("h1/router") in p99)
      printf "h1   p99 added latency vs direct: router %.3f ms, nginx %.3f ms\n", p99["h1/router"] - p99["direct/mock"], p99["h1/nginx"] - p99["direct/mock"];
  }' $results | tee $OUT/latest-summary.txt
