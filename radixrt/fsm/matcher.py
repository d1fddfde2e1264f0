"""Per-request grammar state: accept tokens, fill mask rows, roll back, jump forward.

A request gets its own matcher over the shared, immutable grammar:
``GrammarMatcher(compiled_grammar)`` starts at the grammar's start state. The grammar does not
know its matchers (this module imports ``grammar``, never the other way).

Typical decode step for a batch::

    bitmask = allocate_token_bitmask(batch_size, vocab_size)      # all ones
    for row, req in enumerate(batch):
        if req.grammar is not None:
            req.grammar.fill_bitmask(bitmask, row)
    apply_token_bitmask_(logits, bitmask.to(logits.device))
    ... sample ...
    req.grammar.accept_token(next_id)      # False = the token violates the grammar
"""

from __future__ import annotations

import torch

from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.jump_forward import JumpForward, plan_jump_forward
from radixrt.fsm.token_index import unpack_token_ids


class GrammarMatcher:
    def __init__(self, grammar: CompiledGrammar):
        self.grammar = grammar
        self._states: list[int] = [grammar.start_state]  # state before token i is _states[i]
        self._tokens: list[int] = []
        self._eos_accepted = False

    @property
    def state(self) -> int:
        return self._states[-1]

    @property
    def accepted_token_ids(self) -> list[int]:
        return list(self._tokens)

    @property
    def last_token(self) -> int | None:
        """The last accepted token (None before the first, and after EOS)."""
        return None if self._eos_accepted or not self._tokens else self._tokens[-1]

    def noncanonical_next(self, candidates: list[int]) -> list[int]:
        """The ``candidates`` the tokenizer would not write after the last accepted token
        (``CompiledGrammar.noncanonical_after``); empty at the start."""
        prev = self.last_token
        return [] if prev is None else self.grammar.noncanonical_after(prev, candidates)

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; returns False (and changes nothing) if it is not allowed."""
        if self._eos_accepted:
            return False
        g = self.grammar
        state = self.state
        if token_id in g.eos_token_ids:
            if not g.is_accepting(state):
                return False
            self._eos_accepted = True
            self._states.append(state)
            self._tokens.append(token_id)
            return True
        nxt = g.next_state(state, token_id)
        if nxt == 0:
            return False
        self._states.append(nxt)
        self._tokens.append(token_id)
        return True

    def accept_tokens(self, token_ids: list[int]) -> bool:
        """Accept all or none."""
        n = len(self._tokens)
        for t in token_ids:
            if not self.accept_token(t):
                self.rollback(len(self._tokens) - n)
                return False
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > len(self._tokens):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self._tokens)} tokens")
        if num_tokens:
            if self._eos_accepted:
                self._eos_accepted = False
            del self._states[len(self._states) - num_tokens:]
            del self._tokens[len(self._tokens) - num_tokens:]

    def is_accepting(self) -> bool:
        """The text so far is a complete match (EOS would be allowed)."""
        return self._eos_accepted or self.grammar.is_accepting(self.state)

    def is_terminated(self) -> bool:
        """EOS was accepted, or the match is complete and nothing can follow but EOS."""
        return self._eos_accepted or self.grammar.is_final(self.state)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int = 0, tokens_left: int | None = None) -> bool:
        """Write this request's allowed tokens into ``bitmask[row]`` (int32 [B, W], on CPU).

        With ``tokens_left`` (this token included), only tokens after which the grammar can
        still reach an accepting end within the budget (``CompiledGrammar.budget_mask``).
        Returns True when the budget removed tokens from the grammar's mask."""
        g = self.grammar
        closing = None
        if tokens_left is not None and not self._eos_accepted:
            closing = g.budget_mask(self.state, tokens_left)
        if closing is not None:
            mask = torch.from_numpy(closing)
        else:
            mask = g.mask_tensor(-1 if self._eos_accepted else self.state)
        if bitmask.shape[1] == g.num_words:
            bitmask[row].copy_(mask)
        else:
            bitmask[row, : g.num_words].copy_(mask)
            bitmask[row, g.num_words:] = 0
        return closing is not None

    def allowed_token_ids(self) -> list[int]:
        g = self.grammar
        mask = g.eos_only_mask() if self._eos_accepted else g.mask(self.state)
        return unpack_token_ids(mask).tolist()

    def copy(self) -> GrammarMatcher:
        other = GrammarMatcher.__new__(GrammarMatcher)
        other.grammar = self.grammar
        other._states = list(self._states)
        other._tokens = list(self._tokens)
        other._eos_accepted = self._eos_accepted
        return other

    # ------------------------------------------------------------ jump-forward
    def find_jump_forward_string(self) -> bytes:
        """The longest byte string the grammar forces from here (may end mid-character)."""
        if self._eos_accepted:
            return b""
        return self.grammar.forced_bytes(self.state)

    def jump_forward(self, max_rollback_tokens: int = 2) -> JumpForward:
        """Tokens to append for the forced string, consistent with canonical tokenization
        (see ``radixrt.fsm.jump_forward``). Does not change the matcher; apply with
        ``rollback(jf.rollback)`` then ``accept_tokens(jf.token_ids)``."""
        if self._eos_accepted or self.grammar.encode is None:
            return JumpForward(0, [], b"")
        k = min(max_rollback_tokens, len(self._tokens))
        return plan_jump_forward(self.grammar, self._tokens[len(self._tokens) - k:],
                                 self._states[len(self._states) - 1 - k])

    def apply_jump_forward(self, jf: JumpForward) -> None:
        self.rollback(jf.rollback)
        if not self.accept_tokens(jf.token_ids):
            raise RuntimeError("jump-forward tokens were rejected by the grammar")

