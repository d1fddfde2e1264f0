"""Turns a finished (or streaming) request into SGLang-shaped results."""

from __future__ import annotations

import time
from typing import Any

from radixrt.scheduler.req import Req


def output_text(req: Req, tokenizer, ids: list[int] | None = None) -> str:
    """The request's text: special tokens skipped, a final stop token dropped, and a matched
    stop string (and what follows it) cut off."""
    if ids is None:
        ids = req.output_ids
        if req.finished is not None and isinstance(req.finished.matched, int) and ids:
            ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=req.params.skip_special_tokens,
                            spaces_between_special_tokens=req.params.spaces_between_special_tokens)
    if req.finished is not None and isinstance(req.finished.matched, str):
        i = text.find(req.finished.matched)
        if i != -1:
            text = text[:i]
    return text


def _logprob_triples(pairs, tokenizer, with_text: bool) -> list[list[Any]]:
    if not with_text:
        return [[lp, tok, None] for lp, tok in pairs]
    return [[lp, tok, tokenizer.decode([tok])] for lp, tok in pairs]


def _top_triples(tops, tokenizer, with_text: bool) -> list[Any]:
    out = []
    for entry in tops:
        if entry is None:
            out.append(None)
        else:
            out.append(_logprob_triples([(lp, tok) for lp, tok in entry], tokenizer, with_text))
    return out


def meta_info(req: Req, tokenizer, return_text_in_logprobs: bool = False,
              out_start: int = 0) -> dict[str, Any]:
    """``out_start`` limits output logprobs to those from that output index (streaming)."""
    m: dict[str, Any] = {
        "id": req.rid,
        "prompt_tokens": len(req.prompt_ids),
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.cached_tokens,
        "finish_reason": req.finished.to_dict() if req.finished else None,
    }
    if req.first_token_time is not None:
        m["ttft"] = req.first_token_time - req.created
    if req.finished is not None:
        m["e2e_latency"] = time.perf_counter() - req.created
    if req.return_logprob:
        m["input_token_logprobs"] = _logprob_triples(req.input_token_logprobs, tokenizer, return_text_in_logprobs)
        m["output_token_logprobs"] = _logprob_triples(req.output_token_logprobs[out_start:], tokenizer,
                                                      return_text_in_logprobs)
        if req.top_logprobs_num:
            m["input_top_logprobs"] = _top_triples(req.input_top_logprobs, tokenizer, return_text_in_logprobs)
            m["output_top_logprobs"] = _top_triples(req.output_top_logprobs[out_start:], tokenizer,
                                                    return_text_in_logprobs)
    return m


def build_result(req: Req, tokenizer, return_text_in_logprobs: bool = False) -> dict[str, Any]:
    return {
        "text": output_text(req, tokenizer),
        "output_ids": list(req.output_ids),
        "meta_info": meta_info(req, tokenizer, return_text_in_logprobs),
    }
