"""Typed messages between the server's processes (msgspec Structs, msgpack on the wire).

Direction            Messages
tokenizer -> sched   TokenizedGenerateReq, AbortReq, FlushCacheReq, GetServerInfoReq
sched -> detok       BatchTokenIDOut, and control replies the detokenizer forwards as-is
detok -> tokenizer   BatchStrOut, FlushCacheOut, ServerInfoOut
child -> parent      ProcessReady (once, over the start-up pipe)

Every message is a tagged Struct, so one decoder reads any of them; no pickle.
"""

from __future__ import annotations

from typing import Any

import msgspec

# (logprob, token id); the first prompt token has no logprob.
TokenLogprob = tuple[float | None, int]
# Top-k alternatives at one position, or None where there are none (first prompt token).
TopLogprobs = list[tuple[float, int]] | None


class Message(msgspec.Struct, tag=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------- tokenizer -> scheduler
class TokenizedGenerateReq(Message):
    rid: str
    input_ids: list[int]
    sampling_params: dict[str, Any]  # validated by SamplingParams.from_dict; n == 1
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False


class AbortReq(Message):
    rid: str


class FlushCacheReq(Message):
    call_id: int


class GetServerInfoReq(Message):
    call_id: int


# ----------------------------------------------------------------- scheduler -> detokenizer
class TokenIDOut(Message):
    """One request's progress since the previous message about it."""

    rid: str
    new_ids: list[int]
    finish_reason: dict[str, Any] | None  # FinishReason.to_dict() once finished
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stop: list[str] = []
    error: str | None = None  # the request failed; error_code is the HTTP status to answer
    error_code: int = 0
    input_token_logprobs: list[TokenLogprob] = []
    input_top_logprobs: list[TopLogprobs] = []
    output_token_logprobs: list[TokenLogprob] = []
    output_top_logprobs: list[TopLogprobs] = []


class BatchTokenIDOut(Message):
    outputs: list[TokenIDOut]


# ----------------------------------------------------------------- detokenizer -> tokenizer
class StrOut(Message):
    """One request's new text and ids since the previous message about it."""

    rid: str
    text: str
    new_ids: list[int]
    finished: bool
    meta: dict[str, Any]  # prompt_tokens, completion_tokens, cached_tokens, finish_reason
    error: str | None = None
    error_code: int = 0
    input_token_logprobs: list[TokenLogprob] = []
    input_top_logprobs: list[TopLogprobs] = []
    output_token_logprobs: list[TokenLogprob] = []
    output_top_logprobs: list[TopLogprobs] = []


class BatchStrOut(Message):
    outputs: list[StrOut]


# ----------------------------------------------------------------- control replies
class FlushCacheOut(Message):
    call_id: int
    success: bool
    message: str = ""


class ServerInfoOut(Message):
    call_id: int
    info: dict[str, Any]


# ----------------------------------------------------------------- start-up
class ProcessReady(Message):
    name: str
    info: dict[str, Any] = {}
    error: str | None = None  # start-up failed; the parent reports it and exits


AnyMessage = (
    TokenizedGenerateReq | AbortReq | FlushCacheReq | GetServerInfoReq | BatchTokenIDOut
    | BatchStrOut | FlushCacheOut | ServerInfoOut | ProcessReady
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> AnyMessage:
    return _decoder.decode(data)
