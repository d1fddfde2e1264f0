"""The regular-expression tree every grammar is compiled through (regex, JSON schema, choices).

Leaves are sets of Unicode code points; the automaton builder encodes them as UTF-8 byte
sequences. Besides the usual concatenation, alternation and bounded repetition there are three
nodes plain regex syntax lacks, which the builder handles at the DFA level:

- ``Intersect`` / ``Difference``: product automata (``pattern`` + ``minLength``, number bounds,
  open-object keys that must differ from the declared property names).
- ``Members``: an ordered list of items where optional ones may be skipped, joined by a
  separator (JSON object members), built in linear size instead of the quadratic regex.

Nodes compare by identity: builders share a subtree by reusing the object, and the automaton
builder turns large shared subtrees into one minimized DFA that it copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixrt.fsm.utf8 import MAX_CODE_POINT, SURROGATES

Ranges = tuple[tuple[int, int], ...]


class Node:
    __slots__ = ()


@dataclass(frozen=True, eq=False)
class Chars(Node):
    """One character from a set of code points (sorted, disjoint, merged ranges)."""

    ranges: Ranges


@dataclass(frozen=True, eq=False)
class Concat(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Alt(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Repeat(Node):
    item: Node
    min: int
    max: int | None  # None = unbounded


@dataclass(frozen=True, eq=False)
class Intersect(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Difference(Node):
    left: Node
    right: Node


@dataclass(frozen=True, eq=False)
class Members(Node):
    """``items`` in order (each ``(node, required)``), optional ones skippable, joined by
    ``sep``; then, if ``rest`` is set, any number of ``rest`` items (also joined by ``sep``);
    between ``min_count`` and ``max_count`` items in all."""

    items: tuple[tuple[Node, bool], ...]
    sep: Node
    rest: Node | None = None
    min_count: int = 0  # fewest items written in all (declared and ``rest`` ones)
    max_count: int | None = None  # most items written in all


@dataclass(frozen=True, eq=False)
class Automaton(Node):
    """A finished ``ByteDFA`` used as a leaf (languages easier to build as a table, such as
    the decimal multiples of k)."""

    dfa: object


EMPTY = Concat(())  # matches only the empty string
NOTHING = Alt(())  # matches nothing


# ---------------------------------------------------------------- code point sets


def normalize_ranges(ranges) -> Ranges:
    """Sort and merge ranges; surrogates are dropped (they have no UTF-8 encoding)."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    s_lo, s_hi = SURROGATES
    cut: list[tuple[int, int]] = []
    for lo, hi in out:
        if lo < s_lo:
            cut.append((lo, min(hi, s_lo - 1)))
        if hi > s_hi:
            cut.append((max(lo, s_hi + 1), hi))
    return tuple(cut)


def complement_ranges(ranges: Ranges) -> Ranges:
    out = []
    prev = 0
    for lo, hi in normalize_ranges(ranges):
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev <= MAX_CODE_POINT:
        out.append((prev, MAX_CODE_POINT))
    return normalize_ranges(out)


def subtract_ranges(a: Ranges, b: Ranges) -> Ranges:
    comp = complement_ranges(b)
    return intersect_ranges(a, comp)


def intersect_ranges(a: Ranges, b: Ranges) -> Ranges:
    out = []
    i = j = 0
    a, b = normalize_ranges(a), normalize_ranges(b)
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


# ---------------------------------------------------------------- constructors


def chars(ranges) -> Node:
    r = normalize_ranges(ranges)
    return Chars(r) if r else NOTHING


def char_set(text: str) -> Node:
    return chars((ord(c), ord(c)) for c in text)


def lit(text: str) -> Node:
    if len(text) == 1:
        return Chars(((ord(text), ord(text)),))
    return Concat(tuple(Chars(((ord(c), ord(c)),)) for c in text))


