"""TokenizerManager: the HTTP process's side of the pipeline, on the asyncio (uvloop) loop.

It tokenizes and validates inputs (`inputs.py`: the one place requests are checked), gives
every sample its own rid, sends typed requests to the scheduler, and feeds the detokenizer's
outputs to per-sample `ReqState`s (`results.py`, shared with the offline Engine). One API
call (a batch, n > 1) is a `Call`: its samples share one event, so a consumer wakes once for
any update and reads cumulative state (a slow client simply gets coalesced updates). A
watchdog notices a dead child process: every in-flight request fails at once and new ones
get 503. Under ``--dp-size N`` each sample goes to one of N scheduler workers
(`dp_dispatch.Dispatcher`); a dead worker fails only its own requests (503, naming it) and
is no longer chosen; control calls go to every live worker and their answers are merged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from radixrt.config import ServerArgs
from radixrt.managers.dp_dispatch import Dispatcher, NoWorkerAlive, merge_server_infos
from radixrt.managers.inputs import PromptLimits, check_logprob_args, check_prompt, expand_samples
from radixrt.managers.ipc import pull_socket, push_socket, send
from radixrt.managers.launcher import ChildProcesses
from radixrt.managers.messages import (
    AbortReq,
    BatchStrOut,
    BatchTokenIDOut,
    FlushCacheOut,
    FlushCacheReq,
    GetServerInfoReq,
    ServerInfoOut,
    StrOut,
    TokenIDOut,
    TokenizedGenerateReq,
    decode,
)
from radixrt.managers.metrics import ServerMetrics
from radixrt.managers.results import ReqState, TokenTexts
from radixrt.sampling_params import SamplingParams

logger = logging.getLogger("radixrt.tokenizer_manager")

WATCHDOG_INTERVAL_S = 0.2
CONTROL_TIMEOUT_S = 30.0
# Prompts longer than this (characters) are tokenized off the event loop.
OFFLOAD_TOKENIZE_CHARS = 8192


class RequestFailed(Exception):
    """A request the server cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class SampleInput:
    """One sample of an API call, ready to send (n == 1)."""

    rid: str
    group: str  # the rid the client knows (shared by the n samples of a prompt)
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0


@dataclass
class SampleState(ReqState):
    """A sample's `ReqState`, plus what the server needs to route and abort it."""

    group: str = ""  # the rid the client knows
    stream: bool = False
    event: asyncio.Event | None = None  # shared by the samples of one Call
    abort_sent: bool = False
    worker: int = 0  # the scheduler worker serving it (--dp-size)

    def failure(self) -> RequestFailed | None:
        return None if self.error is None else RequestFailed(self.error, self.error_code or 500)


