#!/usr/bin/env bash
# Bounded fuzzing: the config parser/validator, the admin request bodies, and the
# HTTP/1.1 codec every client and backend byte goes through (request heads,
# response heads, the chunked decoder, and request heads against httparse + the
# RFC 9112 framing rules).
#   scripts/fuzz.sh                  # 60 s per target, all targets
#   scripts/fuzz.sh 600              # 10 min per target
#   scripts/fuzz.sh 600 h1_request   # one target
# It saturates a core: on a shared machine run it under `flock /work/wt/bench.lock`.
#
# Toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...). With
# a nightly toolchain installed it is used (`cargo +nightly fuzz`); otherwise the
# stable toolchain runs with RUSTC_BOOTSTRAP=1, which unlocks those flags (the
# sanitizer runtime ships with it). Either way libFuzzer is linked by
# libfuzzer-sys. Findings land in fuzz/artifacts/<target>/ (fuzz/http1/artifacts/
# for h1_*); each becomes a
# regression case in fuzz/corpus/<target>/ (replayed by `cargo test` through
# proxy/http1/tests/fuzz_corpus.rs for the h1_* targets) before it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config_parse admin_body h1_request h1_response h1_chunked h1_differential)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
for target in "${targets[@]}"; do
  echo "==> $target for ${secs}s"
  mkdir -p "fuzz/corpus/$target"
  # Work on a copy so the committed seed corpus stays small.
  work="$(mktemp -d)"
  cp -r "fuzz/corpus/$target/." "$work/"
  case "$target" in
    # The codec's targets build from the wire crate alone (fuzz/http1), with
    # overflow checks on (-a) and no sanitizer: the crate forbids `unsafe`, so
    # AddressSanitizer would only halve the executions.
    h1_*) args=(--fuzz-dir fuzz/http1 -s none -a) ;;
    *) args=(--fuzz-dir fuzz) ;;
  esac
  cargo "${toolchain[@]}" fuzz run "${args[@]}" "$target" "$work" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
  echo "==> $target: corpus grew to $(ls "$work" | wc -l) inputs"
  rm -rf "$work"
done
