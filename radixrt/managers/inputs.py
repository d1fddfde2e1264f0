"""Turning user inputs into per-sample requests; shared by the offline Engine and the server."""

from __future__ import annotations

from typing import Any

from radixrt.sampling_params import SamplingParams

PromptLike = str | list[int]


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
    base = params.to_dict()
    return [SamplingParams(**{**base, "n": 1, "seed": None if params.seed is None else params.seed + i})
            for i in range(params.n)]
