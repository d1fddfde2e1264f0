"""radixrt's frontend language: SGLang-compatible structured generation programs.

    from radixrt import lang as sgl        # or: import radixrt as sgl

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=64))

    sgl.set_default_backend(sgl.Runtime())
    print(qa.run(question="What is a radix tree?")["answer"])

Backends are imported lazily, so importing this package loads neither torch nor httpx.
"""

from radixrt.lang.api import (
    Engine,
    EngineBackend,
    OpenAI,
    Runtime,
    RuntimeEndpoint,
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from radixrt.lang.chat_template import ChatTemplate, get_chat_template, register_chat_template
from radixrt.lang.choices import (
    ChoicesDecision,
    ChoicesSamplingMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from radixrt.lang.context import context, global_config
from radixrt.lang.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    UnsupportedFeatureError,
)
from radixrt.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, SamplingParams
from radixrt.lang.program import Function, SglFunction
from radixrt.lang.state import ProgramState, ProgramStateGroup

__all__ = [
    "REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR",
    "BackendConnectionError", "BackendError", "BackendTimeoutError", "ChatTemplate",
    "ChoicesDecision", "ChoicesSamplingMethod", "Engine", "EngineBackend", "Function", "OpenAI",
    "ProgramState", "ProgramStateGroup", "Runtime", "RuntimeEndpoint", "SamplingParams",
    "SglFunction", "UnsupportedFeatureError",
    "assistant", "assistant_begin", "assistant_end", "context", "flush_cache", "function", "gen",
    "gen_int", "gen_string", "get_chat_template", "get_server_info", "global_config",
    "greedy_token_selection", "image", "register_chat_template", "select", "set_default_backend",
    "system", "system_begin", "system_end", "token_length_normalized",
    "unconditional_likelihood_normalized", "user", "user_begin", "user_end", "video",
]
