"""Budget closing: keep a constrained output completable within the tokens it has left.

Per grammar, lazily and once:

- ``byte_distance[s]``: fewest bytes from DFA state ``s`` to an accepting state (one reverse
  BFS over the byte edges), with a successor byte and state that realize it. Those successors
  fix one shortest byte path ``w(s)`` per state; the path of the state after ``k`` of its bytes
  is the rest of ``w(s)``.
- ``close_tokens(s)``: fewest vocabulary tokens that spell ``w(s)`` (a shortest split, reusing
  the value of the state each candidate token ends in). It bounds the true token distance from
  above, is usually equal to it, and is 0 exactly in accepting states. A vocabulary that cannot
  spell ``w(s)`` at all gives ``UNREACHABLE``.

With ``left`` tokens left (this one included), a token is allowed when the state it leads to
can still close with the rest: ``close_tokens(next(s, t)) <= left - 1`` (EOS counts 0 in an
accepting state). If ``close_tokens(s) <= left`` this keeps at least the first token of the
shortest split of ``w(s)`` and the invariant holds for the next step, so a request whose budget
starts at or above ``close_tokens(start)`` always ends in an accepting state. Nothing is removed
while every allowed token still fits (``budget_mask`` returns None), so outputs whose budget
never binds are unchanged. If the budget is already too small, the tokens closest to an end are
kept (the best that can be done); if nothing is known to close, the grammar's mask stands.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from radixrt.fsm.token_index import TokenTrie, pack_token_ids

if TYPE_CHECKING:
    from radixrt.fsm.grammar import CompiledGrammar

UNREACHABLE = 1 << 30
# Entries of the per-grammar cache of restricted masks, keyed (state, tokens left after).
_MASK_CACHE_LIMIT = 1024


class _TrieWalk:
    """The vocabulary's byte trie as Python lists, for stepping one byte at a time."""

    def __init__(self, trie: TokenTrie, vocab_size: int):
        self.child_start = trie.child_start.tolist()
        self.child_end = trie.child_end.tolist()
        self.byte = trie.byte.tolist()
        node_token = np.full(trie.num_nodes, -1, np.int64)
        ids = trie.token_ids[trie.token_ids < vocab_size]
        nodes = trie.token_node[trie.token_ids < vocab_size]
        node_token[nodes[::-1]] = ids[::-1]  # the smallest id where several spell the same bytes
        self.node_token = node_token.tolist()

    @classmethod
    def of(cls, trie: TokenTrie, vocab, vocab_size: int) -> _TrieWalk:
        return vocab.cached(f"trie_walk:{vocab_size}", lambda: cls(trie, vocab_size))

    def child(self, node: int, b: int) -> int:
        lo, hi = self.child_start[node], self.child_end[node]
        i = bisect_left(self.byte, b, lo, hi)
        return i if i < hi and self.byte[i] == b else -1


