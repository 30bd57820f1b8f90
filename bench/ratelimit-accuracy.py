#!/usr/bin/env python3
"""Accuracy of the cluster-wide rate limit: three switchyard replicas (release build)
sharing one redis-server, one global key, the cluster offered `--factor` × the limit
for `--seconds`, split evenly over the replicas and paced by one client process per
replica (keep-alive).
Prints what was admitted beside `burst + rate × T`.

    cargo build --release --bins
    flock /work/wt/bench.lock bench/ratelimit-accuracy.py --rate 10 --burst 10
    flock /work/wt/bench.lock bench/ratelimit-accuracy.py --rate 1000 --burst 1000

Loopback only; every process it starts is stopped on exit.
"""

import argparse
import http.client
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import RELEASE, free_port, require_release_bins, stop, wait_ready  # noqa: E402


def client(port, per_s, start_at, seconds, out):
    """Sends `per_s` requests a second to `port` from `start_at` for `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    ok = refused = failed = 0
    period = 1.0 / per_s
    n = int(per_s * seconds)
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                ok += 1
            elif r.status == 429:
                refused += 1
            else:
                failed += 1
        except Exception:
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out.put((ok, refused, failed, time.monotonic() - t0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--factor", type=float, default=3.0, help="offered load (whole cluster) ÷ limit")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--replicas", type=int, default=3)
    args = ap.parse_args()
    require_release_bins()
    work = tempfile.mkdtemp(prefix="rl-accuracy.")
    sock = os.path.join(work, "redis.sock")
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    try:
        start(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"])
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        up = free_port()
        d = start([os.path.join(RELEASE, "demo-upstream"), "--listen", f"127.0.0.1:{up}"])
        wait_ready(f"http://127.0.0.1:{up}/", d)
        config = os.path.join(work, "config.yaml")
        with open(config, "w") as f:
            f.write(f"cluster:\n  redis_url: \"unix://{sock}\"\n  name: accuracy\n"
                    f"rate_limit:\n  requests_per_second: {args.rate}\n  burst: {args.burst}\n  key: global\n"
                    f"backends:\n  - url: \"http://127.0.0.1:{up}\"\n")
        ports = []
        for _ in range(args.replicas):
            port, admin = free_port(), free_port()
            p = start([os.path.join(RELEASE, "switchyard"), "--config", config,
                       "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"])
            wait_ready(f"http://127.0.0.1:{admin}/readyz", p)
            ports.append(port)
        time.sleep(2)  # heartbeats: every replica counts the others
        out = multiprocessing.Queue()
        start_at = time.time() + 0.5
        per_s = args.rate * args.factor / args.replicas
        workers = [multiprocessing.Process(target=client, args=(port, per_s, start_at + i * 0.3 / per_s, args.seconds, out))
                   for i, port in enumerate(ports)]
        for w in workers:
            w.start()
        results = [out.get() for _ in workers]
        for w in workers:
            w.join()
        ok = sum(r[0] for r in results)
        refused = sum(r[1] for r in results)
        failed = sum(r[2] for r in results)
        elapsed = max(r[3] for r in results)
        expected = args.burst + args.rate * elapsed
        print(f"{args.replicas} replicas, limit {args.rate:g}/s burst {args.burst}, offered "
              f"{(ok + refused + failed) / elapsed:.0f}/s for {elapsed:.1f} s: admitted {ok}, refused {refused}, "
              f"failed {failed}; burst + rate × T = {expected:.0f}; deviation {(ok - expected) / expected * 100:+.2f} %")
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    main()
