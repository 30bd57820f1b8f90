#!/usr/bin/env bash
# Bounded fuzzing of the config parser/validator and the admin request bodies.
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 300        # 5 min per target
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 allows them on the
# stable toolchain (the sanitizer runtime ships with it). Findings land in
# fuzz/artifacts/<target>/; each becomes a regression test before it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in config_parse admin_body; do
  echo "==> $target for ${secs}s"
  mkdir -p "fuzz/corpus/$target"
  # work on a copy so the committed seed corpus stays small
  work="$(mktemp -d)"
  cp -r "fuzz/corpus/$target/." "$work/"
  cargo fuzz run --fuzz-dir fuzz "$target" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536
  rm -rf "$work"
done
