"""Finding the text every call of a program starts with, to cache it before a batch.

The program runs once with stand-ins for its arguments on a backend that generates nothing:
it stops at the first generation, at the first use of an argument's value, or at anything
else that needs a real result. The text built until then is the same for every call.
Running the function this way is only an optimisation: any surprise means "no prefix".
"""

from __future__ import annotations

from typing import Any

from radixrt.lang.backends.base import BaseBackend
from radixrt.lang.interpreter import StreamExecutor
from radixrt.lang.ir import Expr, SamplingParams
from radixrt.lang.state import ProgramState


class StopTracing(BaseException):
    """Raised where tracing cannot go on. A BaseException, so a program's own
    ``except Exception`` does not swallow it."""


def _stop(*args: Any, **kwargs: Any) -> Any:
    raise StopTracing()


class TracedArgument(Expr):
    """Stands in for a program argument; using its value (or appending it) ends the trace."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    __str__ = __repr__ = __format__ = __add__ = __radd__ = __mul__ = __rmul__ = _stop
    __len__ = __iter__ = __getitem__ = __contains__ = __bool__ = __int__ = __float__ = _stop
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __call__ = _stop
    __mod__ = __rmod__ = __index__ = __setattr__ = _stop

    def __getattr__(self, name: str) -> Any:
        raise StopTracing()

    def execute(self, executor: Any) -> None:
        raise StopTracing()


class _TracingBackend(BaseBackend):
    def __init__(self, backend: BaseBackend):
        super().__init__()
        self.chat_template = backend.get_chat_template()

    def generate(self, s, sampling_params):
        raise StopTracing()

    generate_stream = select = cache_prefix = commit_lazy_operations = generate  # type: ignore[assignment]


def trace_prefix(func: Any, backend: BaseBackend) -> str:
    """The constant text a program builds before it needs its arguments or the model."""
    executor = StreamExecutor(_TracingBackend(backend), {}, SamplingParams(), use_thread=False)
    state = ProgramState(executor)
    kwargs = {name: TracedArgument(name) for name in func.arg_names}
    kwargs.update(func.bind_arguments)
    try:
        func.func(state, **kwargs)
    except StopTracing:
        pass
    except Exception:
        return ""
    return executor.text_
