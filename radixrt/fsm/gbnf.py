"""GBNF (llama.cpp's grammar format) → a small grammar tree, with errors that name line and column.

The dialect is the one llama.cpp users write::

    # comments run to the end of the line
    root   ::= expr                      # the start rule is ``root``
    expr   ::= term (("+" | "-") term)*
    term   ::= [0-9]+ | "(" expr ")"     # recursion is fine (context-free)

- rules ``name ::= body``; names are letters, digits, ``-`` and ``_``; a rule ends at the end
  of its line unless a bracket is open, the line ends in ``|``, or the next line starts with
  ``|`` (those continue the rule);
- alternation ``|``, grouping ``( )``, repetition ``* + ?`` and ``{m}`` ``{m,}`` ``{m,n}``
  ``{,n}``;
- string literals ``"..."`` and character classes ``[a-z_]``, ``[^"\\\\]`` with escapes
  ``\\n \\r \\t \\\\ \\" \\[ \\] \\- \\^ \\xHH \\uHHHH \\UHHHHHHHH``; ``.`` is any character.

Characters are Unicode code points (the output is UTF-8), except the surrogates (UTF-8 cannot
encode them) and the unassigned planes 4-11 (U+40000-U+BFFFF, which llguidance's UTF-8 handling
does not match): classes and ``.`` leave those out, and an escape naming one is an error. The
tree (``Grammar``) keeps only rules reachable from ``root``; every error is a ``GbnfError`` (a
``GrammarError``) whose text starts with ``line L, column C:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixrt.fsm.errors import GrammarError

MAX_CODE_POINT = 0x10FFFF
# Code points left out of every class (see the module docstring).
EXCLUDED = ((0xD800, 0xDFFF), (0x40000, 0xBFFFF))
ALL_CHARS: tuple[tuple[int, int], ...] = ((0, 0xD7FF), (0xE000, 0x3FFFF), (0xC0000, MAX_CODE_POINT))
MAX_GRAMMAR_CHARS = 1 << 20
MAX_REPEAT = 10_000  # the largest m or n in x{m,n}
MAX_NESTING = 200  # brackets inside brackets


class GbnfError(GrammarError):
    def __init__(self, message: str, line: int, column: int):
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


# ------------------------------------------------------------------ tree
@dataclass(frozen=True)
class Chars:
    """One character from a set: sorted, disjoint, non-adjacent inclusive code point ranges."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Ref:
    name: str
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Seq:
    items: tuple  # of nodes; empty = the empty string


@dataclass(frozen=True)
class Alt:
    items: tuple  # of nodes, at least two


@dataclass(frozen=True)
class Repeat:
    item: object
    min: int
    max: int | None  # None: unbounded


EMPTY = Seq(())


@dataclass
class Grammar:
    rules: dict[str, object]  # name -> node, reachable from root only, root first
    lines: dict[str, int] = field(default_factory=dict)  # name -> line of its definition
    root: str = "root"


def literal(text: str) -> Seq:
    return Seq(tuple(Chars(((ord(c), ord(c)),)) for c in text))


def normalize_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Sort and merge ranges, and drop the ``EXCLUDED`` code points."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        for a, b in _cut_excluded(lo, hi):
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return tuple((a, b) for a, b in out)


def _cut_excluded(lo: int, hi: int) -> list[tuple[int, int]]:
    pieces = [(lo, hi)]
    for x_lo, x_hi in EXCLUDED:
        nxt = []
        for a, b in pieces:
            if b < x_lo or a > x_hi:
                nxt.append((a, b))
                continue
            if a < x_lo:
                nxt.append((a, x_lo - 1))
            if b > x_hi:
                nxt.append((x_hi + 1, b))
        pieces = nxt
    return pieces


