"""Request bodies of the HTTP API (pydantic, strict types, unknown fields rejected).

Field names follow SGLang's native API (`/generate`) and OpenAI's (`/v1/...`), including the
SGLang extensions to the OpenAI requests (top_k, regex, json_schema, ...). Sampling values
are range-checked again by `SamplingParams`; here the types and OpenAI's own ranges.

SGLang's servers also accept fields that its router (sglang-router) adds to every request it
forwards and that SGLang's clients send. Each one radixrt takes is honoured (mapped onto a
radixrt feature), ignored (it does not change results; its type is still checked), or accepted
only at the value that asks for nothing radixrt lacks (`off_only`: anything else is a 400 that
names the field and says why). Names SGLang does not know stay unknown: a typo is still a 400.
The lists are in docs/api.md ("SGLang ecosystem fields").
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


# ----------------------------------------------------------------- SGLang ecosystem fields
def _shown(value: Any) -> str:
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


def off_only(*allowed: Any, why: str) -> Any:
    """A field accepted only at one of ``allowed`` (compared with their types, so 0 is not
    False); any other value is a 400 that names the field and says ``why``."""
    shown = " or ".join(_shown(a) for a in allowed)

    def check(value: Any) -> Any:
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise PydanticCustomError(
                "unsupported",
                "{why}; only {shown} is accepted (got {got})",
                {"why": why, "shown": shown, "got": _shown(value)},
            )
        return value

    return Annotated[Any, AfterValidator(check)]


NoMultimodal = off_only(None, why="radixrt serves text-only models")
NoLora = off_only(None, why="LoRA adapters are not supported")
NoDisaggregation = off_only(None, why="prefill/decode disaggregation is not supported")
OnlyRankZero = off_only(None, 0, why="a radixrt server has one data-parallel rank")
# Ignoring a cache namespace would share cached prefixes between callers that asked not to.
NoCacheKey = off_only(None, why="cache namespaces (extra_key, cache_salt) are not supported")
NoCustomLogits = off_only(None, why="custom logit processors are not supported")
NoHiddenStates = off_only(False, why="hidden states are not returned")
NoRoutedExperts = off_only(False, why="radixrt serves no mixture-of-experts models")
NoSessions = off_only(None, why="sessions are not supported")
NoBackground = off_only(False, why="background requests are not supported")
NoEntropy = off_only(False, why="entropy is not returned")
NoTokenIdsLogprob = off_only(None, why="logprobs of chosen token ids are not returned")
NoInputEmbeds = off_only(None, why="input embeddings are not supported")
# Chat templates of reasoning models read these; radixrt does not pass them on.
NoReasoning = off_only(None, why="reasoning fields are not passed to the chat template")


class SGLangFields(StrictModel):
    """Fields both SGLang's native and OpenAI requests accept."""

    priority: int | None = None  # ignored: radixrt schedules by --schedule-policy
    return_hidden_states: NoHiddenStates = False
    return_routed_experts: NoRoutedExperts = False
    lora_path: NoLora = None
    session_params: NoSessions = None
    custom_logit_processor: NoCustomLogits = None
    extra_key: NoCacheKey = None
    cache_salt: NoCacheKey = None
    data_parallel_rank: OnlyRankZero = None
    routed_dp_rank: OnlyRankZero = None
    bootstrap_host: NoDisaggregation = None
    bootstrap_port: NoDisaggregation = None
    bootstrap_room: NoDisaggregation = None


def _sglang_sampling_params(d: dict[str, Any]) -> dict[str, Any]:
    """SGLang's sampling-parameter names that radixrt spells differently or does not have:
    ``sampling_seed`` is ``seed``."""
    if "sampling_seed" not in d:
        return d
    d = dict(d)
    seed = d.pop("sampling_seed", None)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PydanticCustomError(
                "seed", "sampling_seed: must be an integer (got {got})", {"got": _shown(seed)}
            )
        if d.get("seed") is not None and d["seed"] != seed:
            raise PydanticCustomError(
                "seed",
                "sampling_seed: differs from seed ({seed}); give one of them",
                {"seed": d["seed"]},
            )
        d["seed"] = seed
    return d


# ----------------------------------------------------------------- native (SGLang)
class GenerateRequest(SGLangFields):
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    # Ignored: they do not change results.
    model: str | None = None  # one model per server
    log_metrics: bool = True
    no_logs: bool = False
    custom_labels: dict[str, str] | None = None
    conversation_id: str | None = None
    return_bytes: bool = False  # SGLang: image generation only
    # Only their "off" values.
    background: NoBackground = False
    return_entropy: NoEntropy = False
    token_ids_logprob: NoTokenIdsLogprob = None
    image_data: NoMultimodal = None
    video_data: NoMultimodal = None
    audio_data: NoMultimodal = None
    modalities: NoMultimodal = None
    input_embeds: NoInputEmbeds = None
    lora_id: NoLora = None
    bootstrap_pair_key: NoDisaggregation = None

    @field_validator("sampling_params")
    @classmethod
    def _sglang_names(cls, value):
        if isinstance(value, list):
            return [_sglang_sampling_params(d) for d in value]
        return None if value is None else _sglang_sampling_params(value)


class FlushCacheRequest(StrictModel):
    empty_cache: bool = True  # sent by SGLang's RuntimeEndpoint; the pool is always kept


class AbortRequest(StrictModel):
    rid: str = ""
    abort_all: bool = False


# ----------------------------------------------------------------- OpenAI
class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaSpec(StrictModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaSpec | None = None
    # SGLang's structural_tag response format (radixrt/fsm/structural_tag.py)
    structures: list[dict[str, Any]] | None = None
    triggers: list[str] | None = None


class OpenAISamplingFields(SGLangFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # SGLang extensions
    rid: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    no_jump_forward: bool | None = None
    no_budget_closing: bool | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    # SGLang's spelling: sampling_seed is seed.
    sampling_seed: int | None = None
    no_stop_trim: bool | None = None
    custom_params: NoCustomLogits = None
    routing_id: str | None = None  # ignored: sglang-router's key for its manual policy

    @field_validator("sampling_seed")
    @classmethod
    def _same_seed(cls, value, info: ValidationInfo):
        seed = info.data.get("seed")
        if value is not None and seed is not None and seed != value:
            raise PydanticCustomError(
                "seed", "differs from seed ({seed}); give one of them", {"seed": seed}
            )
        return value

    @model_validator(mode="after")
    def _seed(self):
        if self.sampling_seed is not None:
            self.seed = self.sampling_seed
        return self


class CompletionRequest(OpenAISamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    reasoning_content: NoReasoning = None
    # What an SDK's response message carries when sent back whole (message.model_dump()).
    annotations: list[dict[str, Any]] | None = None  # ignored
    function_call: off_only(None, why="function_call is replaced by tool_calls") = None
    audio: NoMultimodal = None


class ChatCompletionRequest(OpenAISamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # Ignored: they act only with a reasoning parser, which radixrt does not have (as SGLang
    # without --reasoning-parser).
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    reasoning_effort: NoReasoning = None
