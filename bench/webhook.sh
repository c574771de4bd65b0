#!/usr/bin/env bash
# Webhook vs the floor, side by side in one run.
#
# Starts two release-built servers on loopback — bench-webhook (healthscope's webhook router on
# webhook::serve, with a populated in-memory cache snapshot and no API server) and bench-floor (bare
# axum + rustls, fixed response of the same size) — and drives both with wrk over HTTPS keep-alive at
# each connection count, alternating webhook and floor run by run so both see the same machine state.
# Prints a markdown table (also written to target/bench/webhook.md) and the raw wrk lines.
#
# usage: bench/webhook.sh            env: DURATION=10s CONNS="1 10 50 200" SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-1 10 50 200}
OUT=target/bench
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found: apt-get install jq" >&2; exit 1; }

if [[ -z ${SKIP_BUILD:-} ]]; then
  cargo build --release --features bench --bin bench-floor --bin bench-webhook
fi
BIN=target/release

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() { # url body pid
  for _ in $(seq 1 100); do
    kill -0 "$3" 2>/dev/null || { echo "server for $1 exited; see $OUT/*.log" >&2; exit 1; }
    curl -sk -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary "@$2" "$1" && return 0
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2; exit 1
}

proc_kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
proc_cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

WEBHOOK_ADDR=127.0.0.1:18444
"$BIN/bench-webhook" --listen "$WEBHOOK_ADDR" >"$OUT/bench-webhook.log" 2>&1 &
webhook_pid=$!; pids+=("$webhook_pid")

results=$OUT/webhook.jsonl
: >"$results"
hz=$(getconf CLK_TCK)

run_one() { # server-name pid url body conns review
  local name=$1 pid=$2 url=$3 body=$4 conns=$5 review=$6
  local threads=$(( conns < 2 ? 1 : 2 ))
  local cpu0; cpu0=$(proc_cpu_ticks "$pid")
  [[ $name == webhook ]] && curl -sk "https://$WEBHOOK_ADDR/metrics" >"$OUT/.metrics_before"
  # Sample RSS in the middle of the run (under load), and the peak after it.
  local half=$(( ${DURATION%s} / 2 ))
  ( sleep "$half"; proc_kib "$pid" VmRSS >"$OUT/.rss_mid" ) &
  local sampler=$!
  local line
  line=$(BENCH_BODY=$body wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s bench/wrk/post.lua "$url" \
    | sed -n 's/^WRK_RESULT //p')
  wait "$sampler"
  local cpu1; cpu1=$(proc_cpu_ticks "$pid")
  local server='{}'
  if [[ $name == webhook ]]; then
    curl -sk "https://$WEBHOOK_ADDR/metrics" >"$OUT/.metrics_after"
    server=$(python3 bench/report.py server-latency "$OUT/.metrics_before" "$OUT/.metrics_after")
  fi
  local rss_mid hwm
  rss_mid=$(cat "$OUT/.rss_mid"); hwm=$(proc_kib "$pid" VmHWM)
  echo "$line" | jq -c --arg s "$name" --arg r "$review" --argjson c "$conns" \
    --argjson rss "$rss_mid" --argjson hwm "$hwm" --argjson cpu "$(( cpu1 - cpu0 ))" --argjson hz "$hz" \
    '. + {server:$s, review:$r, conns:$c, rss_kib:$rss, hwm_kib:$hwm, cpu_s:($cpu/$hz)} + $sl' \
    --argjson sl "$server" | tee -a "$results"
}

for review in appconfig deployment; do
  body=bench/reviews/$review.json
  path=$("$BIN/bench-webhook" --paths | tr ' ' '\n' | sed -n "s/^$review=//p")
  url=https://$WEBHOOK_ADDR$path
  wait_ready "$url" "$body" "$webhook_pid"
  # The floor answers with a fixed body as large as the webhook's answer to this review.
  size=$(curl -sk -X POST -H 'Content-Type: application/json' --data-binary "@$body" "$url" | wc -c)
  echo "== $review: request $(wc -c <"$body") B, response $size B" >&2
  FLOOR_ADDR=127.0.0.1:18443
  "$BIN/bench-floor" --listen "$FLOOR_ADDR" --response-bytes "$size" >"$OUT/bench-floor.log" 2>&1 &
  floor_pid=$!; pids+=("$floor_pid")
  wait_ready "https://$FLOOR_ADDR/mutate" "$body" "$floor_pid"
  for conns in $CONNS; do
    run_one webhook "$webhook_pid" "$url" "$body" "$conns" "$review"
    run_one floor "$floor_pid" "https://$FLOOR_ADDR/mutate" "$body" "$conns" "$review"
  done
  kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
done

python3 bench/report.py webhook "$results" | tee "$OUT/webhook.md"
