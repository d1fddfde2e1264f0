"""``regex_ast`` tree → minimal byte-level DFA.

Pipeline: Thompson NFA over byte ranges (code point sets expanded to UTF-8 byte sequences),
subset construction over byte equivalence classes, pruning of states that can no longer reach
an accepting state, and minimization (``dfa.finish``).

Large shared subtrees (the same node object used several times, or repeated by a quantifier) are
compiled once to a minimal DFA and copied into the NFA, which keeps nested JSON grammars small.
``Intersect``/``Difference`` are product automata of their operands' DFAs.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict

import numpy as np

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.dfa import MAX_DFA_STATES, ByteDFA, byte_bounds, finish, product
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.utf8 import utf8_sequences

__all__ = ["ByteDFA", "compile_regex_ast", "product", "register_constant"]

MAX_NFA_STATES = 2_000_000
SHARE_MIN_SIZE = 24  # NFA states above which a reused subtree is compiled once to a DFA


def compile_regex_ast(node: ra.Node, minimize: bool = True) -> ByteDFA:
    """The DFA of ``node``. Sub-automata are always minimized (they are copied, often many
    times); ``minimize=False`` keeps the top-level one as built (its states are only visited)."""
    # The builder allocates many small lists; with a large heap (a loaded tokenizer and
    # model) the cyclic collector's passes cost more than the build, and it frees nothing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Builder(node, minimize_root=minimize).dfa_of(node)
    finally:
        if enabled:
            gc.enable()


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
    """Byte-range NFA. Embedded DFAs (``blocks``) keep their table instead of per-state edges:
    block ``k`` holds NFA states ``first .. first + n - 2`` for the DFA's states ``1 .. n-1``."""

    __slots__ = ("eps", "edges", "blocks")

    def __init__(self):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []
        self.blocks: list[tuple[int, ByteDFA]] = []

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        n = len(self.eps)
        if n > MAX_NFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_NFA_STATES} NFA states)")
        return n - 1

    def new_block(self, dfa: ByteDFA) -> int:
        """Room for the live states of ``dfa``; returns the NFA state of DFA state 1."""
        first = len(self.eps)
        k = dfa.num_states - 1
        if first + k > MAX_NFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_NFA_STATES} NFA states)")
        self.eps.extend([] for _ in range(k))
        self.edges.extend([] for _ in range(k))
        self.blocks.append((first, dfa))
        return first


class _Builder:
    def __init__(self, root: ra.Node, minimize_root: bool = True):
        self.root = root
        self.minimize_root = minimize_root
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
            elif isinstance(node, ra.Automaton):
                s = max(node.dfa.num_states, SHARE_MIN_SIZE)
            else:
                s = sum(self.size(c) for c in _children(node)) + 2
            self.sizes[k] = s
        return s

    def dfa_of(self, node: ra.Node) -> ByteDFA:
        k = id(node)
        dfa = self.dfas.get(k) or _cached_dfa(node)
        if dfa is None:
            if isinstance(node, ra.Automaton):
                dfa = node.dfa
            elif isinstance(node, ra.Intersect):
                parts = [self.dfa_of(n) for n in node.items]
                dfa = parts[0]
                for p in parts[1:]:
                    dfa = product(dfa, p, "and")
            elif isinstance(node, ra.Difference):
                dfa = product(self.dfa_of(node.left), self.dfa_of(node.right), "diff")
            else:
                nfa = _NFA()
                start, end = self.build(nfa, node, top=True)
                dfa = determinize(nfa, start, end,
                                  minimize=self.minimize_root or node is not self.root)
            _store_dfa(node, dfa)
        self.dfas[k] = dfa
        return dfa

    def _shared(self, node: ra.Node, copies: int = 1) -> bool:
        if isinstance(node, (ra.Intersect, ra.Difference, ra.Automaton)):
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

    def _counted_members(self, nfa: _NFA, node: ra.Members) -> tuple[int, int]:
        """``Members`` with item counts: one copy of the structure per count written so far
        (counts at or above ``min_count`` are one state when there is no ``max_count``)."""
        n = len(node.items)
        top = node.min_count if node.max_count is None else node.max_count
        S = [[nfa.new() for _ in range(top + 1)] for _ in range(n + 1)]

        def step(c: int) -> int | None:
            if node.max_count is None:
                return min(c + 1, top)
            return c + 1 if c + 1 <= top else None

        entries = [(item, i, i + 1) for i, (item, _) in enumerate(node.items)]
        if node.rest is not None:
            entries.append((node.rest, n, n))
        for item, i, j in entries:
            for c in range(top + 1):
                c2 = step(c)
                if c2 is None:
                    continue
                a, b = self.build(nfa, item)
                if c:
                    s, e = self.build(nfa, node.sep)
                    nfa.eps[S[i][c]].append(s)
                    nfa.eps[e].append(a)
                else:
                    nfa.eps[S[i][c]].append(a)
                nfa.eps[b].append(S[j][c2])
        for i, (_, required) in enumerate(node.items):
            if not required:
                for c in range(top + 1):
                    nfa.eps[S[i][c]].append(S[i + 1][c])
        end = nfa.new()
        for c in range(node.min_count, top + 1):
            nfa.eps[S[n][c]].append(end)
        return S[0][0], end

    def _members(self, nfa: _NFA, node: ra.Members) -> tuple[int, int]:
        if node.min_count or node.max_count is not None:
            return self._counted_members(nfa, node)
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
    """Place a DFA in the NFA as a block; returns (start, end) with end reached from its
    accepting states."""
    if dfa.is_empty():
        return nfa.new(), nfa.new()
    first = nfa.new_block(dfa)
    end = nfa.new()
    for s in np.flatnonzero(dfa.accepting).tolist():
        nfa.eps[first + s - 1].append(end)
    return first + dfa.start - 1, end


