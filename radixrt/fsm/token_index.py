"""Which tokens a DFA state allows: a byte trie of the vocabulary walked against the DFA.

The trie is stored level by level (all nodes of depth d are contiguous, each with its parent
and its byte), so one DFA state's walk is a handful of vectorized gathers per level. Only
children of nodes that are still alive are visited: at each level the live nodes' child ranges
are expanded, so a state that allows few tokens touches few nodes, and a state inside a JSON
string (which allows most tokens) touches the whole trie once (~0.5-1 ms for a 49k vocabulary
in NumPy; ``trie_native`` runs the same walk in C where a compiler is found, ~0.3 ms).

A token is allowed iff the DFA state reached after its last byte is not dead (state 0); the DFA
prunes states that cannot complete, so "not dead" means the grammar can still be finished.
Packed masks are int32 words, bit ``i % 32`` of word ``i // 32`` for token ``i`` (xgrammar's
layout), so ``apply_token_bitmask_`` can consume them directly.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from radixrt.fsm.trie_native import NativeTrie
from radixrt.fsm.vocabulary import Vocabulary

TAIL_NODES = 700  # trie nodes below which the deepest levels are stepped in Python
SPARSE_END_NODES = 4096  # live nodes below which a walk's tokens come from those nodes
# First bytes a string state may treat apart (an open object's key starting like a declared
# one) and still take its plain tokens from the string chain; their subtrees are walked.
MAX_CHAIN_EXCEPTIONS = 8


# One character of JSON string content, unescaped: printable ASCII but for '"' and '\\'.
STRING_BYTES = np.asarray(sorted(set(range(0x20, 0x7F)) - {0x22, 0x5C}), np.int64)


class TokenTrie:
    def __init__(self, vocab: Vocabulary, ids: list[int] | None = None, split: bool = True,
                 native: bool = True):
        if ids is None:
            ids = [i for i, b in enumerate(vocab.token_bytes) if b]
        by_prefix: dict[bytes, int] = {b"": 0}
        parents: list[int] = [0]
        bytes_: list[int] = [0]
        level_start = [0, 1]
        depth = 1
        current = [vocab.token_bytes[i] for i in ids]
        while current:
            prefixes = sorted({b[:depth] for b in current})
            for p in prefixes:
                by_prefix[p] = len(parents)
                parents.append(by_prefix[p[:-1]])
                bytes_.append(p[-1])
            level_start.append(len(parents))
            depth += 1
            current = [b for b in current if len(b) >= depth]
        self.parent = np.asarray(parents, np.int64)
        depth_of = np.repeat(np.arange(len(level_start) - 1), np.diff(level_start))
        # Parent's index within its own level (for the dense step).
        self.parent_local = self.parent - np.asarray(level_start, np.int64)[
            np.maximum(depth_of - 1, 0)]
        self.byte = np.asarray(bytes_, np.int64)
        self.level_start = level_start
        self.token_ids = np.asarray(ids, np.int64)
        self.token_node = np.asarray([by_prefix[vocab.token_bytes[i]] for i in ids], np.int64)
        # Children of node n are child_start[n]:child_end[n] (nodes are sorted by parent).
        n = len(parents)
        counts = np.bincount(self.parent[1:], minlength=n)
        self.child_start = np.concatenate(([1], 1 + np.cumsum(counts)[:-1])).astype(np.int64)
        self.child_end = self.child_start + counts
        self.num_nodes = n
        self.vocab_size = vocab.size
        # The tokens ending at each node (several ids may spell the same bytes), for walks that
        # end with few live nodes: token_order[node_first[n]:node_first[n + 1]].
        self.token_order = np.argsort(self.token_node, kind="stable")
        self.node_first = np.searchsorted(self.token_node[self.token_order], np.arange(n + 1))
        # The deep levels hold few nodes (long tokens: runs of spaces, dashes, ...) but are many;
        # from ``tail_depth`` on they are stepped in plain Python, where a numpy call per level
        # would cost more than the level's nodes.
        sizes = np.diff(level_start)
        remaining = np.cumsum(sizes[::-1])[::-1]  # nodes at this depth and below
        deep = np.flatnonzero(remaining <= TAIL_NODES)
        self.tail_depth = max(int(deep[0]) if deep.size else len(sizes), 2)
        self.tail_levels = [(self.parent_local[level_start[d]:level_start[d + 1]].tolist(),
                             self.byte[level_start[d]:level_start[d + 1]].tolist())
                            for d in range(self.tail_depth, len(level_start) - 1)]
        # Sorted token bytes, for "is there a longer token with this prefix" queries.
        self.sorted_bytes = sorted(vocab.token_bytes[i] for i in ids)
        # Tokens made only of STRING_BYTES (nearly all of a byte-level BPE vocabulary: 47,873
        # of SmolLM2's 49,135) and a trie of the others, for states inside a string: see
        # ``allowed_tokens``.
        self.plain_ids = self.plain_len = self.rest = None
        self.plain_max_len = 0
        if split:
            string_bytes = frozenset(STRING_BYTES.tolist())
            plain = [i for i in ids if string_bytes.issuperset(vocab.token_bytes[i])]
            if plain:
                self.plain_ids = np.asarray(plain, np.int64)
                self.plain_len = np.asarray([len(vocab.token_bytes[i]) for i in plain], np.int64)
                self.plain_max_len = int(self.plain_len.max())
                plain_set = set(plain)
                self.rest = TokenTrie(vocab, [i for i in ids if i not in plain_set], split=False,
                                      native=False)
        # The same walks in native code when it can be built (``trie_native``).
        self.native = NativeTrie.build(self, vocab.token_bytes) if native else None

    @classmethod
    def of(cls, vocab: Vocabulary) -> TokenTrie:
        return vocab.cached("trie", lambda: cls(vocab))

    def allowed_tokens(self, table_flat: np.ndarray, state: int,
                       with_states: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Token ids (sorted) whose bytes keep the DFA alive from ``state``; with
        ``with_states``, also the DFA state after each of them.

        Inside a string most of the vocabulary is allowed and the walk visits every trie node.
        There the DFA usually treats every STRING_BYTES byte alike: from ``state`` all of them
        lead to one state x1, from x1 to x2, and so on (x_i = ``state`` in an unbounded string,
        a counter in a ``maxLength`` one, dead past its limit). When that holds for as many
        steps as the longest plain token has bytes, a plain token of length n ends in x_n
        without a walk, and only the other tokens' (small) trie is walked; otherwise the whole
        trie is.
        """
        if self.native is not None:
            got = self._string_chain(table_flat, state, MAX_CHAIN_EXCEPTIONS)
            if got is None:
                ids, ends = self.native.walk(table_flat, state)
            else:
                ids, ends = self.native.string_walk(table_flat, state, *got)
            return (ids, ends) if with_states else ids
        got = self._string_chain(table_flat, state)
        chain = None if got is None else got[0]
        if chain is None:
            return self._walk(table_flat, state, with_states)
        rest_ids, rest_ends = self.rest._walk(table_flat, state, True)
        end_by_id = np.zeros(self.vocab_size, np.int32)  # DFA states fit (MAX_DFA_STATES)
        end_by_id[self.plain_ids] = np.take(chain.astype(np.int32), self.plain_len)
        end_by_id[rest_ids] = rest_ends
        ids = (end_by_id != 0).nonzero()[0].astype(np.int64)
        if not with_states:
            return ids
        return ids, end_by_id[ids].astype(np.int64)

    def _string_chain(self, table_flat: np.ndarray, state: int, max_exceptions: int = 0
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """(chain, exceptions): chain = [x_0 = state, x_1, ..., x_L] (L = the longest plain
        token) when all STRING_BYTES bytes but the ``exceptions`` (at most ``max_exceptions``
        of them) lead from ``state`` to x_1, x_1 is alive, and every STRING_BYTES byte leads
        from x_i to x_{i+1} for 0 < i < L (the dead state 0 leads to itself); else None."""
        if self.plain_ids is None:
            return None
        first = table_flat[state * 256 + STRING_BYTES]
        x1 = first[0]
        if max_exceptions and (first != x1).any():
            values, counts = np.unique(first, return_counts=True)
            x1 = values[counts.argmax()]
        other = first != x1
        if not x1 or int(np.count_nonzero(other)) > max_exceptions:
            return None  # (no plain token alive: a walk is cheap)
        steps = self.plain_max_len
        chain = np.zeros(steps + 1, np.int64)
        chain[0] = state
        chain[1] = x1
        table = memoryview(table_flat)
        x = int(x1)
        for i in range(2, steps + 1):
            x = table[x * 256 + 0x61]  # "a", one of STRING_BYTES
            if not x:
                break
            chain[i] = x
        rows = table_flat[chain[1:-1, None] * 256 + STRING_BYTES[None, :]]
        if not (rows == chain[2:, None]).all():
            return None
        return chain, STRING_BYTES[other]

    def _walk(self, table_flat: np.ndarray, state: int,
              with_states: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``allowed_tokens`` by walking the whole trie.

        ``table_flat`` is the DFA table flattened to [num_states * 256] (int64). Each trie level
        is stepped densely (all its nodes, dead parents stay dead) while many nodes are alive,
        and sparsely (only children of live nodes) once few are.
        """
        # State after each node's bytes (0 = dead or not visited): dense levels write whole
        # slices, sparse ones their live nodes; a token is allowed iff its node's state is not 0.
        node_state = np.zeros(self.num_nodes, np.int64)
        ls = self.level_start
        dense: np.ndarray | None = np.full(1, state, np.int64)  # states of the whole level
        frontier = frontier_state = None  # sparse form: live node ids and their states
        # Live node ids level by level while few (then the allowed tokens come from them
        # instead of a gather over every token); None once a level stayed dense.
        live_ids: list[np.ndarray] | None = []
        tail = self.tail_depth
        for d in range(1, min(tail, len(ls) - 1)):
            a, b = ls[d], ls[d + 1]
            if dense is not None:
                idx = np.take(dense, self.parent_local[a:b])
                idx *= 256
                idx += self.byte[a:b]
                cur = node_state[a:b]
                np.take(table_flat, idx, out=cur, mode="clip")  # (mode "raise" buffers out)
                num_live = int(np.count_nonzero(cur))
                if num_live == 0:
                    break
                if num_live * 8 < b - a:
                    frontier = a + np.flatnonzero(cur)
                    frontier_state = cur[frontier - a]
                    dense = None
                    if live_ids is not None:
                        live_ids.append(frontier)
                else:
                    dense = cur
                    live_ids = None
            else:
                starts = self.child_start[frontier]
                counts = self.child_end[frontier] - starts
                ends = np.cumsum(counts)
                total = int(ends[-1])
                if total == 0:
                    break
                # Expand the ragged child ranges of all live nodes into one index array.
                children = np.repeat(starts - ends + counts, counts) + np.arange(total)
                st = np.take(table_flat, np.repeat(frontier_state * 256, counts)
                             + self.byte[children])
                live = st != 0
                frontier = children[live]
                if not frontier.size:
                    break
                frontier_state = st[live]
                node_state[frontier] = frontier_state
                if live_ids is not None:
                    live_ids.append(frontier)
        else:
            if tail < len(ls) - 1:
                if self._walk_tail(table_flat, dense, frontier, frontier_state, node_state):
                    live_ids = None  # (the tail's live nodes are not collected)
        if live_ids is not None and sum(len(x) for x in live_ids) < SPARSE_END_NODES:
            nodes = np.concatenate(live_ids) if live_ids else np.zeros(0, np.int64)
            first, last = self.node_first[nodes], self.node_first[nodes + 1]
            counts = last - first
            ends = np.cumsum(counts)
            # Expand the token ranges of the live nodes (as for the children in a sparse step).
            order = np.repeat(first - ends + counts, counts) + np.arange(int(ends[-1]) if len(
                ends) else 0)
            ids = self.token_ids[self.token_order[order]]
            sort = np.argsort(ids, kind="stable")
            ids = ids[sort]
            if not with_states:
                return ids
            return ids, np.repeat(node_state[nodes], counts)[sort]
        end_states = node_state[self.token_node]
        keep = end_states != 0
        if not with_states:
            return self.token_ids[keep]
        return self.token_ids[keep], end_states[keep]

    def _walk_tail(self, table_flat: np.ndarray, dense: np.ndarray | None,
                   frontier: np.ndarray | None, frontier_state: np.ndarray | None,
                   node_state: np.ndarray) -> bool:
        """Step the levels from ``tail_depth`` on, given the states of the level above (the
        whole level in ``dense``, or its live nodes ``frontier`` with ``frontier_state``);
        returns whether any node there was alive."""
        ls = self.level_start
        a = ls[self.tail_depth - 1]
        if dense is not None:
            states = dense.tolist()
        else:
            above = np.zeros(ls[self.tail_depth] - a, np.int64)
            above[frontier - a] = frontier_state
            states = above.tolist()
        table = memoryview(table_flat)
        live_ids: list[int] = []
        live_states: list[int] = []
        for d, (parents, bytes_) in enumerate(self.tail_levels, self.tail_depth):
            base = ls[d]
            nxt = [0] * len(parents)
            any_live = False
            for j, (p, byte) in enumerate(zip(parents, bytes_, strict=True)):
                st = states[p]
                if st:
                    st = table[st * 256 + byte]
                    if st:
                        nxt[j] = st
                        live_ids.append(base + j)
                        live_states.append(st)
                        any_live = True
            if not any_live:
                break
            states = nxt
        if live_ids:
            node_state[live_ids] = live_states
        return bool(live_ids)

    def has_longer_token(self, prefix: bytes, next_bytes: list[int] | None = None) -> bool:
        """Is there a token that starts with ``prefix`` and is longer, optionally whose next
        byte is in ``next_bytes``?"""
        sb = self.sorted_bytes
        if next_bytes is None:
            k = bisect_left(sb, prefix)
            if k < len(sb) and sb[k] == prefix:
                k += 1
            return k < len(sb) and sb[k].startswith(prefix)
        for b in next_bytes:
            p = prefix + bytes([b])
            k = bisect_left(sb, p)
            if k < len(sb) and sb[k].startswith(p):
                return True
        return False


def pack_token_ids(token_ids: np.ndarray, num_words: int) -> np.ndarray:
    """Token ids → packed int32 bitmask of ``num_words`` words."""
    bits = np.zeros(num_words * 32, np.bool_)
    bits[token_ids] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


def unpack_token_ids(mask: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(np.ascontiguousarray(mask).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)
