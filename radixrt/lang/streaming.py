"""Streamed generation: turning server chunks into text deltas and per-chunk logprobs.

A server may send each chunk's text, ids and logprob lists cumulatively (SGLang's default,
and radixrt's server) or as deltas (SGLang's incremental mode, radixrt's in-process Engine).
`StreamMerger` accepts either and always hands out deltas, so that the output logprobs of
all chunks of one generation add up to its ``completion_tokens``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("radixrt.lang")

# meta_info lists that grow with every generated token.
INCREMENTAL_META_KEYS = ("output_token_logprobs", "output_top_logprobs")


def merge_meta(acc: dict[str, Any] | None, delta: dict[str, Any]) -> dict[str, Any]:
    """``delta``'s meta_info with the incremental lists of ``acc`` prepended."""
    if acc is None:
        return dict(delta)
    out = dict(delta)
    for key in INCREMENTAL_META_KEYS:
        if key in acc or key in delta:
            out[key] = list(acc.get(key) or []) + list(delta.get(key) or [])
    return out


class StreamMerger:
    """Feed it raw chunks ({"text", "output_ids", "meta_info"}); get (text delta, meta_info
    whose incremental lists hold only this chunk's new entries).

    ``mode`` is "cumulative", "delta", or "auto": a chunk is cumulative when its
    ``output_ids`` hold all ``completion_tokens`` so far (then both readings agree on the
    first chunk), else when its text extends the text seen so far.
    """

    def __init__(self, mode: str = "auto"):
        if mode not in ("auto", "cumulative", "delta"):
            raise ValueError(f"unknown stream mode {mode!r}")
        self.mode = mode
        self.text = ""
        self.num_ids = 0
        self.seen: dict[str, int] = dict.fromkeys(INCREMENTAL_META_KEYS, 0)

    def _is_cumulative(self, chunk: dict[str, Any]) -> bool:
        if self.mode != "auto":
            return self.mode == "cumulative"
        ids = chunk.get("output_ids")
        total = (chunk.get("meta_info") or {}).get("completion_tokens")
        if isinstance(ids, list) and isinstance(total, int):
            return len(ids) == total
        return chunk.get("text", "").startswith(self.text)

    def add(self, chunk: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        meta = dict(chunk.get("meta_info") or {})
        text = chunk.get("text") or ""
        cumulative = self._is_cumulative(chunk)
        if cumulative:
            if text.startswith(self.text):
                delta = text[len(self.text):]
            else:  # the server revised text it already sent; keep what the caller has
                logger.warning("stream text was revised by the server; keeping the earlier text")
                delta = ""
                text = self.text
            self.text = text
        else:
            delta = text
            self.text += text
        for key in INCREMENTAL_META_KEYS:
            if key not in meta:
                continue
            entries = list(meta[key] or [])
            if cumulative:
                entries = entries[self.seen[key]:]
            self.seen[key] += len(entries)
            meta[key] = entries
        return delta, meta
