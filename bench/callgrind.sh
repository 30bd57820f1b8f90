#!/usr/bin/env bash
# User-space instructions per proxied request, measured with callgrind: repeatable
# whatever else the machine is doing (kernel work is not counted; see
# docs/benchmarks.md for the wall-clock comparison with nginx and HAProxy).
#
#   bench/callgrind.sh [config.yaml] [seconds]
#   REQ_BODY=4096 bench/callgrind.sh        # POSTs of 4 KiB (nginx backends)
#   SWITCHYARD_BIN=/tmp/old bench/callgrind.sh   # another build, no cargo build
#   CLOSE=1 bench/callgrind.sh              # `Connection: close` on every request (a new connection each)
#   H2C=1 bench/callgrind.sh                # client-side h2c: h2load, 10 connections x 100 streams, 60,000 requests
#   VG_EXTRA=--cache-sim=yes bench/callgrind.sh   # also cache misses (callgrind_annotate on the dump)
#
# Starts three loopback backends (the peerbench backend for GETs, nginx for POSTs:
# see backends.sh) and switchyard (release, one worker) under callgrind, warms up,
# zeroes the counters, drives wrk for the given time, dumps, and prints Ir per
# request and the top functions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
config="${1:-plain.yaml}"; [ -f "$config" ] || config="$here/configs/$config"
secs="${2:-5}"
body="${REQ_BODY:-0}"
. "$here/backends.sh"
bin="${SWITCHYARD_BIN:-$root/target/release/switchyard}"
[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-callgrind.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port); b2=$(port); b3=$(port); lp=$(port)
start_backends "$work" "$body" "$b1" "$b2" "$b3"
lua=()
if [ "$body" -gt 0 ]; then post_lua "$work/post.lua" "$body"; lua=(-s "$work/post.lua"); fi
if [ -n "${CLOSE:-}" ]; then lua+=(-H "Connection: close"); fi
sed -e "s|@REDIS@|unix://$work/redis.sock|g" "$config" > "$work/config.yaml"
# A private vgdb prefix: a `callgrind_control` run elsewhere on the machine (with
# no pid it zeroes and dumps every callgrind it finds) cannot reach this one.
vg="$work/vgdb"
valgrind --tool=callgrind ${VG_EXTRA:-} --vgdb-prefix="$vg" --callgrind-out-file="$work/cg.out" --collect-atstart=yes \
  "$bin" --config "$work/config.yaml" --listen "127.0.0.1:$lp" \
  --admin-listen 127.0.0.1:0 --backend "127.0.0.1:$b1,127.0.0.1:$b2,127.0.0.1:$b3" --threads 1 \
  > "$work/proxy.log" 2>&1 & cg=$!; pids+=("$cg")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$lp/" >/dev/null && break; sleep 0.1; done
if [ -n "${H2C:-}" ]; then
  h2load -c10 -m100 -n20000 "http://127.0.0.1:$lp/" > /dev/null
else
  wrk -t1 -c16 -d2s "${lua[@]}" "http://127.0.0.1:$lp/" > /dev/null
fi
callgrind_control --vgdb-prefix="$vg" -z "$cg" > /dev/null 2>&1
if [ -n "${H2C:-}" ]; then
  out=$(h2load -c10 -m100 -n60000 "http://127.0.0.1:$lp/")
else
  out=$(wrk -t1 -c16 -d"${secs}s" "${lua[@]}" "http://127.0.0.1:$lp/")
fi
callgrind_control --vgdb-prefix="$vg" -d "$cg" > /dev/null 2>&1
if [ -n "${H2C:-}" ]; then
  reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
else
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
fi
dump="$work/cg.out.1"
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests: $reqs"
echo "$out" | grep -E 'Non-2xx|Socket errors' || true
echo "Ir total: $ir"
echo "Ir/request: $(( ir / reqs ))"
callgrind_annotate "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -${TOP:-30}
