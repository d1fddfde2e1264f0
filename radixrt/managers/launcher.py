"""Starting, watching and stopping the scheduler and detokenizer processes.

Under ``--dp-size N`` there are N scheduler workers (``scheduler-0`` ...), each with its own
model runner, radix cache and KV pool, its own inbound socket and ``--num-threads / N`` torch
threads (default: the CPUs / N); all of them send to the one detokenizer. A worker that exits
is reported by `dead_workers`; `dead_child` reports the detokenizer, or every worker gone.

All children start at once and load in parallel. They are started with the "spawn" context (no fork of a process holding threads and
sockets), report readiness over a one-way pipe, and exit on their own when the parent dies
(they poll their parent pid). `shutdown` terminates them and removes the ipc directory; it
is idempotent and registered with atexit.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any

from radixrt.config import ServerArgs
from radixrt.managers.ipc import IpcPaths
from radixrt.managers.messages import ProcessReady, decode

logger = logging.getLogger("radixrt.launcher")


class StartupError(RuntimeError):
    """A child process failed to start; the message says which and why."""


class ChildProcesses:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.ipc_dir = tempfile.mkdtemp(prefix="radixrt-ipc-")
        os.chmod(self.ipc_dir, 0o700)
        self.ipc = IpcPaths.in_dir(self.ipc_dir)
        self.dp_size = max(1, args.dp_size)
        self.worker_names = (["scheduler"] if self.dp_size == 1
                             else [f"scheduler-{i}" for i in range(self.dp_size)])
        # Worker 0 keeps the classic address; the others get a suffixed one next to it.
        self.worker_addrs = [self.ipc.scheduler_in if i == 0 else f"{self.ipc.scheduler_in}-{i}"
                             for i in range(self.dp_size)]
        self.worker_infos: list[dict[str, Any]] = []
        self.procs: dict[str, mp.process.BaseProcess] = {}
        self._ctx = mp.get_context("spawn")
        self._ready_pipes: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._closed = False
        atexit.register(self.shutdown)

    def spawn(self, tokenizer_path: str) -> None:
        """Start all children at once (they load in parallel); see `wait_ready`."""
        from radixrt.managers.detokenizer import run_detokenizer_process
        from radixrt.managers.scheduler_process import run_scheduler_process

        pid = os.getpid()
        worker_args = self.worker_args()
        for name, addr in zip(self.worker_names, self.worker_addrs, strict=True):
            ipc = dataclasses.replace(self.ipc, scheduler_in=addr)
            self._spawn(name, run_scheduler_process, (worker_args, ipc), pid)
        self._spawn("detokenizer", run_detokenizer_process, (tokenizer_path, self.ipc), pid,
                    self.args.log_level)

    def worker_args(self) -> ServerArgs:
        """The arguments of each scheduler worker: the threads split between the workers."""
        if self.dp_size == 1:
            return self.args
        cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
        total = self.args.num_threads or cpus
        return dataclasses.replace(self.args, num_threads=max(1, total // self.dp_size))

    def _spawn(self, name: str, target, args: tuple, parent_pid: int, *extra: Any) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=target, args=(*args, writer, parent_pid, *extra),
                                 name=f"radixrt-{name}", daemon=True)
        proc.start()
        writer.close()
        self.procs[name] = proc
        self._ready_pipes[name] = reader

    def wait_ready(self) -> dict[str, Any]:
        """Block until every child reported ready; return the (first) scheduler's model info."""
        infos = {name: self._wait_one(name) for name in self.procs}
        self.worker_infos = [infos[name] for name in self.worker_names]
        return self.worker_infos[0]

    def _wait_one(self, name: str) -> dict[str, Any]:
        proc, reader = self.procs[name], self._ready_pipes.pop(name)
        try:
            while True:
                if reader.poll(0.2):
                    try:
                        msg = decode(reader.recv_bytes())
                    except EOFError:
                        proc.join(5)
                        raise StartupError(f"the {name} process exited during start-up "
                                           f"(exit code {proc.exitcode}); see its log above") from None
                    assert isinstance(msg, ProcessReady)
                    if msg.error:
                        raise StartupError(f"the {name} process failed to start: {msg.error}")
                    logger.info("%s process ready (pid %d) after %.1fs", name, proc.pid,
                                time.perf_counter() - self._t0)
                    return msg.info
                if not proc.is_alive():
                    raise StartupError(f"the {name} process exited during start-up "
                                       f"(exit code {proc.exitcode}); see its log above")
        finally:
            reader.close()

    def dead_child(self) -> str | None:
        """Why the server cannot go on (the detokenizer exited, or every scheduler worker
        did), or None while it can."""
        for name, proc in self.procs.items():
            if name not in self.worker_names and not proc.is_alive():
                return f"the {name} process exited unexpectedly (exit code {proc.exitcode})"
        dead = self.dead_workers()
        if len(dead) == self.dp_size:
            return "; ".join(dead[i] for i in range(self.dp_size))
        return None

    def dead_workers(self) -> dict[int, str]:
        """The scheduler workers that have exited, by index, each with a description."""
        out = {}
        for i, name in enumerate(self.worker_names):
            proc = self.procs.get(name)
            if proc is not None and not proc.is_alive():
                out[i] = (f"the {name} process (pid {proc.pid}) exited unexpectedly "
                          f"(exit code {proc.exitcode})")
        return out

    def worker_pids(self) -> list[int | None]:
        return [self.procs[name].pid if name in self.procs else None for name in self.worker_names]

    def pids(self) -> dict[str, int | None]:
        return {name: p.pid for name, p in self.procs.items()}

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
