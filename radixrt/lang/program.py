"""`@function` programs and how they run: one call (`run`) or many (`run_batch`)."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixrt.lang.context import context
from radixrt.lang.interpreter import StreamExecutor
from radixrt.lang.ir import SamplingParams
from radixrt.lang.state import ProgramState

logger = logging.getLogger("radixrt.lang")

_wrapped_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_wrap_lock = threading.Lock()


def resolve_backend(backend: Any = None) -> Any:
    """The backend a program runs on: the given one or the default; a `Runtime` means its
    endpoint, and a `radixrt.Engine` is wrapped in an `EngineBackend`."""
    backend = backend if backend is not None else context.default_backend
    if backend is None:
        raise ValueError("no backend: call set_default_backend(...) first or pass backend=...")
    from radixrt.lang.backends.base import BaseBackend
    from radixrt.lang.backends.engine import EngineBackend, is_radixrt_engine

    if isinstance(backend, BaseBackend):
        return backend
    if is_radixrt_engine(backend):
        with _wrap_lock:
            wrapped = _wrapped_engines.get(backend)
            if wrapped is None:
                wrapped = _wrapped_engines[backend] = EngineBackend(backend)
        return wrapped
    endpoint = getattr(backend, "endpoint", None)
    if isinstance(endpoint, BaseBackend):
        return endpoint
    raise TypeError(f"not a backend: {backend!r}")


def _default_params(max_new_tokens: int = 128, stop: Any = None, stop_token_ids: Any = None,
                    temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                    frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                    ignore_eos: bool = False, return_logprob: bool | None = None,
                    logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
                    return_text_in_logprobs: bool | None = None) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max_new_tokens, stop=stop or (), stop_token_ids=stop_token_ids or (),
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs)


_SAMPLING_KEYS = set(inspect.signature(_default_params).parameters)


class Function:
    """A program: a Python function whose first argument ``s`` is the program state."""

    def __init__(self, func: Any, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None):
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].name != "s":
            raise TypeError(f"{func.__name__}: the first argument of a program must be named 's'")
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        self.arg_names = [p.name for p in params[1:]]
        self.num_required = sum(1 for p in params[1:] if p.default is inspect.Parameter.empty)
        functools.update_wrapper(self, func)

    def bind(self, **kwargs: Any) -> Function:
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.func.__name__}: no argument(s) {sorted(unknown)}")
        return Function(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        """Run once. Keyword arguments named like sampling settings (max_new_tokens,
        temperature, stop, ...) are the defaults of every gen in the program; the others are
        the program's arguments. Without ``stream``, returns when the program is done and
        raises the first error; with it, returns at once (read with ``text_iter``)."""
        sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING_KEYS}
        return run_program(self, resolve_backend(backend), args, kwargs, _default_params(**sampling), stream)

    def run_batch(self, batch_kwargs: list[Any], *, backend: Any = None, num_threads: int | str = "auto",
                  progress_bar: bool = False, generator_style: bool = False, **sampling: Any):
        """Run once per entry of ``batch_kwargs`` (dicts of arguments, or tuples in argument
        order), concurrently. Returns the states in order (a generator of them with
        ``generator_style``); a failed program's state re-raises its error when read."""
        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError("run_batch takes a list of argument dicts (or tuples)")
        unknown = set(sampling) - _SAMPLING_KEYS
        if unknown:
            raise TypeError(f"run_batch: unknown keyword argument(s) {sorted(unknown)}")
        batch = [self._as_kwargs(a) for a in batch_kwargs]
        return run_program_batch(self, resolve_backend(backend), batch, _default_params(**sampling),
                                 num_threads, progress_bar, generator_style)

    def _as_kwargs(self, args: Any) -> dict[str, Any]:
        if isinstance(args, dict):
            return args
        if isinstance(args, (list, tuple)) and self.num_required <= len(args) <= len(self.arg_names):
            return dict(zip(self.arg_names, args, strict=False))  # trailing defaults
        raise TypeError(f"{self.func.__name__}: batch entry {args!r} does not match the arguments "
                        f"{self.arg_names}")

    def cache(self, backend: Any = None) -> str:
        """Cache the program's constant prefix on the backend now; returns it."""
        return precache(self, resolve_backend(backend), min_chars=1)

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)


