"""ZeroMQ plumbing shared by the server's processes: socket addresses, sockets, child set-up."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq

from radixrt.managers.messages import Message, ProcessReady, encode

# How long an idle child blocks on its socket before checking that its parent still lives.
IDLE_POLL_MS = 200


@dataclass(frozen=True)
class IpcPaths:
    """One ``ipc://`` address per receiving process; each receiver binds its own."""

    scheduler_in: str
    detokenizer_in: str
    tokenizer_in: str

    @classmethod
    def in_dir(cls, directory: str | Path) -> IpcPaths:
        d = Path(directory)
        return cls(*(f"ipc://{d / name}" for name in ("scheduler", "detokenizer", "tokenizer")))


def pull_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(addr)
    return sock


def push_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)  # never block or drop: queues are bounded by request count
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    return sock


def send(sock: zmq.Socket, msg: Message) -> None:
    sock.send(encode(msg), copy=False)


def setup_child(name: str, log_level: str) -> None:
    """Logging for a spawned child; SIGINT is left to the parent, which terminates us. On
    Linux the kernel also sends SIGTERM when the parent dies (the pid poll is the fallback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal()
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def parent_alive(parent_pid: int) -> bool:
    """A child re-parented to init (or a subreaper) has lost its parent."""
    return os.getppid() == parent_pid


def report_ready(conn, msg: ProcessReady) -> None:
    """Tell the parent over the start-up pipe that this child is ready (or failed)."""
    try:
        conn.send_bytes(encode(msg))
    except OSError:  # the parent is gone
        raise SystemExit(1) from None
    finally:
        conn.close()
