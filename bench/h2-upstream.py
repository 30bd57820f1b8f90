#!/usr/bin/python3
"""HTTP/2 to h2c backends beside HAProxy (and nginx grpc_pass), one interleaved run.

    flock /work/wt/bench.lock bench/h2-upstream.py [--reps 3] [--duration 5]

Three h2c backends (nginx, `listen ... http2`, `return 200 ok`), each proxy on
CPU 0 with one worker, h2load on CPU 1 with 10 connections x 100 streams
(h2c prior knowledge to the proxy). Per run: req/s and the proxy's CPU seconds
per 100k requests (utime+stime of all its processes from /proc). Targets:
haproxy (`proto h2` on the servers), nginx (`grpc_pass`, HTTP/2 to the backend;
nginx has no other h2 upstream), ours (`protocol: h2c`). Loopback only; ports
from the OS.

With --grpc: the backends are tonic echo servers and the load is gRPC unary
calls from a fixed tonic client (proxy/examples/grpc_load.rs, built with
`cargo build --release --example grpc_load`), 10 connections x 100 calls in
flight: calls/s and CPU per call.
"""
import argparse, json, os, re, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_split(pids):
    """(user, system) clock ticks of all of pids."""
    u = s = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u += int(fields[11])
            s += int(fields[12])
        except OSError:
            pass
    return u, s


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def session_pids(leader):
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(leader)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()] or [leader]


def wait_port(port, limit=20):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} did not open")


