"""Regex syntax → ``regex_ast`` tree.

Two flavors:

- ``"python"``: what ``re.fullmatch(pattern, s, re.ASCII)`` accepts — ``\\d \\w \\s`` are ASCII,
  ``.`` is any character but ``\\n``.
- ``"ecma"``: ECMA-262 as JSON Schema ``pattern`` uses it — ``\\d \\w`` ASCII, ``\\s`` the
  ECMA white-space set, ``.`` excludes the four line terminators.

Supported: literals, escapes (``\\n \\t \\xhh \\uhhhh \\U…``, escaped metacharacters), classes
(negated, ranges, unicode, class escapes inside), ``.``, groups (capturing, ``(?:``, named),
alternation, ``? * + {m} {m,} {m,n}`` (lazy forms mean the same language). ``^``/``$`` only at
the start/end of a top-level alternative. Anything else (backreferences, lookaround, inline
flags, word boundaries, possessive quantifiers, ``\\p{…}``) raises ``GrammarError``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.regex_ast import Node

DIGIT = ((0x30, 0x39),)
WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
SPACE_PY = ((0x09, 0x0D), (0x20, 0x20))
SPACE_ECMA = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
              (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
              (0xFEFF, 0xFEFF))
MAX_REPEAT = 10_000


@dataclass(frozen=True)
class Alternative:
    """One top-level alternative and whether it was anchored with ``^`` / ``$``."""

    node: Node
    anchored_start: bool
    anchored_end: bool


class _Anchor(Node):
    __slots__ = ("kind",)

    def __init__(self, kind: str):
        self.kind = kind


def parse_regex(pattern: str, flavor: str = "python") -> Node:
    """Full-match semantics: leading ``^`` / trailing ``$`` are accepted and mean nothing."""
    return ra.alt(*(a.node for a in parse_alternatives(pattern, flavor)))


def parse_alternatives(pattern: str, flavor: str = "python") -> list[Alternative]:
    return _Parser(pattern, flavor).parse_top()


class _Parser:
    def __init__(self, pattern: str, flavor: str):
        if flavor not in ("python", "ecma"):
            raise ValueError(f"unknown regex flavor {flavor!r}")
        self.p = pattern
        self.i = 0
        self.flavor = flavor
        self.space = SPACE_PY if flavor == "python" else SPACE_ECMA
        newline = ((0x0A, 0x0A),) if flavor == "python" else (
            (0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
        self.dot = ra.complement_ranges(newline)

    # ------------------------------------------------------------ helpers
    def error(self, what: str) -> GrammarError:
        return GrammarError(f"regex {self.p!r}: {what} at position {self.i}")

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.p[j] if j < len(self.p) else None

    def take(self) -> str:
        if self.i >= len(self.p):
            raise self.error("unexpected end of pattern")
        c = self.p[self.i]
        self.i += 1
        return c

    # ------------------------------------------------------------ structure
    def parse_top(self) -> list[Alternative]:
        alts = [self.top_alternative()]
        while self.peek() == "|":
            self.i += 1
            alts.append(self.top_alternative())
        if self.i != len(self.p):
            raise self.error("unbalanced ')'")
        return alts

    def top_alternative(self) -> Alternative:
        items = self.concat_items(top=True)
        start = bool(items) and isinstance(items[0], _Anchor) and items[0].kind == "^"
        if start:
            items = items[1:]
        end = bool(items) and isinstance(items[-1], _Anchor) and items[-1].kind == "$"
        if end:
            items = items[:-1]
        if any(isinstance(x, _Anchor) for x in items):
            raise GrammarError(f"regex {self.p!r}: anchors '^'/'$' are only supported at the "
                               "start/end of the pattern")
        return Alternative(ra.cat(*items), start, end)

    def alternation(self) -> Node:
        alts = [ra.cat(*self.concat_items(top=False))]
        while self.peek() == "|":
            self.i += 1
            alts.append(ra.cat(*self.concat_items(top=False)))
        return ra.alt(*alts) if len(alts) > 1 else alts[0]

    def concat_items(self, top: bool) -> list[Node]:
        items: list[Node] = []
        while True:
            c = self.peek()
            if c is None or c == "|" or c == ")":
                return items
            if c in "^$":
                self.i += 1
                if not top:
                    raise GrammarError(f"regex {self.p!r}: anchors '^'/'$' are only supported "
                                       "at the start/end of the pattern")
                items.append(_Anchor(c))
                continue
            atom = self.atom()
            if atom is None:
                continue
            items.append(self.quantified(atom))

    def quantified(self, atom: Node) -> Node:
        q = self.quantifier()
        if q is None:
            return atom
        lo, hi = q
        if self.peek() == "?":
            self.i += 1  # lazy: same language
        elif self.peek() == "+":
            raise self.error("possessive quantifiers are not supported")
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._brace_quantifier(False)):
            raise self.error("multiple repeat")
        return ra.rep(atom, lo, hi)

    def quantifier(self) -> tuple[int, int | None] | None:
        c = self.peek()
        if c == "*":
            self.i += 1
            return 0, None
        if c == "+":
            self.i += 1
            return 1, None
        if c == "?":
            self.i += 1
            return 0, 1
        if c == "{":
            return self._brace_quantifier(True)
        return None

    def _brace_quantifier(self, consume: bool) -> tuple[int, int | None] | None:
        j = self.i + 1
        k = self.p.find("}", j)
        if k < 0:
            return None
        body = self.p[j:k]
        lo_s, comma, hi_s = body.partition(",")
        if not (lo_s.isdigit() or (lo_s == "" and comma and self.flavor == "python")):
            return None
        if hi_s and not hi_s.isdigit():
            return None
        if not lo_s.isascii() or not hi_s.isascii():
            return None
        lo = int(lo_s) if lo_s else 0
        hi = (int(hi_s) if hi_s else None) if comma else lo
        if hi is not None and hi < lo:
            raise self.error("min repeat greater than max repeat")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.error(f"repeat count above {MAX_REPEAT}")
        if consume:
            self.i = k + 1
        return lo, hi

    def atom(self) -> Node | None:
        c = self.take()
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            return ra.Chars(self.dot)
        if c == "\\":
            return self.escape()
        if c in "*+?":
            raise self.error("nothing to repeat")
        if c == "{" and self.flavor == "python":
            self.i -= 1
            if self._brace_quantifier(False) is not None:
                raise self.error("nothing to repeat")
            self.i += 1
        return ra.lit(c)

    def group(self) -> Node | None:
        if self.peek() == "?":
            self.i += 1
            c = self.take()
            if c == ":":
                pass
            elif c == "P" and self.peek() == "<":
                self.i += 1
                self._group_name()
            elif c == "<" and self.peek() not in ("=", "!"):
                self._group_name()
            elif c == "#":
                k = self.p.find(")", self.i)
                if k < 0:
                    raise self.error("unterminated comment")
                self.i = k + 1
                return None
            elif c in "=!" or (c == "<" and self.peek() in ("=", "!")):
                raise self.error("lookaround assertions are not supported")
            elif c == "P" and self.peek() == "=":
                raise self.error("backreferences are not supported")
            elif c == ">":
                raise self.error("atomic groups are not supported")
            else:
                raise self.error("inline flags and conditionals are not supported")
        node = self.alternation()
        if self.peek() != ")":
            raise self.error("missing ')'")
        self.i += 1
        return node

    def _group_name(self) -> None:
        k = self.p.find(">", self.i)
        if k < 0:
            raise self.error("unterminated group name")
        self.i = k + 1

    # ------------------------------------------------------------ escapes and classes
    def escape(self) -> Node:
        ranges = self.escape_ranges(in_class=False)
        return ra.chars(ranges)

    def escape_ranges(self, in_class: bool) -> ra.Ranges:
        c = self.take()
        sets = {"d": DIGIT, "w": WORD, "s": self.space}
        if c in sets:
            return ra.normalize_ranges(sets[c])
        if c.lower() in sets:
            return ra.complement_ranges(sets[c.lower()])
        simple = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}
        if self.flavor == "python":
            simple["a"] = 0x07
        if c in simple and not (c == "0" and (self.peek() or "").isdigit()):
            return ((simple[c], simple[c]),)
        if c == "b" and in_class:
            return ((0x08, 0x08),)
        if c in "bBAZzG":
            raise self.error(f"'\\{c}' (an anchor) is not supported")
        if c == "x":
            return self._hex(2)
        if c == "u":
            if self.peek() == "{":
                raise self.error("'\\u{...}' escapes are not supported")
            return self._hex(4)
        if c == "U" and self.flavor == "python":
            return self._hex(8)
        if c == "N" and self.flavor == "python" and self.peek() == "{":
            k = self.p.find("}", self.i)
            try:
                cp = ord(unicodedata.lookup(self.p[self.i + 1:k]))
            except KeyError as e:
                raise self.error("unknown character name") from e
            self.i = k + 1
            return ((cp, cp),)
        if c == "c" and self.flavor == "ecma" and (self.peek() or "").isascii() and (
                self.peek() or "").isalpha():
            cp = ord(self.take()) % 32
            return ((cp, cp),)
        if c in "pP":
            raise self.error("unicode property escapes are not supported")
        if c.isdigit():
            raise self.error("backreferences and octal escapes are not supported")
        if c.isascii() and c.isalnum():
            raise self.error(f"bad escape '\\{c}'")
        return ((ord(c), ord(c)),)

    def _hex(self, n: int) -> ra.Ranges:
        h = self.p[self.i:self.i + n]
        if len(h) != n or any(ch not in "0123456789abcdefABCDEF" for ch in h):
            raise self.error(f"bad escape: expected {n} hex digits")
        self.i += n
        cp = int(h, 16)
        if cp > 0x10FFFF:
            raise self.error("code point out of range")
        return ((cp, cp),)

    def char_class(self) -> Node:
        negate = False
        if self.peek() == "^":
            negate = True
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("unterminated character set")
            if c == "]" and not (first and self.flavor == "python"):
                self.i += 1
                break
            first = False
            lo_set = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", None):
                self.i += 1
                hi_set = self.class_atom()
                if len(lo_set) != 1 or len(hi_set) != 1 or lo_set[0][0] != lo_set[0][1] \
                        or hi_set[0][0] != hi_set[0][1]:
                    raise self.error("bad character range")
                lo, hi = lo_set[0][0], hi_set[0][0]
                if lo > hi:
                    raise self.error("bad character range")
                ranges.append((lo, hi))
            else:
                ranges.extend(lo_set)
        r = ra.normalize_ranges(ranges)
        return ra.chars(ra.complement_ranges(r) if negate else r)

    def class_atom(self) -> ra.Ranges:
        c = self.take()
        if c == "\\":
            return self.escape_ranges(in_class=True)
        return ((ord(c), ord(c)),)
