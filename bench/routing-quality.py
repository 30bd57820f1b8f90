#!/usr/bin/env python3
"""Routing quality: how much of a sick backend's trouble reaches the clients.

Three demo upstreams (`target/release/demo-upstream`) behind each proxy. Scenarios:

  healthy  all three answer at once
  slow     one answers 50 ms later than the others
  failing  one answers 20 % of requests with 500

Targets: switchyard with `round-robin`, `least-connections` and `adaptive`, nginx
`least_conn` and HAProxy `leastconn`, each configured the way an experienced user
would run it (retry an idempotent request that got a 5xx once on another server,
health checks on /health, passive ejection: our circuit breaker, nginx max_fails,
HAProxy `observe layer7`).

Load: wrk, 16 keep-alive connections, each pausing 10 ms between requests (about
1,500 req/s offered when everything is fast: latency is measured, not saturation).
Every run starts a fresh proxy, sets the scenario, warms up 2 s, then measures.
Reported per target and scenario (median over the repetitions): p50, p99, the
client-visible error share (non-2xx answers and socket errors) and the share of
requests that reached the sick backend (from its own counter).

Only loopback addresses are used. Usage (from the repository root):

    cargo build --release --bins
    bench/routing-quality.py [--reps 3] [--duration 8] [--out DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request

from benchlib import RELEASE, free_port, require_release_bins, stop, wait_ready

WRK_LUA = r"""
local pause = tonumber(os.getenv("RQ_PAUSE_MS") or "10")
function delay() return pause end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %d %d %d %d %d %d %d %d %d\n",
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""

SCENARIOS = {
    "healthy": {},
    "slow": {"latency_ms": 50},
    "failing": {"fail_rate": 0.2},
}
RESET = {"latency_ms": 0, "fail_rate": 0}
TARGETS = ["round-robin", "least-connections", "adaptive", "nginx", "haproxy"]




def http(method, url, body=None, timeout=2.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()




def start(cmd, log, cpu=None):
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)




def ours_config(strategy, port, backends):
    lines = [
        "server:",
        f"  port: {port}",
        "  admin_port: 0",
        "  bind: 127.0.0.1",
        "  threads: 1",
        f"strategy: {strategy}",
        "backends:",
    ]
    lines += [f'  - url: "http://{b}"' for b in backends]
    lines += [
        "retries:",
        "  attempts: 1",
        "  on_status: [500, 502, 503, 504]",
        "health_check:",
        "  path: /health",
        "  interval: 2s",
        "  timeout: 500ms",
        "circuit_breaker:",
        "  failure_threshold: 5",
        "  failure_rate: 0.1",
        "  window: 10s",
        "  min_requests: 20",
        "  open_duration: 10s",
        "logging:",
        "  access_log: false",
    ]
    return "\n".join(lines) + "\n"


def nginx_config(work, port, backends):
    servers = "\n".join(f"    server {b} max_fails=3 fail_timeout=10s;" for b in backends)
    return f"""worker_processes 1;
error_log stderr error;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work};
  proxy_temp_path {work};
  upstream app {{
    least_conn;
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
"""


def haproxy_config(port, backends):
    servers = "\n".join(
        f"  server s{i} {b} check inter 2s observe layer7 error-limit 10 on-error mark-down"
        for i, b in enumerate(backends)
    )
    return f"""global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend app
backend app
  balance leastconn
  option httpchk GET /health
  option redispatch 1
  retries 1
  retry-on conn-failure empty-response response-timeout 500 502 503 504
{servers}
"""


def start_target(target, work, backends, log):
    port = free_port()
    if target in ("round-robin", "least-connections", "adaptive"):
        path = os.path.join(work, f"{target}.yaml")
        with open(path, "w") as f:
            f.write(ours_config(target, port, backends))
        cmd = [os.path.join(RELEASE, "switchyard"), "--config", path]
    elif target == "nginx":
        path = os.path.join(work, "nginx.conf")
        with open(path, "w") as f:
            f.write(nginx_config(work, port, backends))
        cmd = ["nginx", "-e", "stderr", "-p", work, "-c", path, "-g", "daemon off;"]
    elif target == "haproxy":
        path = os.path.join(work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_config(port, backends))
        cmd = ["haproxy", "-db", "-f", path]
    else:
        raise ValueError(target)
    proc = start(cmd, log, cpu=0)
    wait_ready(f"http://127.0.0.1:{port}/", proc)
    return proc, port