SglFunction = Function


# ----------------------------------------------------------------------------- running
def _run_body(state: ProgramState, program: Function, args: tuple, kwargs: dict[str, Any]) -> None:
    executor = state.stream_executor
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:
        executor.record_error(e)
        raise
    finally:
        executor.end()


def run_program(program: Function, backend: Any, args: tuple, kwargs: dict[str, Any],
                default_params: SamplingParams, stream: bool, raise_errors: bool = True) -> ProgramState:
    kwargs = {**program.bind_arguments, **kwargs}
    executor = StreamExecutor(backend, kwargs, default_params, stream=stream,
                              num_api_spec_tokens=program.num_api_spec_tokens)
    state = ProgramState(executor)
    if stream:
        def body() -> None:
            try:
                _run_body(state, program, args, kwargs)
            except BaseException:
                pass  # kept in the state; text_iter re-raises it

        threading.Thread(target=body, daemon=True, name="radixrt-lang-program").start()
        return state
    try:
        _run_body(state, program, args, kwargs)
    except BaseException:
        if raise_errors:
            raise
        return state
    executor.sync()
    if context.verbosity >= 2:
        print(executor.text_)
    if raise_errors and executor.error_ is not None:
        raise executor.error_
    return state


def precache(program: Function, backend: Any, min_chars: int | None = None) -> str:
    """Send the program's traced constant prefix to the backend once (if long enough)."""
    from radixrt.lang.tracer import trace_prefix

    prefix = trace_prefix(program, backend)
    limit = context.precache_min_chars if min_chars is None else min_chars
    if prefix and len(prefix) >= limit:
        backend.cache_prefix(prefix)
        return prefix
    return ""


def run_program_batch(program: Function, backend: Any, batch: list[dict[str, Any]],
                      default_params: SamplingParams, num_threads: int | str, progress_bar: bool,
                      generator_style: bool = False):
    if not batch:
        return iter(()) if generator_style else []
    if context.enable_precache_with_tracing and len(batch) > 1:
        try:
            precache(program, backend)
        except Exception as e:  # only an optimisation; the programs report real errors
            logger.warning("could not pre-cache the batch's shared prefix: %s", e)
    if num_threads == "auto":
        num_threads = max(64, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch)))

    def one(kwargs: dict[str, Any]) -> ProgramState:
        return run_program(program, backend, (), kwargs, default_params, False, raise_errors=False)

    if generator_style:
        return _batch_generator(one, batch, num_threads, progress_bar)
    pbar = _progress(len(batch)) if progress_bar else None
    with ThreadPoolExecutor(num_threads, thread_name_prefix="radixrt-lang-batch") as pool:
        futures = [pool.submit(one, kw) for kw in batch]
        if pbar is not None:
            for f in futures:
                f.add_done_callback(lambda _: pbar.update())
        states = [f.result() for f in futures]
    if pbar is not None:
        pbar.close()
    failed = sum(1 for st in states if st.stream_executor.error_ is not None)
    if failed:
        logger.warning("run_batch: %d of %d programs failed; reading their variables raises the error",
                       failed, len(states))
    return states


def _batch_generator(one: Any, batch: list[dict[str, Any]], num_threads: int,
                     progress_bar: bool) -> Iterator[ProgramState]:
    pbar = _progress(len(batch)) if progress_bar else None
    chunk = max(num_threads * 4, 64)  # keeps the pool's queue short, so results flow early
    with ThreadPoolExecutor(num_threads, thread_name_prefix="radixrt-lang-batch") as pool:
        for start in range(0, len(batch), chunk):
            futures = [pool.submit(one, kw) for kw in batch[start:start + chunk]]
            for f in futures:
                state = f.result()
                if pbar is not None:
                    pbar.update()
                yield state
    if pbar is not None:
        pbar.close()


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total)
