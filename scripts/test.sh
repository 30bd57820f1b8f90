#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust (rustup) installed:
# installs what is missing (redis-server, chromium + chromedriver, git, pebble, openssl,
# curl, the wasm32 target, wasm-bindgen-cli), builds the dashboard, then runs fmt,
# clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=()
need redis-server || pkgs+=(redis-server)
need chromium || pkgs+=(chromium)
need chromedriver || pkgs+=(chromium-driver)
need git || pkgs+=(git)
need pebble || pkgs+=(pebble)          # ACME tests (Pebble + pebble-challtestsrv)
need openssl || pkgs+=(openssl)        # TLS resumption test (s_client)
need curl || pkgs+=(curl)              # HTTPS test (curl --cacert --resolve)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "==> installing ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

if [ -x scripts/build-dashboard.sh ]; then
  echo "==> building the dashboard"
  scripts/build-dashboard.sh
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace "$@"
