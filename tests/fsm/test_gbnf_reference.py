"""A reference recognizer for GBNF grammars (plain Earley over code points, no lexer), a random
string generator, and the test grammars shared by the GBNF tests; with checks of the reference
itself on hand-picked strings.

The reference works on the ``radixrt.fsm.gbnf`` tree but shares nothing else with the code
under test (no lexemes, no llguidance), so it judges what the token masks allow.
"""

from __future__ import annotations

import random

import pytest

from radixrt.fsm.gbnf import Alt, Chars, Ref, Repeat, Seq, parse_gbnf

# ------------------------------------------------------------------ test grammars
PARENS = r"""
# balanced parentheses, any depth
root  ::= group+
group ::= "(" group* ")"
"""

ARITH = r"""
root   ::= expr
expr   ::= term (ws [-+] ws term)*
term   ::= factor (ws [*/] ws factor)*
factor ::= number | "-" factor | "(" ws expr ws ")"
number ::= [0-9]+ ("." [0-9]+)?
ws     ::= " "?
"""

# llama.cpp's grammars/json.gbnf, as users write it.
JSON = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"""

SQL = r"""
root      ::= "SELECT " columns " FROM " ident join? where? order? limit? ";"
columns   ::= "*" | column ("," " "? column)*
column    ::= ident ("." ident)? (" AS " ident)?
join      ::= " JOIN " ident " ON " ident "." ident " = " ident "." ident
where     ::= " WHERE " cond
cond      ::= term ((" AND " | " OR ") term)*
term      ::= ident ("." ident)? " "? op " "? value | "(" cond ")" | "NOT " term
op        ::= "=" | "<" | ">" | "<=" | ">=" | "!=" | "<>"
value     ::= number | "'" [^'\n]* "'" | ident
number    ::= "-"? [0-9]+ ("." [0-9]+)?
order     ::= " ORDER BY " ident (" ASC" | " DESC")?
limit     ::= " LIMIT " [0-9]+
ident     ::= [a-zA-Z_] [a-zA-Z0-9_]*
"""

# Where a greedy lexer would go wrong: the converter must keep these exact.
TRICKY = r"""
root  ::= item ("; " item)*
item  ::= word "s" | pair | ident " end" | digits digits | "é" [^\x00-\x7F]{1,3} "!"
word  ::= [a-z]+
pair  ::= ("a" | "ab") ("bc" | "c")
ident ::= [a-z] [a-z ]*
digits ::= [0-9]{1,2}
"""

# Keywords that identifiers can start with: lexemes only where what follows tells them apart.
KEYWORDS = r"""
root ::= stmt (";" stmt)*
stmt ::= "not" "(" stmt ")" | "if" cond "then " stmt | [a-z]+ "=" [0-9]+ | "end" | "iffy" [0-9]
cond ::= "(" [a-z]+ ")"
"""

GRAMMARS = {"parens": PARENS, "arith": ARITH, "json": JSON, "sql": SQL, "tricky": TRICKY,
            "keywords": KEYWORDS}


# ------------------------------------------------------------------ reference recognizer
class Earley:
    """Earley recognizer over code points for a GBNF tree. Productions are tuples of symbols:
    a str (nonterminal) or a ranges tuple (one character)."""

    START = "<start>"

    def __init__(self, text: str):
        g = parse_gbnf(text)
        self.prods: dict[str, list[tuple]] = {self.START: [(g.root,)]}
        self._n = 0
        for name, body in g.rules.items():
            self.prods[name] = self._alts(body)
        self.nullable = self._nullable()

    def _fresh(self, alts: list[tuple]) -> str:
        self._n += 1
        name = f"<{self._n}>"
        self.prods[name] = alts
        return name

    def _alts(self, node) -> list[tuple]:
        if isinstance(node, Alt):
            return [tuple(self._seq(i)) for i in node.items]
        return [tuple(self._seq(node))]

    def _seq(self, node) -> list:
        if isinstance(node, Seq):
            return [s for i in node.items for s in self._seq(i)]
        if isinstance(node, Chars):
            return [node.ranges]
        if isinstance(node, Ref):
            return [node.name]
        if isinstance(node, Alt):
            return [self._fresh(self._alts(node))]
        item = self._fresh(self._alts(node.item))
        out = [item] * node.min
        if node.max is None:
            star = self._fresh([()])
            self.prods[star].append((item, star))
            out.append(star)
        else:
            for _ in range(node.max - node.min):
                out = out + [self._fresh([(), (item,)])]
        return out

    def _nullable(self) -> set[str]:
        out: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, alts in self.prods.items():
                if name not in out and any(all(isinstance(s, str) and s in out for s in a) for a in alts):
                    out.add(name)
                    changed = True
        return out

    def _closure(self, items: set, chart: list[set], pos: int) -> set:
        todo = list(items)
        while todo:
            name, alt, dot, origin = todo.pop()
            rhs = self.prods[name][alt]
            if dot < len(rhs):
                sym = rhs[dot]
                if isinstance(sym, str):
                    for k in range(len(self.prods[sym])):
                        new = (sym, k, 0, pos)
                        if new not in items:
                            items.add(new)
                            todo.append(new)
                    if sym in self.nullable:
                        new = (name, alt, dot + 1, origin)
                        if new not in items:
                            items.add(new)
                            todo.append(new)
            else:
                src = items if origin == pos else chart[origin]
                for pname, palt, pdot, porigin in list(src):
                    prhs = self.prods[pname][palt]
                    if pdot < len(prhs) and prhs[pdot] == name:
                        new = (pname, palt, pdot + 1, porigin)
                        if new not in items:
                            items.add(new)
                            todo.append(new)
        return items

    def start(self) -> list[set]:
        return [self._closure({(self.START, 0, 0, 0)}, [], 0)]

    def step(self, chart: list[set], ch: str) -> bool:
        """Consume one character (appends a set to ``chart``); False if it is impossible."""
        c = ord(ch)
        pos = len(chart)
        scanned = set()
        for name, alt, dot, origin in chart[-1]:
            rhs = self.prods[name][alt]
            if dot < len(rhs) and not isinstance(rhs[dot], str):
                if any(lo <= c <= hi for lo, hi in rhs[dot]):
                    scanned.add((name, alt, dot + 1, origin))
        chart.append(self._closure(scanned, chart, pos))
        return bool(scanned)

    def feed(self, chart: list[set], text: str) -> bool:
        return all(self.step(chart, ch) for ch in text)

    def complete(self, chart: list[set]) -> bool:
        return (self.START, 0, 1, 0) in chart[-1]

    def viable(self, text: str) -> bool:
        """Some continuation completes ``text`` (every rule of a parsed grammar is productive)."""
        return self.feed(self.start(), text)

    def accepts(self, text: str) -> bool:
        chart = self.start()
        return self.feed(chart, text) and self.complete(chart)


# ------------------------------------------------------------------ random strings
_EXTRA_CHARS = "éü€中😀"


class Generator:
    """Random strings of a GBNF grammar (bounded recursion)."""

    def __init__(self, text: str, seed: int = 0):
        self.g = parse_gbnf(text)
        self.rng = random.Random(seed)
        self.height = self._heights()

    def _heights(self) -> dict[str, int]:
        inf = 1 << 30
        h = dict.fromkeys(self.g.rules, inf)
        changed = True
        while changed:
            changed = False
            for name, body in self.g.rules.items():
                v = self._node_height(body, h) + 1
                if v < h[name]:
                    h[name] = v
                    changed = True
        return h

    def _node_height(self, node, h) -> int:
        if isinstance(node, Chars):
            return 0
        if isinstance(node, Ref):
            return h[node.name]
        if isinstance(node, Seq):
            return max((self._node_height(i, h) for i in node.items), default=0)
        if isinstance(node, Alt):
            return min(self._node_height(i, h) for i in node.items)
        return 0 if node.min == 0 else self._node_height(node.item, h)

    def _char(self, ranges) -> str:
        r = self.rng
        if r.random() < 0.15:
            pick = [c for c in _EXTRA_CHARS if any(lo <= ord(c) <= hi for lo, hi in ranges)]
            if pick:
                return r.choice(pick)
        printable = [(max(lo, 0x20), min(hi, 0x7E)) for lo, hi in ranges if lo <= 0x7E and hi >= 0x20]
        lo, hi = r.choice(printable or list(ranges))
        return chr(r.randint(lo, hi))

    def gen(self, node=None, depth: int = 0, budget: int = 12) -> str:
        r = self.rng
        if node is None:
            node = self.g.rules[self.g.root]
        deep = depth > budget
        if isinstance(node, Chars):
            return self._char(node.ranges)
        if isinstance(node, Ref):
            return self.gen(self.g.rules[node.name], depth + 1, budget)
        if isinstance(node, Seq):
            return "".join(self.gen(i, depth, budget) for i in node.items)
        if isinstance(node, Alt):
            if deep:
                best = min(self._node_height(i, self.height) for i in node.items)
                choices = [i for i in node.items if self._node_height(i, self.height) == best]
            else:
                choices = list(node.items)
            return self.gen(r.choice(choices), depth, budget)
        assert isinstance(node, Repeat)
        hi = node.min if deep else (node.max if node.max is not None else node.min + 3)
        n = r.randint(node.min, min(hi, node.min + 3))
        return "".join(self.gen(node.item, depth + 1, budget) for _ in range(n))


def mutate(text: str, rng: random.Random) -> str:
    alphabet = "()[]{}\"'\\,.;:+-*/ =<>!aAzZ09_\né"
    i = rng.randrange(len(text) + 1)
    op = rng.randrange(3)
    if op == 0 and text:
        i = min(i, len(text) - 1)
        return text[:i] + text[i + 1:]
    if op == 1:
        return text[:i] + rng.choice(alphabet) + text[i:]
    if text:
        i = min(i, len(text) - 1)
        return text[:i] + rng.choice(alphabet) + text[i + 1:]
    return rng.choice(alphabet)


# ------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("grammar, text, ok", [
    (PARENS, "(()(()))", True),
    (PARENS, "(" * 50 + ")" * 50, True),
    (PARENS, "(()", False),
    (PARENS, "", False),
    (ARITH, "1 + 2*(3 - -4.5)", True),
    (ARITH, "1 +", False),
    (JSON, '{"a": [1, -2.5e3, true, null, {"b": "x\\n\\u00e9"}]}', True),
    (JSON, '{"a": [1,]}', False),
    (JSON, '{"a": 01}', False),
    (SQL, "SELECT a, b.c AS d FROM t WHERE x >= 3 AND (y = 'q' OR NOT z <> w) LIMIT 5;", True),
    (SQL, "SELECT FROM t;", False),
    (TRICKY, "cats; abc; abd end; 123; é€!", True),
    (TRICKY, "cat", False),
    (KEYWORDS, "not(if(x)then end);iffy7;endx=1;nota=2", True),
    (KEYWORDS, "not(end", False),
])
def test_reference_recognizer(grammar, text, ok):
    assert Earley(grammar).accepts(text) is ok


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_generated_strings_are_in_the_language(name):
    ref = Earley(GRAMMARS[name])
    gen = Generator(GRAMMARS[name], seed=1)
    for _ in range(20):
        s = gen.gen()
        assert ref.accepts(s), s
