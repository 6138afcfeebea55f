#!/usr/bin/env bash
# bench/clientcmp/backpressure.sh — can each client stop reading a streamed response while its
# own client is slow, and does the transfer survive the pause?
# The mock streams 200,000 SSE events (~30 MB) as fast as it can. Each client pauses after the
# first body chunk for PAUSE ms (curl: CURL_WRITEFUNC_PAUSE + curl_easy_pause; h2o:
# h2o_socket_read_stop + read_start with the saved reader), then reads to the end.
# Mid-pause, `ss` shows the receive queue of the client's socket and the send queue of the
# mock's: both full and flat means the backend is held back by TCP, not buffered by the client.
# Usage: bench/clientcmp/backpressure.sh   (output in results/backpressure.txt)
set -euo pipefail
cd "$(dirname "$0")"
B=build R=results PORT=${PORT:-19103} PAUSE=${PAUSE:-3000}
make -s all
mkdir -p $R
$B/aoai-mock --port "$PORT" --name bp 2>/dev/null &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT
sleep 0.3
curl -s -XPOST "http://127.0.0.1:$PORT/_mock/behaviour" -d '{"chunks":200000}' >/dev/null
out=$R/backpressure.txt
: >$out
say() { echo "$*" | tee -a $out; }

probe() { # label, command...
  local label=$1; shift
  say "== $label"
  "$@" >$R/bp.out 2>$R/bp.err &
  local pid=$!
  sleep $((PAUSE / 2000)).5
  say "   mid-pause: client socket Recv-Q / mock socket Send-Q (bytes):"
  ss -tn "( dport = :$PORT )" | awk 'NR>1 {print "     client  Recv-Q " $2}' | tee -a $out
  ss -tn "( sport = :$PORT )" | awk 'NR>1 {print "     mock    Send-Q " $3}' | tee -a $out
  sleep 0.5
  local rss; rss=$(awk '/VmRSS/ {print $2 " kB"}' /proc/$pid/status 2>/dev/null || echo "-")
  say "   client RSS mid-pause: $rss"
  wait $pid || true
  sed 's/^/   /' $R/bp.err | grep -v "timer" | tee -a $out
}

probe "curl, pause ${PAUSE} ms (total timeout 60 s)" $B/curl_client -p "$PORT" --stream --pause-ms "$PAUSE"
probe "h2o http1client, pause ${PAUSE} ms, io_timeout 10 s" $B/h2o_client -p "$PORT" --stream --pause-ms "$PAUSE" --io-timeout 10000
probe "h2o http1client, pause ${PAUSE} ms, io_timeout 1 s" $B/h2o_client -p "$PORT" --stream --pause-ms "$PAUSE" --io-timeout 1000
curl -s -XPOST "http://127.0.0.1:$PORT/_mock/reset" >/dev/null