def complement(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return normalize_ranges(out)


# ------------------------------------------------------------------ parser
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]",
                   "-": "-", "^": "^", "/": "/", "'": "'", "0": "\0"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.opened: list[int] = []  # positions of the '(' still open

    # -------------------------------------------------------- positions and errors
    def where(self, pos: int | None = None) -> tuple[int, int]:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        return line, pos - (self.text.rfind("\n", 0, pos) + 1) + 1

    def error(self, message: str, pos: int | None = None) -> GbnfError:
        return GbnfError(message, *self.where(pos))

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def describe_here(self) -> str:
        c = self.peek()
        if not c:
            return "the end of the grammar"
        if c == "\n":
            return "the end of the line"
        return repr(c)

    # -------------------------------------------------------- blanks
    def skip_blanks(self, newlines: bool) -> None:
        """Skip spaces, tabs and comments, and newlines too when ``newlines``."""
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end
            elif c == "\r" and t[self.pos + 1:self.pos + 2] == "\n":
                self.pos += 1
            else:
                break

    def at_continuation(self) -> bool:
        """At a line break followed (after blank lines and comments) by ``|``: the rule goes
        on with another alternative."""
        save = self.pos
        self.skip_blanks(newlines=True)
        if self.peek() == "|":
            return True
        self.pos = save
        return False

    # -------------------------------------------------------- grammar
    def parse(self) -> tuple[dict[str, object], dict[str, int], list[Ref]]:
        rules: dict[str, object] = {}
        lines: dict[str, int] = {}
        self.refs: list[Ref] = []
        self.skip_blanks(newlines=True)
        if self.pos >= len(self.text):
            raise self.error("the grammar is empty (it needs at least a 'root ::= ...' rule)")
        while self.pos < len(self.text):
            start = self.pos
            if not _is_name_char(self.peek()):
                raise self.error(f"expected a rule name, found {self.describe_here()} (a rule goes on "
                                 "to the next line only inside brackets or after '|')")
            name = self.name("a rule name")
            self.skip_blanks(newlines=False)
            if self.peek(3) != "::=":
                raise self.error(f"expected '::=' after the rule name {name!r}, found {self.describe_here()}")
            self.pos += 3
            self.skip_blanks(newlines=True)
            if name in rules:
                raise self.error(f"rule {name!r} is defined twice (first on line {lines[name]})", start)
            lines[name] = self.where(start)[0]
            rules[name] = self.alternatives(nested=False)
            self.skip_blanks(newlines=False)
            if self.pos < len(self.text) and self.peek() not in "\r\n":
                if self.peek() == ")":
                    raise self.error("unbalanced ')'")
                raise self.error(f"unexpected {self.describe_here()} (a rule ends at the end of its line)")
            self.skip_blanks(newlines=True)
        return rules, lines, self.refs

    def name(self, what: str) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise self.error(f"expected {what}, found {self.describe_here()}")
        return self.text[start:self.pos]

    def alternatives(self, nested: bool):
        items = [self.sequence(nested)]
        while True:
            self.skip_blanks(newlines=nested)
            if self.peek() != "|" and not (not nested and self.peek() in "\r\n" and self.at_continuation()):
                break
            self.pos += 1
            self.skip_blanks(newlines=True)
            items.append(self.sequence(nested))
        return items[0] if len(items) == 1 else Alt(tuple(items))

    def sequence(self, nested: bool):
        items: list = []
        while True:
            self.skip_blanks(newlines=nested)
            c = self.peek()
            if not c or c in "|)" or c in "\r\n":
                break
            start = self.pos
            if c == '"':
                item = self.string()
            elif c == "[":
                item = self.char_class()
            elif c == ".":
                self.pos += 1
                item = Chars(ALL_CHARS)
            elif c == "(":
                item = self.group()
            elif _is_name_char(c):
                line, col = self.where()
                name = self.name("a rule name")
                self.skip_blanks(newlines=False)
                if self.peek(3) == "::=":
                    if self.opened:
                        line, col = self.where(self.opened[-1])
                        raise self.error(f"a new rule {name!r} starts inside the '(' opened at "
                                         f"line {line}, column {col} (missing ')'?)", start)
                    raise self.error(f"a new rule {name!r} starts before the previous one ended "
                                     "(a stray line break?)", start)
                item = Ref(name, line, col)
                self.refs.append(item)
            elif c in "*+?{":
                raise self.error(f"repetition {c!r} has nothing to repeat")
            elif c == "<":
                raise self.error("token references (<...>) are not supported; use string literals")
            else:
                raise self.error(f"unexpected {self.describe_here()}")
            items.append(self.repetitions(item))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def group(self):
        open_at = self.pos
        self.opened.append(open_at)
        if len(self.opened) > MAX_NESTING:
            raise self.error(f"brackets nested more than {MAX_NESTING} deep")
        self.pos += 1
        self.skip_blanks(newlines=True)
        node = self.alternatives(nested=True)
        self.skip_blanks(newlines=True)
        if self.peek() != ")":
            raise self.error(f"expected ')' to close the '(' opened at line {self.where(open_at)[0]}, "
                             f"column {self.where(open_at)[1]}, found {self.describe_here()}")
        self.pos += 1
        self.opened.pop()
        return node

    def repetitions(self, item):
        while True:
            c = self.peek()
            if c == "*":
                item = Repeat(item, 0, None)
            elif c == "+":
                item = Repeat(item, 1, None)
            elif c == "?":
                item = Repeat(item, 0, 1)
            elif c == "{":
                item = self.braces(item)
                continue
            else:
                return item
            self.pos += 1

    def braces(self, item):
        start = self.pos
        self.pos += 1
        self.skip_blanks(newlines=False)
        lo = self.integer() if self.peek().isdigit() else None
        self.skip_blanks(newlines=False)
        if self.peek() == "}":
            if lo is None:
                raise self.error("expected a number inside '{}'")
            hi = lo
        elif self.peek() == ",":
            self.pos += 1
            self.skip_blanks(newlines=False)
            hi = self.integer() if self.peek().isdigit() else None
            self.skip_blanks(newlines=False)
            if self.peek() != "}":
                raise self.error(f"expected '}}' to close the repetition, found {self.describe_here()}")
            lo = lo or 0
        else:
            raise self.error(f"expected ',' or '}}' in the repetition, found {self.describe_here()}")
        self.pos += 1
        if hi is not None and hi < lo:
            raise self.error(f"repetition {{{lo},{hi}}}: the maximum is below the minimum", start)
        if hi == 0:
            return EMPTY
        return Repeat(item, lo, hi)

    def integer(self) -> int:
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        value = int(self.text[start:self.pos])
        if value > MAX_REPEAT:
            raise self.error(f"repetition count {value} is above the limit of {MAX_REPEAT}", start)
        return value

    def char(self, closing: str) -> int:
        """One character of a literal or class (escapes resolved), as a code point."""
        t = self.text
        if self.pos >= len(t) or t[self.pos] in "\r\n":
            what = "string literal" if closing == '"' else "character class"
            raise self.error(f"unterminated {what} (missing {closing!r})")
        c = t[self.pos]
        if c != "\\":
            if any(lo <= ord(c) <= hi for lo, hi in EXCLUDED):
                raise self.error(f"character U+{ord(c):04X} is not supported (surrogates and the "
                                 "unassigned planes U+40000-U+BFFFF are left out)")
            self.pos += 1
            return ord(c)
        start = self.pos
        e = t[self.pos + 1:self.pos + 2]
        if e in _SIMPLE_ESCAPES:
            self.pos += 2
            return ord(_SIMPLE_ESCAPES[e])
        if e in _HEX_ESCAPES:
            n = _HEX_ESCAPES[e]
            digits = t[self.pos + 2:self.pos + 2 + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"escape \\{e} needs {n} hex digits", start)
            value = int(digits, 16)
            if value > MAX_CODE_POINT or any(lo <= value <= hi for lo, hi in EXCLUDED):
                raise self.error(f"escape \\{e}{digits} is not a supported character (surrogates "
                                 "and the unassigned planes U+40000-U+BFFFF are left out)", start)
            self.pos += 2 + n
            return value
        raise self.error(f"unknown escape '\\{e}'" if e else "escape at the end of the grammar", start)

    def string(self):
        self.pos += 1
        out = []
        while self.peek() != '"':
            out.append(self.char('"'))
        self.pos += 1
        return Seq(tuple(Chars(((c, c),)) for c in out)) if len(out) != 1 else Chars(((out[0], out[0]),))

    def char_class(self):
        start = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges = []
        while self.peek() != "]":
            lo = self.char("]")
            if self.peek() == "-" and self.peek(2) != "-]" and self.peek(2)[1:] != "]":
                self.pos += 1
                hi = self.char("]")
                if hi < lo:
                    raise self.error(f"character range {chr(lo)!r}-{chr(hi)!r} is reversed", start)
            else:
                hi = lo
            ranges.append((lo, hi))
        self.pos += 1
        merged = normalize_ranges(ranges)
        if negated:
            merged = complement(merged)
        if not merged:
            raise self.error("character class matches no character", start)
        return Chars(merged)


