"""``pattern`` (ECMA-262 regex, unanchored search) as a tree over JSON-encoded string bodies."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.json_strings import JSON_CHAR, json_encode_tree
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.regex_parser import parse_alternatives


def pattern_body(pattern: Any, ptr: str, keyword: str = "pattern") -> Node:
    """JSON string bodies (between the quotes) whose decoded text contains a match of
    ``pattern``; the matched part is canonically encoded, the rest is any JSON text."""
    if not isinstance(pattern, str):
        raise GrammarError(f"'{keyword}' at {ptr} must be a string")
    try:
        return _pattern_body(pattern)
    except GrammarError as e:
        raise GrammarError(f"unsupported JSON schema keyword '{keyword}' at {ptr}: {e}") from None


@lru_cache(maxsize=256)
def _pattern_body(pattern: str) -> Node:
    from radixrt.fsm.automaton import register_constant

    alternatives = parse_alternatives(pattern, flavor="ecma")
    anything = ra.star(JSON_CHAR)
    return register_constant(ra.alt(*(
        ra.cat(ra.EMPTY if a.anchored_start else anything, json_encode_tree(a.node),
               ra.EMPTY if a.anchored_end else anything) for a in alternatives)))


@lru_cache(maxsize=256)
def pattern_search_dfa(pattern: str):
    """The DFA of ``pattern_body`` (for testing names against a pattern)."""
    from radixrt.fsm.automaton import compile_regex_ast

    return compile_regex_ast(_pattern_body(pattern))
