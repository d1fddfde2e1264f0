"""Typed messages between the server's processes (msgspec Structs, msgpack on the wire).

Direction            Messages
tokenizer -> sched   TokenizedGenerateReq, AbortReq, FlushCacheReq, GetServerInfoReq
sched -> detok       BatchTokenIDOut, and control replies the detokenizer forwards as-is
detok -> tokenizer   BatchStrOut, FlushCacheOut, ServerInfoOut
child -> parent      ProcessReady (once, over the start-up pipe)

Every message is a tagged Struct, so one decoder reads any of them; no pickle. Requests carry
their `SamplingParams` typed (validated once, in the tokenizer manager), outputs their
`ReqMeta` and `FinishReason` typed; SGLang's dicts are built only for a JSON response.
"""

from __future__ import annotations

from typing import Any

import msgspec

from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.req import FinishReason

# (logprob, token id) everywhere, from the scheduler to the JSON response; the first prompt
# token has no logprob.
TokenLogprob = tuple[float | None, int]
# Top-k alternatives at one position, or None where there are none (first prompt token).
TopLogprobs = list[tuple[float, int]] | None


class Message(msgspec.Struct, tag=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------- tokenizer -> scheduler
class TokenizedGenerateReq(Message):
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams  # validated; n == 1
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
class ReqMeta(msgspec.Struct, omit_defaults=True):
    """A request's counters as of one output message, and how it ended (None while it runs)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    finish_reason: FinishReason | None = None


class TokenIDOut(Message):
    """One request's progress since the previous message about it."""

    rid: str
    new_ids: list[int]
    meta: ReqMeta
    # How to detokenize; the detokenizer reads them from the first message about a request.
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stop: list[str] = []
    no_stop_trim: bool = False  # keep the matched stop string / stop token's text at the end
    stream: bool = False  # text is wanted before the end
    error: str | None = None  # the request failed; error_code is the HTTP status to answer
    error_code: int = 0
    input_token_logprobs: list[TokenLogprob] = []
    input_top_logprobs: list[TopLogprobs] = []
    output_token_logprobs: list[TokenLogprob] = []
    output_top_logprobs: list[TopLogprobs] = []

    @property
    def finished(self) -> bool:
        return self.meta.finish_reason is not None


class BatchTokenIDOut(Message):
    outputs: list[TokenIDOut]


# ----------------------------------------------------------------- detokenizer -> tokenizer
class StrOut(Message):
    """One request's new text, ids and logprobs since the previous message about it."""

    rid: str
    text: str
    new_ids: list[int]
    meta: ReqMeta
    error: str | None = None
    error_code: int = 0
    input_token_logprobs: list[TokenLogprob] = []
    input_top_logprobs: list[TopLogprobs] = []
    output_token_logprobs: list[TokenLogprob] = []
    output_top_logprobs: list[TopLogprobs] = []

    @property
    def finished(self) -> bool:
        return self.meta.finish_reason is not None


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
