"""JSON string syntax as ``regex_ast`` trees.

``JSON_CHAR`` is one JSON-encoded character, any legal form: a raw character other than ``"``,
``\\`` and controls, a short escape, or ``\\uXXXX`` (surrogate escapes excluded, so every
alternative is exactly one code point and ``minLength``/``maxLength`` count correctly).

``json_encode_tree`` rewrites a regex over decoded characters (a ``pattern``, a ``format``) into
one over their canonical encoding — the form ``json.dumps(..., ensure_ascii=False)`` writes, one
encoding per character. Canonical encodings are also what makes "a key other than the declared
property names" exact: a different encoding of a declared name cannot slip through.
"""

from __future__ import annotations

import json

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.automaton import register_constant
from radixrt.fsm.regex_ast import Node

QUOTE = ra.lit('"')
_SPECIAL = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))  # must be escaped inside a JSON string
RAW_RANGES = ra.complement_ranges(_SPECIAL)
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r",
                  0x22: '\\"', 0x5C: "\\\\"}

_HEX = ra.chars([(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)])
_NON_SURROGATE_HEX4 = ra.alt(
    ra.cat(ra.chars([(0x30, 0x39), (0x41, 0x43), (0x61, 0x63), (0x45, 0x46), (0x65, 0x66)]),
           ra.rep(_HEX, 3, 3)),
    ra.cat(ra.char_set("dD"), ra.chars([(0x30, 0x37)]), ra.rep(_HEX, 2, 2)))
JSON_CHAR = ra.alt(
    ra.Chars(RAW_RANGES),
    ra.cat(ra.lit("\\"), ra.alt(ra.char_set('"\\/bfnrt'), ra.cat(ra.lit("u"), _NON_SURROGATE_HEX4))))
JSON_STRING = register_constant(ra.cat(QUOTE, ra.star(JSON_CHAR), QUOTE))


def canonical_chars(ranges: ra.Ranges) -> Node:
    """The canonical JSON encodings of one character from ``ranges``."""
    parts: list[Node] = []
    raw = ra.intersect_ranges(ranges, RAW_RANGES)
    if raw:
        parts.append(ra.Chars(raw))
    for lo, hi in ra.intersect_ranges(ranges, _SPECIAL):
        for cp in range(lo, hi + 1):
            parts.append(ra.lit(_SHORT_ESCAPES.get(cp, f"\\u{cp:04x}")))
    return ra.alt(*parts)


CANONICAL_CHAR = canonical_chars(((0, 0x10FFFF),))
CANONICAL_STRING = register_constant(ra.cat(QUOTE, ra.star(CANONICAL_CHAR), QUOTE))


def json_encode_tree(node: Node) -> Node:
    """Map a tree over decoded characters to one over their canonical JSON encodings."""
    if isinstance(node, ra.Chars):
        return canonical_chars(node.ranges)
    if isinstance(node, ra.Concat):
        return ra.cat(*(json_encode_tree(n) for n in node.items))
    if isinstance(node, ra.Alt):
        return ra.alt(*(json_encode_tree(n) for n in node.items))
    if isinstance(node, ra.Repeat):
        return ra.rep(json_encode_tree(node.item), node.min, node.max)
    if isinstance(node, ra.Intersect):
        return ra.Intersect(tuple(json_encode_tree(n) for n in node.items))
    raise TypeError(f"cannot JSON-encode {type(node).__name__}")


def string_literal(value: str) -> Node:
    return ra.lit(json.dumps(value, ensure_ascii=False))
