"""Process and port helpers shared by the Python benchmark scripts in bench/."""

import os
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, deadline_s=20.0):
    """Polls `url` until it answers 200; fails early if `proc` exits."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {deadline_s} s")


def stop(proc):
    """SIGTERM to the process group started for `proc`, SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def require_release_bins():
    """Exits with a hint when the release binaries are not built."""
    for exe in ("switchyard", "demo-upstream"):
        if not os.access(os.path.join(RELEASE, exe), os.X_OK):
            raise SystemExit(f"{RELEASE}/{exe} missing: run `cargo build --release --bins` first")
