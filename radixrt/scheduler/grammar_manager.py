"""Constrained decoding inside the scheduler: grammar compilation off the hot loop, token
masks, and jump-forward over text the grammar forces.

A request with ``regex`` / ``json_schema`` / ``ebnf`` waits here (not in the scheduler's queue)
while its grammar compiles in the compiler's thread pool; other requests keep running. A compile
error finishes that request alone with a 400-class error.

Jump-forward is verified, never imposed. After a sampled token is accepted, the text the
grammar forces next is tokenized into a draft (``propose_draft``). The next decode step feeds
the last token and the whole draft as one extend and returns logits at every position; the
scheduler then samples position by position exactly as plain decoding would (same mask, same
penalties, same per-request generator) and keeps draft tokens only while the sample equals
them. The first disagreement is kept instead and the rest of the draft (and its KV) is dropped.
So outputs are those of decoding without jump-forward (token for token under greedy or a
seed, up to float rounding: logits at a draft position come from an extend pass, not a decode
pass, and a rare borderline draw can fall the other way), while every draft token the model
agrees with saves a forward pass. Forced text tokenized on its own can therefore never push
the model onto a token split it would not have chosen: that split is simply not accepted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any
from weakref import WeakKeyDictionary

import torch

from radixrt.scheduler.req import FinishReason, Req

logger = logging.getLogger("radixrt.constrained")

# Canonical free text: when a sampled token is one the tokenizer would not write after the
# previous one, the most likely CANONICAL_CANDIDATES tokens are checked against that previous
# token and every bad one is banned before drawing again, at most MAX_CANONICAL_REDRAWS times.
CANONICAL_CANDIDATES = 64
MAX_CANONICAL_REDRAWS = 3


def grammar_spec(req: Req) -> tuple[str, str] | None:
    p = req.params
    if p.regex is not None:
        return "regex", p.regex
    if p.json_schema is not None:
        return "json_schema", p.json_schema
    if p.ebnf is not None:
        return "ebnf", p.ebnf
    if p.structural_tag is not None:
        return "structural_tag", p.structural_tag
    return None


class GrammarManager:
    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int],
                 whitespace_pattern: str | None = None, jump_forward: bool = True,
                 canonical_tokens: bool = True, budget_closing: bool = True):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = set(eos_ids)
        self.whitespace_pattern = whitespace_pattern
        self.jump_forward_enabled = jump_forward
        self.canonical_tokens = canonical_tokens
        self.budget_closing = budget_closing
        self._compiler = None
        self._compiler_lock = threading.Lock()
        self.warm_up_status = "not started"  # reported by /get_server_info
        self.pending: list[Req] = []
        # Per compiled grammar (shared by every request with the same constraint, dropped with
        # it): DFA state -> the tokens the model produced for the text forced there.
        self._learned: WeakKeyDictionary[Any, dict[int, list[int]]] = WeakKeyDictionary()

    @property
    def compiler(self):
        if self._compiler is None:
            with self._compiler_lock:  # the warm-up thread may be building it
                if self._compiler is None:
                    from radixrt.fsm import GrammarCompiler

                    self._compiler = GrammarCompiler(
                        self.tokenizer, vocab_size=self.vocab_size,
                        eos_token_ids=sorted(self.eos_ids),
                        whitespace_pattern=self.whitespace_pattern,
                        canonical_tokens=self.canonical_tokens)
        return self._compiler

    def start_warm_up(self) -> threading.Thread:
        """Build the compiler and its vocabulary-level caches (token trie, shared automata,
        canonical-token tables; ``GrammarCompiler.warm_caches``) on a background thread, so
        the first constrained request does not pay for them; the native trie walk and CPU
        bitmask libraries are built there too (once per machine). NumPy, the tokenizer and
        ``ctypes`` only: no torch op runs there (an OpenMP team on a second thread slows every
        forward)."""
        def run() -> None:
            t0 = time.perf_counter()
            self.warm_up_status = "running"
            _lower_this_thread_priority()  # the forward keeps the cores while it has work
            try:
                built = self.compiler.warm_caches()
            except Exception as e:  # only speed is lost: the caches build on first use
                self.warm_up_status = f"failed: {type(e).__name__}: {e}"
                logger.warning("grammar cache warm-up failed", exc_info=True)
                return
            self.warm_up_status = "done"
            logger.info("grammar caches warmed in %.2f s (%s)", time.perf_counter() - t0, built)

        # Threads inherit their creator's priority: the tokenizer's worker pool (started by its
        # first batch encode) is started here, at normal priority, not by the warm-up thread.
        fast = getattr(self.tokenizer, "_tokenizer", None)
        if fast is not None and hasattr(fast, "encode_batch"):
            fast.encode_batch(["a", "b"], add_special_tokens=False)
        thread = threading.Thread(target=run, name="radixrt-grammar-warm-up", daemon=True)
        thread.start()
        return thread

    def submit(self, req: Req, kind: str, spec: str) -> None:
        """Start compiling; raises ValueError at once if the spec is rejected up front."""
        fut = self.compiler.compile_async(kind, spec)
        if fut.done() and fut.exception() is not None:
            raise ValueError(f"sampling_params.{kind}: {fut.exception()}")
        req.grammar_future = fut
        req.grammar_kind = kind
        self.pending.append(req)

    def poll(self, block: bool) -> tuple[list[Req], list[Req]]:
        """Requests whose grammar is ready, and those whose compile failed (finished)."""
        if not self.pending:
            return [], []
        if block:
            wait([r.grammar_future for r in self.pending], timeout=0.05, return_when=FIRST_COMPLETED)
        ready, failed, still = [], [], []
        for req in self.pending:
            fut = req.grammar_future
            if not fut.done():
                still.append(req)
                continue
            req.grammar_future = None
            err = fut.exception()
            if err is not None:
                req.error = f"sampling_params.{req.grammar_kind}: {err}"
                req.finished = FinishReason("abort", message=req.error)
                failed.append(req)
            else:
                from radixrt.fsm import new_matcher

                req.grammar = new_matcher(fut.result())
                ready.append(req)
        self.pending = still
        return ready, failed

    def abort(self, rid: str) -> Req | None:
        for req in self.pending:
            if req.rid == rid:
                self.pending.remove(req)
                req.finished = FinishReason("abort", message="aborted")
                return req
        return None

    def tokens_left(self, req: Req, context_len: int) -> int | None:
        """The tokens ``req`` may still produce, this one included (``max_new_tokens`` and the
        context both count); None when budget closing is off for it."""
        if not self.budget_closing or req.params.no_budget_closing:
            return None
        return min(req.remaining_new_tokens(), context_len - req.seq_len)

    def apply_masks(self, reqs: list[Req], logits: torch.Tensor, context_len: int | None = None) -> None:
        """Mask each constrained row of ``logits`` (row i is ``reqs[i]``'s next token). With
        ``context_len``, a row whose tokens left come down to what its grammar needs to reach
        an accepting end gets only tokens that keep that end within reach (budget closing;
        ``req.budget_closed`` records that it happened)."""
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return
        from radixrt.fsm import allocate_token_bitmask, apply_token_bitmask_

        bitmask = allocate_token_bitmask(len(rows), logits.shape[-1])
        for j, i in enumerate(rows):
            req = reqs[i]
            try:
                left = None if context_len is None else self.tokens_left(req, context_len)
                if req.grammar.fill_bitmask(bitmask, j, left):
                    req.budget_closed = True
                if req.params.ignore_eos:
                    self._drop_eos(bitmask, j)
            except Exception as e:  # a bug: fail this request alone, keep serving the others
                self._fail(req, "computing its token mask", e)
                bitmask[j] = -1  # its sample is discarded with it
        if bitmask.device != logits.device:  # filled on the CPU, applied where the logits are
            bitmask = bitmask.to(logits.device, non_blocking=True)
        apply_token_bitmask_(logits, bitmask, indices=rows)

    def _drop_eos(self, bitmask: torch.Tensor, j: int) -> None:
        """With ignore_eos a sampled EOS does not end the request, but it would end the
        grammar (nothing may follow it): keep EOS out of row ``j`` unless nothing else is
        allowed there."""
        row = bitmask[j]
        saved = row.clone()
        for e in self.eos_ids:
            if 0 <= e < 32 * row.numel():
                bit = 1 << (e % 32)
                row[e // 32] &= ~(bit - (1 << 32) if bit >= 1 << 31 else bit)  # int32 words
        if not bool(row.any()):
            row.copy_(saved)

    def canonical_bans(self, req: Req, tok: int, row: torch.Tensor, forbidden: list[int]) -> list[int]:
        """Tokens to forbid before drawing ``req``'s token again because ``tok`` (just drawn
        from the masked logits ``row``) follows the previous token in a split the tokenizer
        never makes (``"AD"`` + ``"DR"`` for ``"ADDR"``); empty when ``tok`` stands.

        Returns ``tok`` and every non-canonical token among the row's top candidates, so one
        more draw almost always lands on a canonical token. Drawing again from the masked
        logits without them samples the model's distribution restricted to canonical
        continuations (greedy: the best canonical token), the same way with and without
        jump-forward. Empty too when nothing would be left to draw (``forbidden``: tokens
        already excluded for this draw) — the grammar's mask guarantees some token, not a
        canonical one. Masks keep forced text canonical; this keeps the free text canonical.
        """
        g = req.grammar
        if g is None:  # (with canonical tokens off, its grammar never objects)
            return []
        try:
            if not g.noncanonical_next([tok]):
                return []
            width = row.shape[-1]
            vals, cand = row.topk(min(CANONICAL_CANDIDATES, width))
            cand = [c for c in cand[torch.isfinite(vals)].tolist() if c != tok]
            bad = [tok] + g.noncanonical_next(cand)
            gone = [t for t in forbidden + bad if 0 <= t < width]  # stop ids may lie outside
            left = torch.isfinite(row)
            left[torch.tensor(gone, dtype=torch.long, device=row.device)] = False
            return bad if bool(left.any()) else []
        except Exception:  # an optional refinement: never fail the request over it
            logger.exception("canonical check failed for request %s", req.rid)
            return []

    def _fail(self, req: Req, doing: str, err: Exception) -> None:
        logger.exception("constraint of request %s failed while %s", req.rid, doing)
        req.error = f"internal error in the {req.grammar_kind} constraint: {type(err).__name__}: {err}"
        req.error_code = 500
        req.finished = FinishReason("abort", message=req.error)
        req.grammar = None
        req.draft_ids = []

    def accept(self, req: Req, tok: int) -> None:
        """Advance the request's grammar by its sampled token; finish it when the grammar is
        complete (or, defensively, violated)."""
        g = req.grammar
        try:
            ok = g.accept_token(tok)
        except Exception as e:
            self._fail(req, "accepting a token", e)
            return
        if not ok:
            req.finished = FinishReason("abort", message=f"token {tok} violates the {req.grammar_kind} constraint")
        elif g.is_terminated() and tok not in self.eos_ids:  # EOS: the usual stop check
            req.finished = FinishReason("stop")

    def propose_draft(self, req: Req) -> int:
        """Set ``req.draft_ids`` to the tokens of the text the grammar forces next (empty when
        nothing is forced or jump-forward is off); returns how many.

        The draft is how this model split the same forced text the last time a request of the
        same grammar stood in this state (learned in `learn`), else the tokenizer's own split
        of the forced text (holding back a last token that a longer one could extend)."""
        req.draft_ids = []
        if not self.jump_forward_enabled or req.params.no_jump_forward or req.finished is not None:
            return 0
        g = req.grammar
        state = g.state
        learned = self._learned.get(g.grammar, {}).get(state)
        if learned is not None:
            draft = learned
        else:
            try:
                jf = g.jump_forward(max_rollback_tokens=0)
            except Exception:  # drafts are optional: decode normally
                logger.exception("jump-forward planning failed for request %s", req.rid)
                return 0
            draft = jf.token_ids if jf else []
        req.draft_ids = draft[:req.remaining_new_tokens()]
        req.draft_state = state
        return len(req.draft_ids)

    def learn(self, req: Req, state: int, committed: list[int]) -> None:
        """Remember how the model split the forced text at ``state``: the leading tokens of
        ``committed`` (what it produced from there) that stay inside that text. An empty
        entry means the model's first token ran past it: no draft is worth proposing there."""
        g = req.grammar.grammar
        forced = g.forced_bytes(state)
        tb = g.vocab.token_bytes
        seq, text = [], b""
        for t in committed:
            b = tb[t] if 0 <= t < len(tb) else b""
            if not b or not forced.startswith(text + b):
                break
            seq.append(t)
            text += b
        self._learned.setdefault(g, {})[state] = seq

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()


def _lower_this_thread_priority() -> None:
    """Lowest scheduling priority for the calling thread only (Linux schedules threads as
    tasks, so ``setpriority`` on the thread id leaves the rest of the process alone; lowering
    needs no privilege). Elsewhere, or if refused, the thread keeps its priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
