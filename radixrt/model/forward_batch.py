"""ForwardBatch: the tensors one model forward needs, for a batch that mixes extend
(new tokens after a cached prefix) and decode requests, each with its own KV slot list."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] new tokens of all requests, request after request
    positions: torch.Tensor  # [T] absolute position of each new token
    out_cache_loc: torch.Tensor  # [T] KV slot each new token's K/V is written to
    kv_indices: torch.Tensor  # [B, Lmax] slots of each request's whole sequence (0-padded)
    seq_lens: torch.Tensor  # [B] tokens in the KV after this forward (prefix + new)
    extend_lens: torch.Tensor  # [B] new tokens per request (1 for decode)
    q_starts: torch.Tensor  # [B] offset of request b's first new token in input_ids
    logits_indices: torch.Tensor  # rows of the hidden states whose logits are wanted
    is_decode: bool  # every request has exactly one new token
    seq_lens_list: list[int]
    extend_lens_list: list[int]
    _split: tuple | None = None

    def decode_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For a mixed batch with several one-token requests: (their request indices, their
        token rows, the other requests' indices), so attention can run the one-token requests
        through the batched decode kernel. None when that does not apply."""
        if self._split is None:
            one = [b for b, e in enumerate(self.extend_lens_list) if e == 1]
            if self.is_decode or len(one) < 2:
                self._split = ()
            else:
                many = [b for b, e in enumerate(self.extend_lens_list) if e != 1]
                dev = self.seq_lens.device
                dec_b = torch.tensor(one, dtype=torch.int64, device=dev)
                self._split = (dec_b, self.q_starts.index_select(0, dec_b),
                               torch.tensor(many, dtype=torch.int64, device=dev))
        return self._split or None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_list)

    @classmethod
    def build(cls, input_ids: list[int], seq_lens: list[int], extend_lens: list[int],
              out_cache_loc: torch.Tensor, req_to_token: torch.Tensor, req_rows: list[int],
              logits_rows: list[int] | None = None, device: str | torch.device = "cpu") -> ForwardBatch:
        """``logits_rows`` defaults to the last new token of every request.

        Per step this is on the critical path of every decode, so the small integer tensors
        are one conversion from Python (views of a single int64 tensor), and a lone
        request's ``kv_indices`` is a view of its ``req_to_token`` row, not a copy."""
        B = len(seq_lens)
        is_decode = all(e == 1 for e in extend_lens)
        if is_decode:
            positions = [s - 1 for s in seq_lens]
            q_starts = list(range(B))
        else:
            positions = []
            q_starts = []
            off = 0
            for s, e in zip(seq_lens, extend_lens):
                q_starts.append(off)
                positions.extend(range(s - e, s))
                off += e
        if logits_rows is None:
            logits_rows = q_starts if is_decode else [q + e - 1 for q, e in zip(q_starts, extend_lens)]
        T = len(input_ids)
        ints = torch.tensor([*input_ids, *positions, *seq_lens, *extend_lens, *q_starts, *logits_rows],
                            dtype=torch.int64)
        if torch.device(device).type != "cpu":
            ints = ints.to(device)
        ids_t, pos_t, seq_t, ext_t, qs_t, li_t = ints.split([T, T, B, B, B, len(logits_rows)])
        lmax = max(seq_lens)
        if B == 1:
            row = req_rows[0]
            kv_indices = req_to_token[row:row + 1, :lmax]
        else:
            kv_indices = req_to_token[torch.tensor(req_rows, dtype=torch.int64), :lmax]
            if min(seq_lens) < lmax:
                pad = torch.arange(lmax).unsqueeze(0) >= torch.tensor(seq_lens).unsqueeze(1)
                kv_indices.masked_fill_(pad, 0)
        return cls(
            input_ids=ids_t,
            positions=pos_t,
            out_cache_loc=out_cache_loc.to(device),
            kv_indices=kv_indices.to(device),
            seq_lens=seq_t,
            extend_lens=ext_t,
            q_starts=qs_t,
            logits_indices=li_t,
            is_decode=is_decode,
            seq_lens_list=list(seq_lens),
            extend_lens_list=list(extend_lens),
        )
