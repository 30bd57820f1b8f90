#!/usr/bin/env bash
# Runs ../shared/bench/peerbench.py with switchyard as "ours", using a config from
# bench/configs (listen address, backends and worker count come from the harness).
#
#   bench/run-peerbench.sh plain.yaml --targets direct,nginx,haproxy,ours
#   bench/run-peerbench.sh ratelimit-redis.yaml --targets haproxy,ours
#
# A config that mentions `@REDIS@` gets a private redis-server on a unix socket;
# one that mentions `@OTLP@` gets an OTLP/HTTP sink (nginx answering 200 to every
# POST) and `@DEAD@` a loopback port nothing listens on. All are started here and
# stopped on exit. Results: /tmp/peerbench/results/<timestamp>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
harness="${PEERBENCH:-$root/../shared/bench/peerbench.py}"
config="${1:?usage: run-peerbench.sh CONFIG [peerbench args...]}"
shift
[ -f "$config" ] || config="$here/configs/$config"

cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchyard
work="$(mktemp -d /tmp/switchyard-bench.XXXXXX)"
redis_pid=""
sink_pid=""
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
trap cleanup EXIT INT TERM

sink_port="$(free_port)"
sed -e "s|@REDIS@|unix://$work/redis.sock|g" -e "s|@OTLP@|http://127.0.0.1:$sink_port|g" \
    -e "s|@DEAD@|http://127.0.0.1:$(free_port)|g" "$config" > "$work/config.yaml"
if grep -q '@OTLP@' "$config"; then
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log stderr error;
pid $work/nginx/nginx.pid;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx;
  server { listen 127.0.0.1:$sink_port; location / { client_max_body_size 64m; return 200; } }
}
NGINX
  nginx -e stderr -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  sink_pid=$!
fi
if grep -q '@REDIS@' "$config"; then
  redis-server --port 0 --unixsocket "$work/redis.sock" --save "" --appendonly no --loglevel warning &
  redis_pid=$!
  for _ in $(seq 100); do [ -S "$work/redis.sock" ] && break; sleep 0.05; done
fi

export OURS_CMD="$root/target/release/switchyard --config $work/config.yaml --listen \$PEERBENCH_LISTEN --admin-listen 127.0.0.1:0 --backend \$PEERBENCH_BACKENDS --threads \$PEERBENCH_WORKERS"
export OURS_PORT="${OURS_PORT:-18099}"
export OURS_NAME="${OURS_NAME:-switchyard}"
/usr/bin/python3 "$harness" --wait-quiet 60 --retries 2 "$@"
