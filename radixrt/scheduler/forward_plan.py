"""The ForwardBatch of one step, and which logits rows belong to which request.

Extend: each request's next ``extend_len`` tokens after its computed ones; logits are wanted
at the last prompt token (to sample the first output token) and at the positions whose
prompt logprobs were asked for. Decode: each running request's uncommitted tokens (usually
the one just sampled) followed by its jump-forward draft; logits at the last committed token
and after every draft token, so the draft can be verified position by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixrt.model.forward_batch import ForwardBatch
from radixrt.scheduler.kv import RunningKV
from radixrt.scheduler.req import Req


@dataclass
class ExtendPlan:
    forward_batch: ForwardBatch
    sample_rows: list[tuple[Req, int]] = field(default_factory=list)  # (req, logits row)
    # (req, first logits row, first prompt token index, count)
    prompt_logprob_rows: list[tuple[Req, int, int, int]] = field(default_factory=list)


@dataclass
class DecodePlan:
    forward_batch: ForwardBatch
    fresh: list[int]  # per request: committed tokens fed this step (usually 1)
    drafts: list[list[int]]  # per request: the draft fed after them
    first_row: list[int]  # per request: logits row after its last committed token


def plan_extend(batch: list[Req], extend_lens: list[int], table: torch.Tensor) -> ExtendPlan:
    """``table``: the ReqToTokenPool rows, already holding the slots of the new tokens."""
    input_ids: list[int] = []
    seq_lens: list[int] = []
    logits_rows: list[int] = []
    sample_rows: list[tuple[Req, int]] = []
    lp_rows: list[tuple[Req, int, int, int]] = []
    off = 0
    for req, e in zip(batch, extend_lens):
        start = req.kv_len
        end = start + e
        input_ids.extend(req.fill_ids[start:end])
        seq_lens.append(end)
        if req.wants_prompt_logprobs and not req.input_token_logprobs_done:
            if start == 0 and req.logprob_start_len == 0 and not req.input_token_logprobs:
                # The first prompt token has no logprob (SGLang reports None), even when
                # it is the whole prompt and no logits row is needed.
                req.input_token_logprobs.append((None, req.prompt_ids[0]))
                if req.top_logprobs_num:
                    req.input_top_logprobs.append(None)
            # Logits at position p predict token p + 1.
            lo = max(start, req.logprob_start_len - 1, 0)
            hi = min(end, len(req.prompt_ids) - 1)
            if hi > lo:
                lp_rows.append((req, len(logits_rows), lo + 1, hi - lo))
                logits_rows.extend(range(off + lo - start, off + hi - start))
        if end == req.seq_len:
            sample_rows.append((req, len(logits_rows)))
            logits_rows.append(off + e - 1)
        off += e
    out_loc = torch.cat([table[r.row, r.kv_len:r.kv_len + e] for r, e in zip(batch, extend_lens)])
    fb = ForwardBatch.build(input_ids, seq_lens, extend_lens, out_loc, table,
                            [r.row for r in batch], logits_rows)
    return ExtendPlan(fb, sample_rows, lp_rows)


def plan_decode(batch: list[Req], kv: RunningKV) -> DecodePlan:
    """Allocates the slots of the fed tokens (room was made beforehand)."""
    fresh = [r.seq_len - r.kv_len for r in batch]
    drafts = [list(r.draft_ids) for r in batch]
    out_loc = kv.append_decode_slots_batch(batch, [n + len(d) for n, d in zip(fresh, drafts, strict=True)])
    input_ids: list[int] = []
    logits_rows: list[int] = []
    first_row: list[int] = []
    seq_lens: list[int] = []
    ext: list[int] = []
    off = 0
    for req, n, draft in zip(batch, fresh, drafts):
        e = n + len(draft)
        input_ids.extend(req.fill_ids[req.kv_len:])
        input_ids.extend(draft)
        first_row.append(len(logits_rows))
        logits_rows.extend(range(off + n - 1, off + e))
        seq_lens.append(req.kv_len + e)
        ext.append(e)
        off += e
    fb = ForwardBatch.build(input_ids, seq_lens, ext, out_loc, kv.table,
                            [r.row for r in batch], logits_rows)
    return DecodePlan(fb, fresh, drafts, first_row)
