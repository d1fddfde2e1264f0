"""Constrained decoding inside the scheduler: grammar compilation off the hot loop, token
masks, and jump-forward over text the grammar forces.

A request with ``regex`` / ``json_schema`` waits here (not in the scheduler's queue) while its
grammar compiles in the compiler's thread pool; other requests keep running. A compile error
finishes that request alone with a 400-class error.

Jump-forward happens right after a sampled token is accepted, in the same step, so the only
token it may roll back is the one just sampled (never one already sent to a client). The
forced tokens are appended to the output and computed in the next forward as one extend of
several tokens (their KV is cached like any other).
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, wait

import torch

from radixrt.managers.req import FinishReason, Req

logger = logging.getLogger("radixrt.constrained")

MAX_JUMP_ROLLBACK = 1


def grammar_spec(req: Req) -> tuple[str, str] | None:
    p = req.params
    if p.regex is not None:
        return "regex", p.regex
    if p.json_schema is not None:
        return "json_schema", p.json_schema
    if p.ebnf is not None:
        return "ebnf", p.ebnf
    return None


class GrammarManager:
    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int],
                 whitespace_pattern: str | None = None, jump_forward: bool = True):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = set(eos_ids)
        self.whitespace_pattern = whitespace_pattern
        self.jump_forward_enabled = jump_forward
        self._compiler = None
        self.pending: list[Req] = []
        self.num_forced_tokens = 0
        self.num_jumps = 0

    @property
    def compiler(self):
        if self._compiler is None:
            from radixrt.fsm import GrammarCompiler

            self._compiler = GrammarCompiler(self.tokenizer, vocab_size=self.vocab_size,
                                             eos_token_ids=sorted(self.eos_ids),
                                             whitespace_pattern=self.whitespace_pattern)
        return self._compiler

    def submit(self, req: Req, kind: str, spec: str) -> None:
        """Start compiling; raises ValueError at once if the spec is rejected up front."""
        if kind == "ebnf":
            raise ValueError("sampling_params.ebnf: EBNF grammars are not supported; use regex or json_schema")
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
                req.grammar = fut.result().matcher()
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

    def apply_masks(self, reqs: list[Req], logits: torch.Tensor) -> None:
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return
        from radixrt.fsm import allocate_token_bitmask, apply_token_bitmask_

        bitmask = allocate_token_bitmask(len(rows), logits.shape[-1])
        for j, i in enumerate(rows):
            reqs[i].grammar.fill_bitmask(bitmask, j)
        apply_token_bitmask_(logits, bitmask, indices=rows)

    def accept(self, req: Req, tok: int) -> None:
        """Advance the request's grammar by its sampled token; finish it when the grammar is
        complete (or, defensively, violated)."""
        g = req.grammar
        if not g.accept_token(tok):
            req.finished = FinishReason("abort", message=f"token {tok} violates the {req.grammar_kind} constraint")
        elif g.is_terminated() and tok not in self.eos_ids:  # EOS: the usual stop check
            req.finished = FinishReason("stop")

    def jump_forward(self, req: Req) -> int:
        """Append the text the grammar forces; returns the number of tokens appended."""
        if not self.jump_forward_enabled or req.params.no_jump_forward or req.finished is not None:
            return 0
        g = req.grammar
        jf = g.jump_forward(max_rollback_tokens=min(MAX_JUMP_ROLLBACK, req.fresh_tokens))
        if not jf:
            return 0
        budget = req.params.max_new_tokens - (len(req.output_ids) - jf.rollback)
        tokens = jf.token_ids[:budget]
        if len(tokens) <= jf.rollback:
            return 0
        g.rollback(jf.rollback)
        if not g.accept_tokens(tokens):
            raise RuntimeError("jump-forward tokens were rejected by the grammar")
        for _ in range(jf.rollback):
            tok = req.output_ids.pop()
            if req.penalty is not None:
                req.penalty.rollback(tok)
            if req.return_logprob:
                req.output_token_logprobs.pop()
                if req.top_logprobs_num:
                    req.output_top_logprobs.pop()
        req.output_ids.extend(tokens)
        if req.penalty is not None:
            req.penalty.update(tokens)
        if req.return_logprob:
            # Forced tokens have probability 1 under the constrained distribution.
            req.output_token_logprobs.extend((0.0, t) for t in tokens)
            if req.top_logprobs_num:
                req.output_top_logprobs.extend([(0.0, t)] for t in tokens)
        if req.stop_detok is not None:
            from radixrt.managers.detok_utils import IncrementalDetokenizer

            req.stop_detok = IncrementalDetokenizer(self.tokenizer, req.params.skip_special_tokens)
            req.stop_detok.add(list(req.output_ids))
        self.num_jumps += 1
        self.num_forced_tokens += len(tokens)
        if g.is_terminated():
            req.finished = FinishReason("stop")
        elif len(req.output_ids) >= req.params.max_new_tokens:
            req.finished = FinishReason("length")
        return len(tokens)

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()
