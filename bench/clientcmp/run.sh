#!/usr/bin/env bash
# bench/clientcmp/run.sh — libcurl multi vs h2o http1client, same mock, same load.
#   callgrind: every variant CG_RUNS times, COUNT requests after 2000 warm-up ones,
#              instructions/request (user space only), median kept
#   syscalls:  perf syscall tracepoints over 100,000 requests, syscalls/request
#   timed:     every variant RUNS times × SECS s (1 s warm-up excluded), interleaved, median
#              kept; also the mock's CPU per request over the same runs
# Usage: bench/clientcmp/run.sh [callgrind|syscalls|timed|all]   (default all)
# Env: PORT (19101) SECS (10) RUNS (3) COUNT (20000) CONC (64) CG_RUNS (3). Output in results/.
set -euo pipefail
cd "$(dirname "$0")"
WHAT=${1:-all}
PORT=${PORT:-19101} SECS=${SECS:-10} RUNS=${RUNS:-3} COUNT=${COUNT:-20000} CONC=${CONC:-64} CG_RUNS=${CG_RUNS:-3}
B=build R=results
make -s all
mkdir -p $R

# name|client|flags — the curl rows add one trick at a time to the router's way, then combine them
VARIANTS=(
  "curl-router|curl_client|"
  "curl-noreset|curl_client|--no-reset"
  "curl-watchfd|curl_client|--watch-per-fd"
  "curl-noproxyenv|curl_client|--no-proxy-env"
  "curl-curlu|curl_client|--curlu"
  "curl-slistshared|curl_client|--slist-shared"
  "curl-noreset-noproxyenv|curl_client|--no-reset --no-proxy-env"
  "curl-best-router|curl_client|--no-reset --watch-per-fd --no-proxy-env"
  "curl-all|curl_client|--no-reset --watch-per-fd --no-proxy-env --slist-shared --curlu"
  "h2o|h2o_client|"
)

$B/aoai-mock --port "$PORT" --name bench 2>$R/mock.log &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening $R/mock.log 2>/dev/null && break; sleep 0.1; done
grep -q listening $R/mock.log || { echo "mock did not start (port $PORT busy?)" >&2; exit 1; }

callgrind() {
  : >$R/callgrind.txt
  local v name bin flags run f med per
  for v in "${VARIANTS[@]}"; do
    IFS='|' read -r name bin flags <<<"$v"
    per=()
    for run in $(seq "$CG_RUNS"); do
      rm -f $R/cg.$name.[0-9]*
      # shellcheck disable=SC2086
      valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file=$R/cg.$name.%p \
        $B/$bin -p "$PORT" -c "$CONC" -n "$COUNT" -W 2000 $flags >/dev/null 2>$R/cg.$name.log
      f=$(ls $R/cg.$name.[0-9]*.1) # the "measured" dump: exactly the COUNT requests after warm-up
      per+=($(($(awk '/^totals:/ {print $2}' "$f") / COUNT)))
    done
    med=$(printf '%s\n' "${per[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
    printf '%-24s %8d instructions/request (median; runs: %s)\n' "$name" "$med" "${per[*]}" | tee -a $R/callgrind.txt
    # profiles of the last run: self cost and inclusive cost per function
    { callgrind_annotate --threshold=100 "$f" 2>/dev/null | awk '/file:function/ {p = 1; next} p && NF' \
        | grep -v -e '(below main)' -e 'libc_start' -e 'clientcmp/[a-z_]*.c:main ' -e 'ld-linux' \
        | head -25 >$R/cg.$name.top.txt; } || true
    { callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null | head -80 >$R/cg.$name.inclusive.txt; } || true
    rm -f $R/cg.$name.[0-9]* # keep the summaries, not the large profiles
  done
}

syscalls() {
  # perf's syscall tracepoints, not strace: ptrace slows the client so much that the mock always
  # answers first, which changes how curl finds its responses
  local ev="" s v name bin flags
  for s in sendto recvfrom poll epoll_ctl epoll_wait read write writev close dup ioctl; do ev+="syscalls:sys_enter_$s,"; done
  ev+=raw_syscalls:sys_enter
  : >$R/syscalls.txt
  for v in "curl-router|curl_client|" "curl-best-router|curl_client|--no-reset --watch-per-fd --no-proxy-env" "h2o|h2o_client|"; do
    IFS='|' read -r name bin flags <<<"$v"
    echo "== $name (per request over 100,000)" | tee -a $R/syscalls.txt
    # shellcheck disable=SC2086
    perf stat -x, -e "$ev" $B/$bin -p "$PORT" -c "$CONC" -n 100000 -W 0 $flags 2>&1 >/dev/null \
      | awk -F, '$1 ~ /^[0-9]+$/ && $1 >= 5000 {sub(/.*:sys_enter_?/, "", $3); printf "  %-12s %5.2f\n", ($3 == "" ? "ALL" : $3), $1 / 100000}' \
      | tee -a $R/syscalls.txt
  done
}

CLK_TCK=$(getconf CLK_TCK)
mock_cpu_ticks() { awk '{print $14 + $15}' /proc/$MOCK/stat; }
mock_completed() { curl -s "http://127.0.0.1:$PORT/_mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completed"])'; }

timed() {
  : >$R/timed.txt
  local run v name bin flags m0 m1 n0 n1 line mock
  for run in $(seq "$RUNS"); do
    for v in "${VARIANTS[@]}"; do
      IFS='|' read -r name bin flags <<<"$v"
      m0=$(mock_cpu_ticks); n0=$(mock_completed)
      # shellcheck disable=SC2086
      line=$($B/$bin -p "$PORT" -c "$CONC" -d "$SECS" -w 1 $flags 2>/dev/null)
      m1=$(mock_cpu_ticks); n1=$(mock_completed)
      # the mock (an h2o server) over the client's whole run, warm-up included
      mock=$(awk -v t=$((m1 - m0)) -v n=$((n1 - n0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", n ? t * 1e6 / hz / n : 0}')
      echo "name=$name run=$run $line mock_cpu_us_per_req=$mock load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a $R/timed.txt
    done
  done
  python3 - "$R/timed.txt" <<'PY' | tee $R/timed-median.txt
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split())
    rows.setdefault(kv["name"], []).append(kv)
print(f"{'variant':24} {'cpu µs/req median':>17}  {'runs':<24} {'user':>6} {'sys':>6} {'req/s':>7} {'errors':>6} {'mock µs/req':>11}")
for name, rs in rows.items():
    cpu = [float(r["cpu_us_per_req"]) for r in rs]
    med = sorted(rs, key=lambda r: float(r["cpu_us_per_req"]))[len(rs) // 2]
    print(f"{name:24} {statistics.median(cpu):17.2f}  {' / '.join(f'{x:.2f}' for x in cpu):<24} "
          f"{float(med['user_us_per_req']):6.2f} {float(med['sys_us_per_req']):6.2f} "
          f"{statistics.median(float(r['rps']) for r in rs):7.0f} {sum(int(r['errors']) for r in rs):6d} "
          f"{statistics.median(float(r['mock_cpu_us_per_req']) for r in rs):11.2f}")
PY
}

case $WHAT in
  callgrind) callgrind ;;
  syscalls) syscalls ;;
  timed) timed ;;
  all) callgrind; syscalls; timed ;;
  *) echo "usage: $0 [callgrind|syscalls|timed|all]" >&2; exit 2 ;;
esac
