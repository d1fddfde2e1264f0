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

It is one of ``GrammarCompiler``'s kinds (``compile_async("structural_tag", spec)``): compiled
off the scheduler loop and cached with the others.
"""

from __future__ import annotations

import json
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.errors import GrammarError
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
