#!/usr/bin/env bash
# Where a proxy's CPU per request goes, beside HAProxy: user and kernel time
# (/proc/<pid>/stat), system calls per request (perf stat on the syscall
# tracepoints) and how often the backend and wrk sleep and wake per 1,000 requests.
# The numbers behind docs/benchmarks.md §6.
#
#   bench/kernel-split.sh [haproxy|ours ...]     # default: haproxy ours
#   BIN=/path/to/switchyard bench/kernel-split.sh ours   # another build of ours
#   CLOSE=1 bench/kernel-split.sh            # `Connection: close` on every request
#
# Proxy pinned to cpu0 with one worker; the peerbench backend (three ports) and wrk
# (64 keep-alive connections, 2 s warm-up + 8 s) on cpu1. Needs perf, haproxy, wrk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/backends.sh"
backend_bin=/tmp/peerbench/target-backend/release/peerbench-backend
[ -x "$backend_bin" ] || cargo build --release -q --manifest-path "$root/../shared/bench/backend-rs/Cargo.toml" --target-dir /tmp/peerbench/target-backend
cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-ksplit.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hdr=()
if [ -n "${CLOSE:-}" ]; then hdr=(-H "Connection: close"); fi
switches() { cat /proc/"$1"/task/*/status | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}'; }

measure() {
  local who=$1 b1 b2 b3 lp bp pp
  b1=$(port); b2=$(port); b3=$(port); lp=$(port)
  taskset -c 1 "$backend_bin" "$b1" "$b2" "$b3" 2>/dev/null & bp=$!; pids+=("$bp")
  if [ "$who" = haproxy ]; then
    haproxy_config "$lp" "$b1" "$b2" "$b3" > "$work/haproxy.cfg"
    taskset -c 0 haproxy -f "$work/haproxy.cfg" > /dev/null 2>&1 & pp=$!
  else
    taskset -c 0 "${BIN:-$root/target/release/switchyard}" --config "$here/configs/plain.yaml" \
      --listen "127.0.0.1:$lp" --admin-listen 127.0.0.1:0 \
      --backend "127.0.0.1:$b1,127.0.0.1:$b2,127.0.0.1:$b3" --threads 1 > "$work/proxy.log" 2>&1 & pp=$!
  fi
  pids+=("$pp")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$lp/" > /dev/null && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c64 -d2s "${hdr[@]}" "http://127.0.0.1:$lp/" > /dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pp/stat)
  local c0 b0; c0=$(switches "$pp"); b0=$(switches "$bp")
  perf stat -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait \
    -p "$pp" -o "$work/sc-$who.txt" -- sleep 8 & local sp=$!
  taskset -c 1 wrk -t1 -c64 -d8s "${hdr[@]}" "http://127.0.0.1:$lp/" > "$work/wrk-$who.txt" & local wp=$!
  sleep 0.5
  local w w0 w1; w=$(pgrep -n -x wrk); w0=$(switches "$w"); sleep 7; w1=$(switches "$w")
  wait "$wp" "$sp"
  read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pp/stat)
  local c1 b1_; c1=$(switches "$pp"); b1_=$(switches "$bp")
  local n; n=$(awk '/requests in/ {print $1}' "$work/wrk-$who.txt")
  local calls; calls=$(awk '/syscalls:/ {gsub(",","",$1); sub("syscalls:sys_enter_","",$2); printf "%s=%s ", $2, $1}' "$work/sc-$who.txt")
  python3 - "$who" "$n" "$u0" "$u1" "$s0" "$s1" "$c0" "$c1" "$b0" "$b1_" "$w0" "$w1" "$calls" <<'PY'
import sys
who, n, u0, u1, s0, s1, c0, c1, b0, b1, w0, w1, calls = sys.argv[1:]
n = int(n); tick = 100  # USER_HZ
u = (int(u1) - int(u0)) / tick * 1e6 / n
s = (int(s1) - int(s0)) / tick * 1e6 / n
per = " ".join(f"{k}={int(v) / n:.2f}" for k, v in (kv.split("=") for kv in calls.split()))
print(f"{who:8} {n} req  user {u:.2f} us  kernel {s:.2f} us  total {u + s:.2f} us/req")
print(f"{'':8} syscalls/req: {per}")
print(f"{'':8} sleeps per 1k req: proxy {(int(c1) - int(c0)) * 1000 / n:.1f}  backend {(int(b1) - int(b0)) * 1000 / n:.1f}  wrk {(int(w1) - int(w0)) * 1000 / n * 8 / 7:.1f} (scaled from 7 of 8 s)")
PY
  kill "$pp" "$bp" 2>/dev/null || true
  wait "$pp" "$bp" 2>/dev/null || true
}

for who in "${@:-haproxy ours}"; do
  for w in $who; do measure "$w"; done
done
