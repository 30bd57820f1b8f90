#!/usr/bin/env bash
# Builds the dashboard (crate dashboard-app, Leptos client-side rendering) into
# dashboard-app/dist/, with .br/.gz twins of each file. `cargo build` embeds that
# folder in the switchyard binary, which serves it at /dashboard/.
#
# Installs what is missing: the wasm32-unknown-unknown target, and wasm-bindgen-cli at
# exactly the version Cargo.lock pins for the wasm-bindgen crate (they must match).
# Everything the page loads is in dist/: no CDN, no external fonts.
# Idempotent: when nothing changed it only asks cargo (a second or two) and rewrites
# nothing, so the files' ETags stay the same.
set -euo pipefail
cd "$(dirname "$0")/.."

crate=dashboard-app
bin=dashboard-app          # cargo's wasm artifact name
out_name=dashboard_app     # what index.html imports
target=wasm32-unknown-unknown
profile=wasm-release       # size-tuned; see [profile.wasm-release] in Cargo.toml
dist=dashboard-app/dist
static_dir=dashboard-app/static
target_dir="${CARGO_TARGET_DIR:-target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { echo "==> $*"; }

# 1. the wasm32 target
if ! rustup target list --installed | grep -qx "$target"; then
  say "rustup target add $target"
  rustup target add "$target"
fi

# 2. compile (cargo decides whether anything changed)
say "cargo build -p $crate --profile $profile --target $target"
cargo build -q -p "$crate" --profile "$profile" --target "$target"
wasm="$target_dir/$target/$profile/$bin.wasm"
[ -f "$wasm" ] || { echo "build-dashboard: $wasm not found" >&2; exit 1; }

# 3. wasm-bindgen-cli, same version as the wasm-bindgen crate in Cargo.lock
want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' Cargo.lock)
[ -n "$want" ] || { echo "build-dashboard: wasm-bindgen not found in Cargo.lock" >&2; exit 1; }
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  say "cargo install wasm-bindgen-cli --version $want (have: ${have:-none}; takes a few minutes once)"
  # No --locked: one of its locked dependencies is gone from the registry.
  cargo install -q wasm-bindgen-cli --version "$want"
fi

# 4. JS glue + final wasm, only when the compiled module (or the tool) changed.
#    Written to a temporary directory and moved in, so a running proxy never serves
#    a half-written pair.
mkdir -p "$dist"
stamp="$target_dir/$target/$profile/dashboard-dist.stamp"   # outside dist/: not served
want_stamp="wasm-bindgen $want stripped $(cksum < "$wasm")"
if [ ! -f "$dist/$out_name.js" ] || [ ! -f "$dist/${out_name}_bg.wasm" ] \
   || [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  say "wasm-bindgen --target web -> $dist"
  tmp=$(mktemp -d "$dist/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-name "$out_name" --out-dir "$tmp" "$wasm"
  mv -f "$tmp/$out_name.js" "$dist/$out_name.js"
  mv -f "$tmp/${out_name}_bg.wasm" "$dist/${out_name}_bg.wasm"
  echo "$want_stamp" > "$stamp"
fi

# 5. the page and its stylesheet, copied only when they differ
for f in "$static_dir"/*; do
  name=$(basename "$f")
  if ! cmp -s "$f" "$dist/$name"; then
    cp "$f" "$dist/$name.tmp" && mv -f "$dist/$name.tmp" "$dist/$name"
  fi
done

# 6. precompressed twins (.br, .gz) the binary serves to browsers that accept them,
#    rewritten only when their file changed (a stale twin is never left behind).
command -v brotli >/dev/null 2>&1 || echo "build-dashboard: brotli not found (Debian: brotli); serving gzip only" >&2
for f in "$dist"/*.html "$dist"/*.js "$dist"/*.wasm "$dist"/*.css; do
  [ -f "$f" ] || continue
  if [ ! -f "$f.gz" ] || [ "$f" -nt "$f.gz" ]; then
    gzip -9 -n -c "$f" > "$f.gz.tmp" && mv -f "$f.gz.tmp" "$f.gz"
  fi
  if [ ! -f "$f.br" ] || [ "$f" -nt "$f.br" ]; then
    if command -v brotli >/dev/null 2>&1; then
      brotli -q 11 -f -o "$f.br.tmp" "$f" && mv -f "$f.br.tmp" "$f.br"
    else
      rm -f "$f.br"
    fi
  fi
done

size=$(wc -c < "$dist/${out_name}_bg.wasm")
say "dashboard built: $dist (${out_name}_bg.wasm: $((size / 1024)) KiB)"
