#!/usr/bin/env bash
# The Docker path for real: builds the images with deploy/Dockerfile, brings up
# docker-compose.yml and runs the production scenarios against the running stack
# through its published ports (`cargo test -p switchyard --test deploy compose --
# --ignored`, proxy/tests/deploy/compose.rs). scripts/test.sh runs it last.
#
#   scripts/compose-test.sh           # keeps the images it built or stood in (a cache)
#   scripts/compose-test.sh --cold    # removes them and the build cache first
#   scripts/compose-test.sh --keep    # leaves the stack (and dockerd) running at the end,
#                                     # for debugging; prints how to take it down
#
# On a fresh Debian machine, as root (or with sudo):
# - installs what is missing: docker.io, docker-compose (1.29), debootstrap, git;
# - starts dockerd if none runs, and stops it again at the end;
# - for each registry image the Dockerfile and the compose file name that is neither
#   present nor pullable, builds a local stand-in: debian:<release>-slim bootstrapped
#   from Debian's archive with debootstrap; rust:<version>-<release> from it plus the
#   host's Rust toolchain; redis:* and prom/prometheus:* from Debian's packages
#   (scripts/compose-test/*.Dockerfile);
# - leaves out the `telemetry` profile (Collector, Jaeger) when their images cannot
#   be had (they have no Debian package);
# - publishes every port on a free one Docker picks (no fixed host ports);
# - tears everything down on exit, failure or Ctrl-C included: `compose down -v
#   --remove-orphans` (backend4, which the scale-out scenario starts, included), then
#   checks nothing of the project is left; stops dockerd if it started it (by PID).
#
# Environment: SWITCHYARD_COMPOSE_BINARIES=<dir> takes the switchyard and
# demo-upstream binaries from <dir> (e.g. target/debug after `cargo test`; stripped
# into deploy/prebuilt/, the Dockerfile's BINARIES=prebuilt) instead of compiling
# them in the builder image: scripts/test.sh does this, so CI does not build the
# workspace a second time; without it the images are built exactly as a user's
# `docker-compose build` does. SWITCHYARD_COMPOSE_TEST_DIR (logs and staging; default
# target/compose-test), SWITCHYARD_COMPOSE_PROJECT (default switchyard-test),
# SWITCHYARD_COMPOSE_CLI (default docker-compose; "docker compose" for v2),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${SWITCHYARD_COMPOSE_TEST_DIR:-$root/target/compose-test}
project=${SWITCHYARD_COMPOSE_PROJECT:-switchyard-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$root/scripts/compose-test
cold=0
keep=0
for arg in "$@"; do
  case "$arg" in
    --cold) cold=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--cold] [--keep]" >&2; exit 2 ;;
  esac
done

say() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'compose-test: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$work"

