"""Budget closing for GBNF grammars: the shortest way to an accepting end, from an Earley chart.

llguidance gives the token masks of a grammar but no distance to an accepting end, so radixrt
keeps its own small Earley recognizer over the same grammar tree (``gbnf.Grammar``), one byte
per step, beside the llguidance matcher of each request whose budget closing is on.

Per grammar, once (``CfgIndex``): the tree as byte-level BNF (character classes become UTF-8
byte-set sequences, ``x*`` a left-recursive rule, ``x{m,n}`` ``m`` copies and a chain of
optionals), and per nonterminal the fewest bytes of a complete derivation and one such string
(a fixpoint over the rules: every reachable rule is productive, ``gbnf`` checks that).

Per chart set ``i`` (built once, never changed afterwards): ``C_i[X]``, the fewest bytes that
finish the parse after a nonterminal ``X`` started at ``i`` is complete — the minimum over the
items of set ``i`` waiting for ``X`` of (the rest of their rule) + ``C_origin[their lhs]``, a
shortest path whose same-set edges are relaxed to a fixpoint — and the set's distance, the
minimum over its items of (the rest of the rule) + ``C_origin[lhs]``. Following the argmin
parents back to the start gives one shortest completion ``w``; its fewest-token split over the
vocabulary's trie (``close``) bounds the true token distance from above.

The chart (``CfgCloser``) is fed lazily from the accepted tokens; a free-text byte (one after
which the set is equivalent: the same unfinished items, a different position) repeats the
current set object instead of building a new one, and only the last ``KEEP_FULL_SETS`` sets
keep their items (older ones keep what distances and completions read).

Masks (``CfgCloser.restrict``, with ``left`` tokens left, this one included): nothing changes
while ``left - 1 >= close + CLOSING_MARGIN`` (the cheap test uses the byte distance, which
bounds ``close`` when the vocabulary has every byte of ``w`` as a token). Below that only
tokens whose chart can still close in ``left - 1`` tokens are kept, from a candidate set:
free-text tokens (they keep ``close``), the tokens of a bounded best-first trie walk (bytes
on a shortest completion first; each token checked exactly: Earley steps, then ``close``),
a visited prefix continued with free text (its chart, its cost), the first token of the
remembered completion (``route``: a completion of the chart at some earlier position whose
text so far it still spells, or an equivalent set), and EOS in an accepting chart. The route
and the completion behind each offered token carry to the next step, so a request whose
close fits always keeps a token that lowers it by one, and the invariant ``close <= left``
carries to the end. ``CLOSING_MARGIN`` is what a single token taken before the restriction
starts may add to ``close``; a grammar where one token adds more can still run out (then the
tokens closest to an end are kept).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from heapq import heappop, heappush

import numpy as np

from radixrt.fsm.budget import UNREACHABLE, _TrieWalk
from radixrt.fsm.gbnf import Alt, Chars, Grammar, Ref, Repeat, Seq
from radixrt.fsm.token_index import TokenTrie, pack_token_ids
from radixrt.fsm.utf8 import utf8_sequences

# Tokens of slack kept free of any restriction (see the module docstring).
CLOSING_MARGIN = 12
# Earley steps one restricted mask may spend walking the vocabulary trie for candidates.
MAX_WALK_STEPS = 64
# Prefixes one candidate walk tries to continue with free text (each costs a few Earley steps).
MAX_GROUPS = 8
# Prefix-then-free-text lookups (numpy over a range of the sorted vocabulary) per walk.
MAX_EXTENSIONS = 24
# Candidate walks kept per request (keyed by the chart's last set, see ``CfgCloser._walk``).
_WALK_CACHE_LIMIT = 16
# Chart sets kept whole behind the current one (rollback reaches them); older ones keep only
# what completions and distances read (their items and scans are dropped).
KEEP_FULL_SETS = 256
# Completions whose token split is cached per grammar.
_SPLIT_CACHE_LIMIT = 4096
# Longest token (bytes) considered for the "free text" candidates.
MAX_FREE_TOKEN_BYTES = 32

_END, _NT, _TERM = 0, 1, 2


class CfgIndex:
    """A GBNF tree as byte-level BNF with cores (dotted rules) numbered for the recognizer."""

    def __init__(self, tree: Grammar):
        self.nt_names: list[str] = []
        self.prods: list[list[list]] = []  # per nonterminal: productions (lists of symbols)
        self._rule_nt: dict[str, int] = {}
        self._chars_nt: dict[tuple, tuple] = {}
        start = self._new_nt("<start>")
        for name in tree.rules:
            self._rule_nt[name] = self._new_nt(name)
        self.prods[start].append([("N", self._rule_nt[tree.root])])
        for name, body in tree.rules.items():
            nt = self._rule_nt[name]
            for alt in (body.items if isinstance(body, Alt) else (body,)):
                self.prods[nt].append(self._syms(alt))
        self.start = start
        self._lengths()
        self._cores()

    # ------------------------------------------------------------ building
    def _new_nt(self, name: str) -> int:
        self.nt_names.append(name)
        self.prods.append([])
        return len(self.prods) - 1

    def _one(self, node) -> tuple:
        syms = self._syms(node)
        if len(syms) == 1:
            return syms[0]
        nt = self._new_nt("<group>")
        self.prods[nt].append(syms)
        return ("N", nt)

    def _syms(self, node) -> list:
        if isinstance(node, Chars):
            return [self._chars(node.ranges)]
        if isinstance(node, Ref):
            return [("N", self._rule_nt[node.name])]
        if isinstance(node, Seq):
            return [s for item in node.items for s in self._syms(item)]
        if isinstance(node, Alt):
            nt = self._new_nt("<alt>")
            for item in node.items:
                self.prods[nt].append(self._syms(item))
            return [("N", nt)]
        if isinstance(node, Repeat):
            x = self._one(node.item)
            out = [x] * node.min
            if node.max is None:  # S ::= | S x (left recursion: a constant number of items)
                nt = self._new_nt("<star>")
                self.prods[nt] += [[], [("N", nt), x]]
                out.append(("N", nt))
            elif node.max > node.min:  # O_k ::= | x O_{k-1}
                prev = None
                for _ in range(node.max - node.min):
                    nt = self._new_nt("<opt>")
                    self.prods[nt] += [[], [x] + ([("N", prev)] if prev is not None else [])]
                    prev = nt
                out.append(("N", prev))
            return out
        raise TypeError(f"unknown grammar node {node!r}")

    def _chars(self, ranges: tuple) -> tuple:
        hit = self._chars_nt.get(ranges)
        if hit is not None:
            return hit
        single = 0
        multi: list[list[tuple]] = []
        for lo, hi in ranges:
            for seq in utf8_sequences(lo, hi):
                if len(seq) == 1:
                    single |= _byte_set(*seq[0])
                else:
                    multi.append([("T", _byte_set(a, b)) for a, b in seq])
        if not multi:
            sym = ("T", single)
        else:
            nt = self._new_nt("<chars>")
            if single:
                self.prods[nt].append([("T", single)])
            self.prods[nt].extend(multi)
            sym = ("N", nt)
        self._chars_nt[ranges] = sym
        return sym

    def _lengths(self) -> None:
        """Fewest bytes per nonterminal and the production that realizes it (a fixpoint), then
        the shortest strings in the order their lengths became final (that order is acyclic)."""
        n = len(self.prods)
        length = [UNREACHABLE] * n
        choice = [-1] * n
        order: list[int] = []
        changed = True
        while changed:
            changed = False
            for nt in range(n):
                for k, prod in enumerate(self.prods[nt]):
                    total = 0
                    for kind, v in prod:
                        total += 1 if kind == "T" else length[v]
                        if total >= UNREACHABLE:
                            break
                    if total < length[nt]:
                        length[nt], choice[nt] = total, k
                        changed = True
                        order.append(nt)
        self.min_len = length
        strings: list[bytes | None] = [None] * n
        for nt in _last_occurrences(order):
            strings[nt] = b"".join(bytes((_pick(v),)) if kind == "T" else strings[v]
                                   for kind, v in self.prods[nt][choice[nt]])
        self.min_str = strings
        self.nullable = [x == 0 for x in length]

    def _cores(self) -> None:
        """Dotted rules as integers: per core its lhs, next symbol kind and value, and the
        fewest bytes of the rest of its rule; ``first[p]`` per production."""
        lhs, kind, value, rest = [], [], [], []
        self.first_cores: list[list[int]] = []
        for nt, prods in enumerate(self.prods):
            firsts = []
            for prod in prods:
                firsts.append(len(lhs))
                tail = [0] * (len(prod) + 1)
                for j in range(len(prod) - 1, -1, -1):
                    k, v = prod[j]
                    tail[j] = tail[j + 1] + (1 if k == "T" else self.min_len[v])
                for j, (k, v) in enumerate(prod):
                    lhs.append(nt)
                    kind.append(_TERM if k == "T" else _NT)
                    value.append(v)
                    rest.append(tail[j])
                lhs.append(nt)
                kind.append(_END)
                value.append(-1)
                rest.append(0)
            self.first_cores.append(firsts)
        self.lhs, self.kind, self.value, self.rest = lhs, kind, value, rest
        self._rest_str: dict[int, bytes] = {}
        self._locals: dict[int, tuple] = {}

    def rest_str(self, core: int) -> bytes:
        """One shortest string for the rest of ``core``'s rule."""
        hit = self._rest_str.get(core)
        if hit is not None:
            return hit
        parts = []
        c = core
        while self.kind[c] != _END:
            v = self.value[c]
            parts.append(bytes((_pick(v),)) if self.kind[c] == _TERM else self.min_str[v])
            c += 1
        out = self._rest_str[core] = b"".join(parts)
        return out

    # ------------------------------------------------------------ chart sets
    def start_set(self) -> _Set:
        return self._close([(self.first_cores[self.start][0], 0)], 0, [])

    def advance(self, chart: list[_Set], b: int) -> _Set | None:
        """The set after byte ``b`` (None if no item scans it); ``chart`` is not changed."""
        cur = chart[-1]
        seeds = [(c + 1, o) for mask, c, o in cur.scans if mask >> b & 1]
        if not seeds:
            return None
        return self._close(seeds, len(chart), chart)

    def _local(self, x: int) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]:
        """What predicting ``x`` adds by itself at a position (all with that position as
        origin): its rules' cores up to the first non-nullable symbol, the scans among them
        (byte set, core) and the nonterminals they wait for (nonterminal, core)."""
        hit = self._locals.get(x)
        if hit is None:
            kind, value, nullable = self.kind, self.value, self.nullable
            cores, scans, waits = [], [], []
            for c in self.first_cores[x]:
                while True:
                    cores.append(c)
                    k = kind[c]
                    if k == _TERM:
                        scans.append((value[c], c))
                    elif k == _NT:
                        waits.append((value[c], c))
                        if nullable[value[c]]:
                            c += 1
                            continue
                    break
            hit = self._locals[x] = (cores, scans, waits)
        return hit

    def _close(self, seeds: list[tuple[int, int]], i: int, chart) -> _Set:
        kind, value, lhs, nullable = self.kind, self.value, self.lhs, self.nullable
        local = self._local
        s = _Set()
        s.pos = i
        seen = set()
        items, waiting, scans = s.items, s.waiting, s.scans
        predicted = set()
        todo: list[int] = []  # nonterminals to predict
        work = list(seeds)  # items with an earlier origin
        while work or todo:
            while work:
                item = work.pop()
                if item in seen:
                    continue
                seen.add(item)
                items.append(item)
                core, org = item
                k = kind[core]
                if k == _TERM:
                    scans.append((value[core], core, org))
                elif k == _NT:
                    x = value[core]
                    w = waiting.get(x)
                    if w is None:
                        waiting[x] = [item]
                    else:
                        w.append(item)
                    if x not in predicted:
                        predicted.add(x)
                        todo.append(x)
                    if nullable[x]:
                        work.append((core + 1, org))
                else:  # complete (a nullable one at i was advanced when predicted)
                    for pc, po in chart[org].waiting.get(lhs[core], ()):
                        work.append((pc + 1, po))
            while todo:  # predictions: their items have origin i and come precomputed
                cores, sc, waits = local(todo.pop())
                items.extend([(c, i) for c in cores])
                scans.extend([(m, c, i) for m, c in sc])
                for y, c in waits:
                    w = waiting.get(y)
                    if w is None:
                        waiting[y] = [(c, i)]
                    else:
                        w.append((c, i))
                    if y not in predicted:
                        predicted.add(y)
                        todo.append(y)
        self._costs(s, i, chart)
        return s

    def _costs(self, s: _Set, i: int, chart: list[_Set]) -> None:
        rest, lhs = self.rest, self.lhs
        cost: dict[int, int] = {}
        parent: dict[int, tuple[int, int]] = {}
        if i == 0:
            cost[self.start] = 0
        same: list[tuple[int, int]] = []  # (x, waiting core) with origin i
        heap: list[tuple[int, int]] = []
        for x, entries in s.waiting.items():
            for pc, po in entries:
                y = lhs[pc]
                if po == i:
                    same.append((x, pc))
                    continue
                c = rest[pc + 1] + chart[po].cost[y]
                if c < cost.get(x, UNREACHABLE):
                    cost[x], parent[x] = c, (pc, po)
        if same:  # shortest paths through the items predicted in this set
            by_y: dict[int, list[tuple[int, int]]] = {}
            for x, pc in same:
                by_y.setdefault(lhs[pc], []).append((x, pc))
            for x, c in cost.items():
                heap.append((c, x))
            heap.sort()
            done = set()
            while heap:
                c, y = heappop(heap)
                if y in done or c > cost.get(y, UNREACHABLE):
                    continue
                done.add(y)
                for x, pc in by_y.get(y, ()):
                    nc = c + rest[pc + 1]
                    if nc < cost.get(x, UNREACHABLE):
                        cost[x], parent[x] = nc, (pc, i)
                        heappush(heap, (nc, x))
        s.cost, s.parent = cost, parent
        best, arg = UNREACHABLE, None
        for core, org in s.items:
            c = rest[core] + (cost if org == i else chart[org].cost).get(lhs[core], UNREACHABLE)
            if c < best:
                best, arg = c, (core, org)
        s.dist, s.best = best, arg

    def completion(self, chart) -> bytes:
        """One shortest completion of the text that ``chart`` (a list of sets, or a
        ``_Chart``) has read."""
        core, org = chart[-1].best
        return self.rest_str(core) + self._context(chart, self.lhs[core], org)

    def _context(self, chart, x: int, org: int) -> bytes:
        """One shortest text that finishes the parse once ``x`` (started at ``org``) is
        complete; memoized in the sets (they never change)."""
        path = []
        while not (x == self.start and org == 0):
            s = chart[org]
            hit = s.ctx.get(x)
            if hit is not None:
                break
            pc, po = s.parent[x]
            path.append((s, x, pc))
            x, org = self.lhs[pc], po
        else:
            hit = b""
        for s, x, pc in reversed(path):
            hit = s.ctx[x] = self.rest_str(pc + 1) + hit
        return hit

    def signature(self, s: _Set) -> frozenset:
        """The set's unfinished items with its own position as -1: equal signatures of two sets
        mean the text between them changed nothing the rest of the parse can see (finished
        items have already done all they do)."""
        end = _END
        kind = self.kind
        i = s.pos
        return frozenset((c, -1 if o == i else o) for c, o in s.items if kind[c] != end)


