"""The I/O threads of `HiRadixCache`: one reader and one writer thread, each started on first
use, taking jobs in order from a queue; finished jobs come back through another queue and are
applied on the scheduler's thread (`poll_io`, `wait_io`, `drain_io`), the only thread that
touches the tree.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

logger = logging.getLogger("radixrt.hicache")


class IOThreads:
    """Mixin of `HiRadixCache`: job queues, threads and the hand-back of finished jobs."""

    def _submit(self, kind: str, job) -> None:
        if kind not in self._jobs:
            self._jobs[kind] = queue.Queue()
            t = threading.Thread(target=self._io_loop, args=(kind, self._jobs[kind]),
                                 name=f"radixrt-hicache-{kind}", daemon=True)
            t.start()
            self._threads.append(t)
        self._in_flight[kind] += 1
        self._jobs[kind].put(job)

    def _io_loop(self, kind: str, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                (self._read if kind == "read" else self._write)(job)
            except Exception:  # a bug: report it, count the job as failed, keep serving
                logger.exception("hicache %s job failed", kind)
                job.errors += 1
            self._done.put((kind, job))

    def poll_io(self) -> int:
        """Apply finished disk jobs (on the caller's thread). Returns how many."""
        n = 0
        while True:
            try:
                kind, job = self._done.get_nowait()
            except queue.Empty:
                return n
            self._apply(kind, job)
            n += 1

    def _apply(self, kind: str, job) -> None:
        self._in_flight[kind] -= 1
        if kind == "read":
            self._finish_read(job)
        else:
            self._finish_write(job)

    def io_pending(self) -> bool:
        return bool(self._in_flight["read"] or self._in_flight["write"])

    def wait_io(self, timeout: float | None = None, writes: bool = False) -> None:
        """Block until a disk job finishes (``writes``: until no write is in flight), or
        ``timeout`` seconds pass. Meanwhile this thread reads blocks of the read job in
        progress alongside the reader thread (the caller has nothing else to do: on a CPU that
        is a second core on the restore)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.io_pending():
            reading = self._reading
            if reading is not None:  # idle meanwhile: read blocks of the job too
                self._read_blocks(reading, deadline)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            wait = left
            if reading is None and self._in_flight["read"]:  # a read about to start: look again soon
                wait = 0.002 if left is None else min(left, 0.002)
            try:
                kind, job = self._done.get(timeout=wait)
            except queue.Empty:
                if wait is not left:
                    continue
                return
            self._apply(kind, job)
            if not writes or not self._in_flight["write"]:
                return

    def drain_io(self) -> None:
        while self.io_pending():
            kind, job = self._done.get()
            self._apply(kind, job)

    def close(self) -> None:
        """Finish queued disk writes and stop the I/O threads."""
        self.drain_io()
        for q in self._jobs.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=30)
        self._jobs.clear()
        self._threads.clear()