# === what the machine needs ===
pkgs=()
need dockerd || pkgs+=(docker.io)
need docker-compose || pkgs+=(docker-compose)
need debootstrap || pkgs+=(debootstrap)
need git || pkgs+=(git)
if [ ${#pkgs[@]} -gt 0 ]; then
  say "installing ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# BuildKit builds (deploy/Dockerfile uses cache mounts). A Docker CLI of 23 or later
# builds with BuildKit only through its buildx plugin; without it, use Debian's
# docker.io client (20.10), which has BuildKit built in, for everything here.
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ] && [ "$(command -v docker)" != /usr/bin/docker ]; then
  mkdir -p "$work/bin"
  ln -sf /usr/bin/docker "$work/bin/docker"
  export PATH="$work/bin:$PATH"
fi
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
# SWITCHYARD_COMPOSE_CLI picks another compose command (e.g. "docker compose", v2).
read -r -a compose_cli <<< "${SWITCHYARD_COMPOSE_CLI:-docker-compose}"
compose=("${compose_cli[@]}" --project-name "$project" --file "$root/docker-compose.yml")

# `compose down` of everything, every profile's services included (compose v2 leaves
# those of inactive profiles alone, e.g. backend4 once the scale-out started it).
down_all() {
  local all
  all=$("${compose[@]}" config --profiles 2>/dev/null | paste -sd, -)
  COMPOSE_PROFILES=$all "${compose[@]}" down --volumes --remove-orphans --timeout 10 \
    >> "$work/compose-down.log" 2>&1
}

# === teardown, whatever happens ===
dockerd_pid=
up=0
prebuilt=
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$keep" = 1 ]; then
    say "--keep: the stack runs on; take it down with: ${compose[*]} down --volumes"
    [ -z "$dockerd_pid" ] || say "and stop dockerd: kill $dockerd_pid"
    exit "$rc"
  fi
  [ -z "$prebuilt" ] || rm -rf "$prebuilt"
  if [ "$up" = 1 ]; then
    "${compose[@]}" logs --no-color --timestamps > "$work/compose.log" 2>&1
    if [ "$rc" != 0 ]; then
      say "failed: the last log lines of each service (all of them in $work/compose.log)"
      "${compose[@]}" logs --no-color --tail=25 2>&1 | tail -n 250
    fi
    say "compose down"
    down_all
  fi
  if docker info >/dev/null 2>&1; then
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; \
           docker network ls -q --filter "label=com.docker.compose.project=$project"; \
           docker volume ls -q --filter "label=com.docker.compose.project=$project")
    if [ -n "$left" ]; then
      say "LEFT OVER after teardown: $(echo $left)"
      [ "$rc" != 0 ] || rc=1
    else
      say "teardown: no containers, networks or volumes of $project left"
    fi
  fi
  if [ -n "$dockerd_pid" ]; then
    say "stopping the dockerd this script started (pid $dockerd_pid)"
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -9 "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
    if docker info > /dev/null 2>&1; then
      say "LEFT OVER: a Docker daemon still answers after stopping pid $dockerd_pid"
      [ "$rc" != 0 ] || rc=1
    fi
  fi
  say "compose-test: $([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)") in ${SECONDS}s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# === dockerd ===
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $work/dockerd.log)"
  # Not through as_root: a function run in the background is a subshell, and $!
  # would be its PID, not dockerd's (sudo passes SIGTERM on to dockerd).
  if [ "$(id -u)" = 0 ]; then
    dockerd > "$work/dockerd.log" 2>&1 &
  else
    sudo dockerd > "$work/dockerd.log" 2>&1 &
  fi
  dockerd_pid=$!
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$work/dockerd.log")"
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
fi

# Leftovers of an interrupted earlier run of this project.
down_all || true

# === base images: present, pulled, or a local stand-in ===
release=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' deploy/Dockerfile)
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' deploy/Dockerfile)
[ -n "$release" ] && [ -n "$rust_version" ] || die "deploy/Dockerfile: no ARG DEBIAN_RELEASE= / RUST_VERSION= default"
debian_image=debian:$release-slim
rust_image=rust:$rust_version-$release

# Registry images of docker-compose.yml (services without a build), with the
# profiles that use them, read by compose itself and PyYAML (docker-compose's own).
registry_images() {
  COMPOSE_PROFILES=telemetry "${compose[@]}" config | python3 -c '
import sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
for s in services.values():
    if "build" not in s:
        print(s["image"], ",".join(s.get("profiles", [])) or "-")'
}

if [ "$cold" = 1 ]; then
  say "--cold: removing the images, stand-ins and the build cache"
  for img in switchyard:dev switchyard-https:dev switchyard-demo-upstream:dev switchyard-config-repo:dev \
             "$debian_image" "$rust_image" $(registry_images | awk '{ print $1 }'); do
    docker image rm -f "$img" > /dev/null 2>&1 || true
  done
  docker builder prune -af > /dev/null
fi

have_image() { docker image inspect "$1" > /dev/null 2>&1; }
pull() { timeout 300 docker pull -q "$1" > /dev/null 2>&1; }

# A Debian image like the registry's -slim ones: debootstrap minbase, no docs, man
# pages or locales, apt lists dropped.
standin_debian() {
  local tag=$1 rel=$2 dir="$work/rootfs-$2"
  as_root rm -rf "$dir"
  say "debootstrap --variant=minbase $rel (log: $work/debootstrap-$rel.log)"
  as_root debootstrap --variant=minbase "$rel" "$dir" "$mirror" > "$work/debootstrap-$rel.log" 2>&1 \
    || die "debootstrap $rel failed: $(tail -n 5 "$work/debootstrap-$rel.log")"
  as_root sh -c "
    set -e
    cat > '$dir/etc/dpkg/dpkg.cfg.d/docker-slim' <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
    cat > '$dir/etc/apt/apt.conf.d/docker-clean' <<'EOF'
DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };
Dir::Cache::pkgcache \"\";
Dir::Cache::srcpkgcache \"\";
Acquire::Languages \"none\";
EOF
    rm -f '$dir/etc/apt/sources.list'
    cat > '$dir/etc/apt/sources.list.d/debian.sources' <<EOF
