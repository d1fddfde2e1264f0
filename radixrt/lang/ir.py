"""The program IR: what `s += ...` appends to a program state.

Expressions are small plain objects; the interpreter executes them in order. `a + b` on
expressions (or an expression and a str) builds an `ExprList`, as in SGLang.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from radixrt.lang.choices import ChoicesSamplingMethod

# Regexes for typed generation (`gen(dtype=int)`, `gen_int`, ...). The same strings as the
# runtime's `radixrt.fsm.dtypes`; duplicated because the frontend never imports the runtime.
REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""


@dataclass
class SamplingParams:
    """Sampling settings of one `gen`. None means "not set here": the program's run()
    defaults fill it in (`merged_over`)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | tuple[str, ...] | None = None
    stop_token_ids: list[int] | tuple[int, ...] | None = None
    stop_regex: str | list[str] | tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: Any = None
    regex: str | None = None
    json_schema: str | None = None

    def merged_over(self, base: SamplingParams) -> SamplingParams:
        """A copy of ``base`` with every field set here overriding it."""
        out = copy.deepcopy(base)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(out, f.name, copy.deepcopy(value))
        return out

    def stop_list(self) -> list[str]:
        if not self.stop:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def stop_regex_list(self) -> list[str]:
        if not self.stop_regex:
            return []
        return [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex)

    def resolve_dtype(self) -> None:
        """Turn ``dtype`` into a regex (SGLang semantics: dtype wins over regex)."""
        if self.dtype is None:
            return
        table = {int: REGEX_INT, "int": REGEX_INT, float: REGEX_FLOAT, "float": REGEX_FLOAT,
                 bool: REGEX_BOOL, "bool": REGEX_BOOL, str: REGEX_STR, "str": REGEX_STR}
        if self.dtype not in table:
            raise ValueError(f"gen: unsupported dtype {self.dtype!r} (use int, float, bool or str)")
        self.regex = table[self.dtype]
        self.json_schema = None
        if self.regex in (REGEX_INT, REGEX_FLOAT):
            # Ends an unconstrained number at the first space or newline; a no-op when the
            # server enforces the regex.
            self.stop = self.stop_list() + [" ", "\n"]
        self.dtype = None

    def to_native(self) -> dict[str, Any]:
        """The `sampling_params` object of SGLang's native /generate API (unset fields left
        out so the server's defaults apply)."""
        out: dict[str, Any] = {}
        for name in ("max_new_tokens", "min_new_tokens", "n", "temperature", "top_p", "top_k",
                     "min_p", "frequency_penalty", "presence_penalty", "ignore_eos", "regex",
                     "json_schema"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        stop = self.stop_list()
        if stop:
            out["stop"] = stop
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        if self.stop_regex:
            out["stop_regex"] = self.stop_regex_list()
        return out

    def logprob_args(self) -> dict[str, Any]:
        """The top-level logprob fields of a /generate request."""
        out: dict[str, Any] = {}
        for name in ("return_logprob", "logprob_start_len", "top_logprobs_num",
                     "return_text_in_logprobs"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


SglSamplingParams = SamplingParams  # SGLang's name


# ----------------------------------------------------------------------------- expressions
class Expr:
    """Base of everything a program appends."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList(_flatten(self) + _flatten(as_expr(other)))

    def __radd__(self, other: Any) -> ExprList:
        return ExprList(_flatten(as_expr(other)) + _flatten(self))

    def execute(self, executor: Any) -> None:
        """How the interpreter runs an expression it has no built-in case for."""
        raise TypeError(f"the interpreter cannot execute {self!r}")


def as_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return ConstantText(value)
    raise TypeError(f"cannot append a {type(value).__name__} to a program; use a str or an "
                    "expression such as gen(...) or select(...)")


def _flatten(expr: Expr) -> list[Expr]:
    return list(expr.exprs) if isinstance(expr, ExprList) else [expr]


class ExprList(Expr):
    def __init__(self, exprs: list[Expr]):
        self.exprs = exprs

    def __repr__(self) -> str:
        return f"ExprList({self.exprs!r})"


class ConstantText(Expr):
    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class Gen(Expr):
    def __init__(self, name: str | None, sampling_params: SamplingParams):
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class Select(Expr):
    def __init__(self, name: str | None, choices: list[str], temperature: float,
                 choices_method: ChoicesSamplingMethod):
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise ValueError("select: choices must be a non-empty list of non-empty strings")
        self.name = name
        self.choices = list(choices)
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices!r})"


class RoleBegin(Expr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class RoleEnd(Expr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class VarScopeBegin(Expr):
    def __init__(self, name: str):
        self.name = name


class VarScopeEnd(Expr):
    def __init__(self, name: str):
        self.name = name


class CommitLazy(Expr):
    """Send the text so far to the backend so its KV is cached (before a fork fans out)."""


class ConcatAndAppend(Expr):
    """`join("concate_and_append")`: append each fork's new text to the parent."""

    def __init__(self, states: list[Any]):
        self.states = states


# SGLang's class names, for programs that build IR by hand.
SglExpr = Expr
SglExprList = ExprList
SglConstantText = ConstantText
SglGen = Gen
SglSelect = Select
SglRoleBegin = RoleBegin
SglRoleEnd = RoleEnd