# ------------------------------------------------------------------ checks
def _productive(rules: dict[str, object]) -> set[str]:
    """Rules that derive at least one finite string."""
    good: set[str] = set()

    def ok(node) -> bool:
        if isinstance(node, Chars):
            return True
        if isinstance(node, Ref):
            return node.name in good
        if isinstance(node, Seq):
            return all(ok(i) for i in node.items)
        if isinstance(node, Alt):
            return any(ok(i) for i in node.items)
        return node.min == 0 or ok(node.item)

    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if name not in good and ok(body):
                good.add(name)
                changed = True
    return good


def _refs_in(node, out: list[str]) -> list[str]:
    if isinstance(node, Ref):
        out.append(node.name)
    elif isinstance(node, (Seq, Alt)):
        for i in node.items:
            _refs_in(i, out)
    elif isinstance(node, Repeat):
        _refs_in(node.item, out)
    return out


def parse_gbnf(text: str, root: str = "root") -> Grammar:
    """Parse GBNF text; raises ``GbnfError`` (line and column) on any problem."""
    if not isinstance(text, str):
        raise GrammarError("ebnf must be a string")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"ebnf grammar is longer than {MAX_GRAMMAR_CHARS} characters")
    p = _Parser(text)
    rules, lines, refs = p.parse()
    for ref in refs:
        if ref.name not in rules:
            raise GbnfError(f"undefined rule {ref.name!r}", ref.line, ref.column)
    if root not in rules:
        raise GbnfError(f"no {root!r} rule (the grammar starts there)", *p.where(len(text)))
    reachable, todo = {root}, [root]
    while todo:
        for name in _refs_in(rules[todo.pop()], []):
            if name not in reachable:
                reachable.add(name)
                todo.append(name)
    good = _productive(rules)

    def recursive(name: str) -> bool:  # can the rule reach itself? (the culprit to name)
        seen, todo = set(), _refs_in(rules[name], [])
        while todo:
            n = todo.pop()
            if n == name:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(_refs_in(rules[n], []))
        return False

    for name in sorted(reachable - good, key=lambda n: (not recursive(n), lines[n])):
        raise GbnfError(f"rule {name!r} can never finish: every alternative needs the rule "
                        "itself again (add a way out, e.g. an alternative without recursion)",
                        lines[name], 1)
    ordered = {root: rules[root]}
    ordered.update((n, rules[n]) for n in rules if n in reachable and n != root)
    return Grammar(ordered, {n: lines[n] for n in ordered}, root)
