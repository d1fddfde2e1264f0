"""SGLang's ``structural_tag`` constraint: free text in which a trigger opens a tagged JSON
section, compiled into one exact byte DFA (so masks, budget closing and jump-forward work as
for any regex or JSON schema).

The spec is JSON text, SGLang's "structures + triggers" form plus two radixrt options::

    {"structures": [{"begin": "<tool_call>{\\"name\\": \\"f\\", \\"arguments\\": ",
                     "schema": {...}, "end": "}</tool_call>"}, ...],
     "triggers": ["<tool_call>"],
     "at_least_one": false,       # radixrt: the text is tagged sections only
     "stop_after_first": false}   # radixrt: at most one section, nothing after it

Every ``begin`` starts with a trigger. With F the texts that contain no trigger, S any one
structure (its begin, a JSON value of its schema, its end) and W an optional newline, the
accepted language is::

    default                F (S F)*
    stop_after_first       F S?
    at_least_one           S (W S)*
    at_least_one + stop    S

So the output is free until a trigger appears; from the trigger on it must complete one of the
structures that begin with it, after which it is free again. F is an exact regular language
(the difference of "anything" and "anything, a trigger, anything"), not a heuristic: a trigger
can only be written as the start of a section.

This belongs with the other grammar kinds in ``radixrt.fsm.compiler``; it lives here, next to
the grammar manager that calls it, until it moves there.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.json_schema import json_schema_to_ast
from radixrt.fsm.utf8 import MAX_CODE_POINT

_KEYS = {"type", "structures", "triggers", "at_least_one", "stop_after_first"}


def parse_structural_tag(spec: Any) -> dict[str, Any]:
    """The validated spec (JSON text or a dict); GrammarError names the offending field."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise GrammarError(f"not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise GrammarError("must be a JSON object with structures and triggers")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise GrammarError(f"unknown field(s) {unknown}")
    if spec.get("type", "structural_tag") != "structural_tag":
        raise GrammarError("type: must be 'structural_tag'")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers or not all(
            isinstance(t, str) and t for t in triggers):
        raise GrammarError("triggers: must be a non-empty list of non-empty strings")
    structures = spec.get("structures")
    if not isinstance(structures, list) or not structures:
        raise GrammarError("structures: must be a non-empty list")
    for i, s in enumerate(structures):
        where = f"structures[{i}]"
        if not isinstance(s, dict) or set(s) - {"begin", "schema", "end"}:
            raise GrammarError(f"{where}: must be an object with begin, schema and end")
        for key in ("begin", "end"):
            if not isinstance(s.get(key), str):
                raise GrammarError(f"{where}.{key}: must be a string")
        if not any(s["begin"].startswith(t) for t in triggers):
            raise GrammarError(f"{where}.begin: must start with one of the triggers")
        if not isinstance(s.get("schema"), (dict, bool)):
            raise GrammarError(f"{where}.schema: must be a JSON schema (an object)")
    for key in ("at_least_one", "stop_after_first"):
        if not isinstance(spec.get(key, False), bool):
            raise GrammarError(f"{key}: must be a boolean")
    return spec


def structural_tag_ast(spec: Any, options=None) -> ra.Node:
    """The regex tree of the language described in the module docstring."""
    spec = parse_structural_tag(spec)
    sections = []
    for i, s in enumerate(spec["structures"]):
        try:
            value = json_schema_to_ast(s["schema"], options)
        except GrammarError as e:
            raise GrammarError(f"structures[{i}].schema: {e}") from None
        sections.append(ra.cat(ra.lit(s["begin"]), value, ra.lit(s["end"])))
    section = ra.alt(*sections)
    stop = spec.get("stop_after_first", False)
    if spec.get("at_least_one", False):
        # S (W S)*: the DFA holds S twice (the builder copies a shared subtree's DFA and does
        # not minimize across the copies); measured faster to compile than the one-copy
        # (S W)* minus the empty text, a product automaton (docs/api.md, "Tool calling").
        return section if stop else ra.cat(section, ra.star(ra.cat(ra.opt(ra.lit("\n")), section)))
    anything = ra.star(ra.chars(((0, MAX_CODE_POINT),)))
    trigger = ra.alt(*(ra.lit(t) for t in spec["triggers"]))
    free = ra.Difference(anything, ra.cat(anything, trigger, anything))
    if stop:
        return ra.cat(free, ra.opt(section))
    return ra.cat(free, ra.star(ra.cat(section, free)))


class StructuralTagCompiler:
    """Compiles structural tags with a GrammarCompiler's vocabulary and JSON options, in one
    background thread, caching the last ``cache_size`` grammars by spec text."""

    def __init__(self, compiler, cache_size: int = 64):
        self.compiler = compiler
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def compile(self, spec: str) -> CompiledGrammar:
        return self.compile_async(spec).result()

    def compile_async(self, spec: str) -> Future:
        """A Future of the CompiledGrammar (its exception is a GrammarError)."""
        with self._lock:
            hit = self._cache.get(spec)
            f: Future
            if hit is not None:
                self._cache.move_to_end(spec)
                f = Future()
                f.set_result(hit)
                return f
            f = self._inflight.get(spec)
            if f is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="radixrt-structural-tag")
                f = self._pool.submit(self._compile_and_store, spec)
                self._inflight[spec] = f
            return f

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile_and_store(self, spec: str) -> CompiledGrammar:
        try:
            grammar = self._build(spec)
            with self._lock:
                self._cache[spec] = grammar
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return grammar
        finally:
            with self._lock:
                self._inflight.pop(spec, None)

    def _build(self, spec: str) -> CompiledGrammar:
        c = self.compiler
        try:
            dfa = compile_regex_ast(structural_tag_ast(spec, c.options))
        except RecursionError:
            raise GrammarError("structural_tag is nested too deeply to compile") from None
        if dfa.is_empty():
            raise GrammarError("structural_tag matches no text")
        tokenizer = c.tokenizer

        def encode(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        def encode_batch(texts: list[str]) -> list[list[int]]:
            fast = getattr(tokenizer, "_tokenizer", None)  # a transformers fast tokenizer's core
            if fast is not None and hasattr(fast, "encode_batch"):
                return [list(e.ids) for e in fast.encode_batch(texts, add_special_tokens=False)]
            return [encode(t) for t in texts]

        grammar = CompiledGrammar("structural_tag", spec, dfa, c.vocab, c.vocab_size,
                                  c.eos_token_ids, encode=encode, encode_batch=encode_batch,
                                  canonical=c.canonical_tokens)
        grammar.mask(grammar.start_state)  # the first mask is part of compiling
        return grammar
