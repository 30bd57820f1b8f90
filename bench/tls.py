#!/usr/bin/python3
"""TLS beside HAProxy (OpenSSL), in one interleaved run (docs/benchmarks.md §7).

Scenarios, each run against every target in turn, repeated --reps times:
  keepalive  wrk, 64 keep-alive HTTPS connections (HTTP/1.1): req/s, p99, proxy CPU per request
  full       openssl s_time -new: full TLS 1.3 handshakes (ECDSA P-256), one at a time:
             proxy CPU per handshake
  resumed    openssl s_time -reuse: resumed TLS 1.3 handshakes (session tickets):
             proxy CPU per handshake
  close      wrk with `Connection: close`: a full handshake + one request per connection,
             64 at a time: proxy CPU per connection

Both proxies: one worker pinned to cpu0 (load generator and backends on cpu1), the same
ECDSA P-256 certificate, the same 3 backends (peerbench's Rust origin). Proxy CPU is
utime+stime of its whole session from /proc. Uses peerbench's process helpers (every
process in its own session, stopped by PID). Loopback only; bounded in time.

  flock /work/wt/bench.lock bench/tls.py --bin target/release/switchyard --out /tmp/tls-bench
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "bench"))
sys.path.insert(0, os.environ.get("PEERBENCH_DIR", "/work/shared/bench"))
import peerbench as pb  # noqa: E402

LUA = pb.WRK_LUA


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def make_cert(d):
    key, crt = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=bench.test",
        "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"])
    combined = os.path.join(d, "combined.pem")
    with open(combined, "w") as f:
        f.write(open(crt).read() + open(key).read())
    return crt, key, combined


def haproxy_cfg(port, backends, combined):
    srv = "\n".join(f"  server b{i + 1} 127.0.0.1:{p}" for i, p in enumerate(backends))
    return f"""global
  nbthread 1
  maxconn 8000
  tune.ssl.default-dh-param 2048

defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always

frontend fe
  bind 127.0.0.1:{port} backlog 4096 ssl crt {combined} alpn h2,http/1.1
  default_backend be

backend be
  balance roundrobin
{srv}
"""


def ours_cfg(port, backends, crt, key, provider_note=""):
    b = "\n".join(f"  - url: \"http://127.0.0.1:{p}\"" for p in backends)
    return f"""server:
  port: {port + 1000}
  admin_port: 0
  bind: 127.0.0.1
  threads: 1
backends:
{b}
tls:
  port: {port}
  bind: 127.0.0.1
  certificates:
    - cert: "{crt}"
      key: "{key}"
