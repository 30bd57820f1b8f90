#!/usr/bin/env bash
# User-space instructions per proxied request, measured with callgrind: repeatable
# whatever else the machine is doing (kernel work is not counted; see
# docs/benchmarks.md for the wall-clock comparison with nginx and HAProxy).
#
#   bench/callgrind.sh [config.yaml] [seconds]
#
# Starts the peerbench backend on three loopback ports and switchyard (release,
# one worker) under callgrind, warms up, zeroes the counters, drives wrk for the
# given time, dumps, and prints Ir per request and the top functions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
config="${1:-plain.yaml}"; [ -f "$config" ] || config="$here/configs/$config"
secs="${2:-5}"
backend_bin=/tmp/peerbench/target-backend/release/peerbench-backend
[ -x "$backend_bin" ] || cargo build --release -q --manifest-path "$root/../shared/bench/backend-rs/Cargo.toml" --target-dir /tmp/peerbench/target-backend
cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-callgrind.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port); b2=$(port); b3=$(port); lp=$(port)
"$backend_bin" "$b1" "$b2" "$b3" 2>/dev/null & pids+=($!)
sed -e "s|@REDIS@|unix://$work/redis.sock|g" "$config" > "$work/config.yaml"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --collect-atstart=yes \
  "$root/target/release/switchyard" --config "$work/config.yaml" --listen "127.0.0.1:$lp" \
  --admin-listen 127.0.0.1:0 --backend "127.0.0.1:$b1,127.0.0.1:$b2,127.0.0.1:$b3" --threads 1 \
  > "$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$lp/" >/dev/null && break; sleep 0.1; done
wrk -t1 -c16 -d2s "http://127.0.0.1:$lp/" > /dev/null
callgrind_control -z > /dev/null 2>&1
out=$(wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$lp/")
callgrind_control -d > /dev/null 2>&1
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
dump="$work/cg.out.1"
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests: $reqs"
echo "Ir total: $ir"
echo "Ir/request: $(( ir / reqs ))"
callgrind_annotate "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -${TOP:-30}
