#!/usr/bin/env bash
# bench/quota.sh — the cost of quotas and accounting (issue 8): the router with quotas off
# (no redis:, no tenants: — admission still runs, on in-process counters, unlimited) and on
# (redis: with a tenants.default quota every request is checked against: one reserve script
# before forwarding, one settle script after), beside nginx, same mock, same load, one run.
# Reports req/s, p50/p99 and CPU µs per request of the router process (utime+stime from
# /proc/PID/stat ÷ completed requests) and, for "on", of redis-server too (its work is the
# price of the shared quota, paid on another machine in production).
#   h1   wrk, HTTP/1.1, 64 connections, non-streaming chat completion
#   sse  wrk, HTTP/1.1, 64 connections, streamed chat completion without include_usage
#        (the router adds it upstream and drops the usage chunk)
#   h1-rate  h2load --h1, 64 connections, the h1 request at a fixed total rate (RATE, default
#        6400/s) that every proxy sustains: CPU per request at equal work (at full speed the
#        slower proxy also pays for more loop wakeups per request; p50/p99 from h2load's
#        per-request log: latency at equal load, not queueing at saturation)
# Target (issue 8): on ≤ 1.3 × off in router CPU per request.
# Usage: [REPEAT=n] [PERF=1] [RATE=r] bench/quota.sh [seconds per run, default 10]
#   REPEAT: rounds of all runs, interleaved; the summary gives medians. PERF=1: perf record of
#   router-on, h1 (first round). Results in bench/results/quota-*.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
B=build-bench
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f $TMP/nginx.pid ] && kill $(cat $TMP/nginx.pid) 2>/dev/null; sleep 0.3; rm -rf $TMP' EXIT

cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build $B -j"$(nproc)" --target aoai-router aoai-mock >/dev/null

MOCK_PORT=29001 OFF_PORT=28080 ON_PORT=28081 NGINX_PORT=28082 REDIS_PORT=29379
CLK_TCK=$(getconf CLK_TCK)

$B/aoai-mock --port $MOCK_PORT --name bench --tpm 1000000000 --rpm 1000000000 2>$TMP/mock.log &
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --dir $TMP >$TMP/redis.log 2>&1 &
REDIS_PID=$!
for port in $OFF_PORT $ON_PORT; do
  {
    echo "listen: [ { address: 127.0.0.1, port: $port } ]"
    echo "threads: 1"
    echo "backends:"
    echo "  - { name: bench, url: \"http://127.0.0.1:$MOCK_PORT\", deployments: { gpt-4o: gpt-4o } }"
    if [ $port = $ON_PORT ]; then
      echo "redis: { url: \"redis://127.0.0.1:$REDIS_PORT/0\", on_failure: open }"
      echo "tenants: { default: { tpm: 1000000000, rpm: 100000000, tokens_per_day: 100000000000, tokens_per_month: 1000000000000 } }"
    fi
  } >$TMP/router-$port.yaml
  $B/aoai-router -c $TMP/router-$port.yaml >$TMP/access-$port.log 2>$TMP/router-$port.log &
  eval "PID_$port=$!"
done

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
    keepalive_requests 10000000;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGX
nginx -c $TMP/nginx.conf -p $TMP
sleep 0.5
NGINX_PIDS="$(cat $TMP/nginx.pid) $(pgrep -P "$(cat $TMP/nginx.pid)" | tr '\n' ' ')"

