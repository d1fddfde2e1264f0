"""Engine: the whole pipeline in-process, for offline batch generation and tests.

A background thread owns the scheduler: it steps it while there is work and reports each
request's progress (`managers.progress`, as the server's scheduler process does). `generate`
(thread safe, callable from many threads at once) validates and submits requests, then runs
the server's own result pieces on the caller's thread: the `Detokenizer` core and a
`ReqState` per sample (`managers.results`). Results, stream chunks, stop-string handling and
timings are therefore the server's, field for field. Concurrent callers are batched together
continuously.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from radixrt.config import ServerArgs
from radixrt.managers.detokenizer import Detokenizer
from radixrt.managers.inputs import (
    PromptLimits,
    check_logprob_args,
    check_prompt,
    expand_samples,
    normalize_prompts,
    per_prompt_params,
)
from radixrt.managers.messages import TokenIDOut
from radixrt.managers.progress import ProgressTracker
from radixrt.managers.results import ReqState, StreamChunks, TokenTexts, result
from radixrt.scheduler.req import Req
from radixrt.scheduler.scheduler import Scheduler

logger = logging.getLogger("radixrt.engine")


class Engine:
    def __init__(self, server_args: ServerArgs | None = None, **kwargs: Any):
        from radixrt.model.runner import ModelRunner, on_fresh_thread
        from radixrt.tokenizer import load_tokenizer

        self.server_args = server_args or ServerArgs(**kwargs)
        if self.server_args.dp_size > 1:
            raise ValueError("dp_size > 1 needs the server (radixrt serve --dp-size N); the in-process "
                             "Engine runs one scheduler worker")
        self.runner = ModelRunner(self.server_args)
        self.tokenizer = load_tokenizer(self.server_args.tokenizer_path or self.runner.model_dir)
        # Built on a thread that ends (like the model): its parallel ops (pool set-up) must not
        # leave an OpenMP team next to the scheduler thread's (model.runner.on_fresh_thread).
        self.scheduler = on_fresh_thread(Scheduler, self.server_args, self.runner, self.tokenizer)
        self.limits = PromptLimits(self.runner.config.vocab_size, self.runner.context_len,
                                   self.runner.max_total_tokens)
        self.token_texts = TokenTexts(self.tokenizer)
        self.progress = ProgressTracker()  # scheduler thread only
        self._intake: queue.Queue = queue.Queue()
        self._waiters: dict[str, queue.Queue] = {}
        self._ids = itertools.count()
        self._stop = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._loop, name="radixrt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def generate(self, prompt: Any = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: Any = None, return_logprob: bool = False, logprob_start_len: int = -1,
                 top_logprobs_num: int = 0, return_text_in_logprobs: bool = False,
                 stream: bool = False) -> Any:
        """Generate for one prompt (returns a dict, or a list of n dicts when n > 1) or a batch
        (returns a flat list, n results per prompt in order), shaped as the server's
        `/generate` answers. With ``stream=True`` (single prompt, n = 1), returns an iterator
        of the server's stream chunks: cumulative ``text`` and ``output_ids``, output logprobs
        new since the previous chunk. Invalid inputs and failed requests raise ValueError
        (naming the field where there is one)."""
        prompts, is_batch = normalize_prompts(prompt, input_ids)
        plist = per_prompt_params(sampling_params, len(prompts))
        check_logprob_args(logprob_start_len, top_logprobs_num)
        reqs: list[Req] = []
        for i, (text, params) in enumerate(zip(prompts, plist)):
            field = ("prompt" if isinstance(text, str) else "input_ids") + (f"[{i}]" if is_batch else "")
            ids = self.tokenizer.encode(text) if isinstance(text, str) else list(text)
            check_prompt(ids, field, self.limits)
            base = f"engine-{next(self._ids)}"
            for j, p in enumerate(expand_samples(params)):
                reqs.append(Req(rid=f"{base}-{j}" if params.n > 1 else base, prompt_ids=ids, params=p,
                                return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                                top_logprobs_num=top_logprobs_num))
        texts = self.token_texts if return_text_in_logprobs else None
        if stream:
            if len(reqs) != 1:
                raise ValueError("stream=True supports a single prompt with n=1")
            return self._stream(reqs[0], texts)
        detok = Detokenizer(self.tokenizer)
        calls = [self._submit(r, stream=False) for r in reqs]
        try:
            for st, q in calls:
                while not st.finished:
                    self._receive(q, st, detok)
                _raise_if_failed(st)
        finally:
            for st, _ in calls:
                if not st.finished:
                    self.abort(st.rid)
        results = [result(st, texts) for st, _ in calls]
        if not is_batch and len(results) == 1:
            return results[0]
        return results

    def _stream(self, req: Req, texts: TokenTexts | None) -> Iterator[dict[str, Any]]:
        st, q = self._submit(req, stream=True)
        detok = Detokenizer(self.tokenizer)
        chunks = StreamChunks()
        try:
            while not chunks.ended:
                self._receive(q, st, detok)
                _raise_if_failed(st)
                chunk = chunks.next(st, texts)
                if chunk is not None:
                    yield chunk
        finally:
            if not st.finished:  # the consumer stopped early
                self.abort(st.rid)

    def abort(self, rid: str) -> None:
        self._intake.put(("abort", rid))

    def flush_cache(self) -> bool:
        done: queue.Queue = queue.Queue()
        self._intake.put(("flush", done))
        return done.get()

    def get_stats(self) -> dict[str, Any]:
        s = self.scheduler.stats
        return {
            "cache_hit_rate": s.cache_hit_rate,
            **dataclasses.asdict(s),
            "kv": self.kv_accounting(),
            "hicache": self._ask("hicache"),
            "quantization": self.runner.quantization,
            "cpu_features": (self.runner.cpu_features.as_dict()
                             if self.runner.device.type == "cpu" else None),
        }

    def kv_accounting(self) -> dict[str, int]:
        done: queue.Queue = queue.Queue()
        self._intake.put(("accounting", done))
        return done.get()

    def _ask(self, kind: str) -> Any:
        """An answer computed on the scheduler thread (which owns the cache)."""
        done: queue.Queue = queue.Queue()
        self._intake.put((kind, done))
        return done.get()

    def shutdown(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._intake.put(("stop", None))
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.scheduler.close()
        if self.runner.tp is not None:  # tensor parallelism: stop the other ranks, leave the group
            self.runner.tp.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ caller side
    def _submit(self, req: Req, stream: bool) -> tuple[ReqState, queue.Queue]:
        if self._dead is not None:
            raise RuntimeError(f"the engine is not running: {self._dead}")
        q: queue.Queue = queue.Queue()
        st = ReqState(rid=req.rid, prompt_tokens=len(req.prompt_ids), return_logprob=req.return_logprob,
                      top_logprobs_num=req.top_logprobs_num if req.return_logprob else 0)
        self._waiters[req.rid] = q
        self._intake.put(("add", (req, stream)))
        return st, q

    @staticmethod
    def _receive(q: queue.Queue, st: ReqState, detok: Detokenizer) -> None:
        """Apply the next report about ``st`` (blocking until there is one)."""
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        now, out = item
        st.apply(detok.process_safe(out), now)

    # ------------------------------------------------------------------ scheduler thread
    def _handle(self, kind: str, payload: Any) -> bool:
        s = self.scheduler
        if kind == "add":
            req, stream = payload
            self.progress.track(req.rid, stream)
            try:
                s.add_request(req)
            except ValueError as e:  # RequestError: e.g. a constraint that does not compile
                self._deliver(self.progress.fail(req.rid, str(e), 400))
            except Exception as e:
                logger.exception("could not add request %s", req.rid)
                self._deliver(self.progress.fail(req.rid, f"{type(e).__name__}: {e}", 500))
        elif kind == "abort":
            req = s.abort_request(payload)
            if req is not None:
                self._report(req)
        elif kind == "flush":
            payload.put(s.flush_cache())
        elif kind == "accounting":
            payload.put(s.kv_accounting())
        elif kind == "hicache":
            payload.put(s.cache.tier_stats())
        elif kind == "stop":
            return False
        return True

    def _report(self, req: Req) -> None:
        out = self.progress.report(req)
        if out is not None:
            self._deliver(out)

    def _deliver(self, out: TokenIDOut) -> None:
        # Stamped here, as the server's tokenizer manager stamps what it receives, so a caller
        # that reads its queue late (one sample of a batch after another) still times it right.
        q = self._waiters.get(out.rid)
        if q is not None:
            q.put((time.perf_counter(), out))
            if out.finished:
                del self._waiters[out.rid]

    def _fail_waiters(self, reason: str) -> None:
        self._dead = reason
        for q in list(self._waiters.values()):
            q.put(RuntimeError(reason))
        self._waiters.clear()

    def _loop(self) -> None:
        s = self.scheduler
        running = True
        while running:
            try:
                block = not s.has_work()
                while True:
                    kind, payload = self._intake.get(block=block)
                    block = False
                    if not self._handle(kind, payload):
                        running = False
                        break
            except queue.Empty:
                pass
            if not running:
                break
            if s.has_work():
                try:
                    for req in s.step():
                        self._report(req)
                except Exception as e:  # a bug: fail every waiting caller instead of hanging
                    logger.exception("scheduler step failed")
                    self._fail_waiters(f"scheduler step failed: {type(e).__name__}: {e}")
                    raise
        self._fail_waiters("engine shut down")


def _raise_if_failed(st: ReqState) -> None:
    """A request the server would answer with an error status raises ValueError (with the
    server's message), whatever the status; a dead scheduler raises RuntimeError instead."""
    if st.error is not None:
        raise ValueError(st.error)
