#!/usr/bin/env bash
# Local cluster, no Docker: Redis, a config git repository, three switchyard replicas
# following it, and three demo upstreams, all on this machine (loopback only).
#
#   scripts/local-cluster.sh            # replica 1 on :8080/:8081, 2 on :8082/:8083, 3 on :8084/:8085
#                                       # HTTPS: replica 1 on :8443, 2 on :8444, 3 on :8445
#
# Ctrl-C (or SIGTERM) stops everything it started, by PID, and waits for it to exit.
#
# Environment:
#   SWITCHYARD_BASE_PORT           first port of the replicas (default 8080): replica N
#                                  proxies on BASE+2(N-1) and has its admin API on the next one
#   SWITCHYARD_UPSTREAM_BASE_PORT  first demo upstream port (default 9001; then +1, +2)
#   SWITCHYARD_TLS_BASE_PORT       first HTTPS port (default 8443; then +1, +2), served with a
#                                  self-signed certificate for localhost made at start (openssl)
#   SWITCHYARD_CLUSTER_DIR         state: config repo, Redis socket, logs, PID files
#                                  (default target/local-cluster; recreated on every start)
#   SWITCHYARD_BIN, DEMO_UPSTREAM_BIN
#                                  binaries to run; when unset, both are built with cargo
#                                  (release, into ${CARGO_TARGET_DIR:-target}) and the
#                                  dashboard is built once if missing
set -euo pipefail

# A shell that starts with SIGINT or SIGTERM ignored (as anything started in the
# background by a non-interactive shell does: a CI job, a test harness) can neither
# trap nor restore them, and Ctrl-C would not stop it. Start again with the default
# dispositions (coreutils env); the processes below then get them too.
if [ -n "$(trap -p INT TERM)" ] && [ -z "${LOCAL_CLUSTER_SIGNALS_RESET:-}" ] &&
  env --default-signal=INT true 2>/dev/null; then
  LOCAL_CLUSTER_SIGNALS_RESET=1 exec env --default-signal=INT,TERM bash "$0" "$@"
fi

cd "$(dirname "$0")/.."

replicas=3
base=${SWITCHYARD_BASE_PORT:-8080}
upstream_base=${SWITCHYARD_UPSTREAM_BASE_PORT:-9001}
tls_base=${SWITCHYARD_TLS_BASE_PORT:-8443}
dir=${SWITCHYARD_CLUSTER_DIR:-target/local-cluster}
poll=1s

