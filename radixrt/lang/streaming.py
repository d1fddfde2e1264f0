"""Streamed generation: turning server chunks into text deltas and per-chunk logprobs.

Every native backend (radixrt's server, the in-process Engine, SGLang's server) streams
SGLang's chunks: ``text`` and ``output_ids`` are everything so far, and the output logprob
lists hold the entries new since the previous chunk, with ``output_token_logprobs_length``
counting them all. (SGLang without that field, or in its default mode, repeats the whole lists;
the length tells which, and both are read right.) `StreamMerger` hands out text deltas and
meta_info whose output logprob lists hold only that chunk's entries, so the lists of all chunks
of one generation add up to its ``completion_tokens``.
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
    whose incremental lists hold only this chunk's new entries)."""

    def __init__(self) -> None:
        self.text = ""
        self.seen: dict[str, int] = dict.fromkeys(INCREMENTAL_META_KEYS, 0)

    def add(self, chunk: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        meta = dict(chunk.get("meta_info") or {})
        text = chunk.get("text") or ""
        if text.startswith(self.text):
            delta = text[len(self.text):]
            self.text = text
        else:  # the server revised text it already sent; keep what the caller has
            logger.warning("stream text was revised by the server; keeping the earlier text")
            delta = ""
        total = meta.get("output_token_logprobs_length")
        for key in INCREMENTAL_META_KEYS:
            if key not in meta:
                continue
            entries = list(meta[key] or [])
            if total is None or (len(entries) == total and self.seen[key] + len(entries) != total):
                entries = entries[self.seen[key]:]  # the whole list so far
            self.seen[key] += len(entries)
            meta[key] = entries
        return delta, meta
