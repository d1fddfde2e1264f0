"""The byte-level DFA type and the operations on finished DFAs.

Invariants of a ``ByteDFA`` (the token index and the matcher rely on them):
- state 0 is the dead state (absorbing, not accepting); every other state can still reach an
  accepting state, so "not dead" means "can still complete";
- ``table[s, b]`` is the next state for byte ``b``.

``finish`` turns a raw class-level table into one (prune states that cannot reach acceptance,
minimize, expand byte classes); ``product`` builds intersections and differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radixrt.fsm.errors import GrammarError

MAX_DFA_STATES = 200_000


@dataclass(eq=False)
class ByteDFA:
    table: np.ndarray  # [num_states, 256] int32; state 0 = dead
    accepting: np.ndarray  # [num_states] bool
    start: int
    _edges: list | None = field(default=None, repr=False)
    _bounds: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_states(self) -> int:
        return int(self.table.shape[0])

    def is_empty(self) -> bool:
        return self.start == 0

    def matches(self, data: bytes) -> bool:
        s = self.start
        t = self.table
        for b in data:
            s = int(t[s, b])
            if s == 0:
                return False
        return bool(self.accepting[s])

    def edges(self) -> list[tuple[int, int, int, int]]:
        """``(src, lo, hi, dst)`` byte-range edges, dead targets omitted."""
        if self._edges is None:
            t = self.table
            change = np.ones(t.shape, np.bool_)
            change[:, 1:] = t[:, 1:] != t[:, :-1]
            src, lo = np.nonzero(change)
            hi = np.empty_like(lo)
            hi[:-1] = lo[1:] - 1
            hi[-1] = 255
            hi[:-1][src[:-1] != src[1:]] = 255  # the last run of each row ends at byte 255
            dst = t[src, lo]
            keep = (dst != 0) & (src != 0)
            self._edges = list(zip(src[keep].tolist(), lo[keep].tolist(), hi[keep].tolist(),
                                   dst[keep].tolist(), strict=False))
        return self._edges

    def is_finite(self) -> bool:
        """True when the language is finite (no cycle among live states)."""
        n = self.num_states
        succ = [sorted({d for d in self.table[s].tolist() if d}) for s in range(n)]
        color = [0] * n
        for root in range(1, n):
            if color[root]:
                continue
            stack = [(root, iter(succ[root]))]
            color[root] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    color[node] = 2
                    stack.pop()
                elif color[nxt] == 1:
                    return False
                elif color[nxt] == 0:
                    color[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
        return True


def finish(table: np.ndarray, accepting: np.ndarray, start: int,
           byte_class: np.ndarray | None = None, live: np.ndarray | None = None,
           minimize: bool = True) -> ByteDFA:
    """Prune states that cannot reach acceptance, minimize, expand classes to 256 bytes.

    ``table`` is [S, C] over byte classes (``byte_class`` maps byte → class; None = identity).
    ``live``, when the caller knows it: which states can reach acceptance (state 0 excluded).
    DFAs above ``MINIMIZE_MAX_STATES`` (or with ``minimize`` false) are kept unminimized: they
    are compositions of minimal parts, and measured on real schemas minimizing the large ones
    removed no state.
    """
    if live is None:
        table, accepting, start = _prune(table, accepting, start)
    elif not live[1:].all():
        table, accepting, start = _drop_dead(table, accepting, start, live)
    if minimize and table.shape[0] <= MINIMIZE_MAX_STATES:
        table, accepting, start = _minimize(table, accepting, start)
    if byte_class is not None:
        table = table[:, byte_class]
    return ByteDFA(np.ascontiguousarray(table, dtype=np.int32), accepting, start)


def _drop_dead(table: np.ndarray, accepting: np.ndarray, start: int, live: np.ndarray):
    """Map the states that cannot reach acceptance (``live`` false) to the dead state."""
    live = live.copy()
    live[0] = True  # keep the dead state as state 0
    remap = (np.cumsum(live) - 1).astype(np.int32)
    remap[~live] = 0
    t = remap[table[live]]
    acc = accepting[live]
    acc[0] = False
    new_start = int(remap[start]) if live[start] and start != 0 else 0
    if new_start == 0 or not acc.any():
        return np.zeros((1, table.shape[1]), np.int32), np.zeros(1, bool), 0
    return t, acc, new_start


def _prune(table: np.ndarray, accepting: np.ndarray, start: int):
    n = table.shape[0]
    src = np.repeat(np.arange(n), table.shape[1])
    dst = table.reshape(-1)
    keep = dst != 0
    pairs = np.unique(np.stack([dst[keep], src[keep]], axis=1), axis=0)
    order_starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    preds = pairs[:, 1].tolist()
    live = accepting.copy()
    stack = np.flatnonzero(accepting).tolist()
    live[0] = False
    while stack:
        s = stack.pop()
        for p in preds[order_starts[s]:order_starts[s + 1]]:
            if not live[p]:
                live[p] = True
                stack.append(p)
    live[0] = True  # keep the dead state as state 0
    new_id = np.cumsum(live) - 1
    remap = np.where(live, new_id, 0).astype(np.int32)
    remap[0] = 0
    # Non-live states map to dead; live ones keep relative order.
    t = remap[table[live]]
    acc = accepting[live]
    acc[0] = False
    new_start = int(remap[start]) if live[start] and start != 0 else 0
    if new_start == 0 or not accepting[live].any():
        return np.zeros((1, table.shape[1]), np.int32), np.zeros(1, bool), 0
    return t, acc, new_start


MINIMIZE_MAX_STATES = 4096
MINIMIZE_WORK_LIMIT = 5_000_000  # rounds * states * classes before we keep the DFA as is
_HASH_WEIGHTS = np.random.default_rng(0x5EED).integers(1, 2**63, size=4096, dtype=np.uint64)


def _minimize(table: np.ndarray, accepting: np.ndarray, start: int):
    """Moore partition refinement (vectorized, one round per distinguishing length).

    Rows are hashed to 64 bits per round; the final partition is then checked to be a
    congruence exactly, so a hash collision can only cost minimality, never correctness. Long
    counting chains (``{0,1000}``) need one round per count; past ``MINIMIZE_WORK_LIMIT`` the
    DFA is returned unminimized (such DFAs come out of subset construction nearly minimal).
    """
    if table.shape[0] <= 2:
        return table, accepting, start
    full_table = table
    table = _distinct_columns(table)  # identical columns (byte classes) refine nothing
    n, c = table.shape
    weights = _HASH_WEIGHTS[: c + 1] if c + 1 <= len(_HASH_WEIGHTS) else np.random.default_rng(
        c).integers(1, 2**63, size=c + 1, dtype=np.uint64)
    block = np.where(accepting, 1, 2).astype(np.int64)
    block[0] = 0
    num = len(np.unique(block))
    work = 0
    while True:
        with np.errstate(over="ignore"):
            sig = (block[table].astype(np.uint64) * weights[:c]).sum(axis=1, dtype=np.uint64)
            sig += block.astype(np.uint64) * weights[c]
        _, new_block = np.unique(sig, return_inverse=True)
        new_block = new_block.reshape(-1)
        new_num = int(new_block.max()) + 1
        block = new_block
        if new_num == num:
            break
        num = new_num
        work += n * c
        if work > MINIMIZE_WORK_LIMIT:
            return full_table, accepting, start
    if num == n or not _is_congruence(table, accepting, block):
        return full_table, accepting, start
    # Renumber blocks by first occurrence, so the dead state's block stays 0.
    _, first = np.unique(block, return_index=True)
    by_first = np.argsort(first)
    order = np.empty(num, np.int64)
    order[by_first] = np.arange(num)
    rep = first[by_first]
    new_table = order[block[full_table[rep]]].astype(np.int32)
    return new_table, accepting[rep], int(order[block[start]])


def _distinct_columns(table: np.ndarray) -> np.ndarray:
    """``table`` without repeated columns (hashed, then checked exactly)."""
    n = table.shape[0]
    w = _HASH_WEIGHTS[:n] if n <= len(_HASH_WEIGHTS) else np.random.default_rng(n).integers(
        1, 2**63, size=n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (table.astype(np.uint64) * w[:, None]).sum(axis=0, dtype=np.uint64)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    if len(first) == table.shape[1]:
        return table
    if not (table == table[:, first[inv.reshape(-1)]]).all():  # a collision: keep all
        return table
    return table[:, np.sort(first)]


def _is_congruence(table: np.ndarray, accepting: np.ndarray, block: np.ndarray) -> bool:
    """Every state agrees with its block's representative on acceptance and successor blocks."""
    num = int(block.max()) + 1
    rep = np.zeros(num, np.int64)
    rep[block[::-1]] = np.arange(len(block))[::-1]
    of = rep[block]
    mapped = block[table]
    return bool((mapped == mapped[of]).all() and (accepting == accepting[of]).all())


