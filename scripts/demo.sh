#!/usr/bin/env bash
# Local demo: three demo upstreams on 127.0.0.1:9001-9003, the proxy on :8080 and
# the admin API + dashboard on :8081, embedded state (no Redis, no Docker).
# Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/build-dashboard.sh ] && [ ! -f dashboard-app/dist/index.html ]; then
  echo "==> building the dashboard (first run only)"
  scripts/build-dashboard.sh
fi
echo "==> building switchyard"
cargo build --release -q --bin switchyard --bin demo-upstream

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for i in 1 2 3; do
  target/release/demo-upstream --listen "127.0.0.1:900$i" --name "backend$i" &
  pids+=($!)
done
target/release/switchyard --config config/config.yaml &
pids+=($!)

cat <<MSG

  proxy      http://localhost:8080/
  admin API  http://localhost:8081/admin/backends
  metrics    http://localhost:8081/metrics
  dashboard  http://localhost:8081/dashboard/

  Ctrl-C stops the proxy and the demo upstreams.

MSG
wait "${pids[-1]}"
