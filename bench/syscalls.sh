#!/usr/bin/env bash
# System calls per proxied request, switchyard or HAProxy (one worker each), counted
# with `strace -f -c` attached after a warm-up, over a bounded wrk run on loopback.
#
#   bench/syscalls.sh ours|haproxy [request-body-bytes] [seconds]
#
# With a body size the requests are POSTs of that many bytes (keep-alive, 16
# connections) to nginx backends; 0 is a plain GET to the peerbench backend. SWITCHYARD_BIN runs another build of ours.
# CLOSE=1 sends `Connection: close` on every request (a new client connection each).
# Prints requests, the strace table and receives/sends per request.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
target="${1:?usage: syscalls.sh ours|haproxy [body-bytes] [seconds]}"
body="${2:-0}"
secs="${3:-3}"
. "$here/backends.sh"
bin="${SWITCHYARD_BIN:-}"
if [ -z "$bin" ] && [ "$target" = ours ]; then
  cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
  bin="$root/target/release/switchyard"
fi
work="$(mktemp -d /tmp/switchyard-syscalls.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port); b2=$(port); b3=$(port); lp=$(port)
start_backends "$work" "$body" "$b1" "$b2" "$b3"
case "$target" in
  ours)
    "$bin" --config "$here/configs/plain.yaml" --listen "127.0.0.1:$lp" --admin-listen 127.0.0.1:0 \
      --backend "127.0.0.1:$b1,127.0.0.1:$b2,127.0.0.1:$b3" --threads 1 > "$work/proxy.log" 2>&1 &
    proxy=$! ;;
  haproxy)
    haproxy_config "$lp" "$b1" "$b2" "$b3" > "$work/haproxy.cfg"
    haproxy -db -f "$work/haproxy.cfg" > "$work/proxy.log" 2>&1 &
    proxy=$! ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
pids+=("$proxy")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$lp/" >/dev/null && break; sleep 0.1; done
lua=()
if [ -n "${CLOSE:-}" ]; then
  lua=(-H "Connection: close")
fi
if [ "$body" -gt 0 ]; then
  post_lua "$work/post.lua" "$body"
  lua+=(-s "$work/post.lua")
fi
wrk -t1 -c16 -d2s "${lua[@]}" "http://127.0.0.1:$lp/" > /dev/null
strace -f -c -o "$work/strace.txt" -p "$proxy" 2>/dev/null & st=$!
pids+=("$st")
sleep 1
out=$(wrk -t1 -c16 -d"${secs}s" "${lua[@]}" "http://127.0.0.1:$lp/")
kill -INT "$st"; wait "$st" 2>/dev/null || true
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
echo "target: $target  body: $body  requests: $reqs"
echo "$out" | grep -E 'Non-2xx|Socket errors' || true
cat "$work/strace.txt"
awk -v r="$reqs" '
  $NF ~ /^(recvfrom|read|recvmsg|readv)$/ { rx += $4 }
  $NF ~ /^(sendto|write|sendmsg|writev)$/ { tx += $4 }
  END { printf "per request: receives %.2f  sends %.2f\n", rx / r, tx / r }' "$work/strace.txt"
