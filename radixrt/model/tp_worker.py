"""A tensor-parallel rank > 0 (``python -m radixrt.model.tp_worker``, started by
``radixrt.model.parallel``): join the group, load this rank's shard, run the forward of every
batch rank 0 broadcasts, until it says stop or goes away."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time

import torch
import torch.distributed as dist

from radixrt.model import parallel
from radixrt.model.runner import ModelRunner, resolve_device

logger = logging.getLogger("radixrt.tp")


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started this rank is gone (node 0: rank 0's process)."""
    def run() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=run, name="radixrt-tp-parent-watch", daemon=True).start()


def worker_main(args, rank: int, parent_pid: int | None = None) -> int:
    """A rank > 0: join the group, load this rank's shard, run the forward of every batch rank 0
    broadcasts, until it says stop or goes away. Returns the exit status."""
    if parent_pid is not None:
        _watch_parent(parent_pid)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    parallel._init_group(args, rank, args.dist_init_addr, resolve_device(args.device))
    parallel._worker_rank = rank  # the runner's setup() reads it
    runner = ModelRunner(args)
    tp = runner.tp
    try:
        while True:
            fb = tp.broadcast_batch(None)
            if fb is None:
                break
            runner.forward(fb)
    except RuntimeError as e:  # rank 0 gone (connection closed) or a collective timed out
        logger.warning("tensor-parallel rank %d: %s; exiting", rank, str(e).splitlines()[0])
        os._exit(1)
    tp.closed = True
    try:
        dist.destroy_process_group()
    except Exception:
        pass
    return 0


def _main() -> None:
    from radixrt.config import ServerArgs

    ap = argparse.ArgumentParser(description="one tensor-parallel rank > 0 (started by radixrt)")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--args-json", required=True)
    ns = ap.parse_args()
    args = ServerArgs(**json.loads(ns.args_json))
    logging.basicConfig(level=args.log_level.upper(), format=f"[tp{ns.rank}] %(levelname)s %(name)s: %(message)s")
    raise SystemExit(worker_main(args, ns.rank, ns.parent_pid))


if __name__ == "__main__":
    _main()
