#!/usr/bin/env bash
# The scenarios of issue #24 beside HAProxy and nginx, one interleaved run each,
# through ../shared/bench/scenarios.py (wrk or h2load; proxy CPU per request from
# /proc, summed over the proxy's whole session). Switchyard runs bench/configs/plain.yaml.
#
#   bench/scenarios.sh get        # small GETs, keep-alive, one worker each (pinned)
#   bench/scenarios.sh workers2   # 2 workers each, unpinned, wrk 2 threads; ours2 = switchyard with 1 worker
#   bench/scenarios.sh post1k     # 1 KiB POSTs, keep-alive (nginx backends: the default one refuses bodies)
#   bench/scenarios.sh post4k     # 4 KiB POSTs, keep-alive
#   bench/scenarios.sh h2c        # client-side h2c, 10 connections x 100 streams (h2load)
#   bench/scenarios.sh close      # Connection: close on every request
#   bench/scenarios.sh clients1000  # 1,000 keep-alive clients
#
# Extra arguments go to scenarios.py (e.g. --reps 5 --duration 10). Results:
# /tmp/peerbench/results/scenarios-<name>-<time>/summary.md (ratios at the end).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
harness="${SCENARIOS:-$root/../shared/bench/scenarios.py}"
name="${1:?usage: scenarios.sh get|workers2|post1k|post4k|h2c|close|clients1000 [scenarios.py args...]}"
shift
targets="haproxy,nginx,ours"
case "$name" in
  get) args=() ;;
  workers2) args=(--workers 2 --pin off --wrk-threads 2); targets="haproxy,ours,ours2" ;;
  post1k) args=(--method POST --req-body 1024 --backend nginx) ;;
  post4k) args=(--method POST --req-body 4096 --backend nginx) ;;
  h2c) args=(--load h2load --h2 --connections 10 --h2-streams 100) ;;
  close) args=(--close) ;;
  clients1000) args=(--connections 1000) ;;
  *) echo "unknown scenario $name" >&2; exit 2 ;;
esac

cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-scenarios.XXXXXX)"
trap 'rm -rf "$work"' EXIT INT TERM
cp "$here/configs/plain.yaml" "$work/config.yaml"
# ours2 (workers2 only) is the same binary with one worker: SY_THREADS beats the
# harness's worker count.
export OURS_CMD="exec $root/target/release/switchyard --config $work/config.yaml --listen \$PEERBENCH_LISTEN --admin-listen 127.0.0.1:0 --backend \$PEERBENCH_BACKENDS --threads \${SY_THREADS:-\$PEERBENCH_WORKERS}"
/usr/bin/python3 "$harness" bench --targets "$targets" --ours2-env "SY_THREADS=1" \
  --out "/tmp/peerbench/results/scenarios-$name-$(date +%Y%m%d-%H%M%S)" "${args[@]}" "$@"
