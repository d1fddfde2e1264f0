"""One request's result as clients see it, built the same way by the server and the offline
Engine.

`ReqState` accumulates the detokenizer's outputs (`StrOut`) and times them; `result` turns it
into SGLang's ``{"text", "output_ids", "meta_info"}``; `StreamChunks` turns it into SGLang's
stream chunks. The server keeps one ReqState per sample in the tokenizer manager, the Engine
one per call on the caller's thread; both feed them the same messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from radixrt.managers.messages import ReqMeta, StrOut, TokenLogprob, TopLogprobs
from radixrt.scheduler.req import FinishReason


@dataclass
class ReqState:
    """Everything received about one sample so far (cumulative)."""

    rid: str
    prompt_tokens: int
    return_logprob: bool = False
    top_logprobs_num: int = 0
    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    meta: ReqMeta = field(default_factory=ReqMeta)
    input_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    input_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    output_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    output_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    finished: bool = False
    error: str | None = None  # the request failed; error_code is the HTTP status
    error_code: int = 0
    created: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None

    def apply(self, o: StrOut, now: float) -> None:
        """Add one output message, received at ``now`` (time.perf_counter)."""
        if o.error is not None:
            self.error, self.error_code = o.error, o.error_code or 500
        self.text += o.text
        if o.new_ids:
            if self.first_token_time is None:
                self.first_token_time = now
            self.last_token_time = now
            self.output_ids.extend(o.new_ids)
        self.meta = o.meta
        self.input_token_logprobs.extend(o.input_token_logprobs)
        self.input_top_logprobs.extend(o.input_top_logprobs)
        self.output_token_logprobs.extend(o.output_token_logprobs)
        self.output_top_logprobs.extend(o.output_top_logprobs)
        if o.finished:
            self.finished, self.finish_time = True, now

    def fail(self, message: str, code: int, now: float) -> None:
        """End the request with an error that did not come from the pipeline (a dead process)."""
        self.error, self.error_code = message, code
        self.meta = ReqMeta(finish_reason=FinishReason("abort", message=message))
        self.finished, self.finish_time = True, now

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.meta.finish_reason

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.created

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.created


class TokenTexts:
    """Token id -> its text, cached (logprob triples with ``return_text_in_logprobs``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._cache[token_id] = text
        return text


def _triples(pairs: list[TokenLogprob], texts: TokenTexts | None) -> list[list[Any]]:
    return [[lp, tok, texts(tok) if texts else None] for lp, tok in pairs]


def _top_triples(tops: list[TopLogprobs], texts: TokenTexts | None) -> list[Any]:
    return [None if entry is None else _triples(entry, texts) for entry in tops]


def meta_info(st: ReqState, texts: TokenTexts | None = None, output_from: int = 0) -> dict[str, Any]:
    """SGLang's ``meta_info``. Output logprob lists start at output token ``output_from``;
    ``output_token_logprobs_length`` counts them all. ``texts``: fill the token texts."""
    reason = st.finish_reason
    m: dict[str, Any] = {
        "id": st.rid,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": len(st.output_ids),
        "cached_tokens": st.meta.cached_tokens,
        "finish_reason": reason.to_dict() if reason is not None else None,
    }
    if st.ttft is not None:
        m["ttft"] = st.ttft
    if st.e2e_latency is not None:
        m["e2e_latency"] = st.e2e_latency
    if st.return_logprob:
        m["input_token_logprobs"] = _triples(st.input_token_logprobs, texts)
        m["output_token_logprobs"] = _triples(st.output_token_logprobs[output_from:], texts)
        m["output_token_logprobs_length"] = len(st.output_token_logprobs)
        if st.top_logprobs_num:
            m["input_top_logprobs"] = _top_triples(st.input_top_logprobs, texts)
            m["output_top_logprobs"] = _top_triples(st.output_top_logprobs[output_from:], texts)
    return m


def result(st: ReqState, texts: TokenTexts | None = None) -> dict[str, Any]:
    """The whole result so far (a non-streamed response)."""
    return {"text": st.text, "output_ids": list(st.output_ids), "meta_info": meta_info(st, texts)}


class StreamChunks:
    """SGLang's stream chunks for one request, for `/generate` SSE events and Engine stream items
    alike: ``text`` and ``output_ids`` are everything so far (a client prints
    ``text[len(previous):]``), ``meta_info`` is current, and its output logprob lists hold only
    the entries new since the previous chunk, with ``output_token_logprobs_length`` counting
    all of them (it equals ``completion_tokens``). Input logprobs are whole in every chunk."""

    def __init__(self) -> None:
        self._ids = -1  # output ids in the previous chunk; -1: none sent yet
        self._lps = 0  # output logprobs sent
        self.ended = False

    def next(self, st: ReqState, texts: TokenTexts | None = None) -> dict[str, Any] | None:
        """The chunk for what ``st`` has new, or None: a first chunk, then one per growth of
        the output, and a last one when the request finishes."""
        if self.ended or (len(st.output_ids) == self._ids and not st.finished):
            return None
        self._ids = len(st.output_ids)
        chunk = {"text": st.text, "output_ids": list(st.output_ids),
                 "meta_info": meta_info(st, texts, output_from=self._lps)}
        self._lps = len(st.output_token_logprobs)
        self.ended = st.finished
        return chunk