Types: deb
URIs: $mirror
Suites: $rel $rel-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $rel-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf '$dir'/var/cache/apt/archives/*.deb '$dir'/var/lib/apt/lists/* '$dir'/usr/share/doc/* \
      '$dir'/usr/share/man/* '$dir'/usr/share/info/* '$dir'/usr/share/locale/* \
      '$dir/etc/resolv.conf' '$dir/etc/hostname'
  "
  as_root tar --numeric-owner -C "$dir" -c . | docker import --change 'CMD ["bash"]' - "$tag" > /dev/null
  as_root rm -rf "$dir"
}

# The builder: the Debian stand-in plus the host's toolchain (which must be the
# version the Dockerfile names: no other can be fetched here), with the wasm32 target.
standin_rust() {
  local tag=$1 stage="$work/rust-context"
  local have sysroot full host
  have=$(rustc --version 2>/dev/null | awk '{ print $2 }') || true
  case "$have" in
    "$rust_version" | "$rust_version".*) ;;
    *) die "the host's rustc is '${have:-missing}', the Dockerfile wants $rust_version: no stand-in for $tag" ;;
  esac
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ] || rustup target add wasm32-unknown-unknown
  full=$have-$host
  rm -rf "$stage"
  mkdir -p "$stage/rustup/toolchains/$full/bin" "$stage/cargo/bin" "$stage/ca"
  # The host's own CA certificates (e.g. of a TLS-inspecting egress proxy), for cargo.
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$stage/ca/" \; 2>/dev/null || true
  # Hard links where the file system allows (no copy of ~700 MB), else a copy.
  cp -al "$sysroot/lib" "$sysroot/libexec" "$sysroot/etc" "$stage/rustup/toolchains/$full/" 2>/dev/null \
    || cp -a "$sysroot/lib" "$sysroot/libexec" "$sysroot/etc" "$stage/rustup/toolchains/$full/"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$sysroot/bin/rustdoc" "$stage/rustup/toolchains/$full/bin/"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$full" > "$stage/rustup/settings.toml"
  cp "$(command -v rustup)" "$stage/cargo/bin/rustup"
  for p in cargo rustc rustdoc; do ln -s rustup "$stage/cargo/bin/$p"; done
  # wasm-bindgen-cli when the host has it (scripts/build-dashboard.sh installs it):
  # saves the builder compiling it; the script there checks its version.
  if need wasm-bindgen; then cp "$(command -v wasm-bindgen)" "$stage/cargo/bin/"; fi
  docker build -q -f "$here/rust.Dockerfile" --build-arg "BASE=$debian_image" \
    --build-arg "RUST_VERSION=$have" -t "$tag" "$stage" > "$work/standin-rust.log" 2>&1 \
    || die "stand-in $tag: $(tail -n 20 "$work/standin-rust.log")"
  rm -rf "$stage"
}

standin_package() {
  local tag=$1 recipe=$2
  docker build -q -f "$here/$recipe.Dockerfile" --build-arg "BASE=$debian_image" -t "$tag" "$here" \
    > "$work/standin-$recipe.log" 2>&1 || die "stand-in $tag: $(tail -n 20 "$work/standin-$recipe.log")"
}

# ensure IMAGE [STAND-IN COMMAND...]: 0 when the image is there afterwards.
ensure() {
  local img=$1
  shift
  if have_image "$img"; then say "$img: present"; return 0; fi
  if pull "$img"; then say "$img: pulled"; return 0; fi
  [ $# -gt 0 ] || return 1
  say "$img: cannot be pulled; building a local stand-in"
  "$@"
  have_image "$img"
}

t0=$SECONDS
ensure "$debian_image" standin_debian "$debian_image" "$release"
binaries=${SWITCHYARD_COMPOSE_BINARIES:-}
if [ -n "$binaries" ]; then
  for b in switchyard demo-upstream; do
    [ -x "$binaries/$b" ] || die "SWITCHYARD_COMPOSE_BINARIES=$binaries: no executable $b there"
  done
  say "binaries: prebuilt, from $binaries (no builder image)"
else
  ensure "$rust_image" standin_rust "$rust_image"
fi
profiles=telemetry
left_out=()
while read -r img img_profiles; do
  case "$img" in
    redis:*) ensure "$img" standin_package "$img" redis ;;
    prom/prometheus:*) ensure "$img" standin_package "$img" prometheus ;;
    *) if ! ensure "$img"; then
         [ "$img_profiles" = telemetry ] || die "$img cannot be pulled and has no stand-in"
         left_out+=("$img")
         profiles=
       fi ;;
  esac
done < <(registry_images)
export COMPOSE_PROFILES=$profiles
if [ -n "$profiles" ]; then
  say "profile telemetry: on"
else
  say "profile telemetry: left out (cannot pull ${left_out[*]})"
fi
say "base images ready in $((SECONDS - t0))s"

# === build ===
t0=$SECONDS
say "building the images with deploy/Dockerfile (log: $work/build.log)"
# A quicker build profile than the release one (no LTO, opt-level 1): the images are
# checked for working, not for speed. SWITCHYARD_COMPOSE_RELEASE=1 builds them as
# shipped (the sizes in the README are those).
build_args=()
if [ -n "$binaries" ]; then
  prebuilt=$root/deploy/prebuilt
  rm -rf "$prebuilt"
  mkdir -p "$prebuilt"
  for b in switchyard demo-upstream; do
    objcopy --strip-debug "$binaries/$b" "$prebuilt/$b" || die "objcopy $binaries/$b failed"
  done
  build_args+=(--build-arg BINARIES=prebuilt)
elif [ "${SWITCHYARD_COMPOSE_RELEASE:-0}" != 1 ]; then
  for a in CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_WASM_RELEASE_LTO=false \
    CARGO_PROFILE_WASM_RELEASE_CODEGEN_UNITS=16; do
    build_args+=(--build-arg "$a")
  done
fi
"${compose[@]}" build "${build_args[@]}" > "$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; die "image build failed"; }
# The proxy with git over https too (not in the compose file): it builds, and its size.
docker build -q "${build_args[@]}" -f deploy/Dockerfile --target switchyard-https -t switchyard-https:dev . \
  >> "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; die "switchyard-https build failed"; }
build_s=$((SECONDS - t0))
say "images built in ${build_s}s:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^switchyard' | sort | sed 's/^/      /' || true

# === up ===
# Every published port on a free port of Docker's choosing; a random admin token.
export SWITCHYARD_1_PORT= SWITCHYARD_1_ADMIN_PORT= SWITCHYARD_2_PORT= SWITCHYARD_2_ADMIN_PORT= \
  SWITCHYARD_1_TLS_PORT= SWITCHYARD_2_TLS_PORT= \
  BACKEND1_PORT= BACKEND2_PORT= BACKEND3_PORT= CONFIG_REPO_PORT= PROMETHEUS_PORT= JAEGER_UI_PORT=
SWITCHYARD_ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
export SWITCHYARD_ADMIN_TOKEN
t0=$SECONDS
say "compose up"
up=1
"${compose[@]}" up -d --no-build > "$work/up.log" 2>&1 || { cat "$work/up.log"; die "compose up failed"; }
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null; }
for svc in redis config-repo switchyard-1 switchyard-2; do
  id=$("${compose[@]}" ps -q "$svc")
  [ -n "$id" ] || die "no container for $svc"
  for _ in $(seq 180); do
    [ "$(health "$id")" = healthy ] && break
    sleep 1
  done
  [ "$(health "$id")" = healthy ] || die "$svc not healthy after 180 s: $(health "$id")"
done
say "stack up and healthy in $((SECONDS - t0))s"

# === the scenarios ===
say "scenarios: cargo test -p switchyard --test deploy compose -- --ignored"
SWITCHYARD_COMPOSE="${compose[*]}" SWITCHYARD_COMPOSE_PREBUILT=${binaries:+1} \
  cargo test -q -p switchyard --test deploy compose -- --ignored --nocapture --test-threads=1