BODY='{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12}'
SBODY='{"messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":12,"stream":true}'
PATHQ='/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21'
mk_lua() { printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' "$2" >"$1"; }
mk_lua $TMP/chat.lua "$BODY"
mk_lua $TMP/sse.lua "$SBODY"

cpu_ticks() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

for u in $OFF_PORT $ON_PORT $NGINX_PORT; do wrk -t1 -c64 -d2s -s $TMP/chat.lua "http://127.0.0.1:$u$PATHQ" >/dev/null; done

results=$OUT/quota-latest.tsv
printf 'scenario\tproxy\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\tredis_cpu_us_per_req\n' >$results
run() { # scenario proxy port lua pids...
  local sc=$1 px=$2 port=$3 lua=$4; shift 4
  local before after rb ra reqs
  before=$(cpu_ticks "$@"); rb=$(cpu_ticks $REDIS_PID)
  wrk -t1 -c64 -d${DUR}s --latency -s "$lua" "http://127.0.0.1:$port$PATHQ" >$TMP/wrk.out
  after=$(cpu_ticks "$@"); ra=$(cpu_ticks $REDIS_PID)
  if grep -qE 'Non-2xx|Socket errors' $TMP/wrk.out; then grep -E 'Non-2xx|Socket errors' $TMP/wrk.out >&2; fi
  reqs=$(awk '/requests in/ {print $1}' $TMP/wrk.out)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$px" "$(awk '/Requests\/sec/ {print $2}' $TMP/wrk.out)" \
    "$(to_ms "$(awk '$1=="50%" {print $2}' $TMP/wrk.out)")" "$(to_ms "$(awk '$1=="99%" {print $2}' $TMP/wrk.out)")" \
    "$(awk -v d=$((after - before)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { printf "%.1f", (r > 0 ? d * 1e6 / hz / r : 0) }')" \
    "$(awk -v d=$((ra - rb)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { printf "%.1f", (r > 0 ? d * 1e6 / hz / r : 0) }')" | tee -a $results
}

# the same load for all three: a fixed rate every proxy sustains (h2load --rps), so a slower
# proxy is not charged for the loop wakeups a lower request rate costs (fewer requests per
# epoll_wait): CPU per request at equal work
RATE=${RATE:-6400}
# percentile of h2load's per-request log (third column: µs to the end of the response), in ms
lat_pct() { awk '{ print $3 }' $TMP/h2lat.log | sort -n | awk -v q=$1 '{ v[NR] = $1 } END { i = int(NR * q / 100 + 0.999); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 }'; }
run_rate() { # proxy port pids...
  local px=$1 port=$2; shift 2
  local before after rb ra reqs
  before=$(cpu_ticks "$@"); rb=$(cpu_ticks $REDIS_PID)
  rm -f $TMP/h2lat.log
  h2load --h1 -c 64 --rps=$((RATE / 64)) -D $DUR -d $TMP/body.json -H 'content-type: application/json' \
    --log-file=$TMP/h2lat.log "http://127.0.0.1:$port$PATHQ" >$TMP/h2load.out
  after=$(cpu_ticks "$@"); ra=$(cpu_ticks $REDIS_PID)
  reqs=$(awk '/^requests:/ {print $8}' $TMP/h2load.out)
  grep -q "^requests: .* 0 failed, 0 errored" $TMP/h2load.out || grep '^requests:' $TMP/h2load.out >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "h1-rate" "$px" "$(awk -v r="$reqs" -v d=$DUR 'BEGIN { printf "%.2f", r / d }')" \
    "$(lat_pct 50)" "$(lat_pct 99)" \
    "$(awk -v d=$((after - before)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { printf "%.1f", (r > 0 ? d * 1e6 / hz / r : 0) }')" \
    "$(awk -v d=$((ra - rb)) -v r="$reqs" -v hz=$CLK_TCK 'BEGIN { printf "%.1f", (r > 0 ? d * 1e6 / hz / r : 0) }')" | tee -a $results
}
printf '%s' "$BODY" >$TMP/body.json

REPEAT=${REPEAT:-1}
echo "== $DUR s per run, $REPEAT round(s) (off, on and nginx interleaved in each)" >&2
for round in $(seq $REPEAT); do
  for sc in h1 sse; do
    lua=$TMP/chat.lua
    [ $sc = sse ] && lua=$TMP/sse.lua
    run $sc router-off $OFF_PORT $lua $PID_28080
    if [ "${PERF:-}" = 1 ] && [ $sc = h1 ] && [ $round = 1 ]; then
      perf record -g -o $OUT/quota-perf.data -p $PID_28081 -- sleep $((DUR - 1)) >/dev/null 2>&1 &
    fi
    run $sc router-on $ON_PORT $lua $PID_28081
    run $sc nginx $NGINX_PORT $lua $NGINX_PIDS
  done
  run_rate router-off $OFF_PORT $PID_28080
  run_rate router-on $ON_PORT $PID_28081
  run_rate nginx $NGINX_PORT $NGINX_PIDS
done
# medians over the rounds (CPU per request and p99 each on its own)
awk -F'\t' 'function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  NR > 1 { k = $1 "/" $2; n[k]++; cv[k, n[k]] = $6; pv[k, n[k]] = ($5 == "-" ? -1 : $5) }
  END { for (k in n) { delete a; for (i = 1; i <= n[k]; i++) a[i] = cv[k, i]; c[k] = med(a, n[k])
          delete a; for (i = 1; i <= n[k]; i++) a[i] = pv[k, i]; p[k] = med(a, n[k]) }
    split("h1 sse h1-rate", s, " "); for (i = 1; i <= 3; i++) if (c[s[i] "/router-off"] > 0)
    printf "%-7s quotas on/off router CPU per request: %.2fx (%.1f vs %.1f µs; nginx %.1f); p99 %s vs %s ms (median of %d)\n", s[i],
      c[s[i] "/router-on"] / c[s[i] "/router-off"], c[s[i] "/router-on"], c[s[i] "/router-off"], c[s[i] "/nginx"],
      (p[s[i] "/router-on"] < 0 ? "-" : p[s[i] "/router-on"]), (p[s[i] "/router-off"] < 0 ? "-" : p[s[i] "/router-off"]), n[s[i] "/router-on"] }' $results | tee $OUT/quota-latest-summary.txt
redis-cli -p $REDIS_PORT --raw HGET "aoai:usage:{default}:day:$(date -u +%Y%m%d)" requests | sed 's/^/requests recorded in Redis: /' >&2
