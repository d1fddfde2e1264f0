"""The scheduler process: wraps `Scheduler` in a ZeroMQ loop.

Loop: drain incoming messages (blocking briefly only when idle), run one scheduler step,
send each touched request's progress to the detokenizer. Streaming requests report every
step; the others report their first token (for time-to-first-token) and their end.
The process exits when its parent dies.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass

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

logger = logging.getLogger("radixrt.scheduler_process")


@dataclass
class _Progress:
    """What has already been sent about one request."""

    stream: bool
    ids: int = 0
    input_lps: int = 0
    output_lps: int = 0


def run_scheduler_process(args: ServerArgs, ipc: IpcPaths, ready_conn, parent_pid: int) -> None:
    """Entry point of the spawned scheduler process."""
    setup_child("scheduler", args.log_level)
    try:
        from radixrt.scheduler.scheduler import Scheduler
        from radixrt.model.runner import ModelRunner
        from radixrt.tokenizer import load_tokenizer

        runner = ModelRunner(args)
        tokenizer = load_tokenizer(args.tokenizer_path or runner.model_dir)
        scheduler = Scheduler(args, runner, tokenizer)
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
    while worker.is_alive():
        worker.join(1.0)
    if failed:
        raise SystemExit(1)


class SchedulerLoop:
    def __init__(self, scheduler, ipc: IpcPaths, parent_pid: int):
        self.scheduler = scheduler
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.recv_sock = pull_socket(self.ctx, ipc.scheduler_in)
        self.send_sock = push_socket(self.ctx, ipc.detokenizer_in)
        self.progress: dict[str, _Progress] = {}

    def run(self) -> None:
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
                outs = [self._error_out(rid, f"scheduler failed: {type(e).__name__}: {e}", 500)
                        for rid in self.progress]
                send(self.send_sock, BatchTokenIDOut(outputs=outs))
                raise
            outs = [o for o in (self._output(r) for r in touched) if o is not None]
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
                    out = self._output(req)
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
        from radixrt.scheduler.req import Req
        from radixrt.sampling_params import SamplingParams

        try:
            req = Req(rid=msg.rid, prompt_ids=list(msg.input_ids),
                      params=SamplingParams.from_dict(msg.sampling_params),
                      return_logprob=msg.return_logprob, logprob_start_len=msg.logprob_start_len,
                      top_logprobs_num=msg.top_logprobs_num)
            self.scheduler.add_request(req)
        except ValueError as e:  # RequestError, SamplingParamsError, constraint errors
            return self._error_out(msg.rid, str(e), 400)
        except Exception as e:
            logger.exception("could not add request %s", msg.rid)
            return self._error_out(msg.rid, f"{type(e).__name__}: {e}", 500)
        self.progress[msg.rid] = _Progress(stream=msg.stream)
        return None

    # ------------------------------------------------------------------ output
    def _output(self, req) -> TokenIDOut | None:
        prog = self.progress.get(req.rid)
        if prog is None:
            return None
        if req.error:  # e.g. its constraint failed to compile: the client gets a 400
            del self.progress[req.rid]
            return self._error_out(req.rid, req.error, req.error_code)
        done = req.finished is not None
        if not done and not (prog.stream or (prog.ids == 0 and req.output_ids)):
            return None
        out = TokenIDOut(
            rid=req.rid,
            new_ids=req.output_ids[prog.ids:],
            finish_reason=req.finished.to_dict() if done else None,
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens,
            skip_special_tokens=req.params.skip_special_tokens,
            spaces_between_special_tokens=req.params.spaces_between_special_tokens,
            stop=list(req.params.stop),
        )
        prog.ids = len(req.output_ids)
        if done and getattr(req, "error", None):  # e.g. a constraint that failed to compile
            out.error, out.error_code = req.error, req.error_code
        if req.return_logprob:
            out.input_token_logprobs = req.input_token_logprobs[prog.input_lps:]
            out.output_token_logprobs = req.output_token_logprobs[prog.output_lps:]
            if req.top_logprobs_num:
                out.input_top_logprobs = _top_pairs(req.input_top_logprobs[prog.input_lps:])
                out.output_top_logprobs = _top_pairs(req.output_top_logprobs[prog.output_lps:])
            prog.input_lps = len(req.input_token_logprobs)
            prog.output_lps = len(req.output_token_logprobs)
        if done:
            del self.progress[req.rid]
        return out

    @staticmethod
    def _error_out(rid: str, message: str, code: int) -> TokenIDOut:
        return TokenIDOut(rid=rid, new_ids=[], prompt_tokens=0, completion_tokens=0, cached_tokens=0,
                          finish_reason={"type": "abort", "message": message}, error=message,
                          error_code=code)

    def server_info(self) -> dict:
        s = self.scheduler
        kv = s.kv_accounting()
        chunked = getattr(s, "chunked", None)
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
            "cache_hit_rate": s.stats.cache_hit_rate,
            "stats": stats,
        }


def _top_pairs(entries: list) -> list:
    """Top-logprob entries as (logprob, token id) pairs. The sampler yields (id, logprob) and
    prompt logprobs (logprob, id); a token id is the int, so the order is unambiguous."""
    out = []
    for entry in entries:
        if entry is None:
            out.append(None)
        else:
            out.append([(b, a) if isinstance(a, int) and not isinstance(b, int) else (a, b)
                        for a, b in entry])
    return out
