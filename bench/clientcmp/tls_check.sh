#!/usr/bin/env bash
# bench/clientcmp/tls_check.sh — what each client accepts over https, TLS 1.2 and TLS 1.3.
# nginx (Debian) terminates TLS in front of the mock with three certificates:
#   good      signed by a test CA, SAN DNS:localhost      → must be accepted
#   wrongname signed by the same CA, SAN DNS:evil.test    → must be refused (host name)
#   untrusted self-signed, SAN DNS:localhost              → must be refused (chain)
# Each client connects to 127.0.0.1 and verifies against the name "localhost" with the test CA.
# h2o is run twice: relying on http1client's own name check, and with --verify-param
# (X509_VERIFY_PARAM_set1_host on the SSL_CTX, so OpenSSL checks the name in the handshake).
# Then a steady-state keep-alive https load (TLS 1.3, good certificate) through each client.
# Usage: bench/clientcmp/tls_check.sh   (PORT_BASE 19440, SECS 5; output in results/tls.txt)
set -euo pipefail
cd "$(dirname "$0")"
B=build R=results
PB=${PORT_BASE:-19440} MOCK_PORT=${MOCK_PORT:-19102} SECS=${SECS:-5}
make -s all
mkdir -p $R
T=$(mktemp -d)
cleanup() {
  [ -f $T/nginx.pid ] && kill "$(cat $T/nginx.pid)" 2>/dev/null || true
  [ -n "${MOCK:-}" ] && kill "$MOCK" 2>/dev/null || true
  sleep 0.2; rm -rf "$T"
}
trap cleanup EXIT

# --- certificates ---
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout $T/ca.key -out $T/ca.pem -days 2 -subj "/CN=clientcmp test CA"
leaf() { # name san
  ossl req -newkey rsa:2048 -nodes -keyout $T/$1.key -out $T/$1.csr -subj "/CN=$2"
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$2" >$T/$1.ext
  ossl x509 -req -in $T/$1.csr -CA $T/ca.pem -CAkey $T/ca.key -CAcreateserial -out $T/$1.pem -days 2 -extfile $T/$1.ext
}
leaf good localhost
leaf wrongname evil.test
ossl req -x509 -newkey rsa:2048 -nodes -keyout $T/untrusted.key -out $T/untrusted.pem -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost"

# --- mock + nginx ---
$B/aoai-mock --port "$MOCK_PORT" --name tls 2>$T/mock.log &
MOCK=$!
servers=""
i=0
declare -A PORT
for cert in good wrongname untrusted; do
  for proto in 1.2 1.3; do
    p=$((PB + i)); i=$((i + 1)); PORT[$cert-$proto]=$p
    servers+="server { listen 127.0.0.1:$p ssl; ssl_certificate $T/$cert.pem; ssl_certificate_key $T/$cert.key;
      ssl_protocols TLSv$proto; keepalive_requests 1000000;
      location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
"
  done
done
cat >$T/nginx.conf <<NGX
worker_processes 1;
pid $T/nginx.pid;
error_log $T/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; }
  $servers
}
NGX
nginx -c $T/nginx.conf -p $T
sleep 0.5

out=$R/tls.txt
: >$out
say() { echo "$*" | tee -a $out; }
verdict() { # expected-ok? rc
  if [ "$1" = accept ]; then [ "$2" = 0 ] && echo "accepted (correct)" || echo "REFUSED (wrong)"
  else [ "$2" = 0 ] && echo "ACCEPTED (wrong: no protection)" || echo "refused (correct)"; fi
}
say "TLS verification matrix (each: one POST through nginx TLS -> mock)"
for cert in good wrongname untrusted; do
  expect=refuse; [ $cert = good ] && expect=accept
  for proto in 1.2 1.3; do
    p=${PORT[$cert-$proto]}
    set +e
    msg=$($B/curl_client -u "https://localhost:$p/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" \
      --resolve "localhost:$p:127.0.0.1" --cafile $T/ca.pem -n 1 2>&1 >/dev/null | grep -m1 -E "failed|status")
    rc=$?; [ -n "$(echo "$msg" | grep -E 'status 200.*No error')" ] && rc=0 || rc=1
    say "$(printf '%-9s TLS%s  curl (VERIFYPEER+VERIFYHOST=2)          : %-32s  [%s]' $cert $proto "$(verdict $expect $rc)" "$msg")"
    for mode in "" "--verify-param"; do
      msg=$($B/h2o_client --tls --host localhost --connect 127.0.0.1 -p $p --cafile $T/ca.pem -n 1 $mode 2>&1 >/dev/null \
        | grep -m1 -E "failed|status")
      [ -n "$(echo "$msg" | grep -E 'status 200.*result ok')" ] && rc=0 || rc=1
      label="h2o (SSL_VERIFY_PEER${mode:+ + X509_VERIFY_PARAM host})"
      say "$(printf '%-9s TLS%s  %-40s: %-32s  [%s]' $cert $proto "$label" "$(verdict $expect $rc)" "$msg")"
    done
    set -e
  done
done

say ""
say "Steady-state keep-alive https load, TLS 1.3, 64 in flight, ${SECS}s (client CPU only; nginx shares the cores)"
p=${PORT[good-1.3]}
for run in 1 2 3; do
  say "$($B/curl_client -u "https://localhost:$p/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" \
    --resolve "localhost:$p:127.0.0.1" --cafile $T/ca.pem -d "$SECS" -w 1 2>/dev/null)"
  say "$($B/curl_client -u "https://localhost:$p/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" \
    --resolve "localhost:$p:127.0.0.1" --cafile $T/ca.pem -d "$SECS" -w 1 --no-reset --watch-per-fd --no-proxy-env 2>/dev/null)"
  say "$($B/h2o_client --tls --host localhost --connect 127.0.0.1 -p $p --cafile $T/ca.pem --verify-param -d "$SECS" -w 1 2>/dev/null)"
done