def requests_seen(backend):
    _, body = http("GET", f"http://{backend}/_demo/stats")
    return json.loads(body)["requests"]


def run_wrk(port, lua, duration):
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s", "--timeout", "5s", "-s", lua,
           f"http://127.0.0.1:{port}/"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30,
                         env=dict(os.environ, RQ_PAUSE_MS="10"))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            n, status, conn, read, write, tmo, p50, p99, mx = map(int, line.split()[1:])
            return {
                "requests": n,
                "errors": status + conn + read + write + tmo,
                "p50_ms": p50 / 1000.0,
                "p99_ms": p99 / 1000.0,
                "max_ms": mx / 1000.0,
            }
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def one_run(target, scenario, work, backends, lua, args, log):
    for b in backends:
        http("POST", f"http://{b}/_demo/control", RESET)
    proc, port = start_target(target, work, backends, log)
    try:
        http("POST", f"http://{backends[0]}/_demo/control", SCENARIOS[scenario])
        run_wrk(port, lua, args.warmup)
        before = requests_seen(backends[0])
        res = run_wrk(port, lua, args.duration)
        sick = requests_seen(backends[0]) - before
    finally:
        stop(proc)
        for b in backends:
            http("POST", f"http://{b}/_demo/control", RESET)
    res["sick_share"] = sick / max(res["requests"], 1)
    res["error_share"] = res["errors"] / max(res["requests"], 1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    targets = args.targets.split(",")
    scenarios = args.scenarios.split(",")
    require_release_bins()
    for tool in ("wrk", "nginx", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")

    work = tempfile.mkdtemp(prefix="routing-quality.")
    out = args.out or os.path.join(work, "results")
    os.makedirs(out, exist_ok=True)
    lua = os.path.join(work, "rq.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    log = open(os.path.join(out, "processes.log"), "w")
    upstreams, backends = [], []
    results = {}
    try:
        for i in range(3):
            port = free_port()
            addr = f"127.0.0.1:{port}"
            p = start([os.path.join(RELEASE, "demo-upstream"), "--listen", addr,
                       "--name", f"b{i + 1}"], log, cpu=1)
            upstreams.append(p)
            wait_ready(f"http://{addr}/health", p)
            backends.append(addr)
        for rep in range(args.reps):
            for scenario in scenarios:
                for target in targets:
                    r = one_run(target, scenario, work, backends, lua, args, log)
                    results.setdefault((target, scenario), []).append(r)
                    print(f"rep {rep + 1} {scenario:8} {target:18} p50 {r['p50_ms']:7.3f} ms"
                          f"  p99 {r['p99_ms']:7.3f} ms  errors {100 * r['error_share']:6.3f} %"
                          f"  to sick backend {100 * r['sick_share']:6.2f} %", flush=True)
    finally:
        for p in upstreams:
            stop(p)
        log.close()

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in results.items()}
    lines = ["| scenario | target | p50 ms | p99 ms | p99 ÷ own healthy p99 | client errors % "
             "| requests to the sick backend % |", "|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        for target in targets:
            m = med[(target, scenario)]
            base = med.get((target, "healthy"), {}).get("p99_ms")
            ratio = f"{m['p99_ms'] / base:.2f}" if base else "–"
            sick = "–" if scenario == "healthy" else f"{100 * m['sick_share']:.2f}"
            lines.append(f"| {scenario} | {target} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
                         f"{ratio} | {100 * m['error_share']:.3f} | {sick} |")
    table = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({f"{t}/{s}": v for (t, s), v in results.items()}, f, indent=1)
    print()
    print(table)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
