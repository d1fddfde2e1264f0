"""Sampling parameters with SGLang's field names, validated with field-naming errors.

A msgspec Struct: validated once where a request enters (`from_dict`), then sent typed to
the scheduler process inside `TokenizedGenerateReq`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec


class SamplingParamsError(ValueError):
    """Invalid sampling parameters; the message names the offending field."""


class SamplingParams(msgspec.Struct, omit_defaults=True):
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = []
    stop_token_ids: list[int] = []
    # Regular expressions searched in the output text; generation stops at the first match and
    # the matched text (and what follows) is cut off, like a stop string.
    stop_regex: list[str] = []
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    seed: int | None = None
    # Structured generation (compiled by radixrt.fsm).
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    # SGLang's: free text in which a trigger opens a tagged JSON section (begin, a value of
    # the schema, end); JSON text (radixrt/fsm/structural_tag.py, docs/api.md).
    structural_tag: str | None = None
    no_jump_forward: bool = False
    # Keep the output free to run out of max_new_tokens mid-document (see docs/structured.md).
    no_budget_closing: bool = False
    # SGLang's: keep the matched stop string (or the stop token's text) in the output.
    no_stop_trim: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        d = dict(d or {})
        names = set(cls.__struct_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise SamplingParamsError(f"sampling_params: unknown field(s) {unknown}")
        for name in ("stop", "stop_regex"):
            if isinstance(d.get(name), str):
                d[name] = [d[name]]
            elif isinstance(d.get(name), tuple):
                d[name] = list(d[name])
            if d.get(name) is None:
                d.pop(name, None)
        if d.get("stop_token_ids") is None:
            d.pop("stop_token_ids", None)
        p = cls(**d)
        p.validate()
        return p

    def to_dict(self) -> dict[str, Any]:
        return {name: list(v) if isinstance(v, list) else v
                for name, v in msgspec.structs.asdict(self).items()}

    def validate(self) -> None:
        def bad(name: str, why: str) -> SamplingParamsError:
            return SamplingParamsError(f"sampling_params.{name}: {why} (got {getattr(self, name)!r})")

        def num(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok:
                raise bad(name, "must be an integer" if integer else "must be a number")

        for name in ("max_new_tokens", "min_new_tokens", "top_k", "n"):
            num(name, integer=True)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                     "frequency_penalty", "presence_penalty"):
            num(name)
        if self.max_new_tokens < 0:
            raise bad("max_new_tokens", "must be >= 0")
        if self.min_new_tokens < 0:
            raise bad("min_new_tokens", "must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise bad("min_new_tokens", "must be <= max_new_tokens")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if self.top_k == 0 or self.top_k < -1:
            raise bad("top_k", "must be -1 (disabled) or >= 1")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "must be > 0")
        if not -2 <= self.frequency_penalty <= 2:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if not -2 <= self.presence_penalty <= 2:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if self.n < 1:
            raise bad("n", "must be >= 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad("seed", "must be an integer")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be a non-empty string or a list of non-empty strings")
        if not isinstance(self.stop_regex, list) or not all(isinstance(s, str) and s for s in self.stop_regex):
            raise bad("stop_regex", "must be a non-empty string or a list of non-empty strings")
        for pattern in self.stop_regex:
            try:
                re.compile(pattern)
            except re.error as e:
                raise bad("stop_regex", f"invalid regular expression {pattern!r}: {e}") from None
        if not isinstance(self.stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise bad("stop_token_ids", "must be a list of non-negative integers")
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
                     "no_jump_forward", "no_budget_closing", "no_stop_trim"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a boolean")
        constraints = [k for k in ("regex", "json_schema", "ebnf", "structural_tag")
                       if getattr(self, k) is not None]
        if len(constraints) > 1:
            raise SamplingParamsError(
                "sampling_params: only one of regex/json_schema/ebnf/structural_tag may be set "
                f"(got {constraints})"
            )
        for k in constraints:
            if not isinstance(getattr(self, k), str):
                raise bad(k, "must be a string")
        for k in ("json_schema", "structural_tag"):
            if getattr(self, k) is not None:
                try:
                    json.loads(getattr(self, k))
                except ValueError as e:
                    raise SamplingParamsError(f"sampling_params.{k}: not valid JSON ({e})") from None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
