#!/usr/bin/env python3
"""Memory: switchyard's resident set size idle, and holding N idle keep-alive clients.

Starts one demo upstream and `target/release/switchyard` (one worker, round-robin,
default limits) on loopback, then reports VmRSS and VmHWM from /proc:

  1. idle, right after start-up and one proxied request;
  2. after N client connections (default 10,000) have each sent one keep-alive
     request, got the answer and stayed open, idle;
  3. after those clients closed again.

HAProxy and nginx are measured the same way (`--targets`) for comparison.
Usage (from the repository root):

    cargo build --release --bins
    bench/memory.py [--connections 10000] [--targets ours,haproxy,nginx]
"""

import argparse
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import RELEASE, free_port, require_release_bins, stop, wait_ready






def session_pids(proc):
    """Every process in the target's session (nginx forks workers)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == proc.pid:  # session id
                    pids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return pids or [proc.pid]


def rss_kib(proc):
    total = 0
    for pid in session_pids(proc):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise the hard limit too; the proxies inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_idle_clients(port, n, deadline_s=120.0):
    """n connections, each with one completed keep-alive request; returns them open."""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    sel = selectors.DefaultSelector()
    socks, done = [], 0
    end = time.monotonic() + deadline_s
    batch = 500
    while done < n:
        if time.monotonic() > end:
            raise RuntimeError(f"only {done} of {n} connections answered in {deadline_s} s")
        pending = {}
        for _ in range(min(batch, n - done)):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
        while pending:
            if time.monotonic() > end:
                raise RuntimeError("answers stopped coming")
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("proxy closed a client connection")
                pending[s] += chunk
                head, sep, body = pending[s].partition(b"\r\n\r\n")
                if sep:
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    if len(body) >= length:
                        if not head.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError(f"answer: {head[:40]!r}")
                        sel.unregister(s)
                        del pending[s]
                        socks.append(s)
                        done += 1
    return socks


# HAProxy refuses a maxconn whose 2 descriptors per connection exceed the limit.
HAPROXY_MAXCONN = 0


def count_closed(socks):
    """Connections the proxy already closed (readable at EOF) — they must all be open."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed = sum(1 for key, _ in sel.select(timeout=0) if not key.fileobj.recv(1))
    sel.close()
    return closed


def start_target(name, work, backend, port, log):
    if name == "ours":
        cfg = os.path.join(work, "ours.yaml")
        with open(cfg, "w") as f:
            f.write(f"server:\n  port: {port}\n  admin_port: 0\n  bind: 127.0.0.1\n"
                    f"  threads: 1\n  header_read_timeout: 60s\nbackends:\n  - url: \"http://{backend}\"\n"
                    "logging:\n  access_log: false\n")
        cmd = [os.path.join(RELEASE, "switchyard"), "--config", cfg]
    elif name == "haproxy":
        cfg = os.path.join(work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"global\n  nbthread 1\n  ulimit-n {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}\n  maxconn {HAPROXY_MAXCONN}\ndefaults\n  mode http\n"
                    "  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
                    f"  maxconn 20000\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{port}\n"
                    f"  default_backend app\nbackend app\n  server s1 {backend}\n")
        cmd = ["haproxy", "-db", "-f", cfg]
    elif name == "nginx":
        cfg = os.path.join(work, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(f"worker_processes 1;\nworker_rlimit_nofile 20000;\nerror_log stderr error;\n"
                    f"pid {work}/nginx.pid;\nevents {{ worker_connections 19000; }}\n"
                    f"http {{\n  access_log off;\n  client_body_temp_path {work};\n"
                    f"  keepalive_timeout 60s;\n  keepalive_requests 100000;\n"
                    f"  upstream app {{ server {backend}; keepalive 64; }}\n"
                    f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app;"
                    f" proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n")
        cmd = ["nginx", "-e", "stderr", "-p", work, "-c", cfg, "-g", "daemon off;"]
    else:
        raise ValueError(name)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)




def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--targets", default="ours,haproxy,nginx")
    args = ap.parse_args()
    require_release_bins()
    limit = raise_nofile()
    if limit < args.connections + 100:
        sys.exit(f"open-file limit {limit} is below {args.connections} connections")
    global HAPROXY_MAXCONN
    HAPROXY_MAXCONN = (limit - 20) // 2
    work = tempfile.mkdtemp(prefix="switchyard-memory.")
    log = open(os.path.join(work, "processes.log"), "w")
    bport = free_port()
    backend = f"127.0.0.1:{bport}"
    upstream = subprocess.Popen([os.path.join(RELEASE, "demo-upstream"), "--listen", backend],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows = []
    try:
        wait_ready(f"http://{backend}/health", upstream)
        for name in args.targets.split(","):
            if name != "ours" and not shutil.which(name):
                print(f"skipping {name}: not installed")
                continue
            port = free_port()
            proc = start_target(name, work, backend, port, log)
            try:
                wait_ready(f"http://127.0.0.1:{port}/", proc)
                idle = rss_kib(proc)
                t0 = time.monotonic()
                n = args.connections
                if name == "haproxy" and HAPROXY_MAXCONN < n:
                    n = HAPROXY_MAXCONN - 10
                socks = open_idle_clients(port, n)
                held = rss_kib(proc)
                took = time.monotonic() - t0
                closed = count_closed(socks)
                if closed:
                    raise RuntimeError(f"{name} closed {closed} of the idle connections early")
                for s in socks:
                    s.close()
                # let the proxy notice the closes (bounded poll, not a fixed sleep)
                end = time.monotonic() + 10
                after = rss_kib(proc)
                while time.monotonic() < end:
                    time.sleep(0.2)
                    now = rss_kib(proc)
                    if now == after:
                        break
                    after = now
            finally:
                stop(proc)
            rows.append((name, n, idle, held, after))
            print(f"{name:8} idle {idle / 1024:6.1f} MiB   {n} idle clients "
                  f"{held / 1024:6.1f} MiB   after they closed {after / 1024:6.1f} MiB"
                  f"   ({took:.1f} s to open)", flush=True)
    finally:
        stop(upstream)
        log.close()
    print()
    print("| target | idle RSS MiB | idle keep-alive clients | RSS with them MiB "
          "| per connection KiB | RSS after they closed MiB |")
    print("|---|---|---|---|---|---|")
    for name, n, idle, held, after in rows:
        per = (held - idle) / n
        print(f"| {name} | {idle / 1024:.1f} | {n} | {held / 1024:.1f} | {per:.1f} "
              f"| {after / 1024:.1f} |")


if __name__ == "__main__":
    main()
