"""Turning user inputs into per-sample requests; shared by the offline Engine and the server.

Every check of a request's inputs lives here (or in `SamplingParams.from_dict`) and runs once,
where the request enters: the tokenizer manager for the server, `Engine.generate` offline.
The scheduler trusts what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from radixrt.sampling_params import SamplingParams

PromptLike = str | list[int]

MAX_TOP_LOGPROBS = 100


@dataclass(frozen=True)
class PromptLimits:
    """What a prompt must fit: the model's vocabulary and context, and the KV pool."""

    vocab_size: int
    context_len: int
    max_total_tokens: int


def check_prompt(ids: list[int], field: str, limits: PromptLimits) -> None:
    """Raises ValueError naming ``field`` (``"text"``, ``"input_ids[1]"``, ``"messages"``...)
    when the token ids cannot be served."""
    if not ids:
        raise ValueError(f"{field}: the prompt is empty")
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise ValueError(f"{field}: token id {bad} is outside the vocabulary [0, {limits.vocab_size})")
    if len(ids) >= limits.context_len:
        raise ValueError(f"{field}: the prompt has {len(ids)} tokens; it must be shorter than the "
                         f"model's context length ({limits.context_len})")
    if len(ids) + 1 > limits.max_total_tokens:
        raise ValueError(f"{field}: the prompt has {len(ids)} tokens but the KV cache holds only "
                         f"{limits.max_total_tokens}")


def check_logprob_args(logprob_start_len: int, top_logprobs_num: int) -> None:
    if logprob_start_len < -1:
        raise ValueError(f"logprob_start_len: must be >= -1 (got {logprob_start_len})")
    if not 0 <= top_logprobs_num <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs_num: must be in [0, {MAX_TOP_LOGPROBS}] (got {top_logprobs_num})")


def normalize_prompts(prompt: Any, input_ids: Any) -> tuple[list[PromptLike], bool]:
    """Returns (prompts, is_batch). A prompt is a str or a list of token ids."""
    if prompt is not None and input_ids is not None:
        raise ValueError("give either prompt/text or input_ids, not both")
    src = prompt if prompt is not None else input_ids
    if src is None:
        raise ValueError("a prompt (text) or input_ids is required")
    if isinstance(src, str):
        return [src], False
    if isinstance(src, list) and src and all(isinstance(t, int) and not isinstance(t, bool) for t in src):
        return [src], False
    if isinstance(src, list) and src and all(
            isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) for t in p)) for p in src):
        return list(src), True
    raise ValueError("prompt must be a string, a list of strings, a list of token ids or a list of such lists")


def per_prompt_params(sampling_params: dict | list[dict] | None, num_prompts: int) -> list[SamplingParams]:
    """Validated SamplingParams for each prompt (one dict for all, or one per prompt)."""
    if isinstance(sampling_params, list):
        if len(sampling_params) != num_prompts:
            raise ValueError(f"sampling_params: a list must have one entry per prompt "
                             f"(got {len(sampling_params)} for {num_prompts} prompts)")
        return [SamplingParams.from_dict(p) for p in sampling_params]
    return [SamplingParams.from_dict(sampling_params)] * num_prompts


def expand_samples(params: SamplingParams) -> list[SamplingParams]:
    """n > 1 becomes n independent requests with n = 1; sample i uses seed + i when seeded."""
    if params.n == 1:
        return [params]
    return [msgspec.structs.replace(params, n=1, seed=None if params.seed is None else params.seed + i)
            for i in range(params.n)]
