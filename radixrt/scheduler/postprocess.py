"""After a forward: sample, redraw non-canonical constrained tokens, verify jump-forward
drafts, record logprobs, and check the stop conditions.

Works on logits rows and `Req` state only; KV is the caller's (`RunningKV`).
"""

from __future__ import annotations

import torch

from radixrt.model.sampler import Sampler, SamplingBatchInfo
from radixrt.scheduler.detokenize import find_stop, find_stop_regex
from radixrt.scheduler.grammar_manager import MAX_CANONICAL_REDRAWS, GrammarManager
from radixrt.scheduler.req import FinishReason, Req
from radixrt.scheduler.stats import SchedulerStats


def _select_rows(logits: torch.Tensor, rows: list[int], writable: bool) -> torch.Tensor:
    """``logits[rows]``: a view when the rows are consecutive (a decode step's usual case:
    every request's row, in order), else a copy. ``writable``: the caller masks the rows in
    place (constrained requests), so it gets a copy: the runner's logits are inference
    tensors, which accept no in-place update outside inference mode."""
    r0 = rows[0]
    if not writable and rows[-1] - r0 == len(rows) - 1 and rows == list(range(r0, r0 + len(rows))):
        return logits[r0:r0 + len(rows)]
    return logits.index_select(0, torch.tensor(rows, device=logits.device))