class Call:
    """The samples of one API call. Close it when done: unfinished samples are aborted."""

    def __init__(self, tm: TokenizerManager, states: list[SampleState], event: asyncio.Event):
        self.tm = tm
        self.states = states
        self.event = event
        self._watch: asyncio.Task | None = None

    @property
    def done(self) -> bool:
        return all(s.finished for s in self.states)

    def error(self) -> RequestFailed | None:
        return next((s.failure() for s in self.states if s.error is not None), None)

    async def wait_update(self) -> None:
        await self.event.wait()
        self.event.clear()

    async def wait_done(self) -> None:
        while not self.done:
            await self.wait_update()

    def watch_disconnect(self, receive) -> None:
        """Abort the call's samples when the client disconnects. ``receive`` is the ASGI
        receive callable, after the body has been read (it then waits for the disconnect)."""

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            if not self.done:
                logger.info("client disconnected; aborting %s", [s.rid for s in self.states])
                self.abort()

        self._watch = asyncio.ensure_future(watch())

    def abort(self) -> None:
        for s in self.states:
            self.tm.abort_state(s)

    def close(self) -> None:
        """Idempotent. A finished sample has already left the manager's table; an unfinished
        one leaves it when the scheduler confirms the abort."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.abort()


class TokenizerManager:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.children = ChildProcesses(args)
        self.metrics = ServerMetrics()
        self.model_info: dict[str, Any] = {}
        self.tokenizer = None
        self.states: dict[str, SampleState] = {}
        self.dead: str | None = None
        self.dispatcher = Dispatcher(max(1, args.dp_size), args.load_balance_method)
        self.dead_workers: dict[int, str] = {}
        self._calls: dict[int, asyncio.Future] = {}
        self._call_worker: dict[int, int] = {}
        self._call_ids = itertools.count()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the child processes and load the tokenizer (blocking; before the loop runs)."""
        from radixrt.model.loader import prepare_model_dir
        from radixrt.tokenizer import load_tokenizer

        # Converting a GGUF (first run) happens here, once, before the children look it up.
        tokenizer_path = str(self.args.tokenizer_path or prepare_model_dir(self.args.model_path))
        self.children.spawn(tokenizer_path)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.token_texts = TokenTexts(self.tokenizer)
        self.model_info = self.children.wait_ready()
        self.context_len: int = self.model_info["context_len"]
        self.vocab_size: int = self.model_info["vocab_size"]
        self.limits = PromptLimits(self.vocab_size, self.context_len, self.model_info["max_total_tokens"])
        self.served_model_name = self.args.served_model_name or _model_name(
            self.args.model_path, self.model_info["model_dir"])
        self.started_at = int(time.time())

    async def start_loops(self) -> None:
        """Open the sockets and start the receive loop and the watchdog (on the running loop)."""
        self._actx = zmq.asyncio.Context()
        self._recv_sock = pull_socket(self._actx, self.children.ipc.tokenizer_in)
        self._sctx = zmq.Context()
        self._send_socks = [push_socket(self._sctx, a) for a in self.children.worker_addrs]
        # To end a dead worker's requests in the detokenizer too (it keeps per-request state).
        self._detok_sock = push_socket(self._sctx, self.children.ipc.detokenizer_in)
        self._tasks = [asyncio.ensure_future(self._recv_loop()),
                       asyncio.ensure_future(self._watchdog())]

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._fail_all("the server is shutting down", mark_dead=False)
        self.children.shutdown()
        for sock in (getattr(self, "_recv_sock", None), getattr(self, "_detok_sock", None),
                     *getattr(self, "_send_socks", ())):
            if sock is not None:
                sock.close(linger=0)

    def check_alive(self) -> None:
        if self.dead is not None:
            raise RequestFailed(f"the server is not healthy: {self.dead}", 503)

    # ------------------------------------------------------------------ inputs
    async def tokenize(self, text: str, field: str, add_special_tokens: bool = True) -> list[int]:
        def enc() -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

        if len(text) > OFFLOAD_TOKENIZE_CHARS:
            ids = await asyncio.get_running_loop().run_in_executor(None, enc)
        else:
            ids = enc()
        self.check_prompt(ids, field)
        return ids

    def check_prompt(self, ids: list[int], field: str) -> None:
        try:
            check_prompt(ids, field, self.limits)
        except ValueError as e:
            raise RequestFailed(str(e)) from None

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise RequestFailed("messages: the model's tokenizer has no chat template")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as e:  # jinja errors from the template (e.g. roles must alternate)
            raise RequestFailed(f"messages: the chat template rejected them: {e}") from None

    def make_samples(self, prompt_ids: list[list[int]], params: list[SamplingParams], *,
                     rids: list[str] | None = None, return_logprob: list[bool] | None = None,
                     logprob_start_len: list[int] | None = None,
                     top_logprobs_num: list[int] | None = None) -> list[SampleInput]:
        """Expand prompts x n into samples, validating the logprob arguments."""
        out: list[SampleInput] = []
        for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True)):
            start = logprob_start_len[i] if logprob_start_len else -1
            top = top_logprobs_num[i] if top_logprobs_num else 0
            try:
                check_logprob_args(start, top)
            except ValueError as e:
                raise RequestFailed(str(e)) from None
            group = rids[i] if rids else uuid.uuid4().hex
            for j, sp in enumerate(expand_samples(p)):
                out.append(SampleInput(
                    rid=group if p.n == 1 else f"{group}-{j}", group=group, input_ids=ids, params=sp,
                    return_logprob=bool(return_logprob[i]) if return_logprob else False,
                    logprob_start_len=start, top_logprobs_num=top))
        return out

    # ------------------------------------------------------------------ requests
    def submit(self, samples: list[SampleInput], stream: bool = False) -> Call:
        self.check_alive()
        seen: set[str] = set()
        for s in samples:
            if s.rid in self.states or s.rid in seen:
                raise RequestFailed(f"rid: {s.rid!r} is already in use")
            seen.add(s.rid)
        event = asyncio.Event()
        states = []
        for s in samples:
            try:
                worker = self.dispatcher.select(s.input_ids)
            except NoWorkerAlive:
                raise RequestFailed("the server is not healthy: no scheduler worker is alive",
                                    503) from None
            st = SampleState(rid=s.rid, group=s.group, event=event, prompt_tokens=len(s.input_ids),
                             stream=stream, return_logprob=s.return_logprob,
                             top_logprobs_num=s.top_logprobs_num if s.return_logprob else 0,
                             worker=worker)
            self.states[s.rid] = st
            states.append(st)
            send(self._send_socks[worker], TokenizedGenerateReq(
                rid=s.rid, input_ids=s.input_ids, sampling_params=s.params,
                return_logprob=s.return_logprob, logprob_start_len=s.logprob_start_len,
                top_logprobs_num=s.top_logprobs_num, stream=stream))
        return Call(self, states, event)

    def abort_state(self, st: SampleState) -> None:
        if (not st.finished and not st.abort_sent and self.dead is None
                and st.worker not in self.dead_workers):
            st.abort_sent = True
            send(self._send_socks[st.worker], AbortReq(rid=st.rid))

    def abort_request(self, rid: str | None, abort_all: bool = False) -> int:
        """Abort by rid (a sample's rid, or the client rid shared by its n samples)."""
        hits = [s for s in self.states.values() if abort_all or rid in (s.rid, s.group)]
        for s in hits:
            self.abort_state(s)
        return len(hits)

    # ------------------------------------------------------------------ control
    async def _control(self, make, timeout: float = CONTROL_TIMEOUT_S, worker: int = 0):
        self.check_alive()
        call_id = next(self._call_ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        self._call_worker[call_id] = worker
        send(self._send_socks[worker], make(call_id))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestFailed(f"the scheduler did not answer within {timeout:g}s", 503) from None
        finally:
            self._calls.pop(call_id, None)
            self._call_worker.pop(call_id, None)

    async def _control_all(self, make, timeout: float = CONTROL_TIMEOUT_S) -> dict[int, Any]:
        """The call on every live worker; the answers by worker (a worker that dies meanwhile
        is left out; if none answers, the first failure is raised)."""
        self.check_alive()
        workers = list(self.dispatcher.alive)
        outs = await asyncio.gather(*(self._control(make, timeout, w) for w in workers),
                                    return_exceptions=True)
        got = {w: o for w, o in zip(workers, outs, strict=True) if not isinstance(o, BaseException)}
        if not got:
            failure = next((o for o in outs if isinstance(o, BaseException)),
                           RequestFailed("the server is not healthy: no scheduler worker is alive", 503))
            raise failure
        return got

    async def flush_cache(self) -> FlushCacheOut:
        outs = await self._control_all(lambda i: FlushCacheReq(call_id=i))
        if len(outs) == 1 and self.dispatcher.num_workers == 1:
            return next(iter(outs.values()))
        failed = [f"worker {w}: {o.message}" for w, o in sorted(outs.items()) if not o.success]
        return FlushCacheOut(call_id=-1, success=not failed,
                             message="; ".join(failed) if failed
                             else f"cache flushed on {len(outs)} workers")

    async def server_info(self, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        outs: dict[int, ServerInfoOut] = await self._control_all(
            lambda i: GetServerInfoReq(call_id=i), timeout)
        if self.dispatcher.num_workers == 1:
            info = outs[0].info
        else:
            info = merge_server_infos([o.info for _, o in sorted(outs.items())])
            pids = self.children.worker_pids()
            info["workers"] = [
                {"dp_rank": w, "pid": pids[w], "alive": w not in self.dead_workers,
                 "in_flight": self.dispatcher.load[w], "dispatched": self.dispatcher.dispatched[w],
                 **({**outs[w].info} if w in outs else {"error": self.dead_workers.get(w)})}
                for w in range(self.dispatcher.num_workers)]
            info["dp"] = self.dispatcher.stats()
        self.metrics.scheduler_snapshot = info
        return info

    # ------------------------------------------------------------------ output routing
    async def _recv_loop(self) -> None:
        while True:
            data = await self._recv_sock.recv()
            try:
                msg = decode(data)
                if isinstance(msg, BatchStrOut):
                    now = time.perf_counter()
                    for o in msg.outputs:
                        self._on_output(o, now)
                elif isinstance(msg, FlushCacheOut | ServerInfoOut):
                    fut = self._calls.get(msg.call_id)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    logger.warning("ignoring unexpected message %s", type(msg).__name__)
            except Exception:
                logger.exception("could not handle a message from the detokenizer")

    def _on_output(self, o: StrOut, now: float) -> None:
        st = self.states.get(o.rid)
        if st is None:  # closed by its consumer (e.g. the client went away)
            return
        previous_token_time = st.last_token_time
        st.apply(o, now)
        if o.new_ids:
            if previous_token_time is None:
                self.metrics.ttft.observe(st.ttft)
            else:
                gap = (now - previous_token_time) / len(o.new_ids)
                for _ in o.new_ids:
                    self.metrics.itl.observe(gap)
        if st.finished:
            del self.states[o.rid]
            self.dispatcher.on_finish(st.worker)
            reason = "error" if st.error else st.finish_reason.type
            self.metrics.on_finish(reason, st.e2e_latency)
        st.event.set()

    async def _watchdog(self) -> None:
        while self.dead is None:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            for w, why in self.children.dead_workers().items():
                if w not in self.dead_workers:
                    self._worker_died(w, why)
            reason = self.children.dead_child()
            if reason is not None:
                logger.error("%s; failing all requests, /health now answers 503", reason)
                self._fail_all(reason)

    def _worker_died(self, worker: int, reason: str) -> None:
        """Take a dead scheduler worker out: its requests and control calls fail now (503)."""
        self.dead_workers[worker] = reason
        self.dispatcher.remove(worker)
        left = len(self.dispatcher.alive)
        logger.error("%s; failing its requests, %d worker(s) left", reason, left)
        now = time.perf_counter()
        ended = []
        for rid, st in list(self.states.items()):
            if st.worker == worker:
                st.fail(reason, 503, now)
                st.event.set()
                del self.states[rid]
                self.metrics.on_finish("error", st.e2e_latency)
                ended.append(TokenIDOut(rid=rid, new_ids=[], meta=st.meta, error=reason,
                                        error_code=503))
        if ended and self.dead is None:
            send(self._detok_sock, BatchTokenIDOut(outputs=ended))
        err = RequestFailed(reason, 503)
        for call_id, w in list(self._call_worker.items()):
            fut = self._calls.get(call_id)
            if w == worker and fut is not None and not fut.done():
                fut.set_exception(err)

    def _fail_all(self, reason: str, mark_dead: bool = True) -> None:
        if mark_dead:
            self.dead = reason
        err = RequestFailed(reason, 503)
        now = time.perf_counter()
        for st in self.states.values():
            st.fail(reason, 503, now)
            st.event.set()
        self.states.clear()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(err)


def _model_name(model_path: str | None, model_dir: str) -> str:
    """The model's name for /v1/models: the path's name, without .gguf or a cache-key suffix."""
    if model_path:
        p = Path(model_path)
        return p.stem if p.suffix == ".gguf" else p.name
    return re.sub(r"-[0-9a-f]{12}$", "", Path(model_dir).name)
