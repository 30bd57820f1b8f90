# Sourced by the bench scripts: `start_backends WORKDIR BODY PORT PORT PORT` starts
# three loopback backends and appends their pids to `pids`. For GETs (BODY 0) the
# peerbench backend (it refuses requests with a body); for POSTs nginx answering
# 200 to everything, reading and dropping the body, keep-alive like the other.
start_backends() {
  local work="$1" body="$2"; shift 2
  if [ "$body" -eq 0 ]; then
    local bin=/tmp/peerbench/target-backend/release/peerbench-backend
    [ -x "$bin" ] || cargo build --release -q --manifest-path "$root/../shared/bench/backend-rs/Cargo.toml" --target-dir /tmp/peerbench/target-backend
    "$bin" "$@" 2>/dev/null & pids+=($!)
  else
    mkdir -p "$work/backend"
    local servers="" i=1
    for p in "$@"; do
      servers+="  server { listen 127.0.0.1:$p backlog=4096; location / { return 200 \"b$i\\n\"; } }"$'\n'
      i=$((i + 1))
    done
    cat > "$work/backend/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $work/backend/error.log error;
pid $work/backend/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/backend;
  proxy_temp_path $work/backend;
  fastcgi_temp_path $work/backend;
  uwsgi_temp_path $work/backend;
  scgi_temp_path $work/backend;
$servers}
NGINX
    nginx -p "$work/backend" -c "$work/backend/nginx.conf" -e "$work/backend/error.log" & pids+=($!)
  fi
  for p in "$@"; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
  done
}

# `post_lua FILE BODY`: a wrk script sending POSTs of BODY bytes.
post_lua() {
  printf 'wrk.method = "POST"\nwrk.body = string.rep("a", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' "$2" > "$1"
}

# `haproxy_config LISTEN_PORT B1 B2 B3` prints the HAProxy peer's config: one
# thread, round-robin over three loopback backends, keep-alive both sides.
haproxy_config() {
  local lp="$1" b1="$2" b2="$3" b3="$4"
  cat <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$lp backlog 4096
  default_backend be
backend be
  balance roundrobin
  server b1 127.0.0.1:$b1
  server b2 127.0.0.1:$b2
  server b3 127.0.0.1:$b3
CFG
}
