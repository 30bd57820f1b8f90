#!/usr/bin/env python3
"""The edge-hardening cases of docs/reliability.md, sent as the same raw bytes to
Switchyard, HAProxy and nginx in front of one echo backend (all on loopback, free
ports), printing what each answered: the status line, or how the connection ended.

    python3 bench/edge_peers.py target/release/switchyard

Only loopback traffic; every wait is bounded. Not part of the test suite.
"""

import http.server
import os
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers with the Host line(s) it got and the body length it read."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        hosts = self.headers.get_all("host") or []
        body = ("host=" + "|".join(hosts) + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *a):
        pass


def start_backend():
    port = free_port()
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", port), Echo)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return port


def wait_port(port, limit=10):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start_peers(switchyard, backend, tmp):
    procs, ports = {}, {}
    p = free_port()
    cfg = os.path.join(tmp, "haproxy.cfg")
    open(cfg, "w").write(f"""global
  maxconn 1000
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 30s
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:{p} proto h2
  bind 127.0.0.1:{p + 1}
  default_backend be
backend be
  server b 127.0.0.1:{backend}
""")
    procs["haproxy"] = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports["haproxy"] = p + 1
    ports["haproxy-h2"] = p
    n = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    open(conf, "w").write(f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp};
  proxy_temp_path {tmp};
  server {{
    listen 127.0.0.1:{n};
    location / {{ proxy_pass http://127.0.0.1:{backend}; proxy_http_version 1.1; }}
  }}
}}
""")
    procs["nginx"] = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports["nginx"] = n
    s = free_port()
    a = free_port()
    yaml = os.path.join(tmp, "switchyard.yaml")
    open(yaml, "w").write(f"""server:
  port: {s}
  admin_port: {a}
  bind: 127.0.0.1
backends:
  - url: "http://127.0.0.1:{backend}"
""")
    procs["switchyard"] = subprocess.Popen([switchyard, "--config", yaml], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports["switchyard"] = s
    for name in ("switchyard", "haproxy", "nginx"):
        if not wait_port(ports[name]):
            print(f"{name} did not start", file=sys.stderr)
    return procs, ports


def send(port, data, limit=8.0):
    """The first line answered, or how the connection ended, and the time taken."""
    start = time.time()
    s = socket.create_connection(("127.0.0.1", port), 2)
    s.settimeout(limit)
    try:
        s.sendall(data)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                return ("closed" if not got else got.decode(errors="replace")), time.time() - start
            got += chunk
        first = got.split(b"\r\n")[0].decode(errors="replace")
        # The body of a 200 tells which Host the backend saw.
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        body = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b""
        if first.split(" ")[1:2] == ["200"]:
            try:
                body += s.recv(4096)
            except OSError:
                pass
            first += " " + body.decode(errors="replace").strip()
        return first, time.time() - start
    except socket.timeout:
        return f"no answer in {limit:.0f} s", time.time() - start
    except ConnectionResetError:
        return "reset", time.time() - start
    finally:
        s.close()


CASES = [
    ("two Host lines", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
    ("absolute-form target + other Host", b"GET http://other.example/x HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n"),
    ("HTTP/1.1 without Host (Content-Length: 5, no body)", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
    ("chunk size ffffffffffffffff", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    ("Transfer-Encoding: identity, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
    ("two Transfer-Encoding: chunked lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("Transfer-Encoding: gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("Content-Length + Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
]


def h2_idle(port, limit=40.0):
    """Seconds until an h2c connection that only answers PINGs is closed."""
    start = time.time()
    s = socket.create_connection(("127.0.0.1", port), 2)
    s.settimeout(limit)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    try:
        while time.time() - start < limit:
            h = s.recv(9, socket.MSG_WAITALL)
            if len(h) < 9:
                return f"closed after {time.time() - start:.1f} s"
            n = struct.unpack(">I", b"\x00" + h[:3])[0]
            payload = s.recv(n, socket.MSG_WAITALL) if n else b""
            kind, flags = h[3], h[4]
            if kind == 4 and not flags & 1:
                s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            if kind == 6 and not flags & 1:
                s.sendall(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload)
        return f"open after {limit:.0f} s"
    except socket.timeout:
        return f"open after {limit:.0f} s"
    except OSError:
        return f"reset after {time.time() - start:.1f} s"
    finally:
        s.close()


def main():
    switchyard = sys.argv[1] if len(sys.argv) > 1 else "target/release/switchyard"
    backend = start_backend()
    with tempfile.TemporaryDirectory() as tmp:
        procs, ports = start_peers(switchyard, backend, tmp)
        try:
            print("| bytes sent | Switchyard | HAProxy 2.6 | nginx 1.22 |")
            print("|---|---|---|---|")
            for name, data in CASES:
                row = [name]
                for peer in ("switchyard", "haproxy", "nginx"):
                    line, took = send(ports[peer], data)
                    row.append(f"{line} ({took:.2f} s)" if took >= 0.5 else line)
                print("| " + " | ".join(row) + " |")
            print()
            print("h2c, preface + SETTINGS, then only PING answers:")
            for peer, port in (("switchyard", ports["switchyard"]), ("haproxy", ports["haproxy-h2"])):
                print(f"  {peer}: {h2_idle(port)}")
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