say() { echo "==> $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }



# --- binaries ---
if [ -n "${SWITCHYARD_BIN:-}" ] || [ -n "${DEMO_UPSTREAM_BIN:-}" ]; then
  [ -n "${SWITCHYARD_BIN:-}" ] && [ -n "${DEMO_UPSTREAM_BIN:-}" ] ||
    die "set both SWITCHYARD_BIN and DEMO_UPSTREAM_BIN, or neither"
  switchyard=$SWITCHYARD_BIN
  demo_upstream=$DEMO_UPSTREAM_BIN
else
  if [ -x scripts/build-dashboard.sh ] && [ ! -f dashboard-app/dist/index.html ]; then
    say "building the dashboard (first run only)"
    scripts/build-dashboard.sh
  fi
  say "building switchyard"
  cargo build --release -q --bin switchyard --bin demo-upstream
  switchyard="${CARGO_TARGET_DIR:-target}/release/switchyard"
  demo_upstream="${CARGO_TARGET_DIR:-target}/release/demo-upstream"
fi
[ -x "$switchyard" ] || die "$switchyard is not an executable"
[ -x "$demo_upstream" ] || die "$demo_upstream is not an executable"
switchyard=$(cd "$(dirname "$switchyard")" && pwd)/$(basename "$switchyard")
demo_upstream=$(cd "$(dirname "$demo_upstream")" && pwd)/$(basename "$demo_upstream")

# --- ports: refuse to start over something already listening ---
proxy_port() { echo $((base + 2 * ($1 - 1))); }
admin_port() { echo $((base + 2 * ($1 - 1) + 1)); }
upstream_port() { echo $((upstream_base + $1 - 1)); }
tls_port() { echo $((tls_base + $1 - 1)); }
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in $(seq "$replicas"); do
  for p in "$(proxy_port "$i")" "$(admin_port "$i")" "$(upstream_port "$i")" "$(tls_port "$i")"; do
    in_use "$p" && die "port $p is in use (another demo or cluster running? set SWITCHYARD_BASE_PORT / SWITCHYARD_UPSTREAM_BASE_PORT)"
  done
done

# --- state directory (only what this script creates is removed) ---
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/config-repo" "$dir/git-cache" "$dir/logs" "$dir/pids" "$dir/redis"
mkdir -p "$dir/git-cache" "$dir/logs" "$dir/pids" "$dir/redis"
repo="$dir/config-repo"
sock="$dir/redis/redis.sock"
if [ ${#sock} -gt 100 ]; then # unix socket paths are limited to ~107 bytes
  sock="$(mktemp -d /tmp/switchyard-redis.XXXXXX)/redis.sock"
fi

# --- process bookkeeping and shutdown ---
pids=()    # everything started, in start order
names=()
sleeper=""
started() { # name pid
  names+=("$1")
  pids+=("$2")
  echo "$2" > "$dir/pids/$1.pid"
}
# Alive and not a zombie (a zombie is gone; `wait` reaps it).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
cleanup() {
  trap - INT TERM EXIT
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  [ ${#pids[@]} -eq 0 ] && return 0
  echo
  say "stopping ${#pids[@]} processes"
  # Newest first: replicas drain (their in-flight requests finish), then the
  # upstreams and Redis go.
  local i pid deadline
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + 40)) # > server.grace_period (30s)
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then
      echo "local-cluster: ${names[i]} (pid $pid) did not stop; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  rm -f "$sock"
  say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Redis, on a unix socket ---
say "starting redis-server (unix://$sock)"
redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --save "" --appendonly no \
  --dir "$dir/redis" --logfile "$dir/logs/redis.log" &
started redis $!
for _ in $(seq 100); do
  [ "$(redis-cli -s "$sock" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
[ "$(redis-cli -s "$sock" ping 2>/dev/null)" = PONG ] || die "redis-server did not start (see $dir/logs/redis.log)"

# --- a self-signed certificate for the HTTPS listeners ---
mkdir -p "$dir/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$dir/tls/localhost.key" -out "$dir/tls/localhost.pem" 2>/dev/null ||
  die "openssl could not make a certificate"
tls_dir=$(cd "$dir/tls" && pwd)

# --- the config repository ---
say "creating the config repository $repo"
git init -q -b main "$repo"
# A throwaway repository: give it an identity so `git commit` works on any machine.
git -C "$repo" config user.name "switchyard local cluster"
git -C "$repo" config user.email "local-cluster@localhost"
{
  echo "# Followed by the replicas of scripts/local-cluster.sh (branch main, polled every $poll)."
  echo "# Edit, then \`git commit -am '...'\` in this directory: every replica validates and"
  echo "# applies the commit within a couple of seconds; one that does not validate is refused"
  echo "# (GET /admin/config says why) and the last good config keeps serving."
  echo "# Listeners come from each replica's --listen / --admin-listen, Redis from --redis-url."
  echo "strategy: round-robin"
  echo "health_check:"
  echo "  path: /health"
  echo "  interval: 2s"
  echo "  timeout: 500ms"
  echo "circuit_breaker:"
  echo "  failure_threshold: 5"
  echo "  open_duration: 10s"
  echo "cluster:"
  echo "  name: local"
  echo "tls:                # each replica's HTTPS address comes from --tls-listen"
  echo "  certificates:"
  echo "    - cert: \"$tls_dir/localhost.pem\""
  echo "      key: \"$tls_dir/localhost.key\""
  echo "# Last, so that a backend can be appended: cat >> config.yaml"
  echo "backends:"
  for i in $(seq "$replicas"); do
    echo "  - url: \"http://127.0.0.1:$(upstream_port "$i")\""
    echo "    weight: 1"
  done
} > "$repo/config.yaml"
"$switchyard" check "$repo/config.yaml" >/dev/null
git -C "$repo" add config.yaml
git -C "$repo" commit -q -m "Local cluster: three demo upstreams"

# --- demo upstreams ---
for i in $(seq "$replicas"); do
  "$demo_upstream" --listen "127.0.0.1:$(upstream_port "$i")" --name "backend$i" \
    > "$dir/logs/backend$i.log" 2>&1 &
  started "backend$i" $!
done

# --- replicas ---
for i in $(seq "$replicas"); do
  "$switchyard" --config "$repo/config.yaml" --config-repo "$repo" --config-ref main \
    --poll-interval "$poll" --git-cache "$dir/git-cache/replica$i" \
    --redis-url "unix://$sock" \
    --listen "127.0.0.1:$(proxy_port "$i")" --admin-listen "127.0.0.1:$(admin_port "$i")" \
    --tls-listen "127.0.0.1:$(tls_port "$i")" \
    > "$dir/logs/replica$i.log" 2>&1 &
  started "replica$i" $!
done

say "waiting for the replicas to be ready"
for i in $(seq "$replicas"); do
  ready=""
  for _ in $(seq 300); do
    alive "$(cat "$dir/pids/replica$i.pid")" || break
    if "$switchyard" probe --timeout 1s "http://127.0.0.1:$(admin_port "$i")/readyz" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    tail -n 20 "$dir/logs/replica$i.log" >&2 || true
    die "replica $i did not become ready (log: $dir/logs/replica$i.log)"
  fi
done

cat <<MSG

  Switchyard local cluster: $replicas replicas sharing state through Redis, following a git repository

MSG
for i in $(seq "$replicas"); do
  printf '  replica %d   proxy http://127.0.0.1:%d/   admin http://127.0.0.1:%d/admin/backends   dashboard http://127.0.0.1:%d/dashboard/\n' \
    "$i" "$(proxy_port "$i")" "$(admin_port "$i")" "$(admin_port "$i")"
done
for i in $(seq "$replicas"); do
  printf '  replica %d   https://127.0.0.1:%d/   (self-signed: curl --cacert %s/localhost.pem https://localhost:%d/)\n' \
    "$i" "$(tls_port "$i")" "$tls_dir" "$(tls_port "$i")"
done
for i in $(seq "$replicas"); do
  printf '  backend%d    http://127.0.0.1:%d/   (POST /_demo/control changes its behaviour)\n' "$i" "$(upstream_port "$i")"
done
cat <<MSG
  redis       unix://$sock   (redis-cli -s $sock)
  config      git repository $repo  (branch main, polled every $poll)
  logs        $dir/logs/
  PIDs        $dir/pids/   (e.g. kill \$(cat $dir/pids/backend2.pid) crashes backend2)

  Change the backends with a git commit:
    cd $repo
    \$EDITOR config.yaml            # e.g. a weight, or another backend
    git commit -am "Change backends"
  Every replica applies it within about two seconds: curl http://127.0.0.1:$(admin_port 1)/admin/config shows the commit.

  Ctrl-C stops everything this script started.

MSG
echo "local-cluster: ready"

# Wait for Ctrl-C / SIGTERM; say so if a replica or Redis dies meanwhile (upstreams
# may be stopped on purpose: the walkthrough crashes one).
reported=()
while :; do
  sleep 2 &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
  for i in "${!names[@]}"; do
    case ${names[i]} in backend*) continue ;; esac
    if ! alive "${pids[i]}" && [[ " ${reported[*]} " != *" ${names[i]} "* ]]; then
      echo "local-cluster: ${names[i]} (pid ${pids[i]}) exited; see $dir/logs/${names[i]}.log" >&2
      reported+=("${names[i]}")
    fi
  done
done
