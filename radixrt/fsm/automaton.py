"""``regex_ast`` tree → minimal byte-level DFA.

Pipeline: Thompson NFA over byte ranges (code point sets expanded to UTF-8 byte sequences),
subset construction over byte equivalence classes, pruning of states that can no longer reach
an accepting state, and minimization (``dfa.finish``).

Large shared subtrees (the same node object used several times, or repeated by a quantifier) are
compiled once to a minimal DFA and copied into the NFA, which keeps nested JSON grammars small.
``Intersect``/``Difference`` are product automata of their operands' DFAs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.dfa import MAX_DFA_STATES, ByteDFA, finish, product
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.utf8 import utf8_sequences

__all__ = ["ByteDFA", "compile_regex_ast", "product", "register_constant"]

MAX_NFA_STATES = 2_000_000
SHARE_MIN_SIZE = 24  # NFA states above which a reused subtree is compiled once to a DFA


def compile_regex_ast(node: ra.Node) -> ByteDFA:
    return _Builder(node).dfa_of(node)


# Sub-DFAs of shared subtrees, reused across compiles while the same node object is used
# (module-level constants such as JSON_STRING, cached "any JSON value" trees). Entries hold the
# node itself, so an id cannot be reused by another object while it is cached.
_shared_dfas: OrderedDict[int, tuple[ra.Node, ByteDFA]] = OrderedDict()
_shared_lock = threading.Lock()
_SHARED_CACHE_SIZE = 512
_constant_ids: OrderedDict[int, ra.Node] = OrderedDict()
_MAX_CONSTANTS = 4096


def register_constant(node: ra.Node) -> ra.Node:
    """Mark a long-lived node: its DFA is built once and reused by every compile. (Bounded;
    forgetting one only costs speed: cached DFAs are looked up by the node itself.)"""
    with _shared_lock:
        _constant_ids[id(node)] = node
        while len(_constant_ids) > _MAX_CONSTANTS:
            _constant_ids.popitem(last=False)
    return node


def _cached_dfa(node: ra.Node) -> ByteDFA | None:
    with _shared_lock:
        hit = _shared_dfas.get(id(node))
        if hit is not None and hit[0] is node:
            _shared_dfas.move_to_end(id(node))
            return hit[1]
    return None


def _store_dfa(node: ra.Node, dfa: ByteDFA) -> None:
    with _shared_lock:
        _shared_dfas[id(node)] = (node, dfa)
        while len(_shared_dfas) > _SHARED_CACHE_SIZE:
            _shared_dfas.popitem(last=False)


# ---------------------------------------------------------------- NFA construction


class _NFA:
    __slots__ = ("eps", "edges")

    def __init__(self):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        n = len(self.eps)
        if n > MAX_NFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_NFA_STATES} NFA states)")
        return n - 1


class _Builder:
    def __init__(self, root: ra.Node):
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.dfas: dict[int, ByteDFA] = {}
        self.keep: list[ra.Node] = []  # keep ids stable while memoized
        self._count_refs(root)

    def _count_refs(self, root: ra.Node) -> None:
        stack = [root]
        while stack:
            n = stack.pop()
            k = id(n)
            seen = k in self.refs
            self.refs[k] = self.refs.get(k, 0) + 1
            if not seen:
                self.keep.append(n)
                stack.extend(_children(n))

    def size(self, node: ra.Node) -> int:
        k = id(node)
        s = self.sizes.get(k)
        if s is None:
            if isinstance(node, ra.Chars):
                s = 4
            elif isinstance(node, ra.Repeat):
                s = self.size(node.item) * max(1, node.min if node.max is None else node.max) + 2
            elif isinstance(node, ra.Members):
                s = sum(self.size(n) + self.size(node.sep) + 2 for n, _ in node.items) + (
                    self.size(node.rest) + self.size(node.sep) if node.rest else 0) + 2
            elif isinstance(node, (ra.Intersect, ra.Difference)):
                s = 64
            else:
                s = sum(self.size(c) for c in _children(node)) + 2
            self.sizes[k] = s
        return s

    def dfa_of(self, node: ra.Node) -> ByteDFA:
        k = id(node)
        dfa = self.dfas.get(k) or _cached_dfa(node)
        if dfa is None:
            if isinstance(node, ra.Intersect):
                parts = [self.dfa_of(n) for n in node.items]
                dfa = parts[0]
                for p in parts[1:]:
                    dfa = product(dfa, p, "and")
            elif isinstance(node, ra.Difference):
                dfa = product(self.dfa_of(node.left), self.dfa_of(node.right), "diff")
            else:
                nfa = _NFA()
                start, end = self.build(nfa, node, top=True)
                dfa = determinize(nfa, start, end)
            _store_dfa(node, dfa)
        self.dfas[k] = dfa
        return dfa

    def _shared(self, node: ra.Node, copies: int = 1) -> bool:
        if isinstance(node, (ra.Intersect, ra.Difference)):
            return True
        if self.size(node) < SHARE_MIN_SIZE:
            return False
        return id(node) in _constant_ids or self.refs.get(id(node), 1) * copies > 1

    def build(self, nfa: _NFA, node: ra.Node, top: bool = False,
              copies: int = 1) -> tuple[int, int]:
        if not top and self._shared(node, copies):
            return embed(nfa, self.dfa_of(node))
        if isinstance(node, ra.Chars):
            return self._chars(nfa, node)
        if isinstance(node, ra.Concat):
            s = e = nfa.new()
            for it in node.items:
                a, b = self.build(nfa, it)
                nfa.eps[e].append(a)
                e = b
            return s, e
        if isinstance(node, ra.Alt):
            s, e = nfa.new(), nfa.new()
            for it in node.items:
                a, b = self.build(nfa, it)
                nfa.eps[s].append(a)
                nfa.eps[b].append(e)
            return s, e
        if isinstance(node, ra.Repeat):
            return self._repeat(nfa, node)
        if isinstance(node, ra.Members):
            return self._members(nfa, node)
        raise TypeError(f"unknown regex node {node!r}")

    def _chars(self, nfa: _NFA, node: ra.Chars) -> tuple[int, int]:
        s, e = nfa.new(), nfa.new()
        suffix_state: dict[tuple, int] = {(): e}
        for lo, hi in node.ranges:
            for seq in utf8_sequences(lo, hi):
                nxt = e
                for j in range(len(seq) - 1, 0, -1):
                    key = tuple(seq[j:])
                    st = suffix_state.get(key)
                    if st is None:
                        st = nfa.new()
                        nfa.edges[st].append((seq[j][0], seq[j][1], nxt))
                        suffix_state[key] = st
                    nxt = st
                nfa.edges[s].append((seq[0][0], seq[0][1], nxt))
        return s, e

    def _repeat(self, nfa: _NFA, node: ra.Repeat) -> tuple[int, int]:
        lo, hi = node.min, node.max
        copies = lo + (1 if hi is None else hi - lo)
        s = cur = nfa.new()
        for _ in range(lo):
            a, b = self.build(nfa, node.item, copies=copies)
            nfa.eps[cur].append(a)
            cur = b
        e = nfa.new()
        if hi is None:
            a, b = self.build(nfa, node.item, copies=copies)
            nfa.eps[cur].extend((a, e))
            nfa.eps[b].extend((a, e))
            return s, e
        for _ in range(hi - lo):
            a, b = self.build(nfa, node.item, copies=copies)
            nfa.eps[cur].extend((a, e))
            cur = b
        nfa.eps[cur].append(e)
        return s, e

    def _members(self, nfa: _NFA, node: ra.Members) -> tuple[int, int]:
        # E_i: nothing written yet; N_i: something written, so the next item needs ``sep``.
        # Each item is built once, entered from E_i directly or from N_i through a separator.
        n = len(node.items)
        E = [nfa.new() for _ in range(n + 1)]
        N = [nfa.new() for _ in range(n + 1)]
        entries = [(item, i, i + 1) for i, (item, _) in enumerate(node.items)]
        if node.rest is not None:
            entries.append((node.rest, n, n))
        for item, i, j in entries:
            a, b = self.build(nfa, item)
            nfa.eps[E[i]].append(a)
            s, e = self.build(nfa, node.sep)
            nfa.eps[N[i]].append(s)
            nfa.eps[e].append(a)
            nfa.eps[b].append(N[j])
        for i, (_, required) in enumerate(node.items):
            if not required:
                nfa.eps[E[i]].append(E[i + 1])
                nfa.eps[N[i]].append(N[i + 1])
        end = nfa.new()
        nfa.eps[E[n]].append(end)
        nfa.eps[N[n]].append(end)
        return E[0], end


def _children(n: ra.Node) -> list[ra.Node]:
    if isinstance(n, (ra.Concat, ra.Alt, ra.Intersect)):
        return list(n.items)
    if isinstance(n, ra.Repeat):
        return [n.item]
    if isinstance(n, ra.Difference):
        return [n.left, n.right]
    if isinstance(n, ra.Members):
        out = [i for i, _ in n.items] + [n.sep]
        return out + ([n.rest] if n.rest is not None else [])
    return []


def embed(nfa: _NFA, dfa: ByteDFA) -> tuple[int, int]:
    """Copy a DFA into the NFA; returns (start, end) with end reached from accepting states."""
    if dfa.is_empty():
        return nfa.new(), nfa.new()
    base = len(nfa.eps) - 1
    for _ in range(1, dfa.num_states):
        nfa.new()
    end = nfa.new()
    for src, lo, hi, dst in dfa.edges():
        nfa.edges[base + src].append((lo, hi, base + dst))
    for s in np.flatnonzero(dfa.accepting).tolist():
        nfa.eps[base + s].append(end)
    return base + dfa.start, end


# ---------------------------------------------------------------- subset construction


def determinize(nfa: _NFA, start: int, accept: int) -> ByteDFA:
    bounds = sorted({0, 256} | {lo for es in nfa.edges for lo, _, _ in es}
                    | {hi + 1 for es in nfa.edges for _, hi, _ in es})
    cls_of = {b: i for i, b in enumerate(bounds)}
    # Edges as (first class, last class + 1, target).
    cedges = [[(cls_of[lo], cls_of[hi + 1], t) for lo, hi, t in es] for es in nfa.edges]
    num_classes = len(bounds) - 1

    eps = nfa.eps
    closure_memo: dict[frozenset, frozenset] = {}

    def closure(seed: frozenset) -> frozenset:
        got = closure_memo.get(seed)
        if got is None:
            seen = set(seed)
            stack = list(seed)
            while stack:
                for t in eps[stack.pop()]:
                    if t not in seen:
                        seen.add(t)
                        stack.append(t)
            # Only states with byte edges (or the accept state) matter for identity.
            got = frozenset(s for s in seen if cedges[s] or s == accept)
            closure_memo[seed] = got
        return got

    dead = frozenset()
    index: dict[frozenset, int] = {dead: 0}
    states: list[frozenset] = [dead]
    rows: list[list[int]] = [[0] * num_classes]
    s0 = closure(frozenset((start,)))
    if s0 not in index:
        index[s0] = 1
        states.append(s0)
    # Edges of one NFA state with pairwise disjoint class ranges (DFA copies, most Chars).
    disjoint = [all(es[k][1] <= es[k + 1][0] for k in range(len(es) - 1))
                for es in (sorted(e) for e in cedges)]
    cedges = [sorted(e) for e in cedges]

    def state_id(cl: frozenset) -> int:
        j = index.get(cl)
        if j is None:
            j = len(states)
            if j > MAX_DFA_STATES:
                raise GrammarError(f"grammar too large (more than {MAX_DFA_STATES} DFA states)")
            index[cl] = j
            states.append(cl)
        return j

    single: dict[int, int] = {}
    i = 1
    while i < len(states):
        members = states[i]
        row = [0] * num_classes
        if len(members) == 1 and disjoint[next(iter(members))]:
            for a, b, t in cedges[next(iter(members))]:
                j = single.get(t)
                if j is None:
                    j = single[t] = state_id(closure(frozenset((t,))))
                row[a:b] = [j] * (b - a)
        else:
            es = [e for s in members for e in cedges[s]]
            cuts = sorted({c for a, b, _ in es for c in (a, b)})
            for k in range(len(cuts) - 1):
                c0, c1 = cuts[k], cuts[k + 1]
                targets = frozenset(t for a, b, t in es if a <= c0 < b)
                if targets:
                    row[c0:c1] = [state_id(closure(targets))] * (c1 - c0)
        rows.append(row)
        i += 1
    table = np.asarray(rows, dtype=np.int32).reshape(len(states), num_classes)
    accepting = np.fromiter((accept in st for st in states), dtype=bool, count=len(states))
    start_id = 1 if len(states) > 1 else 0
    byte_class = np.searchsorted(np.asarray(bounds), np.arange(256), side="right") - 1
    return finish(table, accepting, start_id, byte_class)
