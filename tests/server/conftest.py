"""Server fixtures: a real `radixrt serve` subprocess (real child processes, ZMQ, the default
model) on a free port. One shared server for the session; tests that break or stop a server
start their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # `python -m radixrt` runs this checkout
STARTUP_TIMEOUT_S = 240  # model load on a busy 2-core machine
# Enough KV for the soak test's 32 concurrent requests, small enough to start fast. One torch
# thread: on a shared 2-core machine two threads thrash at every OpenMP barrier (measured 4-6x
# slower per step under load).
COMMON_ARGS = ["--max-total-tokens", "16384", "--log-level", "warning", "--num-threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m radixrt serve` in a subprocess; `stop()` checks that nothing outlives it."""

    def __init__(self, *args: str, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        cmd = [sys.executable, "-m", "radixrt", "serve", "--port", str(self.port), *COMMON_ARGS, *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="radixrt-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.descendants: list[psutil.Process] = []
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, n: int = 4000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def server_info(self) -> dict:
        r = httpx.get(self.url + "/get_server_info", headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the server and wait; kill anything left (and report it by returning None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        gone, alive = psutil.wait_procs(self.descendants, timeout=10)
        for p in alive:
            p.kill()
        return code if not alive else None


def wait_idle(server: ServerProcess, timeout: float = 30) -> dict:
    """Server info once nothing runs or waits (aborts and finishes are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        info = server.server_info()
        if info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy after {timeout}s: {info}")
        time.sleep(0.1)


def assert_no_kv_leak(server: ServerProcess) -> dict:
    mem = wait_idle(server)["memory"]
    assert mem["kv_running_slots"] == 0, mem
    assert mem["kv_free_slots"] + mem["kv_cached_slots"] == mem["kv_total_slots"], mem
    return mem


@pytest.fixture(scope="session")
def server(default_model_dir):
    s = ServerProcess()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120, headers=server.headers) as c:
        yield c


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
