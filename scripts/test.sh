#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust (rustup) installed:
# installs what is missing (redis-server, redis-sentinel, brotli, chromium +
# chromedriver, git, pebble, openssl, curl, dnsmasq, docker.io, docker-compose, debootstrap,
# the wasm32 target, wasm-bindgen-cli), builds the dashboard (before cargo, so the
# binaries the tests run embed it), then runs fmt, clippy, every cargo test, and
# scripts/compose-test.sh (the Docker images built and the compose stack run for
# real; it starts dockerd if none runs). Arguments go to `cargo test`;
# SKIP_COMPOSE_TEST=1 leaves the Docker test out.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=()
need redis-server || pkgs+=(redis-server)
need redis-sentinel || pkgs+=(redis-sentinel)
need brotli || pkgs+=(brotli)
need chromium || pkgs+=(chromium)
need chromedriver || pkgs+=(chromium-driver)
need git || pkgs+=(git)
need pebble || pkgs+=(pebble)          # ACME tests (Pebble + pebble-challtestsrv)
need openssl || pkgs+=(openssl)        # TLS resumption test (s_client)
need curl || pkgs+=(curl)              # HTTPS test (curl --cacert --resolve)
# DNS discovery test (tests/dns.rs): the dnsmasq binary, without the package `dnsmasq`'s
# system service that would take port 53.
[ -x /usr/sbin/dnsmasq ] || need dnsmasq || pkgs+=(dnsmasq-base)
if [ "${SKIP_COMPOSE_TEST:-0}" != 1 ]; then
  need dockerd || pkgs+=(docker.io)
  need docker-compose || pkgs+=(docker-compose)
  need debootstrap || pkgs+=(debootstrap)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "==> installing ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# Test builds: line tables only (backtraces keep file:line; full debug info makes
# every test binary several times larger and slower to link), and the dashboard
# without whole-program optimisation (its size is the release build's business).
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
if [ -x scripts/build-dashboard.sh ]; then
  echo "==> building the dashboard"
  CARGO_PROFILE_WASM_RELEASE_LTO=${CARGO_PROFILE_WASM_RELEASE_LTO:-false} \
  CARGO_PROFILE_WASM_RELEASE_CODEGEN_UNITS=${CARGO_PROFILE_WASM_RELEASE_CODEGEN_UNITS:-16} \
    scripts/build-dashboard.sh
fi

echo "==> [$SECONDS s] cargo fmt --check"
cargo fmt --all -- --check
echo "==> [$SECONDS s] cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> [$SECONDS s] cargo test"
cargo test --workspace "$@"
if [ "${SKIP_COMPOSE_TEST:-0}" != 1 ]; then
  echo "==> [$SECONDS s] scripts/compose-test.sh"
  # The images with the binaries cargo just built (the demo upstream's as the tests
  # build it), not compiled a second time inside Docker; `scripts/compose-test.sh`
  # alone builds them with deploy/Dockerfile's builder, as a user's compose build does.
  cargo build -q -p switchyard --bin switchyard -p switchyard-demo --bin demo-upstream
  SWITCHYARD_COMPOSE_BINARIES=target/debug scripts/compose-test.sh
fi
