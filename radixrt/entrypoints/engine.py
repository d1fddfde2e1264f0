"""Engine: the whole pipeline in-process, for offline batch generation and tests.

A background thread owns the scheduler and steps it while there is work; `generate` (thread
safe, callable from many threads at once) submits requests and waits for their results, so
concurrent callers are batched together continuously.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from radixrt.config import ServerArgs
from radixrt.managers.inputs import expand_samples, normalize_prompts, per_prompt_params
from radixrt.managers.output import build_result, meta_info, output_text
from radixrt.scheduler.req import FinishReason, Req
from radixrt.scheduler.scheduler import RequestError, Scheduler

logger = logging.getLogger("radixrt.engine")


class Engine:
    def __init__(self, server_args: ServerArgs | None = None, **kwargs: Any):
        from radixrt.model.runner import ModelRunner
        from radixrt.tokenizer import load_tokenizer

        self.server_args = server_args or ServerArgs(**kwargs)
        self.runner = ModelRunner(self.server_args)
        self.tokenizer = load_tokenizer(self.server_args.tokenizer_path or self.runner.model_dir)
        self.scheduler = Scheduler(self.server_args, self.runner, self.tokenizer)
        self._intake: queue.Queue = queue.Queue()
        self._waiters: dict[str, queue.Queue] = {}
        self._ids = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="radixrt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def generate(self, prompt: Any = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: Any = None, return_logprob: bool = False, logprob_start_len: int = -1,
                 top_logprobs_num: int = 0, return_text_in_logprobs: bool = False,
                 stream: bool = False) -> Any:
        """Generate for one prompt (returns a dict, or a list of n dicts when n > 1) or a batch
        (returns a flat list, n results per prompt in order). With ``stream=True`` (single
        prompt, n = 1), returns an iterator of incremental dicts with a ``text`` delta."""
        prompts, is_batch = normalize_prompts(prompt, input_ids)
        plist = per_prompt_params(sampling_params, len(prompts))
        reqs: list[Req] = []
        for text, params in zip(prompts, plist):
            ids = self.tokenizer.encode(text) if isinstance(text, str) else list(text)
            base = f"engine-{next(self._ids)}"
            for i, p in enumerate(expand_samples(params)):
                reqs.append(Req(rid=f"{base}-{i}" if params.n > 1 else base, prompt_ids=ids, params=p,
                                return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                                top_logprobs_num=top_logprobs_num))
        if stream:
            if len(reqs) != 1:
                raise ValueError("stream=True supports a single prompt with n=1")
            return self._stream(reqs[0], return_text_in_logprobs)
        waits = [self._submit(r) for r in reqs]
        results = []
        for req, q in zip(reqs, waits):
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished is not None:
                    break
            if req.error:
                raise ValueError(req.error)
            results.append(build_result(req, self.tokenizer, return_text_in_logprobs))
        if not is_batch and len(results) == 1:
            return results[0]
        return results

    def _stream(self, req: Req, with_text: bool) -> Iterator[dict[str, Any]]:
        q = self._submit(req)
        sent_text = ""
        sent_lp = 0
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            done = item.finished is not None
            if req.error:
                raise ValueError(req.error)
            text = output_text(req, self.tokenizer) if done else self._safe_text(req)
            delta = text[len(sent_text):] if text.startswith(sent_text) else ""
            if delta or done:
                sent_text += delta
                info = meta_info(req, self.tokenizer, with_text, out_start=sent_lp)
                sent_lp = len(req.output_token_logprobs)
                yield {"text": delta, "output_ids": list(req.output_ids), "meta_info": info}
            if done:
                return

    def _safe_text(self, req: Req) -> str:
        text = self.tokenizer.decode(req.output_ids, skip_special_tokens=req.params.skip_special_tokens)
        text = text.rstrip("\ufffd")
        if req.params.stop:
            from radixrt.scheduler.detokenize import stop_holdback

            text = text[: len(text) - stop_holdback(text, req.params.stop)]
        return text

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
        }

    def kv_accounting(self) -> dict[str, int]:
        done: queue.Queue = queue.Queue()
        self._intake.put(("accounting", done))
        return done.get()

    def shutdown(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._intake.put(("stop", None))
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ loop
    def _submit(self, req: Req) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        self._waiters[req.rid] = q
        self._intake.put(("add", req))
        return q

    def _handle(self, kind: str, payload: Any) -> bool:
        s = self.scheduler
        if kind == "add":
            try:
                s.add_request(payload)
            except RequestError as e:
                payload.finished = FinishReason("abort", message=str(e))
                self._deliver(payload, RequestError(str(e)))
        elif kind == "abort":
            req = s.abort_request(payload)
            if req is not None:
                self._deliver(req, req)
        elif kind == "flush":
            payload.put(s.flush_cache())
        elif kind == "accounting":
            payload.put(s.kv_accounting())
        elif kind == "stop":
            return False
        return True

    def _deliver(self, req: Req, item: Any) -> None:
        q = self._waiters.get(req.rid)
        if q is not None:
            q.put(item)
            if req.finished is not None:
                self._waiters.pop(req.rid, None)

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
                        self._deliver(req, req)
                except Exception as e:  # a bug: fail every waiting caller instead of hanging
                    logger.exception("scheduler step failed")
                    for q in list(self._waiters.values()):
                        q.put(RuntimeError(f"scheduler step failed: {e}"))
                    self._waiters.clear()
                    raise
        for q in list(self._waiters.values()):
            q.put(RuntimeError("engine shut down"))
        self._waiters.clear()