class _Chart:
    """A chart as a shared prefix plus a few sets of its own (candidate walks)."""

    __slots__ = ("base", "n", "tail")

    def __init__(self, base: list, n: int, tail: tuple = ()):
        self.base, self.n, self.tail = base, n, tail

    def __len__(self) -> int:
        return self.n + len(self.tail)

    def __getitem__(self, k: int):
        if k < 0:
            k += self.n + len(self.tail)
        return self.base[k] if k < self.n else self.tail[k - self.n]

    def plus(self, s) -> _Chart:
        return _Chart(self.base, self.n, self.tail + (s,))


class _Set:
    __slots__ = ("items", "waiting", "scans", "cost", "parent", "dist", "best", "ctx", "pos", "still")

    def __init__(self):
        self.items: list[tuple[int, int]] = []
        self.waiting: dict[int, list[tuple[int, int]]] = {}
        self.scans: list[tuple[int, int, int]] = []
        self.ctx: dict[int, bytes] = {}
        self.pos = 0  # the position it was built for (its own items' origin)
        self.still = 0  # bytes known to lead to an equivalent set (free text)


def _byte_set(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


def _pick(mask: int) -> int:
    """The byte a shortest string uses for a byte set: printable ASCII first."""
    printable = mask & _byte_set(0x20, 0x7E)
    m = printable or mask
    return (m & -m).bit_length() - 1


def _last_occurrences(order: list[int]) -> list[int]:
    last = {nt: k for k, nt in enumerate(order)}
    return sorted(last, key=last.__getitem__)


# ------------------------------------------------------------------ per grammar
class CfgClosing:
    """What budget closing needs per grammar and vocabulary, shared by its requests."""

    def __init__(self, tree: Grammar, vocab, vocab_size: int, eos_token_ids: tuple[int, ...],
                 num_words: int):
        self.index = CfgIndex(tree)
        self.vocab = vocab
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.num_words = num_words
        self.token_bytes = vocab.token_bytes
        self.walk = _TrieWalk.of(TokenTrie.of(vocab), vocab, vocab_size)
        self.single = single_byte_tokens(vocab, vocab_size)  # the bytes that are tokens of their own
        self._free_masks: dict[int, np.ndarray] = {}
        self._splits: dict[bytes, tuple[list[int], list[int]]] = {}
        self._tables: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def split(self, text: bytes) -> tuple[list[int], list[int]]:
        """Fewest tokens that spell each suffix ``text[k:]`` and the first token of such a
        split (``UNREACHABLE`` / -1 where the vocabulary cannot); cached per text."""
        hit = self._splits.get(text)
        if hit is None:
            hit = self._split(text)
            with self._lock:
                if len(self._splits) > _SPLIT_CACHE_LIMIT:
                    self._splits.clear()
                self._splits[text] = hit
        return hit

    def _split(self, text: bytes) -> tuple[list[int], list[int]]:
        n = len(text)
        best = [UNREACHABLE] * (n + 1)
        first = [-1] * (n + 1)
        best[n] = 0
        walk = self.walk
        node_token = walk.node_token
        for k in range(n - 1, -1, -1):
            node = 0
            for j in range(k, n):
                node = walk.child(node, text[j])
                if node < 0:
                    break
                t = node_token[node]
                if t >= 0 and best[j + 1] + 1 < best[k]:
                    best[k], first[k] = best[j + 1] + 1, t
        return best, first

    def free_mask(self, byte_mask: int) -> np.ndarray:
        """Packed mask of the tokens (at most ``MAX_FREE_TOKEN_BYTES`` long) made only of the
        bytes in ``byte_mask``."""
        hit = self._free_masks.get(byte_mask)
        if hit is not None:
            return hit
        mat, lengths = token_matrix(self.vocab, self.vocab_size)
        rows = self._byte_table(byte_mask)[mat].all(axis=1) & (lengths > 0)
        out = pack_token_ids(np.flatnonzero(rows).astype(np.int64), self.num_words)
        with self._lock:
            if len(self._free_masks) > 64:
                self._free_masks.clear()
            self._free_masks[byte_mask] = out
        return out

    def _byte_table(self, byte_mask: int) -> np.ndarray:
        """``byte_mask`` as a lookup table over bytes and the padding value 256 (True)."""
        hit = self._tables.get(byte_mask)
        if hit is None:
            hit = np.zeros(257, np.bool_)
            hit[256] = True
            hit[[b for b in range(256) if byte_mask >> b & 1]] = True
            if len(self._tables) > 256:
                self._tables.clear()
            self._tables[byte_mask] = hit
        return hit

    def extensions(self, prefix: bytes, byte_mask: int) -> np.ndarray:
        """Ids of the tokens (at most ``MAX_FREE_TOKEN_BYTES`` long) that are ``prefix``
        followed by at least one byte, all in ``byte_mask``."""
        data, ids, mat = sorted_tokens(self.vocab, self.vocab_size)
        lo = bisect_left(data, prefix)
        hi = bisect_left(data, prefix + b"\xff" * (MAX_FREE_TOKEN_BYTES + 1 - len(prefix)), lo)
        if hi <= lo:
            return np.zeros(0, np.int64)
        ok = self._byte_table(byte_mask)
        sub = mat[lo:hi, len(prefix):]
        rows = ok[sub].all(axis=1) & (sub[:, 0] != 256)
        return ids[lo:hi][rows]


# ------------------------------------------------------------------ per vocabulary
def warm_vocabulary(vocab, vocab_size: int) -> None:
    """Build the vocabulary-wide tables closing reads (NumPy only, any thread), so the first
    request that enters a closing window does not pay for them (~0.1-0.2 s at 49k tokens)."""
    _TrieWalk.of(TokenTrie.of(vocab), vocab, vocab_size)
    single_byte_tokens(vocab, vocab_size)
    sorted_tokens(vocab, vocab_size)


def single_byte_tokens(vocab, vocab_size: int) -> frozenset:
    """The bytes that are tokens of their own."""
    tb = vocab.token_bytes
    return vocab.cached(f"cfg_budget_single:{vocab_size}", lambda: frozenset(
        tb[i][0] for i in range(min(vocab_size, len(tb))) if len(tb[i]) == 1))


def sorted_tokens(vocab, vocab_size: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The vocabulary's tokens sorted by their bytes: bytes, ids and the padded byte matrix in
    that order (for prefix ranges)."""
    def build():
        mat, lengths = token_matrix(vocab, vocab_size)
        tb = vocab.token_bytes
        ids = sorted((i for i in range(vocab_size) if lengths[i]), key=tb.__getitem__)
        order = np.asarray(ids, np.int64)
        return [tb[i] for i in ids], order, mat[order]

    return vocab.cached(f"cfg_budget_sorted:{vocab_size}", build)


def token_matrix(vocab, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each token's bytes (at most ``MAX_FREE_TOKEN_BYTES``; longer ones have length 0) padded
    with 256, and their lengths."""
    def build():
        tb = vocab.token_bytes
        mat = np.full((vocab_size, MAX_FREE_TOKEN_BYTES), 256, np.int16)
        lengths = np.zeros(vocab_size, np.int64)
        for i in range(min(vocab_size, len(tb))):
            b = tb[i]
            if b and len(b) <= MAX_FREE_TOKEN_BYTES:
                mat[i, :len(b)] = np.frombuffer(b, np.uint8)
                lengths[i] = len(b)
        return mat, lengths

    return vocab.cached(f"cfg_budget_matrix:{vocab_size}", build)


class CfgCloser:
    """Per request: the Earley chart of the text so far and the masks that keep an accepting end
    within the tokens left (see the module docstring)."""

    def __init__(self, closing: CfgClosing):
        self.closing = closing
        self.index = closing.index
        self.chart: list[_Set] = [self.index.start_set()]
        self.text = bytearray()
        self.ends: list[int] = []  # len(text) after each token fed
        self.dead = False
        # A completion of the text up to a position, its token splits and that position's set
        # signature (``_route_cost``).
        self.route: tuple[int, bytes, list[int], list[int], frozenset] | None = None
        self._walks: dict[frozenset, tuple] = {}
        # The completions that justified the tokens of the last restricted mask: (position,
        # token bytes -> completion after them, [(prefix, free bytes, completion)] for the
        # prefix-then-free-text groups); the next ``close_tokens`` starts from there.
        self._offered: tuple[int, dict[bytes, bytes], list] | None = None

    def copy(self) -> CfgCloser:
        other = CfgCloser.__new__(CfgCloser)
        other.__dict__.update(self.__dict__)
        other.chart = list(self.chart)
        other.text = bytearray(self.text)
        other.ends = list(self.ends)
        other._walks = {}
        return other

    @property
    def num_tokens(self) -> int:
        return len(self.ends)

    def feed(self, data: bytes) -> None:
        """Advance by one token's bytes."""
        if not self.dead:
            self.dead = not self._extend(data)
        self.ends.append(len(self.text) if not self.dead else -1)

    def _extend(self, data: bytes) -> bool:
        """Read ``data``. A byte after which the set stays equivalent (free text) repeats the
        current set object at the new position instead of storing a new one: items keep
        their origins, every distance and completion is the same, and the next byte of the
        same kind is a bit test (``_Set.still``)."""
        chart, index = self.chart, self.index
        for b in data:
            prev = chart[-1]
            if prev.still >> b & 1:
                chart.append(prev)
                self.text.append(b)
                continue
            s = index.advance(chart, b)
            if s is None:  # cannot happen for tokens the grammar allowed
                return False
            if (len(s.items) == len(prev.items) and len(s.scans) == len(prev.scans)
                    and s.dist == prev.dist and index.signature(s) == index.signature(prev)):
                prev.still |= 1 << b
                s = prev
            chart.append(s)
            self.text.append(b)
            if len(chart) > KEEP_FULL_SETS:  # only the recent sets can become current again
                old = chart[-1 - KEEP_FULL_SETS]
                if old is not chart[-KEEP_FULL_SETS]:  # (a repeated set may be current)
                    old.items = old.scans = None
        return True

    def truncate(self, num_tokens: int) -> None:
        """Forget the tokens after the first ``num_tokens``."""
        if num_tokens >= len(self.ends):
            return
        del self.ends[num_tokens:]
        if self.dead and (not self.ends or self.ends[-1] >= 0):
            self.dead = False
        n = self.ends[-1] if self.ends else 0
        self._walks.clear()  # keyed by sets' positions, which the next text reuses
        if n >= 0:
            del self.chart[n + 1:]
            del self.text[n:]
            if self.chart[-1].items is None:  # rolled back past the full sets: read it again
                text, self.text = bytes(self.text), bytearray()
                self.chart = [self.index.start_set()]
                self._extend(text)
            if self.route is not None and self.route[0] > n:
                self.route = None
            if self._offered is not None and self._offered[0] > n:
                self._offered = None

    # ------------------------------------------------------------ distances
    @property
    def byte_distance(self) -> int:
        return UNREACHABLE if self.dead else self.chart[-1].dist

    def close_tokens(self) -> tuple[int, int]:
        """Fewest tokens known to spell a completion of the text so far, and the first token of
        that split (``UNREACHABLE``, -1 if none)."""
        if self.dead:
            return UNREACHABLE, -1
        if self.chart[-1].dist == 0:
            return 0, -1
        pos = len(self.text)
        got = self._route_cost(pos)
        w = self.index.completion(self.chart)
        best, first = self.closing.split(w)
        if self._offered is not None and self._offered[0] < pos:  # what the last mask offered
            since = bytes(self.text[self._offered[0]:])
            w2 = self._offered[1].get(since)
            if w2 is None:
                for prefix, free, wg in self._offered[2]:
                    if since.startswith(prefix) and all(free >> b & 1 for b in since[len(prefix):]):
                        w2 = wg
                        break
            if w2 is not None:
                b2, f2 = self.closing.split(w2)
                if b2[0] < best[0]:
                    w, best, first = w2, b2, f2
        if best[0] < got[0] or self.route is None or got[0] >= UNREACHABLE:
            self.route = (pos, w, best, first, self.index.signature(self.chart[-1]))
            return best[0], first[0]
        return got

    def _route_cost(self, pos: int, extra: bytes = b"") -> tuple[int, int]:
        """The remembered completion's cost after the text up to ``pos`` plus ``extra``."""
        r = self.route
        if r is None:
            return UNREACHABLE, -1
        start, w, best, first, sig = r
        done = bytes(self.text[start:pos]) + extra
        if not w.startswith(done):
            if not extra and start < pos and sig == self.index.signature(self.chart[pos]):
                return best[0], first[0]  # free text since: the same completions
            return UNREACHABLE, -1
        k = len(done)
        return best[k], first[k]

    # ------------------------------------------------------------ masks
    def restrict(self, row: np.ndarray, tokens_left: int) -> bool:
        """AND ``row`` (the grammar's packed mask, int32, modified in place) with the tokens
        after which an accepting end still fits in ``tokens_left`` tokens (this one included);
        False (and nothing changed) when that restricts nothing."""
        if self.dead:
            return False
        after = tokens_left - 1
        d = self.chart[-1].dist
        if d >= UNREACHABLE:
            return False
        if after >= d + CLOSING_MARGIN and self._bytes_are_tokens():
            return False
        close, head = self.close_tokens()
        if close >= UNREACHABLE or after >= close + CLOSING_MARGIN:
            return False
        walk, groups, free = self._walk()
        cands = {t: c for t, (c, _) in walk.items()}
        if head >= 0:  # the route's first token closes by one (see the module docstring)
            cands[head] = min(cands.get(head, UNREACHABLE), close - 1)
        if self.chart[-1].dist == 0:
            cands.update(dict.fromkeys(self.closing.eos_token_ids, 0))
        cands = {t: c for t, c in cands.items()
                 if 0 <= t < 32 * len(row) and int(row[t >> 5]) >> (t & 31) & 1}
        fits = row & free if close <= after else np.zeros_like(row)
        ok = [t for t, c in cands.items() if c <= after]
        groups, by_cost = groups
        kept = [g for g in groups if g[2] <= after]
        for c, packed in by_cost.items():  # a prefix, then free text: the prefix's cost
            if c <= after:
                fits |= row & packed
        if not ok and not fits.any():
            if not cands:
                return False  # nothing known to close: the grammar's mask stands
            lo = min(cands.values())  # too late already: head for the end
            ok = [t for t, c in cands.items() if c == lo]
        if ok:
            fits |= pack_token_ids(np.asarray(ok, np.int64), self.closing.num_words)
        tb = self.closing.token_bytes
        self._offered = (len(self.text), {tb[t]: walk[t][1] for t in ok if t in walk},
                         [(g[0], g[1], g[3]) for g in kept])
        if np.array_equal(fits, row):
            return False
        row[:] = fits
        return True

    def _bytes_are_tokens(self) -> bool:
        """Every byte of the current shortest completion is a token of its own (so the byte
        distance bounds the token distance)."""
        single = self.closing.single
        return len(single) == 256 or single.issuperset(self.index.completion(self.chart))

    def _walk(self) -> tuple[dict[int, tuple[int, bytes]], list, np.ndarray]:
        """The candidates of the current chart: ``_candidates`` and ``_free``, cached per
        request by the set's signature (a run of free text keeps it)."""
        cur = self.chart[-1]
        sig = self.index.signature(cur)
        hit = self._walks.get(sig)
        if hit is None:
            if len(self._walks) >= _WALK_CACHE_LIMIT:
                self._walks.clear()
            found, groups = self._candidates(sig)
            hit = self._walks[sig] = (found, groups, self._free(sig))
        return hit

    def _free(self, sig: frozenset) -> np.ndarray:
        """Tokens made of bytes that leave the chart equivalent to the current one (free
        text: they keep every distance)."""
        stationary = self._stationary(self.chart, sig)
        if not stationary:
            return np.zeros(self.closing.num_words, np.int32)
        return self.closing.free_mask(stationary)

    def _stationary(self, chart, sig: frozenset) -> int:
        """The bytes after which ``chart``'s last set (signature ``sig``) stays equivalent."""
        index = self.index
        cur = chart[-1]
        if not cur.scans:
            return 0
        # Bytes no scan tells apart behave alike; only ASCII can be stationary (a byte of a
        # multi-byte character leaves the set inside that character).
        classes = [(1 << 128) - 1]
        for mask in {m for m, _, _ in cur.scans}:
            classes = [part for c in classes for part in (c & mask, c & ~mask) if part]
        union = 0
        for mask, _, _ in cur.scans:
            union |= mask
        stationary = 0
        for c in classes:
            if c & union:
                s = index.advance(chart, (c & -c).bit_length() - 1)
                if s is not None and index.signature(s) == sig:
                    stationary |= c
        cur.still |= stationary
        return stationary

    def _candidates(self, sig: frozenset) -> tuple[dict[int, tuple[int, bytes]], list]:
        """Tokens found by a bounded best-first walk of the vocabulary trie, each with the
        fewest tokens that spell its chart's shortest completion (and that completion): first the bytes on a
        shortest completion (the ones that close), then the smallest detours, never more
        than ``CLOSING_MARGIN`` bytes past the current distance, skipping free-text bytes at
        the first level (``_free`` covers those tokens wholesale). Below the first level, the
        tokens that continue a visited prefix with free text (bytes that keep its chart
        equivalent: ``"population`` after ``"``) come as groups (prefix, free bytes, cost,
        completion) with their ids packed per cost: they share the prefix's chart and cost."""
        index, closing = self.index, self.closing
        walk, vocab_size = closing.walk, closing.vocab_size
        out: dict[int, tuple[int, bytes]] = {}
        cur = self.chart[-1]
        base = _Chart(self.chart, len(self.chart))
        limit = cur.dist + CLOSING_MARGIN
        heap: list[tuple[int, int, int, _Chart, int]] = [(0, 0, 0, base, 0)]
        steps = pushed = 0
        groups: list = []
        lookups = 0
        by_cost: dict[int, np.ndarray] = {}
        free_of: dict[frozenset, int] = {}
        data_of: dict[int, bytes] = {0: b""}
        while heap and steps < MAX_WALK_STEPS:
            _, depth, _, chart, node = heappop(heap)
            union = 0
            for mask, _, _ in chart[-1].scans:
                union |= mask
            for j in range(walk.child_start[node], walk.child_end[node]):
                b = walk.byte[j]
                if not union >> b & 1:
                    continue
                if steps >= MAX_WALK_STEPS:
                    break
                s = index.advance(chart, b)
                steps += 1
                if s is None or s.dist > limit:
                    continue
                if not depth and index.signature(s) == sig:
                    continue  # free text: ``_free``
                nxt = chart.plus(s)
                data_of[j] = data_of[node] + bytes((b,))
                t = walk.node_token[j]
                w = None
                if 0 <= t < vocab_size and t not in out:
                    w = index.completion(nxt)
                    out[t] = (closing.split(w)[0][0], w)
                if len(free_of) < MAX_GROUPS:
                    sig_s = index.signature(s)
                    free = free_of.get(sig_s)
                    if free is None:
                        free = free_of[sig_s] = self._stationary(nxt, sig_s)
                    if free and lookups < MAX_EXTENSIONS:
                        lookups += 1
                        ids = closing.extensions(data_of[j], free)
                        if ids.size:
                            w = w if w is not None else index.completion(nxt)
                            c = closing.split(w)[0][0]
                            groups.append((data_of[j], free, c, w))
                            packed = pack_token_ids(ids, closing.num_words)
                            if c in by_cost:
                                by_cost[c] |= packed
                            else:
                                by_cost[c] = packed
                pushed += 1
                heappush(heap, (s.dist + depth + 1 - cur.dist, depth + 1, pushed, nxt, j))
        return out, (groups, by_cost)
