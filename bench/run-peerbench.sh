#!/usr/bin/env bash
# Runs ../shared/bench/peerbench.py with switchyard as "ours", using a config from
# bench/configs (listen address, backends and worker count come from the harness).
#
#   bench/run-peerbench.sh plain.yaml --targets direct,nginx,haproxy,ours
#   bench/run-peerbench.sh ratelimit-redis.yaml --targets haproxy,ours
#
# A config that mentions `@REDIS@` gets a private redis-server on a unix socket,
# started here and stopped on exit. Results: /tmp/peerbench/results/<timestamp>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
harness="${PEERBENCH:-$root/../shared/bench/peerbench.py}"
config="${1:?usage: run-peerbench.sh CONFIG [peerbench args...]}"
shift
[ -f "$config" ] || config="$here/configs/$config"

cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-bench.XXXXXX)"
redis_pid=""
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

sed "s|@REDIS@|unix://$work/redis.sock|g" "$config" > "$work/config.yaml"
if grep -q '@REDIS@' "$config"; then
  redis-server --port 0 --unixsocket "$work/redis.sock" --save "" --appendonly no --loglevel warning &
  redis_pid=$!
  for _ in $(seq 100); do [ -S "$work/redis.sock" ] && break; sleep 0.05; done
fi

export OURS_CMD="$root/target/release/switchyard --config $work/config.yaml --listen \$PEERBENCH_LISTEN --admin-listen 127.0.0.1:0 --backend \$PEERBENCH_BACKENDS --threads \$PEERBENCH_WORKERS"
export OURS_PORT="${OURS_PORT:-18099}"
export OURS_NAME="${OURS_NAME:-switchyard}"
/usr/bin/python3 "$harness" --wait-quiet 60 --retries 2 "$@"
