#!/usr/bin/env bash
# 1 KiB and 4 KiB POSTs (keep-alive) through switchyard beside HAProxy, one worker
# each, nginx backends, with ../shared/bench/scenarios.py (targets interleaved
# rep by rep inside each size's run; CPU per request from the harness).
#
#   bench/post.sh [scenarios.py args...]     e.g. bench/post.sh --reps 5
#
# SWITCHYARD_BIN runs another build of ours (no cargo build). Ports: a random
# base is picked (the harness refuses busy ones).
# Results: /tmp/peerbench/results/post-<size>-<timestamp>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
harness="${SCENARIOS:-$root/../shared/bench/scenarios.py}"
bin="${SWITCHYARD_BIN:-$root/target/release/switchyard}"
[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
export OURS_CMD="$bin --config $here/configs/plain.yaml --listen \$PEERBENCH_LISTEN --admin-listen 127.0.0.1:0 --backend \$PEERBENCH_BACKENDS --threads \$PEERBENCH_WORKERS"
base=$(python3 -c 'import random; print(random.randrange(30000, 39000, 100))')
stamp=$(date +%Y%m%d-%H%M%S)
for size in 1024 4096; do
  echo "== POST $size B"
  /usr/bin/python3 "$harness" bench --targets haproxy,ours --backend nginx --method POST \
    --req-body "$size" --base-port "$base" --ours-port $((base + 50)) \
    --workdir "/tmp/peerbench/post-$stamp" --out "/tmp/peerbench/results/post-$size-$stamp" "$@"
done
