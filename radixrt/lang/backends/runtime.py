"""`Runtime`: a local radixrt server in a child process, for programs that want one.

It runs ``python -m radixrt serve --port <free port> ...`` (every keyword argument becomes
the server flag of that name), waits for /health, and shuts the server down on `shutdown()`,
on leaving a ``with`` block, or at interpreter exit -- not when the object is dropped, so
``set_default_backend(Runtime())`` keeps its server.
"""

from __future__ import annotations

import atexit
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_flags(server_args: dict[str, Any]) -> list[str]:
    """``{"max_total_tokens": 4096, "disable_radix_cache": True}`` -> CLI flags."""
    out: list[str] = []
    for key, value in server_args.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out


class Runtime:
    def __init__(self, model_path: str | None = None, *, log_level: str = "error",
                 launch_timeout: float = 300.0, host: str = "127.0.0.1", port: int | None = None,
                 api_key: str | None = None, timeout: float = 600.0, **server_args: Any):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.generate_url = self.url + "/generate"
        self.api_key = api_key
        self.server_args = {"model_path": model_path, "api_key": api_key, "log_level": log_level,
                            **server_args}
        cmd = [sys.executable, "-m", "radixrt", "serve", "--host", host, "--port", str(self.port),
               *server_flags(self.server_args)]
        self._log = tempfile.NamedTemporaryFile(prefix="radixrt-runtime-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.process: subprocess.Popen | None = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: shutdown can reap the children
        self.pid = self.process.pid
        atexit.register(self.shutdown)
        try:
            self._wait_ready(launch_timeout)
            self.endpoint = RuntimeEndpoint(self.url, api_key=api_key, timeout=timeout,
                                            liveness=self._liveness)
        except BaseException:
            self.shutdown()
            raise

    def _liveness(self) -> str | None:
        proc = self.process
        if proc is None:
            return "the radixrt server was shut down"
        try:
            # Called after a failed request: a dying server closes its socket a moment
            # before it can be reaped, so give it that moment.
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None
        return f"the radixrt server process exited with code {code}; log tail:\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(collections.deque(f, maxlen=lines))
        except OSError:
            return ""

    def _wait_ready(self, launch_timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + launch_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the radixrt server exited with code {self.process.returncode} "
                                   f"while starting; log tail:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the radixrt server did not become healthy within {launch_timeout:.0f}s; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(0.25)

    # ------------------------------------------------------------------ backend-like helpers
    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def flush_cache(self) -> bool:
        return self.endpoint.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return self.endpoint.get_server_info()

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.endpoint.model_info["tokenizer_path"])

    def shutdown(self) -> None:
        proc, self.process = getattr(self, "process", None), None
        if proc is None:
            return
        atexit.unregister(self.shutdown)
        if getattr(self, "endpoint", None) is not None:
            self.endpoint.shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server stops its own children
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still there
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        self._log.close()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