def start(name, argv, logdir, cpu):
    log = open(os.path.join(logdir, f"{name}.log"), "w")
    return subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def h2load(port, duration, conns, streams, path="/"):
    cmd = ["taskset", "-c", "1", "h2load", "-t", "1", "-c", str(conns), "-m", str(streams),
           "-D", str(duration), "--warm-up-time=1", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    st = re.search(r"status codes: (\d+) 2xx", out)
    return rps, int(m.group(2)), int(m.group(4)), int(st.group(1)) if st else 0, out


def grpc_load(tool, port, duration, conns, streams):
    cmd = ["taskset", "-c", "1", tool, "load", f"127.0.0.1:{port}", str(conns), str(streams), str(duration)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["calls_per_s"], r["ok"] + r["failed"], r["failed"], r["ok"], out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--targets", default="haproxy,nginx,ours")
    ap.add_argument("--ours-bin", default=os.path.join(ROOT, "target/release/switchyard"))
    ap.add_argument("--out", default="/tmp/switchyard-h2bench")
    ap.add_argument("--grpc", action="store_true")
    ap.add_argument("--grpc-tool", default=os.path.join(ROOT, "target/release/examples/grpc_load"))
    args = ap.parse_args()
    if args.grpc:
        global h2load
        h2load = lambda port, duration, conns, streams, path="/": grpc_load(  # noqa: E731
            args.grpc_tool, port, duration, conns, streams)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="h2bench.", dir="/tmp")
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir)
    procs = []
    leaders = {}
    try:
        bports = [free_port() for _ in range(3)]
        bdir = os.path.join(work, "backend")
        os.makedirs(bdir)
        servers = "\n".join(
            f"  server {{ listen 127.0.0.1:{p} http2; location / {{ return 200 \"ok\"; }} }}" for p in bports)
        with open(os.path.join(bdir, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {bdir}/nginx.pid; error_log {bdir}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_concurrent_streams 1000;
{servers}
}}
""")
        if args.grpc:
            procs.append(start("backend", [args.grpc_tool, "serve"] + [str(p) for p in bports], logdir, "1"))
        else:
            procs.append(start("backend", ["nginx", "-p", bdir, "-c", f"{bdir}/nginx.conf", "-e",
                                           f"{bdir}/error.log"], logdir, "1"))
        for p in bports:
            wait_port(p)
        ports = {}
        targets = [t for t in args.targets.split(",") if t]
        if "haproxy" in targets:
            ports["haproxy"] = free_port()
            srv = "\n".join(f"  server s{i} 127.0.0.1:{p} proto h2" for i, p in enumerate(bports))
            cfg = os.path.join(work, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{ports['haproxy']} proto h2
  default_backend be
backend be
  balance roundrobin
  http-reuse always
{srv}
""")
            leaders["haproxy"] = start("haproxy", ["haproxy", "-db", "-f", cfg], logdir, "0")
        if "nginx" in targets:
            ports["nginx"] = free_port()
            d = os.path.join(work, "nginx")
            os.makedirs(d)
            ups = "\n".join(f"    server 127.0.0.1:{p};" for p in bports)
            with open(os.path.join(d, "nginx.conf"), "w") as f:
                f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_concurrent_streams 1000;
  upstream be {{
{ups}
    keepalive 64;
  }}
  server {{ listen 127.0.0.1:{ports['nginx']} http2;
    location / {{ grpc_pass grpc://be; }} }}
}}
""")
            leaders["nginx"] = start("nginx", ["nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                                     logdir, "0")
        if "ours" in targets:
            ports["ours"] = free_port()
            cfg = os.path.join(work, "ours.yaml")
            bl = "".join(f"  - url: \"http://127.0.0.1:{p}\"\n    protocol: h2c\n" for p in bports)
            with open(cfg, "w") as f:
                f.write(f"server:\n  port: {ports['ours']}\n  admin_port: 0\n  bind: 127.0.0.1\n"
                        f"  threads: 1\n  http2_max_concurrent_streams: 1000\nbackends:\n{bl}")
            leaders["ours"] = start("ours", [args.ours_bin, "--config", cfg], logdir, "0")
        for t in targets:
            wait_port(ports[t])
        # Warm-up and a check that each answers 200.
        for t in targets:
            _, done, failed, ok, out = h2load(ports[t], 2, args.connections, args.streams)
            if ok == 0 or failed:
                sys.exit(f"{t}: warm-up failed:\n{out}")
        load = open("/proc/loadavg").read().split()[:3]
        runs = []
        for rep in range(args.reps):
            for t in targets:
                pids = session_pids(leaders[t].pid)
                u0, s0 = cpu_split(pids)
                rps, done, failed, ok, out = h2load(ports[t], args.duration, args.connections, args.streams)
                u1, s1 = cpu_split(pids)
                hz = os.sysconf("SC_CLK_TCK")
                per100k = 1 / hz / max(done, 1) * 1e5
                cpu100k = (u1 - u0 + s1 - s0) * per100k
                runs.append({"rep": rep, "target": t, "rps": rps, "done": done, "failed": failed,
                             "2xx": ok, "cpu_s_per_100k": cpu100k,
                             "user_s_per_100k": (u1 - u0) * per100k,
                             "sys_s_per_100k": (s1 - s0) * per100k})
                print(f"rep {rep} {t:8s} {rps:10.0f} req/s  cpu {cpu100k:6.3f} s/100k "
                      f"(user {(u1 - u0) * per100k:.3f}, sys {(s1 - s0) * per100k:.3f})  "
                      f"failed {failed}", file=sys.stderr, flush=True)
                time.sleep(1)
        load_after = open("/proc/loadavg").read().split()[:3]
        summary = {}
        for t in targets:
            rs = sorted(r["rps"] for r in runs if r["target"] == t)
            cs = sorted(r["cpu_s_per_100k"] for r in runs if r["target"] == t)
            summary[t] = {"rps_median": rs[len(rs) // 2], "cpu_median": cs[len(cs) // 2]}
        result = {"runs": runs, "summary": summary, "load_before": load, "load_after": load_after,
                  "connections": args.connections, "streams": args.streams, "duration": args.duration}
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(summary, indent=1))
        if "haproxy" in summary:
            h = summary["haproxy"]
            for t, s in summary.items():
                print(f"{t}: req/s {s['rps_median'] / h['rps_median']:.2f}x haproxy, "
                      f"CPU/request {s['cpu_median'] / h['cpu_median']:.2f}x haproxy")
        print(f"load before {load}, after {load_after}")
    finally:
        for p in leaders.values():
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass
        time.sleep(0.5)


if __name__ == "__main__":
    main()