class ClosingBudget:
    def __init__(self, grammar: CompiledGrammar):
        self.grammar = grammar
        self.byte_distance, self._succ_byte, self._succ_state = byte_distances(grammar)
        finite = [d for d in self.byte_distance if d < UNREACHABLE]
        self.max_byte_distance = max(finite) if finite else 0
        self._walk = _TrieWalk.of(grammar.trie, grammar.vocab, grammar.vocab_size)
        self._close = [0 if d == 0 else UNREACHABLE if d >= UNREACHABLE else -1
                       for d in self.byte_distance]
        self._costs: dict[int, tuple[np.ndarray, np.ndarray, int, int]] = {}
        self._masks: dict[tuple[int, int], np.ndarray | None] = {}

    # ------------------------------------------------------------ distances
    def close_tokens(self, state: int) -> int:
        """Fewest tokens that spell the shortest byte path from ``state`` to an accepting state
        (``UNREACHABLE`` if none does, or ``state`` is dead)."""
        close = self._close
        if close[state] >= 0:
            return close[state]
        if not state or self.byte_distance[state] >= UNREACHABLE:
            close[state] = UNREACHABLE
            return UNREACHABLE
        chain = []
        cur = state
        while close[cur] < 0:
            chain.append(cur)
            cur = self._succ_state[cur]
        walk, succ_b, succ_s = self._walk, self._succ_byte, self._succ_state
        for s in reversed(chain):  # every state further along the path is known
            best, node, cur = UNREACHABLE, 0, s
            while self.byte_distance[cur]:
                node = walk.child(node, succ_b[cur])
                if node < 0:
                    break
                cur = succ_s[cur]
                if walk.node_token[node] >= 0 and close[cur] < UNREACHABLE:
                    best = min(best, 1 + close[cur])
            close[s] = best
        return close[state]

    def token_costs(self, state: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The grammar's tokens at ``state`` (before the canonical filter; EOS included in an
        accepting state), ``close_tokens`` of the state each leads to, and that cost's max and
        min."""
        hit = self._costs.get(state)
        if hit is not None:
            return hit
        g = self.grammar
        ids, ends = g.trie.allowed_tokens(g._table_flat, state, with_states=True)
        keep = ids < g.vocab_size
        ids, ends = ids[keep], ends[keep]
        uniq, inverse = np.unique(ends, return_inverse=True)
        costs = np.asarray([self.close_tokens(int(e)) for e in uniq], np.int64)[inverse]
        if g.is_accepting(state) and g.eos_token_ids:
            ids = np.concatenate([ids, np.asarray(g.eos_token_ids, np.int64)])
            costs = np.concatenate([costs, np.zeros(len(g.eos_token_ids), np.int64)])
        hi = int(costs.max()) if costs.size else 0
        lo = int(costs.min()) if costs.size else UNREACHABLE
        out = self._costs[state] = (ids, costs, hi, lo)
        return out

    # ------------------------------------------------------------ masks
    def budget_mask(self, state: int, tokens_left: int) -> np.ndarray | None:
        """The packed mask at ``state`` with ``tokens_left`` tokens left (this one included), or
        None when the budget removes nothing from the grammar's own mask."""
        after = tokens_left - 1
        if after >= self.max_byte_distance or not state:  # close_tokens <= byte distance
            return None
        key = (state, after)
        if key in self._masks:
            return self._masks[key]
        ids, costs, hi, lo = self.token_costs(state)
        if after >= hi or lo >= UNREACHABLE:
            mask = None
        else:
            g = self.grammar
            fits = pack_token_ids(ids[costs <= max(after, lo)], g.num_words)
            plain = g.mask(state)
            mask = fits & plain
            if not mask.any():  # the canonical filter left nothing that fits: drop it here
                mask = fits
            if np.array_equal(mask, plain):
                mask = None
        if len(self._masks) >= _MASK_CACHE_LIMIT:
            self._masks.clear()
        self._masks[key] = mask
        return mask


def byte_distances(grammar: CompiledGrammar) -> tuple[list[int], list[int], list[int]]:
    """Per DFA state: fewest bytes to an accepting state (``UNREACHABLE`` for the dead state),
    and the byte and state that start one such shortest path (-1 / 0 where none)."""
    dfa = grammar.dfa
    n = dfa.num_states
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    single = {tb[0] for tb in grammar.vocab.token_bytes[:grammar.vocab_size] if len(tb) == 1}
    for src, lo, hi, dst in dfa.edges():  # prefer a byte the vocabulary has as a token
        b = next((b for b in range(lo, hi + 1) if b in single), lo)
        preds[dst].append((src, b))
    dist = [UNREACHABLE] * n
    succ_byte, succ_state = [-1] * n, [0] * n
    queue = deque()
    for s in np.flatnonzero(dfa.accepting).tolist():
        if s:
            dist[s] = 0
            queue.append(s)
    while queue:
        d = queue.popleft()
        for src, b in preds[d]:
            if dist[src] == UNREACHABLE:
                dist[src] = dist[d] + 1
                succ_byte[src], succ_state[src] = b, d
                queue.append(src)
    return dist, succ_byte, succ_state
