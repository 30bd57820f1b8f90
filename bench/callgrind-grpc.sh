#!/usr/bin/env bash
# User-space instructions per proxied gRPC unary call on the h2c path, measured with
# callgrind (repeatable whatever else the machine is doing; see bench/callgrind.sh
# for the HTTP/1.1 path).
#
#   bench/callgrind-grpc.sh [BINARY] [seconds] [extra yaml]
#
# Starts three tonic echo backends (examples/grpc_load.rs `serve`), switchyard
# (BINARY, default target/release/switchyard; one worker) under callgrind with the
# three as `protocol: h2c` backends plus the extra yaml (e.g. a `retries:` block),
# warms up, zeroes the counters, drives `grpc_load load` (4 connections, 64 calls in
# flight) for the given time, dumps, and prints Ir per call.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="${1:-$root/target/release/switchyard}"
secs="${2:-5}"
extra="${3:-}"
tool="$root/target/release/examples/grpc_load"
[ -x "$tool" ] || cargo build --release -q --manifest-path "$root/Cargo.toml" --example grpc_load
work="$(mktemp -d /tmp/switchyard-callgrind-grpc.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { python3 -c 'import socket,sys,time
for _ in range(600):
    try: socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close(); sys.exit(0)
    except OSError: time.sleep(0.1)
sys.exit(1)' "$1"; }
b1=$(port); b2=$(port); b3=$(port); lp=$(port)
"$tool" serve "$b1" "$b2" "$b3" 2>/dev/null & pids+=($!)
{
  echo "backends:"
  for b in $b1 $b2 $b3; do printf '  - url: "http://127.0.0.1:%s"\n    protocol: h2c\n' "$b"; done
  printf '%b' "$extra"
} > "$work/config.yaml"
for b in $b1 $b2 $b3; do wait_port "$b"; done
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --collect-atstart=yes \
  "$bin" --config "$work/config.yaml" --listen "127.0.0.1:$lp" \
  --admin-listen 127.0.0.1:0 --threads 1 > "$work/proxy.log" 2>&1 & pids+=($!)
wait_port "$lp"
"$tool" load "127.0.0.1:$lp" 4 64 2 > /dev/null
callgrind_control -z > /dev/null 2>&1
out=$("$tool" load "127.0.0.1:$lp" 4 64 "$secs" | tail -1)
callgrind_control -d > /dev/null 2>&1
calls=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ok"]+r["failed"])' "$out")
dump="$work/cg.out.1"
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "load: $out"
echo "calls: $calls"
echo "Ir total: $ir"
echo "Ir/call: $(( ir / calls ))"
echo "dump: $dump"
