"""How `select` picks a choice from per-token logprobs (SGLang's three methods).

Each method is a small stateless object: the backend computes, for every choice, the
logprobs of the choice's tokens after the prompt (and, when asked, without the prompt), and
the method turns them into a decision. Pure functions over plain lists, easy to test.

Token logprob entries are SGLang triples ``[logprob, token_id, token_text_or_None]``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _values(entries: list[list[Any]]) -> list[float]:
    return [e[0] for e in entries if e[0] is not None]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def normalized_logprobs(input_token_logprobs: list[list[list[Any]]]) -> list[float]:
    """Mean logprob of each choice's tokens."""
    return [_mean(_values(entries)) for entries in input_token_logprobs]


def sample_index(scores: list[float], temperature: float, rng: random.Random | None = None) -> int:
    """argmax at temperature 0, else a draw from softmax(scores / temperature)."""
    if temperature <= 1e-5:
        return _argmax(scores)
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return (rng or random).choices(range(len(scores)), weights=weights)[0]


class ChoicesSamplingMethod:
    requires_unconditional_logprobs = False

    def scores(self, input_token_logprobs: list[list[list[Any]]],
               unconditional_token_logprobs: list[list[list[Any]]] | None) -> list[float] | None:
        """One score per choice (higher is better), or None if the method only ranks."""
        raise NotImplementedError

    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[list[list[Any]]],
                 output_token_logprobs: list[list[list[Any]]] | None = None,
                 unconditional_token_logprobs: list[list[list[Any]]] | None = None,
                 temperature: float = 0.0) -> ChoicesDecision:
        meta: dict[str, Any] = {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs or [[] for _ in choices],
        }
        index = self.pick(input_token_logprobs, unconditional_token_logprobs, temperature, meta)
        return ChoicesDecision(decision=choices[index], meta_info=meta)

    def pick(self, input_token_logprobs, unconditional_token_logprobs, temperature, meta) -> int:
        scores = self.scores(input_token_logprobs, unconditional_token_logprobs)
        return sample_index(scores, temperature)

    def __repr__(self) -> str:
        return type(self).__name__


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob (the default)."""

    def scores(self, input_token_logprobs, unconditional_token_logprobs):
        return normalized_logprobs(input_token_logprobs)


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token, keeping those with the best logprob at each position;
    a shorter choice is padded with its own mean logprob."""

    def pick(self, input_token_logprobs, unconditional_token_logprobs, temperature, meta) -> int:
        matrix = greedy_logprob_matrix(input_token_logprobs)
        meta["greedy_logprob_matrix"] = matrix
        remaining = list(range(len(matrix)))
        for j in range(len(matrix[0]) if matrix else 0):
            best = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == best]
            if len(remaining) == 1:
                break
        return remaining[0]


def greedy_logprob_matrix(input_token_logprobs: list[list[list[Any]]]) -> list[list[float]]:
    rows = [_values(entries) for entries in input_token_logprobs]
    width = max((len(r) for r in rows), default=0)
    return [r + [_mean(r)] * (width - len(r)) for r in rows]


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Mean of (logprob after the prompt - logprob without it) over the choice's tokens:
    discounts choices that are likely anywhere."""

    requires_unconditional_logprobs = True

    def scores(self, input_token_logprobs, unconditional_token_logprobs):
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        out = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs, strict=True):
            c = [e[0] for e in cond]
            u = [e[0] for e in uncond]
            if len(c) != len(u):
                raise ValueError("conditional and unconditional logprobs differ in length")
            # The first unconditional token has no context: count it as logprob 0.
            diffs = [(a or 0.0) - (b or 0.0) for a, b in zip(c, u, strict=True) if a is not None]
            out.append(_mean(diffs))
        return out

    def pick(self, input_token_logprobs, unconditional_token_logprobs, temperature, meta) -> int:
        scores = self.scores(input_token_logprobs, unconditional_token_logprobs)
        meta["unconditional_token_logprobs"] = unconditional_token_logprobs
        meta["normalized_unconditional_prompt_logprobs"] = scores
        return sample_index(scores, temperature)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

CHOICES_METHODS: dict[str, ChoicesSamplingMethod] = {
    "token_length_normalized": token_length_normalized,
    "greedy_token_selection": greedy_token_selection,
    "unconditional_likelihood_normalized": unconditional_likelihood_normalized,
}


def get_choices_method(method: ChoicesSamplingMethod | str | None) -> ChoicesSamplingMethod:
    """A method object from an object, its name, or None (the default)."""
    if method is None:
        return token_length_normalized
    if isinstance(method, str):
        try:
            return CHOICES_METHODS[method]
        except KeyError:
            raise ValueError(f"unknown choices_method {method!r}; known: {sorted(CHOICES_METHODS)}") from None
    if not isinstance(method, ChoicesSamplingMethod) and not callable(method):
        raise TypeError(f"choices_method must be a ChoicesSamplingMethod, got {type(method).__name__}")
    return method