# ---------------------------------------------------------------- subset construction


_BLOCK_STATE = frozenset((-1,))  # placeholder member set of a DFA state copied from a block


def determinize(nfa: _NFA, start: int, accept: int, minimize: bool = True) -> ByteDFA:
    """Subset construction over byte classes. A block (an embedded DFA) entered as a single
    state is copied whole: its non-accepting states become DFA states with their rows taken
    from its table in one step; only subsets that mix states are built one by one."""
    eps, edges, blocks = nfa.eps, nfa.edges, nfa.blocks
    bound_set = {0, 256}
    for es in edges:
        for lo, hi, _ in es:
            bound_set.add(lo)
            bound_set.add(hi + 1)
    for _, dfa in blocks:
        bound_set.update(byte_bounds(dfa).tolist())
    bounds = sorted(bound_set)
    cls_of = {b: i for i, b in enumerate(bounds)}
    rep = np.asarray(bounds[:-1], np.int64)  # one byte of each class
    num_classes = len(bounds) - 1
    # Edges as (first class, last class + 1, target); block states get theirs on demand.
    cedges: list[list[tuple[int, int, int]]] = [
        sorted((cls_of[lo], cls_of[hi + 1], t) for lo, hi, t in es) if es else [] for es in edges]
    has_edges = [bool(e) for e in cedges]
    # Glue states whose edges have pairwise disjoint class ranges (one target per class).
    disjoint = [len(es) < 2 or all(es[k][1] <= es[k + 1][0] for k in range(len(es) - 1))
                for es in cedges]
    owner = [-1] * len(eps)
    class_tables: list[np.ndarray] = []
    for k, (first, dfa) in enumerate(blocks):
        n = dfa.num_states - 1
        owner[first:first + n] = [k] * n
        ct = dfa.table[:, rep]
        class_tables.append(ct)
        has_edges[first:first + n] = (ct[1:] != 0).any(axis=1).tolist()
    block_ids: list[np.ndarray | None] = [None] * len(blocks)
    block_rows: list[tuple[int, np.ndarray]] = []

    block_edges: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}
    edges_done: set[int] = set()

    def edges_of(x: int) -> list[tuple[int, int, int]]:
        k = owner[x]
        if k < 0 or x in edges_done:
            return cedges[x]
        edges_done.add(x)
        first, _ = blocks[k]
        got = block_edges.get(k)
        if got is None:  # the class-range edges of every state of the block, in one step
            ct = class_tables[k][1:]
            change = np.ones(ct.shape, np.bool_)
            change[:, 1:] = ct[:, 1:] != ct[:, :-1]
            src, a = np.nonzero(change)
            b = np.empty_like(a)
            b[:-1] = a[1:]
            last = np.ones(len(a), np.bool_)
            last[:-1] = src[:-1] != src[1:]
            b[last] = num_classes
            t = ct[src, a]
            keep = t != 0
            src, a, b, t = src[keep], a[keep], b[keep], t[keep] + (first - 1)
            offsets = np.searchsorted(src, np.arange(len(ct) + 1)).tolist()
            got = block_edges[k] = (offsets, a.tolist(), b.tolist(), t.tolist())
        offsets, a, b, t = got
        u = x - first
        lo, hi = offsets[u], offsets[u + 1]
        cedges[x] = list(zip(a[lo:hi], b[lo:hi], t[lo:hi], strict=True))
        return cedges[x]

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
            got = frozenset(s for s in seen if has_edges[s] or s == accept)
            closure_memo[seed] = got
        return got

    index: dict[frozenset, int] = {frozenset(): 0}
    states: list[frozenset] = [frozenset()]

    def copy_block(k: int) -> None:
        first, dfa = blocks[k]
        acc = dfa.accepting
        inner = np.flatnonzero(~acc)[1:]  # non-accepting live states (state 0 is dead)
        base = len(states)
        if base + len(inner) > MAX_DFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_DFA_STATES} DFA states)")
        ids = np.zeros(dfa.num_states, np.int64)
        ids[inner] = base + np.arange(len(inner))
        states.extend([_BLOCK_STATE] * len(inner))
        block_ids[k] = ids
        for u in np.flatnonzero(acc).tolist():
            ids[u] = state_id(closure(frozenset((first + u - 1,))))
        block_rows.append((base, ids[class_tables[k][inner]]))

    def state_id(cl: frozenset) -> int:
        if len(cl) == 1:
            (x,) = cl
            k = owner[x]
            if k >= 0:
                first, dfa = blocks[k]
                if not dfa.accepting[x - first + 1]:
                    if block_ids[k] is None:
                        copy_block(k)
                    return int(block_ids[k][x - first + 1])
        j = index.get(cl)
        if j is None:
            j = len(states)
            if j > MAX_DFA_STATES:
                raise GrammarError(f"grammar too large (more than {MAX_DFA_STATES} DFA states)")
            index[cl] = j
            states.append(cl)
        return j

    start_id = state_id(closure(frozenset((start,))))
    rows: dict[int, list[int]] = {}
    single: dict[int, int] = {}
    i = 1
    while i < len(states):
        members = states[i]
        if members is _BLOCK_STATE:
            i += 1
            continue
        row = [0] * num_classes
        if len(members) == 1 and owner[next(iter(members))] < 0 and disjoint[next(iter(members))]:
            for a, b, t in cedges[next(iter(members))]:
                j = single.get(t)
                if j is None:
                    j = single[t] = state_id(closure(frozenset((t,))))
                row[a:b] = [j] * (b - a)
        else:
            opens: dict[int, list[int]] = {}
            closes: dict[int, list[int]] = {}
            for s in members:
                for a, b, t in edges_of(s):
                    opens.setdefault(a, []).append(t)
                    closes.setdefault(b, []).append(t)
            cuts = sorted(opens.keys() | closes.keys())
            active: dict[int, int] = {}  # target -> edges covering the current class
            for k in range(len(cuts) - 1):
                c0, c1 = cuts[k], cuts[k + 1]
                for t in closes.get(c0, ()):
                    if active[t] == 1:
                        del active[t]
                    else:
                        active[t] -= 1
                for t in opens.get(c0, ()):
                    active[t] = active.get(t, 0) + 1
                if active:
                    row[c0:c1] = [state_id(closure(frozenset(active)))] * (c1 - c0)
        rows[i] = row
        i += 1
    table = np.zeros((len(states), num_classes), np.int32)
    if rows:
        keys = np.fromiter(rows, np.int64, len(rows))
        table[keys] = np.asarray(list(rows.values()), np.int32).reshape(len(rows), num_classes)
    for base, block in block_rows:
        table[base:base + len(block)] = block
    accepting = np.fromiter((accept in st for st in states), dtype=bool, count=len(states))
    byte_class = np.searchsorted(np.asarray(bounds), np.arange(256), side="right") - 1
    live_nfa = _co_reachable(nfa, accept, owner)
    live = np.ones(len(states), np.bool_)
    live[0] = False
    for j, st in enumerate(states):
        if st is not _BLOCK_STATE and j and not any(live_nfa[m] for m in st):
            live[j] = False
    for k, ids in enumerate(block_ids):
        if ids is not None and not live_nfa[blocks[k][0]]:
            inner = ids[(~blocks[k][1].accepting) & (ids > 0)]
            live[inner] = False
    return finish(table, accepting, start_id, byte_class, live=live, minimize=minimize)


def _co_reachable(nfa: _NFA, accept: int, owner: list[int]) -> list[bool]:
    """NFA states from which ``accept`` can be reached (a block's states all can, or none:
    each reaches an accepting state of its DFA, and those all lead to the same end)."""
    n = len(nfa.eps)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, ts in enumerate(nfa.eps):
        for t in ts:
            preds[t].append(s)
    for s, es in enumerate(nfa.edges):
        for _, _, t in es:
            preds[t].append(s)
    live = [False] * n
    live[accept] = True
    stack = [accept]
    blocks_done: set[int] = set()
    while stack:
        x = stack.pop()
        k = owner[x]
        if k >= 0:  # a block state: the whole block is live; it is entered at its start
            if k in blocks_done:
                continue
            blocks_done.add(k)
            first, dfa = nfa.blocks[k]
            m = dfa.num_states - 1
            live[first:first + m] = [True] * m
            entry = first + dfa.start - 1
            stack.extend(p for p in preds[entry] if not live[p])
            for p in preds[entry]:
                live[p] = True
            continue
        for p in preds[x]:
            if not live[p]:
                live[p] = True
                stack.append(p)
    return live