"""


def tls_ready(port, timeout=20):
    t_end = time.time() + timeout
    while time.time() < t_end:
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                            f"https://127.0.0.1:{port}/"], capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers HTTPS on {port}")


def run(argv, timeout):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, preexec_fn=pb._preexec)
    pb._STARTED.append(("loadgen", p))
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        pb._STARTED.remove(("loadgen", p))
    return out.decode(errors="replace") + err.decode(errors="replace")


def measure(sid, fn):
    c0 = pb.session_cpu_ticks(sid)
    t0 = time.time()
    res = fn()
    wall = time.time() - t0
    cpu = (pb.session_cpu_ticks(sid) - c0) / pb.CLK_TCK
    res["cpu_s"] = cpu
    res["wall_s"] = wall
    return res


def wrk(port, args, lua, dur):
    out = run(["taskset", "-c", "1", "wrk", "-t", "1", "-c", str(args.connections), "-d",
               f"{dur}s", "--timeout", "2s", "-s", lua, f"https://127.0.0.1:{port}/"], dur + 30)
    line = [l for l in out.splitlines() if l.startswith("PEERBENCH_JSON ")]
    if not line:
        raise RuntimeError(out[-2000:])
    r = json.loads(line[-1][len("PEERBENCH_JSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] + r["err_status"]
    r["units"] = r["requests"]
    return r


def s_time(port, mode, dur):
    # -www: one HTTP/1.0 GET per connection, read to the end, so TLS 1.3 session
    # tickets (sent after the handshake) arrive and -reuse can resume.
    t0 = time.time()
    out = run(["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
               mode, "-time", str(dur), "-tls1_3", "-www", "/"], dur + 30)
    wall = time.time() - t0
    m = re.search(r"(\d+) connections in ([\d.]+)s", out)
    if not m:
        raise RuntimeError(out[-2000:])
    n = int(m.group(1))
    # Progress marks: `*` a full handshake, `r` a resumed one.
    marks = "".join(l for l in out.splitlines() if l and set(l) <= {"*", "r"})
    return {"units": n, "rps": n / wall, "resumed_share": marks.count("r") / max(len(marks), 1),
            "raw": out[-300:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="switchyard binary")
    ap.add_argument("--bin2", help="a second switchyard binary (target `ours2`), e.g. built "
                    "with --features aws-lc-rs, to compare crypto providers in the same run")
    ap.add_argument("--targets", default="haproxy,ours")
    ap.add_argument("--scenarios", default="keepalive,full,resumed,close")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--base-port", type=int, default=29080)
    ap.add_argument("--out", default="/tmp/tls-bench")
    ap.add_argument("--backend-bin", default=pb.DEFAULT_BACKEND_BIN)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logdir = os.path.join(args.out, "logs")
    os.makedirs(logdir, exist_ok=True)
    pb._STATE_FILE = os.path.join(args.out, "pids.json")
    pb.reap_stale(pb._STATE_FILE, print)
    bp = args.base_port
    backends = [bp + 1, bp + 2, bp + 3]
    ports = {"haproxy": bp + 11, "ours": bp + 12, "ours2": bp + 13}
    targets = args.targets.split(",")
    if args.bin2 and "ours2" not in targets:
        targets.append("ours2")
    for p in backends + [ports[t] for t in targets] + [ports["ours"] + 1000, ports["ours2"] + 1000]:
        if not pb.port_free(p):
            sys.exit(f"port {p} busy")
    crt, key, combined = make_cert(args.out)
    lua_ka = os.path.join(args.out, "ka.lua")
    with open(lua_ka, "w") as f:
        f.write(LUA)
    lua_close = os.path.join(args.out, "close.lua")
    with open(lua_close, "w") as f:
        f.write('wrk.headers["Connection"] = "close"\n' + LUA)
    results = []
    try:
        bbin = pb.ensure_rust_backend(args.backend_bin)
        procs = {"backend": pb.start_proc("backend", [bbin, "--body", "ok"] + [str(p) for p in backends],
                                          logdir, cpus="1")}
        for p in backends:
            pb.wait_ready(p, procs["backend"], 10, f"backend:{p}")
        if "haproxy" in targets:
            cfg = os.path.join(args.out, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(haproxy_cfg(ports["haproxy"], backends, combined))
            procs["haproxy"] = pb.start_proc("haproxy", ["haproxy", "-db", "-f", cfg], logdir, cpus="0")
        if "ours" in targets:
            cfg = os.path.join(args.out, "ours.yaml")
            with open(cfg, "w") as f:
                f.write(ours_cfg(ports["ours"], backends, crt, key))
            procs["ours"] = pb.start_proc("ours", [args.bin, "--config", cfg], logdir, cpus="0")
        if "ours2" in targets:
            cfg = os.path.join(args.out, "ours2.yaml")
            with open(cfg, "w") as f:
                f.write(ours_cfg(ports["ours2"], backends, crt, key))
            procs["ours2"] = pb.start_proc("ours2", [args.bin2, "--config", cfg], logdir, cpus="0")
        for t in targets:
            tls_ready(ports[t])
        meta = {"uptime_before": open("/proc/loadavg").read().strip(),
                "haproxy": pb.tool_version(["haproxy", "-v"]),
                "openssl": pb.tool_version(["openssl", "version"])}
        for rep in range(args.reps):
            for sc in args.scenarios.split(","):
                for t in targets:
                    sid = procs[t].pid
                    port = ports[t]
                    if sc in ("keepalive", "close"):
                        lua = lua_ka if sc == "keepalive" else lua_close
                        wrk(port, args, lua, 2)  # warm-up
                        r = measure(sid, lambda: wrk(port, args, lua, args.duration))
                    else:
                        mode = "-new" if sc == "full" else "-reuse"
                        r = measure(sid, lambda: s_time(port, mode, args.duration))
                    r.update(rep=rep, scenario=sc, target=t)
                    r["cpu_us_per_unit"] = r["cpu_s"] / max(r["units"], 1) * 1e6
                    results.append(r)
                    print(f"rep {rep} {sc:9} {t:8} units {r['units']:8} rate {r['rps']:9.0f}/s "
                          f"cpu {r['cpu_us_per_unit']:7.2f} us/unit"
                          + (f" p99 {r['p99_us']/1000:.3f} ms errors {r['errors']}" if 'p99_us' in r else "")
                          + (f" resumed {r['resumed_share']:.0%}" if 'resumed_share' in r else ""),
                          flush=True)
        meta["uptime_after"] = open("/proc/loadavg").read().strip()
    finally:
        pb.stop_all(lambda m: None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    lines = [f"load before: {meta['uptime_before']}, after: {meta['uptime_after']}", "",
             "| scenario | target | rate /s (median) | p99 ms | proxy CPU µs/unit (median) | ÷ HAProxy CPU |",
             "|---|---|---|---|---|---|"]
    for sc in args.scenarios.split(","):
        med = {}
        for t in targets:
            rs = [r for r in results if r["scenario"] == sc and r["target"] == t]
            cpu = statistics.median(r["cpu_us_per_unit"] for r in rs)
            rate = statistics.median(r["rps"] for r in rs)
            p99 = statistics.median(r["p99_us"] for r in rs) / 1000 if "p99_us" in rs[0] else None
            med[t] = (cpu, rate, p99)
        for t in targets:
            cpu, rate, p99 = med[t]
            ratio = f"{cpu / med['haproxy'][0]:.2f}" if "haproxy" in med else "–"
            lines.append(f"| {sc} | {t} | {rate:,.0f} | {'' if p99 is None else f'{p99:.3f}'} | {cpu:.2f} | {ratio} |")
    summary = "\n".join(lines)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
