"""Req: one generation request's state inside the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from radixrt.sampling_params import SamplingParams

if TYPE_CHECKING:  # the detokenizer and tokenizer processes read FinishReason without torch
    import torch


class FinishReason(msgspec.Struct, omit_defaults=True):
    """Why a request ended; travels typed between processes and becomes SGLang's
    ``finish_reason`` object (`to_dict`) only in a JSON response."""

    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the stop token id, or the stop string / regex match
    message: str | None = None  # why an abort happened
    # The token budget (max_new_tokens or the context) restricted tokens so that a constrained
    # output ends complete (docs/structured.md, budget closing).
    budget_closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.matched is not None:
            d["matched"] = self.matched
        if self.message is not None:
            d["message"] = self.message
        if self.budget_closed:
            d["budget_closed"] = True
        return d


@dataclass
class Req:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    # --- generation state ---
    output_ids: list[int] = field(default_factory=list)
    finished: FinishReason | None = None
    generator: torch.Generator | None = None
    penalty: Any = None  # sampler-side penalty state, when penalties are used
    stop_detok: Any = None  # IncrementalDetokenizer when stop strings must be checked
    grammar: Any = None  # GrammarMatcher (radixrt.fsm), when constrained
    grammar_future: Any = None  # compile in flight
    grammar_kind: str | None = None
    # Jump-forward draft: tokens the grammar forces next, fed to the next decode step and kept
    # only as far as the model's own samples agree with them (not part of output_ids).
    draft_ids: list[int] = field(default_factory=list)
    draft_state: int = 0  # grammar state the draft starts from
    budget_closed: bool = False  # budget closing restricted at least one of its tokens
    error: str | None = None  # the request failed (bad constraint...): the client gets an error
    error_code: int = 400  # 500 when the failure is radixrt's, not the request's
    # --- KV state ---
    row: int | None = None  # row in ReqToTokenPool while it holds KV
    kv_len: int = 0  # tokens whose KV is computed and in the row
    prefix_len: int = 0  # leading slots of the row that belong to the prefix cache
    last_node: Any = None  # locked prefix-cache node
    cached_tokens: int = 0  # prompt tokens served from the cache (reported)
    # --- logprobs ---
    input_token_logprobs: list[tuple[float | None, int]] = field(default_factory=list)
    input_token_logprobs_done: bool = False
    input_top_logprobs: list[Any] = field(default_factory=list)
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[Any] = field(default_factory=list)
    # --- scheduling history ---
    num_retractions: int = 0
    num_chunks: int = 0

    @property
    def fill_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.return_logprob and 0 <= self.logprob_start_len < len(self.prompt_ids)

    def remaining_new_tokens(self) -> int:
        return max(0, self.params.max_new_tokens - len(self.output_ids))