def cat(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        if it is NOTHING:
            return NOTHING
        if isinstance(it, Concat):
            flat.extend(it.items)
        else:
            flat.append(it)
    return flat[0] if len(flat) == 1 else Concat(tuple(flat))


def alt(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        if isinstance(it, Alt):
            flat.extend(it.items)
        else:
            flat.append(it)
    if len(flat) == 1:
        return flat[0]
    return Alt(tuple(flat)) if flat else NOTHING


def rep(item: Node, lo: int, hi: int | None) -> Node:
    if hi is not None and hi < lo:
        return NOTHING
    if hi == 0:
        return EMPTY
    if lo == hi == 1:
        return item
    return Repeat(item, lo, hi)


def opt(item: Node) -> Node:
    return rep(item, 0, 1)


def star(item: Node) -> Node:
    return rep(item, 0, None)


def plus(item: Node) -> Node:
    return rep(item, 1, None)


def intersect(*items: Node) -> Node:
    return items[0] if len(items) == 1 else Intersect(tuple(items))


# ---------------------------------------------------------------- printing


class NotRegularSyntax(ValueError):
    """The tree uses Intersect/Difference, which plain regex syntax cannot write."""


def to_pattern(node: Node) -> str:
    """A Python ``re`` pattern for the tree (for debugging and for callers that want a string)."""
    return _print(node, 0)


_META = set(r".^$*+?{}[]\|()/")


def _char_literal(cp: int, in_class: bool) -> str:
    c = chr(cp)
    if c in _META or (in_class and c in "-^"):
        return "\\" + c
    if c == "\n":
        return r"\n"
    if c == "\t":
        return r"\t"
    if c == "\r":
        return r"\r"
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if not c.isprintable() or c == " " and in_class:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"
    return c


def _class_body(ranges: Ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_char_literal(lo, True))
        elif hi == lo + 1:
            parts.append(_char_literal(lo, True) + _char_literal(hi, True))
        else:
            parts.append(_char_literal(lo, True) + "-" + _char_literal(hi, True))
    return "".join(parts)


def _print_chars(node: Chars) -> str:
    r = node.ranges
    if len(r) == 1 and r[0][0] == r[0][1]:
        return _char_literal(r[0][0], False)
    comp = complement_ranges(r)
    if len(comp) < len(r):
        return "[^" + _class_body(comp) + "]" if comp else "[\\s\\S]"
    return "[" + _class_body(r) + "]"


# precedence: 0 = alternation, 1 = concatenation, 2 = atom
def _print(node: Node, prec: int) -> str:
    if isinstance(node, Chars):
        return _print_chars(node)
    if isinstance(node, Concat):
        s = "".join(_print(i, 1) for i in node.items)
        return s if prec <= 1 or len(node.items) == 1 else f"(?:{s})"
    if isinstance(node, Alt):
        if not node.items:
            return "[^\\s\\S]"
        s = "|".join(_print(i, 0) for i in node.items)
        return s if prec == 0 else f"(?:{s})"
    if isinstance(node, Repeat):
        inner = _print(node.item, 2)
        if isinstance(node.item, (Concat, Alt, Repeat, Members)) and not inner.startswith("(?:"):
            inner = f"(?:{inner})"
        lo, hi = node.min, node.max
        if (lo, hi) == (0, None):
            q = "*"
        elif (lo, hi) == (1, None):
            q = "+"
        elif (lo, hi) == (0, 1):
            q = "?"
        elif hi is None:
            q = f"{{{lo},}}"
        elif lo == hi:
            q = f"{{{lo}}}"
        else:
            q = f"{{{lo},{hi}}}"
        return inner + q
    if isinstance(node, Members):
        return _print(members_as_regex(node), prec)
    raise NotRegularSyntax(f"{type(node).__name__} has no plain regex syntax")


def members_as_regex(node: Members) -> Node:
    """The (quadratic-size) plain-regex form of ``Members``."""
    if node.min_count or node.max_count is not None:
        raise NotRegularSyntax("Members with item counts have no plain regex syntax here")
    items, sep, rest = node.items, node.sep, node.rest
    n = len(items)
    tail = star(cat(sep, rest)) if rest is not None else EMPTY

    after: list[Node] = [EMPTY] * (n + 1)  # after[i]: items i.. once something was emitted
    after[n] = tail
    for i in range(n - 1, -1, -1):
        it, required = items[i]
        step = cat(sep, it)
        after[i] = cat(step if required else opt(step), after[i + 1])
    first: Node = alt(cat(rest, tail), EMPTY) if rest is not None else EMPTY
    for i in range(n - 1, -1, -1):
        it, required = items[i]
        emit = cat(it, after[i + 1])
        first = emit if required else alt(emit, first)
    return first
