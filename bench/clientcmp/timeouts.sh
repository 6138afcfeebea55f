#!/usr/bin/env bash
# bench/clientcmp/timeouts.sh — which waits each client can bound, and how.
#   connect:  a listener whose accept queue is full (SYNs dropped) — the connect never completes
#   head:     the mock waits 3 s before the response headers (delay_ms)
#   total:    the mock trickles a stream, one event every 200 ms for ~10 s (chunk_interval_ms):
#             an I/O (idle) timeout never fires; only a total deadline ends it
# curl: CURLOPT_CONNECTTIMEOUT_MS and CURLOPT_TIMEOUT_MS. h2o: http1client's single io_timeout
# (connect, write, head, and each body read) plus this prototype's own per-request deadline.
# Usage: bench/clientcmp/timeouts.sh   (output in results/timeouts.txt)
set -euo pipefail
cd "$(dirname "$0")"
B=build R=results PORT=${PORT:-19104} HOLE=${HOLE:-19105}
make -s all
mkdir -p $R
$B/aoai-mock --port "$PORT" --name to 2>/dev/null &
MOCK=$!
# a TCP black hole: backlog 0, never accepts; two connections fill the queue
python3 - "$HOLE" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(0)
fill = []
for _ in range(3):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", int(sys.argv[1]))); fill.append(c)
time.sleep(60)
PY
HOLEPID=$!
trap 'kill $MOCK $HOLEPID 2>/dev/null || true' EXIT
sleep 0.5
out=$R/timeouts.txt
: >$out
say() { echo "$*" | tee -a $out; }
run() { say "  $1"; shift; "$@" 2>&1 >/dev/null | grep -E "after [0-9]+ ms" | sed 's/^/      /' | tee -a $out || true; }
beh() { curl -s -XPOST "http://127.0.0.1:$PORT/_mock/behaviour" -d "$1" >/dev/null; }

say "== connect to a black hole"
run "curl  CONNECTTIMEOUT 1000 ms" $B/curl_client -p "$HOLE" -n 1 --connect-timeout 1000
run "h2o   io_timeout 1000 ms" $B/h2o_client -p "$HOLE" -n 1 --io-timeout 1000

say "== response headers 3 s late"
beh '{"delay_ms":3000}'
run "curl  TIMEOUT 1000 ms" $B/curl_client -p "$PORT" -n 1 --timeout 1000
run "h2o   io_timeout 1000 ms" $B/h2o_client -p "$PORT" -n 1 --io-timeout 1000

say "== a stream trickling one event every 200 ms for ~10 s"
beh '{"chunks":50,"chunk_interval_ms":200}'
run "curl  TIMEOUT 2000 ms" $B/curl_client -p "$PORT" -n 1 --stream --timeout 2000
run "h2o   io_timeout 1000 ms, no total deadline" $B/h2o_client -p "$PORT" -n 1 --stream --io-timeout 1000 --total-timeout 600000
run "h2o   io_timeout 1000 ms, own total deadline 2000 ms" $B/h2o_client -p "$PORT" -n 1 --stream --io-timeout 1000 --total-timeout 2000
beh '{}'
