#!/usr/bin/env bash
# traffic.sh — a small traffic generator for the local stacks (./dev.sh stack, deploy/compose.yaml):
# chats (JSON and streamed), embeddings, through several tenants, one request at a time; now and
# then it makes one mock region throttle (429 with retry-after) so failovers and cooldowns show.
#   AOR_TRAFFIC_URL        the router, e.g. http://127.0.0.1:8080
#   AOR_TRAFFIC_KEYS       space-separated subscription keys, one per tenant (the stack's demo keys), or
#   AOR_TRAFFIC_TENANTS    tenants to create a key for in Redis first (aoai-router keys create), with
#   AOR_TRAFFIC_REDIS      that Redis' URL (compose: redis://redis:6379/0; prefix aoai:)
#   AOR_TRAFFIC_THROTTLE   a mock region's URL to throttle now and then (optional)
#   AOR_TRAFFIC_INTERVAL   seconds between requests (default 0.2)
#   AOR_TRAFFIC_THROTTLE_EVERY  requests between two throttle episodes (default 100)
# Runs until SIGTERM/SIGINT; the request in flight is stopped with it. Needs bash and curl only.
set -u
url=${AOR_TRAFFIC_URL:?AOR_TRAFFIC_URL is the router URL}
if [ -n "${AOR_TRAFFIC_TENANTS:-}" ]; then
  # the keys exist only in this process' memory; the CLI prints each once on stdout
  AOR_TRAFFIC_KEYS=
  for t in $AOR_TRAFFIC_TENANTS; do
    k=$(aoai-router --redis "${AOR_TRAFFIC_REDIS:?AOR_TRAFFIC_REDIS is the Redis URL}" --prefix aoai: keys create --tenant "$t" 2>/dev/null) ||
      { echo "traffic.sh: could not create a key for $t in Redis" >&2; exit 1; }
    AOR_TRAFFIC_KEYS="$AOR_TRAFFIC_KEYS $k"
  done
fi
read -r -a keys <<<"${AOR_TRAFFIC_KEYS:?AOR_TRAFFIC_KEYS lists one key per tenant}"
throttle=${AOR_TRAFFIC_THROTTLE:-}
interval=${AOR_TRAFFIC_INTERVAL:-0.2}
every=${AOR_TRAFFIC_THROTTLE_EVERY:-100}
q='api-version=2024-10-21'
child=
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM INT

# runs curl in the background so a signal is handled at once (bash runs traps between commands)
send() {
  curl -s -o /dev/null --max-time 10 "$@" &
  child=$!
  wait "$child"
  child=
}

n=0
while :; do
  n=$((n + 1))
  key=${keys[RANDOM % ${#keys[@]}]}
  words=$((RANDOM % 12 + 1))
  case $((RANDOM % 5)) in
    0 | 1) path="/openai/deployments/gpt-4o/chat/completions?$q"
      body="{\"messages\":[{\"role\":\"user\",\"content\":\"hello from the traffic generator, request $n\"}],\"max_tokens\":$words}" ;;
    2) path="/openai/deployments/gpt-4o/chat/completions?$q"
      body="{\"messages\":[{\"role\":\"user\",\"content\":\"stream $n please\"}],\"max_tokens\":$words,\"stream\":true}" ;;
    3) path="/openai/v1/chat/completions"
      body="{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"v1 request $n\"}],\"max_tokens\":$words}" ;;
    *) path="/openai/deployments/text-embedding-3-small/embeddings?$q"
      body="{\"input\":\"some text to embed, number $n\"}" ;;
  esac
  send -X POST -H "api-key: $key" -H 'content-type: application/json' --data-binary "$body" "$url$path"
  if [ -n "$throttle" ] && [ $((n % every)) = 0 ]; then
    # the next 3 requests that reach this region get 429 retry-after 5: the router fails over
    send -X POST -H 'content-type: application/json' --data-binary '{"status":429,"retry_after":"5","count":3}' "$throttle/_mock/behaviour"
  fi
  sleep "$interval" &
  child=$!
  wait "$child"
  child=
done
