"""A GBNF tree (``radixrt.fsm.gbnf``) → a Lark grammar for llguidance with the same language.

llguidance parses with Earley over *lexemes* (regular expressions matched by a lexer), and its
lexer is greedy: while the bytes so far can still grow into a longer match of some allowed
lexeme, it keeps going. A GBNF grammar has no lexer; it is context-free over characters. Turning
each terminal-only piece (``[a-z]+``, a whole ``string`` rule) into one lexeme makes masks
fast — a token inside a lexeme costs the lexer, not an Earley step per byte — but greedy
lexing can reject strings the grammar accepts: with ``root ::= word "s"`` and
``word ::= [a-z]+``, the lexeme ``[a-z]+`` swallows the ``s`` of ``cats``. Emitting every
character as its own lexeme is always exact (one code point's UTF-8 bytes are never a proper
prefix of another's) but costs an Earley step per byte of every token tried (measured on a
JSON grammar: 1.5 ms per token inside strings instead of 10 µs).

So a terminal-only subexpression ``E`` becomes one lexeme only where greedy lexing provably
cannot matter, checked on a regular over-approximation of the grammar (its Glushkov position
automaton: one position per character class occurrence, terminal-only rules expanded at each
use, other rules shared by all uses — a superset of the real successor relation, so every
check below errs on the side of keeping characters separate):

1. *Ends* — at every point where a match of ``E`` is complete, the characters that would extend
   that same match and the characters that may follow ``E`` are disjoint. Then ending early
   never helps, and the greedy lexer ends exactly where every valid parse must.
2. *Starts* — wherever ``E`` may start together with another lexeme or character ``F`` (the
   relation "may be next at the same input point" is a fixpoint over pairs of positions that
   can read the same character), there is no common prefix on which one of them is complete
   while the other can go on with a character that may follow the first (a lexeme with the
   very same regex is the same lexeme). Then greedy extension never drops a live parse.

Everything else is emitted character by character, so the result is exact: a token is allowed
iff some continuation completes a string of the GBNF grammar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixrt.fsm.errors import GrammarError
from radixrt.fsm.gbnf import Alt, Chars, Grammar, Ref, Seq

# A terminal-only rule is expanded at each use while it has at most this many positions.
MAX_INLINE_POSITIONS = 4096
MAX_POSITIONS = 200_000
# The lexeme analysis is an optimization (one character per lexeme is always exact); these
# bound its cost on huge grammars (a 2,000-word alternation: ~11k positions).
ANALYSIS_MAX_POSITIONS = 20_000
MAX_LEXEME_DFA_STATES = 8192  # per lexeme
MAX_PAIR_STATES = 200_000  # all the start checks of one grammar together
MAX_INLINE_DEPTH = 64  # terminal-only rules inside terminal-only rules


# ------------------------------------------------------------------ IR with positions
@dataclass(eq=False)
class P:  # one character class occurrence
    id: int
    ranges: tuple[tuple[int, int], ...]


@dataclass(eq=False)
class S:
    items: list


@dataclass(eq=False)
class A:
    items: list


@dataclass(eq=False)
class R:
    item: object
    min: int
    max: int | None


@dataclass(eq=False)
class N:  # a reference to a shared (non-expanded) rule
    name: str


@dataclass
class _Info:
    nullable: bool
    first: int  # bitset of positions
    last: int
    terminal: bool  # no N inside


@dataclass
class _Auto:
    """A lexeme's automaton over its own positions (a state: the positions just read; -1: the
    start, nothing read)."""

    first: int
    last: int
    own: int
    local: dict[int, int]  # position -> the own positions that may follow it

    def nexts(self, state: int) -> int:
        if state == -1:
            return self.first
        out = 0
        for p in _bits(state):
            out |= self.local[p]
        return out


def _bits(x: int):
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


# ------------------------------------------------------------------ char sets
def _union(a, b):
    out = []
    for lo, hi in sorted(list(a) + list(b)):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _intersects(a, b) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][1] < b[j][0]:
            i += 1
        elif b[j][1] < a[i][0]:
            j += 1
        else:
            return True
    return False


def _class_regex(ranges) -> str:
    def ch(c: int) -> str:
        return chr(c) if chr(c).isascii() and chr(c).isalnum() else f"\\x{{{c:x}}}"

    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return ch(ranges[0][0]) if chr(ranges[0][0]).isascii() and chr(ranges[0][0]).isalnum() \
            else f"[{ch(ranges[0][0])}]"
    parts = [ch(lo) if lo == hi else f"{ch(lo)}-{ch(hi)}" for lo, hi in ranges]
    return "[" + "".join(parts) + "]"


def _quant(lo: int, hi: int | None) -> str:
    if (lo, hi) == (0, None):
        return "*"
    if (lo, hi) == (1, None):
        return "+"
    if (lo, hi) == (0, 1):
        return "?"
    if hi is None:
        return f"{{{lo},}}"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


# ------------------------------------------------------------------ the converter
@dataclass
class LarkGrammar:
    text: str  # Lark for llguidance
    num_positions: int
    num_lexemes: int  # multi-character lexemes chosen
    num_char_lexemes: int  # positions left one character at a time
    rule_names: dict[str, str] = field(default_factory=dict)  # GBNF name -> Lark name


class _Converter:
    def __init__(self, grammar: Grammar):
        self.g = grammar
        self.classes: list[tuple] = []
        self.inline = self._inlinable()
        self.bodies: dict[str, object] = {}
        for name, body in grammar.rules.items():
            if name == grammar.root or name not in self.inline:
                self.bodies[name] = self._ir(body)
        self.info: dict[int, _Info] = {}
        self.rule_info: dict[str, _Info] = {}
        self.next: list[int] = [0] * len(self.classes)
        self.pair_states = 0

    # -------------------------------------------------------- tree -> IR
    def _inlinable(self) -> set[str]:
        """Rules that are terminal-only (no recursion, only refs to such rules) and small."""
        rules = self.g.rules
        size: dict[str, int] = {}
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(name: str, depth: int) -> int | None:
            if state.get(name) == 1 or depth > MAX_INLINE_DEPTH:
                return None  # recursion, or too deep to expand
            if state.get(name) == 2:
                return size.get(name)
            state[name] = 1
            n = measure(rules[name], depth)
            state[name] = 2
            if n is not None:
                size[name] = n
            return n

        def measure(node, depth: int) -> int | None:
            if isinstance(node, Chars):
                return 1
            if isinstance(node, Ref):
                n = visit(node.name, depth + 1)
                return None if n is None or n > MAX_INLINE_POSITIONS else n
            if isinstance(node, (Seq, Alt)):
                total = 0
                for i in node.items:
                    n = measure(i, depth)
                    if n is None:
                        return None
                    total += n
                return total
            return measure(node.item, depth)

        for name in rules:
            visit(name, 0)
        return {n for n, s in size.items() if s <= MAX_INLINE_POSITIONS and n != self.g.root}

    def _ir(self, node):
        if isinstance(node, Chars):
            if len(self.classes) >= MAX_POSITIONS:
                raise GrammarError(f"ebnf grammar is too large (over {MAX_POSITIONS} character "
                                   "positions once its rules are expanded)")
            self.classes.append(node.ranges)
            return P(len(self.classes) - 1, node.ranges)
        if isinstance(node, Ref):
            if node.name in self.inline:
                return self._ir(self.g.rules[node.name])
            return N(node.name)
        if isinstance(node, Seq):
            return S([self._ir(i) for i in node.items])
        if isinstance(node, Alt):
            return A([self._ir(i) for i in node.items])
        return R(self._ir(node.item), node.min, node.max)

    # -------------------------------------------------------- nullable / first / last
    def _compute(self, node, memo: bool) -> _Info:
        if memo:
            hit = self.info.get(id(node))
            if hit is not None:
                return hit
        if isinstance(node, P):
            out = _Info(False, 1 << node.id, 1 << node.id, True)
        elif isinstance(node, N):
            ri = self.rule_info.get(node.name)
            out = _Info(False, 0, 0, False) if ri is None else _Info(ri.nullable, ri.first, ri.last, False)
        elif isinstance(node, S):
            nullable, first, last, terminal = True, 0, 0, True
            for item in node.items:
                i = self._compute(item, memo)
                terminal &= i.terminal
                if nullable:
                    first |= i.first
                last = i.last | (last if i.nullable else 0)
                nullable &= i.nullable
            out = _Info(nullable, first, last, terminal)
        elif isinstance(node, A):
            infos = [self._compute(i, memo) for i in node.items]
            first = last = 0
            for i in infos:
                first |= i.first
                last |= i.last
            out = _Info(any(i.nullable for i in infos), first, last, all(i.terminal for i in infos))
        else:
            i = self._compute(node.item, memo)
            out = _Info(i.nullable or node.min == 0, i.first, i.last, i.terminal)
        if memo:
            self.info[id(node)] = out
        return out

    def analyse(self) -> None:
        changed = True
        while changed:  # rule-level fixpoint (recursion)
            changed = False
            for name, body in self.bodies.items():
                i = self._compute(body, memo=False)
                old = self.rule_info.get(name)
                i = _Info(i.nullable, i.first, i.last, False)
                if old != i:
                    self.rule_info[name] = i
                    changed = True
        for body in self.bodies.values():
            self._compute(body, memo=True)
            self._link(body, self.next, self.info)
        self._coactive()

    def _link(self, node, nxt: list[int], info: dict[int, _Info]) -> None:
        """Add the successor edges inside ``node`` to ``nxt`` (per position, a bitset)."""
        if isinstance(node, S):
            tails = 0
            for item in node.items:
                i = info[id(item)]
                for p in _bits(tails):
                    nxt[p] |= i.first
                tails = i.last | (tails if i.nullable else 0)
                self._link(item, nxt, info)
        elif isinstance(node, A):
            for item in node.items:
                self._link(item, nxt, info)
        elif isinstance(node, R):
            i = info[id(node.item)]
            if node.max is None or node.max > 1:
                for p in _bits(i.last):
                    nxt[p] |= i.first
            self._link(node.item, nxt, info)

    def _coactive(self) -> None:
        """``co[p]``: positions that may be next at the same input point as ``p``."""
        n = len(self.classes)
        by_class: dict[tuple, int] = {}
        for p, c in enumerate(self.classes):
            by_class[c] = by_class.get(c, 0) | (1 << p)
        distinct = list(by_class)
        overlap_of = {}
        for c in distinct:
            m = 0
            for d in distinct:
                if _intersects(c, d):
                    m |= by_class[d]
            overlap_of[c] = m
        self.overlap = [overlap_of[c] for c in self.classes]
        co = [0] * n
        start = self.rule_info[self.g.root].first
        todo = []
        for p in _bits(start):
            co[p] = start
            todo.append(p)
        nxt = self.next
        while todo:
            p = todo.pop()
            u = 0
            for q in _bits(co[p] & self.overlap[p]):
                u |= nxt[q]
            for p2 in _bits(nxt[p]):
                if u & ~co[p2]:
                    co[p2] |= u
                    todo.append(p2)
        self.co = co

    # -------------------------------------------------------- lexeme checks
    def _positions(self, node) -> int:
        if isinstance(node, P):
            return 1 << node.id
        if isinstance(node, (S, A)):
            out = 0
            for i in node.items:
                out |= self._positions(i)
            return out
        if isinstance(node, R):
            return self._positions(node.item)
        return 0

    def _ends_ok(self, node) -> bool:
        """Check 1: wherever a match of ``node`` is complete, what extends it and what may
        follow it share no character (walking the subset automaton of its positions)."""
        local = [0] * len(self.classes)
        self._link(node, local, self.info)
        own = self._positions(node)
        info = self.info[id(node)]
        finals = info.last
        cls = self.classes
        seen: set[int] = set()
        todo = self._split(info.first)  # a state: the set of positions just read
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            if len(seen) > MAX_LEXEME_DFA_STATES:
                return False
            cont = 0
            for q in _bits(state):
                cont |= local[q]
            cont &= own
            if state & finals:
                ext = 0
                for p in _bits(state & finals):
                    ext |= self.next[p] & ~local[p]
                cont_chars = ()
                for q in _bits(cont):
                    cont_chars = _union(cont_chars, cls[q])
                for q in _bits(ext):
                    if _intersects(cls[q], cont_chars):
                        return False
            todo.extend(self._split(cont))
        return True

    def _split(self, positions: int) -> list[int]:
        """The sets of ``positions`` that one character can reach together (a character's
        targets are the positions whose class contains it)."""
        ps = list(_bits(positions))
        if not ps:
            return []
        cuts = set()
        for p in ps:
            for lo, hi in self.classes[p]:
                cuts.add(lo)
                cuts.add(hi + 1)
        cuts = sorted(cuts)
        out = set()
        for lo, hi in zip(cuts, cuts[1:]):
            target = 0
            for p in ps:
                for a, b in self.classes[p]:
                    if a <= lo and hi - 1 <= b:
                        target |= 1 << p
                        break
            if target:
                out.add(target)
        return list(out)

    def _long(self, node) -> bool:
        """Can a match be longer than one character? (Else a lexeme gains nothing.)"""
        if isinstance(node, R):
            return node.max is None or node.max > 1 or self._long(node.item)
        if isinstance(node, S):
            return sum(1 for i in node.items if self.info[id(i)].first) > 1 or any(
                self._long(i) for i in node.items)
        if isinstance(node, A):
            return any(self._long(i) for i in node.items)
        return False

    def _competitors(self, node) -> int:
        """Positions that may start at the same point as ``node`` and read one of its first
        characters."""
        out = 0
        for e in _bits(self.info[id(node)].first):
            out |= self.co[e] & self.overlap[e]
        return out

    # -------------------------------------------------------- choosing lexemes
    def _candidates(self, node, out: list) -> None:
        """Terminal-only nodes worth a lexeme, outermost first."""
        if isinstance(node, (P, N)):
            return
        if self.info[id(node)].terminal and self._long(node):
            out.append(node)
        for child in (node.items if isinstance(node, (S, A)) else [node.item]):
            self._candidates(child, out)

    def choose(self) -> set[int]:
        cands: list = []
        for body in self.bodies.values():
            self._candidates(body, cands)
        regex = {id(c): self._regex_nonempty(c) for c in cands}
        ends_ok = {id(c) for c in cands if regex[id(c)] is not None and self._ends_ok(c)}
        by_id = {id(c): c for c in cands}
        competitors: dict[int, int] = {}
        autos: dict[int, _Auto] = {}
        verdicts: dict[tuple[int, int], bool] = {}
        rejected: set[int] = set()
        while True:
            chosen: set[int] = set()

            def pick(node, chosen=chosen, rejected=rejected):
                if isinstance(node, (P, N)):
                    return
                if id(node) in ends_ok and id(node) not in rejected:
                    chosen.add(id(node))
                    return
                for child in (node.items if isinstance(node, (S, A)) else [node.item]):
                    pick(child)

            for body in self.bodies.values():
                pick(body)
            owner: dict[int, int] = {}  # entry position -> chosen lexeme
            inside = 0
            for k in chosen:
                for e in _bits(self.info[k].first):
                    owner[e] = k
                inside |= self._positions(by_id[k])
            bad = set()
            for k in chosen:
                if k not in competitors:
                    competitors[k] = self._competitors(by_id[k])
                for y in _bits(competitors[k] & ~self.info[k].first):
                    other = owner.get(y)
                    if other is not None and regex[other] == regex[k]:
                        continue  # the lexer sees one lexeme
                    if other is None and inside >> y & 1:
                        continue  # starts earlier: checked at that lexeme's own start
                    key = (k, other if other is not None else -1 - y)
                    if key not in verdicts:
                        a = autos.get(k) or autos.setdefault(k, self._auto(by_id[k]))
                        b = (autos.get(other) or autos.setdefault(other, self._auto(by_id[other]))
                             if other is not None else self._auto_char(y))
                        verdicts[key] = self._compatible(a, b)
                    if not verdicts[key]:
                        bad.add(k)
                        break
            if not bad:
                self.regex = regex
                self.chosen = chosen
                self.chosen_positions = sum(len(list(_bits(self._positions(by_id[k])))) for k in chosen)
                return chosen
            rejected |= bad

    def _auto(self, node) -> _Auto:
        local = [0] * len(self.classes)
        self._link(node, local, self.info)
        own = self._positions(node)
        return _Auto(self.info[id(node)].first, self.info[id(node)].last, own,
                     {p: local[p] & own for p in _bits(own)})

    def _auto_char(self, p: int) -> _Auto:
        return _Auto(1 << p, 1 << p, 1 << p, {p: 0})

    def _compatible(self, a: _Auto, b: _Auto) -> bool:
        """Check 2 for two lexemes that may start at the same point: on no common prefix is
        one complete while the other can go on with a character that may follow the first
        (the greedy lexer would then drop the complete one's parse)."""
        seen: set[tuple[int, int]] = set()
        todo = [(-1, -1)]
        while todo:
            sa, sb = todo.pop()
            for ta, tb in self._split_pair(a.nexts(sa), b.nexts(sb)):
                if (ta, tb) in seen:
                    continue
                seen.add((ta, tb))
                self.pair_states += 1
                if len(seen) > MAX_LEXEME_DFA_STATES or self.pair_states > MAX_PAIR_STATES:
                    return False
                if self._greedy_loses(a, ta, b, tb) or self._greedy_loses(b, tb, a, ta):
                    return False
                todo.append((ta, tb))
        return True

    def _greedy_loses(self, a: _Auto, ta: int, b: _Auto, tb: int) -> bool:
        """After a common prefix (``a`` in state ``ta``, ``b`` in ``tb``): is ``a`` complete
        while ``b`` can go on with a character that may also follow ``a``? (Only then can the
        lexer, by extending ``b``, drop a parse that ends ``a`` here.)"""
        done = ta & a.last
        go_on = b.nexts(tb)
        if not done or not go_on:
            return False
        follow = 0
        for p in _bits(done):
            follow |= self.next[p] & ~a.local[p]
        return _intersects(self._chars(follow), self._chars(go_on))

    def _chars(self, positions: int) -> tuple:
        out: tuple = ()
        for p in _bits(positions):
            out = _union(out, self.classes[p])
        return out

    def _split_pair(self, na: int, nb: int) -> list[tuple[int, int]]:
        """For each character both sides can read next: the positions it reaches on each."""
        if not na or not nb:
            return []
        ps = list(_bits(na | nb))
        cuts = set()
        for p in ps:
            for lo, hi in self.classes[p]:
                cuts.add(lo)
                cuts.add(hi + 1)
        cuts = sorted(cuts)
        out = set()
        for lo, hi in zip(cuts, cuts[1:]):
            ta = tb = 0
            for p in ps:
                if any(a <= lo and hi - 1 <= b for a, b in self.classes[p]):
                    if na >> p & 1:
                        ta |= 1 << p
                    if nb >> p & 1:
                        tb |= 1 << p
            if ta and tb:
                out.add((ta, tb))
        return list(out)

    # -------------------------------------------------------- regex text
    def _regex(self, node) -> str | None:
        """Regex of a terminal-only node (None: the empty language; "" the empty string)."""
        if isinstance(node, P):
            return _class_regex(node.ranges)
        if isinstance(node, S):
            parts = []
            for item in node.items:
                r = self._regex(item)
                if r is None:
                    return None
                parts.append(r)
            return "".join(parts)
        if isinstance(node, A):
            alts = [r for r in (self._regex(i) for i in node.items) if r is not None]
            if not alts:
                return None
            return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        r = self._regex(node.item)
        if r is None:
            return "" if node.min == 0 else None
        if r == "":
            return ""
        return f"(?:{r}){_quant(node.min, node.max)}"

    def _regex_nonempty(self, node) -> str | None:
        """Regex of the node's language without the empty string (None if nothing is left)."""
        if not self.info[id(node)].nullable:
            return self._regex(node)
        if isinstance(node, P):
            return _class_regex(node.ranges)
        if isinstance(node, S):
            alts = []
            items = node.items
            for i, item in enumerate(items):
                head = self._regex_nonempty(item)
                rest = [self._regex(x) for x in items[i + 1:]]
                if head is None or any(r is None for r in rest):
                    continue
                alts.append(head + "".join(rest))
            if not alts:
                return None
            return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if isinstance(node, A):
            alts = [r for r in (self._regex_nonempty(i) for i in node.items) if r]
            if not alts:
                return None
            return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        head = self._regex_nonempty(node.item)
        if head is None:
            return None
        if not self.info[id(node.item)].nullable:
            return f"(?:{head}){_quant(max(node.min, 1), node.max)}"
        body = self._regex(node.item)
        hi = None if node.max is None else node.max - 1
        return head if hi == 0 else f"{head}(?:{body}){_quant(0, hi)}"

    # -------------------------------------------------------- Lark text
    def lark(self) -> LarkGrammar:
        names = {}
        for i, name in enumerate(self.bodies):
            clean = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.lower())
            names[name] = f"r{i}_{clean}"[:64]
        self.names = names
        lines = ["%llguidance {}", "", f"start: {names[self.g.root]}"]
        for name, body in self.bodies.items():
            text = self._emit(body)
            lines.append(f"{names[name]}: {text or ''}".rstrip())
        return LarkGrammar("\n".join(lines) + "\n", len(self.classes), len(self.chosen),
                           len(self.classes) - self.chosen_positions, names)

    def _emit(self, node) -> str | None:
        """Lark text of ``node`` (None: the empty string)."""
        if id(node) in self.chosen:
            r = f"/{self.regex[id(node)]}/"
            return f"{r}?" if self.info[id(node)].nullable else r
        if isinstance(node, P):
            c = node.ranges
            if len(c) == 1 and c[0][0] == c[0][1] and chr(c[0][0]).isascii() and chr(c[0][0]).isalnum():
                return f'"{chr(c[0][0])}"'
            return f"/{_class_regex(c)}/"
        if isinstance(node, N):
            return self.names[node.name]
        if isinstance(node, S):
            parts = [t for t in (self._emit(i) for i in node.items) if t]
            if not parts:
                return None
            return parts[0] if len(parts) == 1 else "(" + " ".join(parts) + ")"
        if isinstance(node, A):
            parts = [self._emit(i) for i in node.items]
            real = [t for t in parts if t]
            if not real:
                return None
            body = "(" + " | ".join(real) + ")"
            return body + "?" if len(real) < len(parts) else body
        inner = self._emit(node.item)
        if inner is None:
            return None
        return f"({inner}){_quant(node.min, node.max)}"


def gbnf_to_lark(grammar: Grammar, lexemes: bool = True) -> LarkGrammar:
    """Lark text for llguidance with exactly the language of ``grammar`` (see the module
    docstring for which pieces become lexemes; ``lexemes=False``: none, every character its
    own lexeme, for comparison)."""
    conv = _Converter(grammar)
    if lexemes and len(conv.classes) <= ANALYSIS_MAX_POSITIONS:
        conv.analyse()
        conv.choose()
    else:
        conv.regex, conv.chosen, conv.chosen_positions = {}, set(), 0
    return conv.lark()
