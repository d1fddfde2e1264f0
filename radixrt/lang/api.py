"""The public API of the frontend language (SGLang's names and signatures)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from radixrt.lang.choices import ChoicesSamplingMethod, get_choices_method
from radixrt.lang.context import context
from radixrt.lang.ir import ExprList, Gen, RoleBegin, RoleEnd, SamplingParams, Select, as_expr
from radixrt.lang.program import Function, resolve_backend


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """Decorator: ``@function`` or ``@function(num_api_spec_tokens=...)``."""
    if func is not None:
        return Function(func, num_api_spec_tokens=num_api_spec_tokens)

    def decorator(f: Callable) -> Function:
        return Function(f, num_api_spec_tokens=num_api_spec_tokens)

    return decorator


# ----------------------------------------------------------------------------- backends
def set_default_backend(backend: Any) -> None:
    """The backend programs use unless run(..., backend=...) names another: a
    RuntimeEndpoint, Runtime, EngineBackend, OpenAI, or a radixrt.Engine."""
    context.default_backend = resolve_backend(backend) if backend is not None else None


def flush_cache(backend: Any = None) -> bool:
    """Drop the backend's prefix cache. False when there is no backend."""
    if backend is None and context.default_backend is None:
        return False
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    if backend is None and context.default_backend is None:
        return None
    return resolve_backend(backend).get_server_info()


def Runtime(*args: Any, **kwargs: Any):  # noqa: N802 - SGLang's factory name
    """Start a local radixrt server (see `radixrt.lang.backends.runtime.Runtime`)."""
    from radixrt.lang.backends.runtime import Runtime as _Runtime

    return _Runtime(*args, **kwargs)


def RuntimeEndpoint(*args: Any, **kwargs: Any):  # noqa: N802
    """A running radixrt/SGLang server by URL."""
    from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint as _RuntimeEndpoint

    return _RuntimeEndpoint(*args, **kwargs)


def EngineBackend(*args: Any, **kwargs: Any):  # noqa: N802
    """An in-process radixrt Engine as a backend."""
    from radixrt.lang.backends.engine import EngineBackend as _EngineBackend

    return _EngineBackend(*args, **kwargs)


def OpenAI(*args: Any, **kwargs: Any):  # noqa: N802
    """An OpenAI-compatible API as a backend."""
    from radixrt.lang.backends.openai import OpenAI as _OpenAI

    return _OpenAI(*args, **kwargs)


def Engine(*args: Any, **kwargs: Any):  # noqa: N802
    """radixrt's offline engine (as `sglang.Engine`); also usable as a program backend."""
    from radixrt.entrypoints.engine import Engine as _Engine

    return _Engine(*args, **kwargs)


# ----------------------------------------------------------------------------- generation
def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None,
        n: int | None = None, stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
        stop_regex: str | list[str] | None = None, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        min_p: float | None = None, frequency_penalty: float | None = None,
        presence_penalty: float | None = None, ignore_eos: bool | None = None,
        return_logprob: bool | None = None, logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
        dtype: Any = None, choices: list[str] | None = None,
        choices_method: ChoicesSamplingMethod | str | None = None, regex: str | None = None,
        json_schema: str | dict | None = None):
    """Generate text into variable ``name``. Unset arguments take run()'s defaults. With
    ``choices``, this is `select`. ``dtype`` (int, float, bool, str) and ``regex`` /
    ``json_schema`` constrain the output."""
    for pattern in [stop_regex] if isinstance(stop_regex, str) else (stop_regex or ()):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"gen: invalid stop_regex {pattern!r}: {e}") from None
    if choices:
        return Select(name, choices, 0.0 if temperature is None else temperature,
                      get_choices_method(choices_method))
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"gen: invalid regex {regex!r}: {e}") from None
    if isinstance(json_schema, dict):
        import json

        json_schema = json.dumps(json_schema)
    return Gen(name, SamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop,
        stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k,
        min_p=min_p, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        ignore_eos=ignore_eos, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs,
        dtype=dtype, regex=regex, json_schema=json_schema))


def gen_int(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> Gen:
    """`gen` constrained to an integer."""
    return gen(name, max_tokens, dtype=int, **kwargs)


def gen_string(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> Gen:
    """`gen` constrained to a double-quoted string of word characters and spaces."""
    return gen(name, max_tokens, dtype=str, **kwargs)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod | str | None = None) -> Select:
    """Pick one of ``choices`` by its likelihood after the prompt."""
    if choices is None:
        raise ValueError("select: choices are required")
    return Select(name, choices, temperature, get_choices_method(choices_method))


# ----------------------------------------------------------------------------- roles
def _role(role: str, expr: Any = None) -> ExprList:
    if expr is None:
        return ExprList([RoleBegin(role), RoleEnd(role)])
    return ExprList([RoleBegin(role), as_expr(expr), RoleEnd(role)])


def system(expr: Any = None) -> ExprList:
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


def image(*args: Any, **kwargs: Any):
    raise NotImplementedError("radixrt serves text-only models: sgl.image is not supported")


def video(*args: Any, **kwargs: Any):
    raise NotImplementedError("radixrt serves text-only models: sgl.video is not supported")
