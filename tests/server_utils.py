"""Start a real lmrs server (`python -m lmrs.serve`) on a free loopback port for a test module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, wait: bool = True, timeout: float = 180.0,
                 prelude: str | None = None):
        """`prelude`: Python code run before the server's main (e.g. to inject a fault)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lmrs-server-", suffix=".log", delete=False)
        serve_args = [*args, "--server-name", "127.0.0.1", "--server-port", str(self.port), "--no-progress"]
        if prelude:
            code = prelude + "\nimport sys\nfrom lmrs.serve import main\nsys.exit(main(sys.argv[1:]))"
            cmd = [sys.executable, "-c", code, *serve_args]
        else:
            cmd = [sys.executable, "-m", "lmrs.serve", *serve_args]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stats(self, headers=None) -> dict:
        return requests.get(self.url + "/stats", headers=headers, timeout=10).json()

    def wait_idle(self, timeout: float = 60.0, headers=None) -> dict:
        """Stats once no request is running or waiting."""
        deadline = time.time() + timeout
        while True:
            s = self.stats(headers)
            if s["running"] == 0 and s["waiting"] == 0 and s["unfinished_requests"] == 0:
                return s
            if time.time() > deadline:
                raise AssertionError(f"server not idle: {s}")
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
