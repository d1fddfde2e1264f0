"""Radix-tree prefix cache: requests that share a token prefix share its KV slots.

Each node of the tree holds a run of tokens (``key``) and the KV slots computed for them
(``value``, int64 tensor of the same length). A node's children are keyed by the first token
of their run (with ``page_size > 1``: by the tuple of their first page's tokens), so sibling
runs always differ in their first token/page. Every run is a whole number of pages and every
split happens at a page boundary, so evicting a node frees whole pages.

Locking: a running request locks the node where its cached prefix ends; ``lock_ref`` counts
the locks on a node and its descendants. A node with ``lock_ref > 0`` is *protected*, else
*evictable*; both totals are kept as counters and updated on every 0 <-> 1 transition.

Eviction (LRU): every operation that walks a path stamps the nodes on it with a fresh tick
(``last_access_time``), so a node is always at least as recent as its children. The set of
leaves is maintained incrementally; `evict` heapifies the unlocked leaves by access time and
pops the oldest. When a removed leaf's parent becomes an unlocked leaf it is pushed too; its
time is >= that of the child just evicted, so eviction proceeds in non-decreasing time order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

import torch

from radixrt.cache.base import BasePrefixCache, MatchResult
from radixrt.cache.memory_pool import KVAllocator

_EMPTY = torch.empty(0, dtype=torch.int64)
_CHUNK = 256  # tokens compared per list-equality step while narrowing a mismatch


class TreeNode:
    __slots__ = ("id", "key", "value", "children", "parent", "lock_ref", "last_access_time",
                 "start", "host_value", "disk_end", "loading", "dead")
    _ids = itertools.count()

    def __init__(self, key: list[int], value: torch.Tensor | None, parent: TreeNode | None,
                 time: int):
        self.id = next(TreeNode._ids)  # tie-breaker in the eviction heap
        self.key = key
        self.value = value  # KV slots on the device; None when the run lives on a lower tier
        self.children: dict = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access_time = time
        self.start = parent.start + len(parent.key) if parent is not None else 0  # position
        # Lower tiers (hicache.HiRadixCache only): host-pool slots, absolute end of the part
        # of the run that is on disk, the read job filling host_value, removed from the tree.
        self.host_value: torch.Tensor | None = None
        self.disk_end = 0
        self.loading = None
        self.dead = False

    def __repr__(self) -> str:
        head = self.key[:8]
        more = "..." if len(self.key) > 8 else ""
        return (f"TreeNode(id={self.id}, len={len(self.key)}, key={head}{more}, "
                f"lock_ref={self.lock_ref}, t={self.last_access_time})")


def _as_list(token_ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(token_ids, list):
        return token_ids
    if isinstance(token_ids, torch.Tensor):
        return token_ids.tolist()
    return list(token_ids)


def _common_len(key: list[int], tokens: list[int], start: int, end: int) -> int:
    """Length of the common prefix of ``key`` and ``tokens[start:end]``."""
    n = min(len(key), end - start)
    if n == len(key):
        if key == tokens[start:start + n]:
            return n
    elif key[:n] == tokens[start:start + n]:
        return n
    i = 0
    while i + _CHUNK <= n and key[i:i + _CHUNK] == tokens[start + i:start + i + _CHUNK]:
        i += _CHUNK
    while i < n and key[i] == tokens[start + i]:
        i += 1
    return i


class RadixCache(BasePrefixCache):
    def __init__(self, allocator: KVAllocator, page_size: int | None = None):
        self.allocator = allocator
        self.page_size = page_size or allocator.page_size
        if self.page_size % allocator.page_size:
            raise ValueError(f"cache page_size {self.page_size} must be a multiple of the "
                             f"allocator's page_size {allocator.page_size}")
        self._clock = itertools.count(1)
        self.root = TreeNode([], _EMPTY, None, 0)
        self.root.lock_ref = 1  # never evicted, never counted
        self._init_tree()

    def _init_tree(self) -> None:
        # The root object survives reset(): requests holding it as last_node stay valid.
        self.root.children = {}
        self._leaves: set[TreeNode] = set()  # non-root nodes without children
        self._evictable = 0
        self._protected = 0

    # ------------------------------------------------------------------ helpers
    def _child_key(self, tokens: list[int], pos: int):
        return tokens[pos] if self.page_size == 1 else tuple(tokens[pos:pos + self.page_size])

    def _split(self, node: TreeNode, k: int) -> TreeNode:
        """Split ``node`` after its first ``k`` tokens; returns the new upper node. ``node``
        keeps its identity (handles to it stay valid) and becomes the lower half."""
        parent = node.parent
        upper = TreeNode(node.key[:k], node.value[:k].clone(), parent, node.last_access_time)
        upper.lock_ref = node.lock_ref
        upper.start = node.start
        node.start += k
        node.key = node.key[k:]
        node.value = node.value[k:].clone()
        node.parent = upper
        upper.children[self._child_key(node.key, 0)] = node
        parent.children[self._child_key(upper.key, 0)] = upper
        return upper

    def _walk(self, tokens: list[int], end: int) -> tuple[TreeNode, list[torch.Tensor], int]:
        """Follow ``tokens[:end]`` (``end`` page-aligned) down the tree, splitting the last node
        if the path ends inside it, and stamp the path. Returns (last node, values, length)."""
        tick = next(self._clock)
        node, values, pos = self.root, [], 0
        node.last_access_time = tick
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            k = _common_len(child.key, tokens, pos, end)
            k -= k % self.page_size
            if k < len(child.key):
                child = self._split(child, k)
            child.last_access_time = tick
            values.append(child.value)
            pos += k
            node = child
        return node, values, pos

    def _iter_nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # ------------------------------------------------------------------ lookup / insert
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        tokens = _as_list(token_ids)
        end = len(tokens) - len(tokens) % self.page_size
        node, values, _ = self._walk(tokens, end)
        if not values:
            return MatchResult(_EMPTY.clone(), self.root)
        indices = values[0].clone() if len(values) == 1 else torch.cat(values)
        return MatchResult(indices, node)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        tokens = _as_list(token_ids)
        end = len(tokens) - len(tokens) % self.page_size
        if len(kv_indices) < end:
            raise ValueError(f"{len(kv_indices)} KV slots for {end} tokens")
        node, _, pos = self._walk(tokens, end)
        if pos < end:
            leaf = TreeNode(tokens[pos:end], kv_indices[pos:end].to(torch.int64).clone(), node,
                            node.last_access_time)
            node.children[self._child_key(tokens, pos)] = leaf
            self._leaves.discard(node)
            self._leaves.add(leaf)
            self._evictable += end - pos
        return pos

    # ------------------------------------------------------------------ locking
    # The evictable/protected counts are of KV-pool slots: a node without a value (a subclass's
    # node whose KV lives on a lower tier) holds none. Here every node but the root has one.
    def inc_lock_ref(self, node: TreeNode | None) -> None:
        while node is not None and node is not self.root:
            if node.lock_ref == 0 and node.value is not None:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode | None) -> None:
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError(f"dec_lock_ref on an unlocked node {node}")
            if node.lock_ref == 1 and node.value is not None:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
            node.lock_ref -= 1
            node = node.parent

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    # ------------------------------------------------------------------ eviction
    def evict(self, num_tokens: int) -> int:
        if num_tokens <= 0 or self._evictable == 0:
            return 0
        heap = [(n.last_access_time, n.id, n) for n in self._leaves if n.lock_ref == 0]
        heapq.heapify(heap)
        freed, released = 0, []
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[self._child_key(leaf.key, 0)]
            self._leaves.discard(leaf)
            self._evictable -= len(leaf.key)
            freed += len(leaf.key)
            released.append(leaf.value)
            if parent is not self.root and not parent.children:
                self._leaves.add(parent)
                if parent.lock_ref == 0:
                    heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        if released:
            self.allocator.free(torch.cat(released))
            self.generation += 1
        return freed

    def reset(self) -> None:
        if self._protected:
            raise RuntimeError(f"reset() while {self._protected} cached slots are locked")
        values = [n.value for n in self._iter_nodes()]
        if values:
            self.allocator.free(torch.cat(values))
        self.generation += 1
        self._init_tree()

    # ------------------------------------------------------------------ request hooks
    def cache_finished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                           prefix_len: int, last_node: TreeNode | None) -> None:
        tokens = _as_list(token_ids)
        aligned = len(tokens) - len(tokens) % self.page_size
        n_cached = self.insert(tokens, kv_indices)
        if n_cached < prefix_len:
            raise RuntimeError("a locked prefix is no longer cached")
        # Our own slots for tokens the tree already had, and the unaligned tail (its page is
        # the request's alone), go back to the allocator.
        dup, tail = kv_indices[prefix_len:n_cached], kv_indices[aligned:]
        if len(dup) or len(tail):
            self.allocator.free(torch.cat([dup, tail]))
        self.dec_lock_ref(last_node)

    def cache_unfinished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                             prefix_len: int, last_node: TreeNode | None) -> MatchResult:
        tokens = _as_list(token_ids)
        n_cached = self.insert(tokens, kv_indices)
        if n_cached < prefix_len:
            raise RuntimeError("a locked prefix is no longer cached")
        if n_cached > prefix_len:
            self.allocator.free(kv_indices[prefix_len:n_cached])
        match = self.match_prefix(tokens)  # the whole aligned part, now in the tree
        self.inc_lock_ref(match.last_node)
        self.dec_lock_ref(last_node)
        return match

    # ------------------------------------------------------------------ introspection
    def num_nodes(self) -> int:
        return sum(1 for _ in self._iter_nodes())

    def pretty_print(self) -> str:
        """Print (and return) the tree, one node per line, indented by depth."""
        lines = [f"root: {self.num_nodes()} nodes, evictable={self._evictable}, "
                 f"protected={self._protected}"]
        stack = [(c, 1) for c in self.root.children.values()]
        while stack:
            node, depth = stack.pop()
            lines.append("  " * depth + repr(node))
            stack.extend((c, depth + 1) for c in node.children.values())
        text = "\n".join(lines)
        print(text)
        return text