class PostProcessor:
    def __init__(self, grammars: GrammarManager, eos_ids: set[int], vocab_size: int,
                 context_len: int, stats: SchedulerStats, seed: int = 0):
        self.grammars = grammars
        self.eos_ids = eos_ids
        self.vocab_size = vocab_size
        self.context_len = context_len
        self.stats = stats
        self.sampler = Sampler()
        self._default_gen = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ sampling
    def sample_and_advance(self, reqs: list[Req], logits: torch.Tensor, rows: list[int],
                           propose: bool = True) -> None:
        """Draw one token for each of ``reqs`` from its logits row (``rows[i]`` for
        ``reqs[i]``), append it, and update logprobs, grammar, penalties and finish state;
        with ``propose``, constrained requests get their next jump-forward draft."""
        if not reqs:
            return
        lg = _select_rows(logits, rows, writable=any(r.grammar is not None for r in reqs))
        suppress = []
        for r in reqs:
            if len(r.output_ids) < r.params.min_new_tokens:
                ids = [] if r.params.ignore_eos else sorted(self.eos_ids)
                suppress.append(ids + list(r.params.stop_token_ids))
            else:
                suppress.append([])
        self.grammars.apply_masks(reqs, lg, self.context_len)
        tops = [r.top_logprobs_num if r.return_logprob else 0 for r in reqs]
        ids, lps, top = self._draw(reqs, lg, suppress, tops)
        self._redraw_noncanonical(reqs, lg, suppress, tops, ids, lps, top)
        for i, (req, tok) in enumerate(zip(reqs, ids)):
            req.output_ids.append(tok)
            self.stats.num_generated_tokens += 1
            if req.penalty is not None:
                req.penalty.update(tok)
            if req.return_logprob:
                req.output_token_logprobs.append((lps[i], tok))
                if req.top_logprobs_num:
                    req.output_top_logprobs.append(top[i])
            if req.grammar is not None:
                self.grammars.accept(req, tok)
            if req.finished is None:
                self.check_finish(req, tok)
            if req.finished is not None and req.budget_closed and req.finished.type != "abort":
                req.finished.budget_closed = True
            if propose and req.grammar is not None and req.finished is None:
                self.stats.num_draft_tokens += self.grammars.propose_draft(req)

    def _draw(self, reqs: list[Req], lg: torch.Tensor, suppress: list[list[int]],
              tops: list[int]) -> tuple[list[int], list[float], list[list[tuple[float, int]]]]:
        """One token per row of ``lg`` (already masked): ids, logprobs, top logprobs."""
        info = SamplingBatchInfo.build([r.params for r in reqs], self.vocab_size,
                                       [r.generator for r in reqs],
                                       suppress if any(suppress) else None,
                                       default_generator=self._default_gen)
        want = [r.return_logprob for r in reqs]
        out = self.sampler(lg, info, [r.penalty for r in reqs], tops if any(tops) else None,
                           return_logprobs=want if any(want) else False)
        top = out.top_logprobs if out.top_logprobs is not None else [[] for _ in reqs]
        return out.next_token_ids.tolist(), out.logprobs.tolist(), top

    def _redraw_noncanonical(self, reqs: list[Req], lg: torch.Tensor, suppress: list[list[int]],
                             tops: list[int], ids: list[int], lps: list[float],
                             top: list[list[tuple[float, int]]]) -> None:
        """Constrained rows whose token splits text where the tokenizer never would (after
        the previous token) draw again without such tokens (``GrammarManager.canonical_bans``),
        from their own generator as any draw; ``ids``, ``lps``, ``top`` are updated in place.
        Logprobs stay those of the model's distribution at the token finally chosen. After
        ``MAX_CANONICAL_REDRAWS`` the token stands (counted in ``num_noncanonical_kept``)."""
        check = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not check:
            return
        forbidden = [list(s) for s in suppress]
        for attempt in range(MAX_CANONICAL_REDRAWS + 1):
            redo = []
            for i in check:
                bans = self.grammars.canonical_bans(reqs[i], ids[i], lg[i], forbidden[i])
                if bans:
                    forbidden[i].extend(bans)
                    redo.append(i)
            if not redo:
                return
            if attempt == MAX_CANONICAL_REDRAWS:
                self.stats.num_noncanonical_kept += len(redo)
                return
            self.stats.num_canonical_redraws += len(redo)
            sub = [reqs[i] for i in redo]
            index = torch.tensor(redo, device=lg.device)
            r_ids, r_lps, r_top = self._draw(sub, lg.index_select(0, index),
                                             [forbidden[i] for i in redo], [tops[i] for i in redo])
            for j, i in enumerate(redo):
                ids[i], lps[i], top[i] = r_ids[j], r_lps[j], r_top[j]
            check = redo  # the others' tokens stand

    def verify_draft(self, req: Req, draft: list[int], logits: torch.Tensor, row0: int) -> int:
        """Sample position by position over a jump-forward draft (rows ``row0`` ..
        ``row0 + len(draft)`` of ``logits``), exactly as plain decoding would, keeping draft
        tokens while the samples equal them. Returns how many draft tokens were kept; the
        caller frees the KV of the others."""
        k = len(draft)
        n0 = len(req.output_ids)
        kept = 0
        for i in range(k + 1):
            self.sample_and_advance([req], logits, [row0 + i], propose=False)
            if i == k or req.output_ids[-1] != draft[i]:
                break
            kept += 1
            if req.finished is not None:
                break
        self.stats.num_accepted_draft_tokens += kept
        if kept < k and req.grammar is not None:  # the model left the draft: learn its split
            self.grammars.learn(req, req.draft_state, req.output_ids[n0:])
        return kept

    def propose_draft(self, req: Req) -> None:
        if req.finished is None and req.grammar is not None:
            self.stats.num_draft_tokens += self.grammars.propose_draft(req)

    # ------------------------------------------------------------------ logprobs
    @staticmethod
    def record_prompt_logprobs(logits: torch.Tensor,
                               rows: list[tuple[Req, int, int, int]]) -> None:
        """``rows``: (request, first logits row, first prompt token index, count)."""
        if not rows:
            return
        logp = torch.log_softmax(logits, dim=-1)
        for req, row0, tok0, count in rows:
            toks = req.prompt_ids[tok0:tok0 + count]
            sel = logp[row0:row0 + count]
            vals = sel.gather(1, torch.tensor(toks, device=sel.device).unsqueeze(1)).squeeze(1).tolist()
            req.input_token_logprobs.extend(zip(vals, toks))
            if req.top_logprobs_num:
                v, i = sel.topk(req.top_logprobs_num, dim=-1)
                req.input_top_logprobs.extend(list(zip(a, b)) for a, b in zip(v.tolist(), i.tolist()))

    # ------------------------------------------------------------------ finish
    def check_finish(self, req: Req, tok: int) -> None:
        p = req.params
        n_out = len(req.output_ids)
        if n_out >= p.min_new_tokens:
            if tok in p.stop_token_ids:
                req.finished = FinishReason("stop", matched=tok)
                return
            if not p.ignore_eos and tok in self.eos_ids:
                req.finished = FinishReason("stop", matched=tok)
                return
        if req.stop_detok is not None:
            piece = req.stop_detok.add([tok])
            if piece and n_out >= p.min_new_tokens:
                text = req.stop_detok.text
                new_from = len(text) - len(piece)
                i = find_stop(text, p.stop, new_from)
                if i != -1:
                    matched = next(s for s in p.stop if text.startswith(s, i))
                    req.finished = FinishReason("stop", matched=matched)
                    return
                matched = find_stop_regex(text, p.stop_regex, new_from)
                if matched is not None:
                    req.finished = FinishReason("stop", matched=matched)
                    return
        if n_out >= p.max_new_tokens or req.seq_len >= self.context_len:
            req.finished = FinishReason("length")
