"""select's choice methods, as pure functions over logprob triples."""

from __future__ import annotations

import random

import pytest

from radixrt.lang.choices import (
    get_choices_method,
    greedy_logprob_matrix,
    greedy_token_selection,
    sample_index,
    token_length_normalized,
    unconditional_likelihood_normalized,
)


def lp(*values):
    return [[v, i, None] for i, v in enumerate(values)]


CHOICES = ["short", "long"]
INPUT = [lp(-0.4), lp(-0.5, -0.1)]


def decide(method, **kw):
    return method(choices=CHOICES, normalized_prompt_logprobs=[-0.4, -0.3], input_token_logprobs=INPUT, **kw)


def test_token_length_normalized_picks_best_mean():
    d = decide(token_length_normalized)
    assert d.decision == "long"
    assert d.meta_info["normalized_prompt_logprobs"] == [-0.4, -0.3]


def test_greedy_pads_short_choices_with_their_mean():
    assert greedy_logprob_matrix(INPUT) == [[-0.4, -0.4], [-0.5, -0.1]]
    d = decide(greedy_token_selection)
    assert d.decision == "short" and "greedy_logprob_matrix" in d.meta_info


def test_unconditional_normalization_discounts_generic_choices():
    # "long" is likely everywhere (unconditional -0.1 per token); "short" only here.
    uncond = [lp(None), lp(None, -0.1)]
    d = decide(unconditional_likelihood_normalized, unconditional_token_logprobs=uncond)
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx([-0.4, -0.25])
    assert d.decision == "long"
    with pytest.raises(ValueError):
        decide(unconditional_likelihood_normalized)
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs


def test_temperature_samples_and_zero_is_argmax():
    assert sample_index([-3.0, -0.1, -2.0], 0.0) == 1
    rng = random.Random(0)
    picks = {sample_index([-0.1, -0.2], 5.0, rng) for _ in range(200)}
    assert picks == {0, 1}


def test_method_lookup_by_name():
    assert get_choices_method(None) is token_length_normalized
    assert get_choices_method("greedy_token_selection") is greedy_token_selection
    with pytest.raises(ValueError, match="unknown choices_method"):
        get_choices_method("nope")
