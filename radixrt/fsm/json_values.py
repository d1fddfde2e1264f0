"""Reusable JSON value trees: whitespace, "any JSON value", formats, length-bounded strings,
literals.

The cached builders return one node object per argument tuple and register it as a constant, so
its DFA is built once per process and every schema that uses it embeds the same automaton.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.automaton import compile_regex_ast, product, register_constant
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.formats import format_node
from radixrt.fsm.json_strings import JSON_CHAR, JSON_STRING, json_encode_tree
from radixrt.fsm.numeric import NUMBER
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.regex_parser import parse_regex

_WHITESPACE = parse_regex(r"[ \t\n\r]*")


def whitespace_node(pattern: str | None) -> Node:
    if pattern is None:
        return ra.EMPTY
    node = parse_regex(pattern)
    dfa = compile_regex_ast(node)
    if not dfa.is_finite():
        raise GrammarError(f"whitespace_pattern {pattern!r} is unbounded; use a bounded pattern "
                           "such as '[ ]?' or '[ \\n]{0,4}'")
    if not product(dfa, compile_regex_ast(_WHITESPACE), "diff").is_empty():
        raise GrammarError(f"whitespace_pattern {pattern!r} matches non-whitespace text")
    return node


@lru_cache(maxsize=32)
def format_body(name: str) -> Node:
    return register_constant(json_encode_tree(format_node(name)))


@lru_cache(maxsize=256)
def length_body(lo: int, hi: int | None) -> Node:
    return register_constant(ra.rep(JSON_CHAR, lo, hi))


@lru_cache(maxsize=64)
def separators(ws_pattern: str | None) -> tuple[Node, Node, Node]:
    ws = whitespace_node(ws_pattern)
    return ws, ra.cat(ws, ra.lit(":"), ws), ra.cat(ws, ra.lit(","), ws)


@lru_cache(maxsize=64)
def any_value_node(depth: int, ws_pattern: str | None) -> Node:
    """Any JSON value with at most ``depth`` levels of nested containers (one object per
    (depth, whitespace), so its DFA is built once per process)."""
    scalar = ra.alt(JSON_STRING, NUMBER, ra.lit("true"), ra.lit("false"), ra.lit("null"))
    if depth <= 0:
        return register_constant(scalar)
    ws, _, comma = separators(ws_pattern)
    inner = any_value_node(depth - 1, ws_pattern)
    array = ra.cat(ra.lit("["), ws, ra.Members((), comma, inner), ws, ra.lit("]"))
    return register_constant(ra.alt(scalar, any_object_node(depth, ws_pattern), array))


@lru_cache(maxsize=64)
def any_object_node(depth: int, ws_pattern: str | None) -> Node:
    ws, colon, comma = separators(ws_pattern)
    member = ra.cat(JSON_STRING, colon, any_value_node(depth - 1, ws_pattern))
    return register_constant(ra.cat(ra.lit("{"), ws, ra.Members((), comma, member), ws,
                                    ra.lit("}")))


def literal_forms(value: Any) -> list[Node]:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return []
    forms = [text]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        forms.append(str(int(value)))
    elif isinstance(value, int) and not isinstance(value, bool):
        forms.append(f"{value}.0")
    return [ra.lit(f) for f in forms]