# ---------------------------------------------------------------- products


def byte_bounds(dfa: ByteDFA) -> np.ndarray:
    """Bytes (> 0) where some row of ``dfa`` changes target: its byte class boundaries."""
    b = dfa._bounds
    if b is None:
        t = dfa.table
        b = dfa._bounds = 1 + np.flatnonzero((t[:, 1:] != t[:, :-1]).any(axis=0))
    return b


def product(a: ByteDFA, b: ByteDFA, mode: str) -> ByteDFA:
    """``mode`` "and": both accept; "diff": ``a`` accepts and ``b`` does not."""
    if mode not in ("and", "diff"):
        raise ValueError(mode)
    nb = b.num_states
    bounds = np.union1d(np.union1d(byte_bounds(a), byte_bounds(b)), [0])
    byte_class = np.searchsorted(bounds, np.arange(256), side="right") - 1
    ta, tb = a.table[:, bounds].astype(np.int64), b.table[:, bounds].astype(np.int64)
    # Breadth-first over pair codes (sa * nb + sb), one level of new pairs at a time.
    first = a.start * nb + b.start
    index = {first: 1}
    pairs = [0, first]
    rows = np.zeros((2, len(bounds)), np.int64)
    frontier = np.asarray([first], np.int64)
    while frontier.size:
        base = len(pairs) - len(frontier)
        ra_, rb_ = ta[frontier // nb], tb[frontier % nb]
        codes = ra_ * nb + rb_
        if mode == "and":
            codes[(ra_ == 0) | (rb_ == 0)] = 0
        else:
            codes[ra_ == 0] = 0
        uniq, inv = np.unique(codes, return_inverse=True)
        ids = np.empty(len(uniq), np.int64)
        new = []
        for k, code in enumerate(uniq.tolist()):
            j = index.get(code) if code else 0
            if j is None:
                j = index[code] = len(pairs)
                pairs.append(code)
                new.append(code)
            ids[k] = j
        if len(pairs) > MAX_DFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_DFA_STATES} states)")
        if len(pairs) > rows.shape[0]:
            grown = np.zeros((max(len(pairs), 2 * rows.shape[0]), rows.shape[1]), np.int64)
            grown[:rows.shape[0]] = rows
            rows = grown
        rows[base:base + len(frontier)] = ids[inv.reshape(codes.shape)]
        frontier = np.asarray(new, np.int64)
    rows = rows[:len(pairs)]
    table = rows.astype(np.int32)
    acc_a = a.accepting[np.asarray(pairs) // nb]
    acc_b = b.accepting[np.asarray(pairs) % nb]
    accepting = (acc_a & acc_b) if mode == "and" else (acc_a & ~acc_b)
    accepting[0] = False
    return finish(table, accepting, 1, byte_class)
