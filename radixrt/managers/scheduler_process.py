"""The scheduler process: wraps `Scheduler` in a ZeroMQ loop.

Loop: drain incoming messages (blocking briefly only when idle), run one scheduler step,
send each touched request's progress (`progress.ProgressTracker`) to the detokenizer.
Requests arrive validated (typed `SamplingParams`, checked prompts); the process exits when
its parent dies.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading

import zmq

from radixrt.config import ServerArgs
from radixrt.managers.ipc import (
    IDLE_POLL_MS,
    IpcPaths,
    parent_alive,
    pull_socket,
    push_socket,
    report_ready,
    send,
    setup_child,
)
from radixrt.managers.messages import (
    AbortReq,
    BatchTokenIDOut,
    FlushCacheOut,
    FlushCacheReq,
    GetServerInfoReq,
    ProcessReady,
    ServerInfoOut,
    TokenIDOut,
    TokenizedGenerateReq,
    decode,
)
from radixrt.managers.progress import ProgressTracker
from radixrt.scheduler.req import Req

logger = logging.getLogger("radixrt.scheduler_process")


def run_scheduler_process(args: ServerArgs, ipc: IpcPaths, ready_conn, parent_pid: int) -> None:
    """Entry point of the spawned scheduler process."""
    setup_child("scheduler", args.log_level)
    try:
        from radixrt.model.runner import ModelRunner, on_fresh_thread
        from radixrt.scheduler.scheduler import Scheduler
        from radixrt.tokenizer import load_tokenizer

        runner = ModelRunner(args)
        tokenizer = load_tokenizer(args.tokenizer_path or runner.model_dir)
        # On a thread that ends, as the model loads: the loop steps on another thread, and
        # an OpenMP team left here would slow every parallel op (model.runner.on_fresh_thread).
        scheduler = on_fresh_thread(Scheduler, args, runner, tokenizer)
        loop = SchedulerLoop(scheduler, ipc, parent_pid)
    except Exception as e:
        logger.exception("scheduler start-up failed")
        report_ready(ready_conn, ProcessReady(name="scheduler", error=f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    report_ready(ready_conn, ProcessReady(name="scheduler", info={
        "model_dir": str(runner.model_dir),
        "context_len": runner.context_len,
        "vocab_size": runner.config.vocab_size,
        "max_total_tokens": runner.max_total_tokens,
        "device": str(runner.device),
        "dtype": str(runner.dtype).replace("torch.", ""),
        "quantization": runner.quantization,
        "quantization_plan": runner.quantization_plan.describe(),
        "cpu_features": runner.cpu_features.as_dict() if runner.device.type == "cpu" else None,
    }))
    # The loop steps on a worker thread, like the in-process Engine: stepping on the main
    # thread measured ~1.6x slower per step (2-core CPU, alternating runs, same load).
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as e:
            failed.append(e)
            raise

    worker = threading.Thread(target=run, name="radixrt-scheduler-loop", daemon=True)
    worker.start()
    tp = getattr(runner, "tp", None)
    if tp is not None:
        # The launcher stops this process with SIGTERM: leave through the finally below so the
        # other tensor-parallel ranks get the stop message (a clean exit) rather than a
        # closed connection.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while worker.is_alive():
            worker.join(1.0)
    finally:
        if tp is not None:
            tp.close()
    if failed:
        raise SystemExit(1)


class SchedulerLoop:
    def __init__(self, scheduler, ipc: IpcPaths, parent_pid: int):
        self.scheduler = scheduler
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.recv_sock = pull_socket(self.ctx, ipc.scheduler_in)
        self.send_sock = push_socket(self.ctx, ipc.detokenizer_in)
        self.progress = ProgressTracker()

    def run(self) -> None:
        try:
            self._serve()
        finally:
            self.scheduler.close()

    def _serve(self) -> None:
        s = self.scheduler
        while parent_alive(self.parent_pid):
            if self.recv_sock.poll(0 if s.has_work() else IDLE_POLL_MS):
                self._drain()
            if not s.has_work():
                continue
            try:
                touched = s.step()
            except Exception as e:
                # A bug: fail every request loudly and exit; the parent answers 503 from now on.
                logger.exception("scheduler step failed")
                outs = self.progress.fail_all(f"scheduler failed: {type(e).__name__}: {e}", 500)
                send(self.send_sock, BatchTokenIDOut(outputs=outs))
                raise
            outs = [o for o in map(self.progress.report, touched) if o is not None]
            if outs:
                send(self.send_sock, BatchTokenIDOut(outputs=outs))
        logger.info("parent process is gone; scheduler exiting")

    # ------------------------------------------------------------------ intake
    def _drain(self) -> None:
        replies: list[TokenIDOut] = []
        while True:
            try:
                data = self.recv_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = decode(data)
            if isinstance(msg, TokenizedGenerateReq):
                err = self._add(msg)
                if err is not None:
                    replies.append(err)
            elif isinstance(msg, AbortReq):
                req = self.scheduler.abort_request(msg.rid)
                if req is not None:
                    out = self.progress.report(req)
                    if out is not None:
                        replies.append(out)
            elif isinstance(msg, FlushCacheReq):
                ok = self.scheduler.flush_cache()
                send(self.send_sock, FlushCacheOut(
                    call_id=msg.call_id, success=ok,
                    message="cache flushed" if ok else "cache not flushed: requests are still running"))
            elif isinstance(msg, GetServerInfoReq):
                send(self.send_sock, ServerInfoOut(call_id=msg.call_id, info=self.server_info()))
            else:
                logger.warning("ignoring unexpected message %s", type(msg).__name__)
        if replies:
            send(self.send_sock, BatchTokenIDOut(outputs=replies))

    def _add(self, msg: TokenizedGenerateReq) -> TokenIDOut | None:
        self.progress.track(msg.rid, msg.stream)
        req = Req(rid=msg.rid, prompt_ids=msg.input_ids, params=msg.sampling_params,
                  return_logprob=msg.return_logprob, logprob_start_len=msg.logprob_start_len,
                  top_logprobs_num=msg.top_logprobs_num)
        try:
            self.scheduler.add_request(req)
        except ValueError as e:  # RequestError: e.g. a constraint that does not compile
            return self.progress.fail(msg.rid, str(e), 400)
        except Exception as e:
            logger.exception("could not add request %s", msg.rid)
            return self.progress.fail(msg.rid, f"{type(e).__name__}: {e}", 500)
        return None

    def server_info(self) -> dict:
        s = self.scheduler
        kv = s.kv_accounting()
        chunked = s.chunked
        stats = dataclasses.asdict(s.stats)
        return {
            "memory": {
                "kv_total_slots": kv["total"],
                "kv_free_slots": kv["free"],
                "kv_cached_slots": kv["cached"],
                "kv_running_slots": kv["running"],
                "kv_usage": (kv["total"] - kv["free"]) / kv["total"] if kv["total"] else 0.0,
            },
            "num_running_reqs": len(s.running) + (1 if chunked is not None else 0),
            "num_waiting_reqs": len(s.waiting),
            "num_waiting_tokens": sum(len(r.prompt_ids) for r in s.waiting),
            "cache_hit_rate": s.stats.cache_hit_rate,
            "stats": stats,
            # Hierarchical cache (docs/hicache.md): per-tier sizes, hits, bytes, timings.
            "hicache": s.cache.tier_stats(),
            # Vocabulary-level grammar caches built at start (GrammarManager.start_warm_up).
            "grammar_warm_up": s.grammars.warm_up_status,
        }

