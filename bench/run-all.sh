#!/usr/bin/env bash
# The benchmark set behind docs/benchmarks.md: each switchyard variant beside
# HAProxy (and nginx for the plain run), so every row has its ratio from one run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/tmp/switchyard-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
run() {
  local name="$1" config="$2"; shift 2
  OURS_NAME="$name" "$here/run-peerbench.sh" "$config" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
  echo "== $name"; sed -n '/^| target/,/^$/p' "$out/$name/summary.md"
}
run plain plain.yaml --targets direct,nginx,haproxy,ours
run adaptive adaptive.yaml --targets haproxy,ours
run redis-rl ratelimit-redis.yaml --targets haproxy,ours
run otel-1pct otel-1pct.yaml --targets haproxy,ours
run otel-100pct otel-100pct.yaml --targets haproxy,ours --max-foreign 30
run otel-dead otel-dead-collector.yaml --targets haproxy,ours
run redis-rl-otel-1pct redis-rl-otel-1pct.yaml --targets haproxy,ours
