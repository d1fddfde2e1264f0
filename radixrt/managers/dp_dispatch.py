"""Choosing a scheduler worker for each request under ``--dp-size N`` (pure logic, no I/O).

Each worker has its own radix cache, so a request is cheapest on the worker that already holds
the longest prefix of its prompt. The front cannot see the workers' trees; it keeps an
approximate one of what it dispatched (`ApproxPrefixTree`: one token radix tree, each node
tagged with the workers that were sent a prompt through it and when), the policy SGLang's
router calls ``cache_aware``:

1. Loads (requests in flight per worker) diverge — ``max - min > balance_abs_threshold`` and
   ``max > min * balance_rel_threshold`` — then the least loaded worker wins, whatever the cache.
2. Otherwise the worker with the longest approximate match wins if the match covers more than
   ``cache_threshold`` of the prompt.
3. Otherwise the least loaded worker (ties: the smaller tree, i.e. the most cache room; then the
   lower index).

The chosen worker's tree then holds the prompt. Each worker's share of the tree is bounded
(``max_tree_tokens``); beyond it its least recently used leaves go. The thresholds follow the
router's defaults where they transfer (cache threshold 0.3, relative 1.5); the absolute
threshold is 32 in-flight requests, sized for one machine's workers rather than a fleet.

``round_robin`` cycles over the live workers; ``shortest_queue`` takes the least loaded.
A worker that died is removed: it is never chosen again and its part of the tree is dropped.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LOAD_BALANCE_METHODS = ("cache_aware", "round_robin", "shortest_queue")


class NoWorkerAlive(RuntimeError):
    """Every worker has been removed."""


@dataclass
class CacheAwareConfig:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    max_tree_tokens: int = 1 << 22  # per worker


class _Node:
    __slots__ = ("key", "children", "parent", "workers")

    def __init__(self, key: tuple[int, ...], parent: _Node | None):
        self.key = key  # the edge label from the parent
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.workers: dict[int, int] = {}  # worker -> last access tick


class ApproxPrefixTree:
    """A token radix tree shared by all workers; a node lists the workers whose dispatched
    prompts passed through it. A worker present on a node is present on all its ancestors."""

    def __init__(self) -> None:
        self.root = _Node((), None)
        self.sizes: dict[int, int] = {}  # worker -> tokens of the tree tagged with it
        self._tick = itertools.count(1)

    def insert(self, tokens: Sequence[int], worker: int) -> None:
        tick = next(self._tick)
        node, i, n = self.root, 0, len(tokens)
        self.sizes.setdefault(worker, 0)
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                child = _Node(tuple(tokens[i:]), node)
                node.children[tokens[i]] = child
                child.workers[worker] = tick
                self.sizes[worker] += len(child.key)
                return
            key = child.key
            m = _common(key, tokens, i)
            if m < len(key):  # split the edge at m
                upper = _Node(key[:m], node)
                upper.workers = dict(child.workers)
                node.children[tokens[i]] = upper
                child.key = key[m:]
                child.parent = upper
                upper.children[child.key[0]] = child
                child = upper
            if worker not in child.workers:
                self.sizes[worker] += len(child.key)
            child.workers[worker] = tick
            node, i = child, i + m

    def match(self, tokens: Sequence[int]) -> dict[int, int]:
        """Per worker, the number of leading tokens of ``tokens`` its part of the tree holds."""
        out: dict[int, int] = {}
        node, i, n = self.root, 0, len(tokens)
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                break
            m = _common(child.key, tokens, i)
            for w in child.workers:
                out[w] = i + m
            if m < len(child.key):
                break
            node, i = child, i + m
        return out

    def remove_worker(self, worker: int) -> None:
        self.sizes.pop(worker, None)
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in list(node.children.values()):
                if child.workers.pop(worker, None) is not None:
                    stack.append(child)
                    if not child.workers:
                        self._unlink(child)

    def evict(self, worker: int, target: int) -> None:
        """Drop the worker's least recently used leaves until its size is at most ``target``."""
        if self.sizes.get(worker, 0) <= target:
            return
        heap: list[tuple[int, int, _Node]] = []
        seq = itertools.count()
        stack = [self.root]
        while stack:
            node = stack.pop()
            tagged = [c for c in node.children.values() if worker in c.workers]
            if node is not self.root and not tagged:
                heapq.heappush(heap, (node.workers[worker], next(seq), node))
            stack.extend(tagged)
        while heap and self.sizes[worker] > target:
            _, _, node = heapq.heappop(heap)
            del node.workers[worker]
            self.sizes[worker] -= len(node.key)
            parent = node.parent
            if not node.workers:
                self._unlink(node)
            if (parent is not None and parent is not self.root
                    and not any(worker in c.workers for c in parent.children.values())):
                heapq.heappush(heap, (parent.workers[worker], next(seq), parent))

    def num_nodes(self) -> int:
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count

    @staticmethod
    def _unlink(node: _Node) -> None:
        """Remove a node no worker holds any more (its subtree holds none either)."""
        parent = node.parent
        if parent is not None and parent.children.get(node.key[0]) is node:
            del parent.children[node.key[0]]
        node.parent = None


def _common(key: tuple[int, ...], tokens: Sequence[int], start: int) -> int:
    m, limit = 0, min(len(key), len(tokens) - start)
    while m < limit and key[m] == tokens[start + m]:
        m += 1
    return m


@dataclass
class Dispatcher:
    """Picks a worker per request and tracks what is in flight on each.

    ``select`` then ``on_finish`` (once per selected request, whatever its outcome);
    ``remove`` when a worker dies.
    """

    num_workers: int
    method: str = "cache_aware"
    config: CacheAwareConfig = field(default_factory=CacheAwareConfig)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("dp_size must be >= 1")
        if self.method not in LOAD_BALANCE_METHODS:
            raise ValueError(f"load_balance_method must be one of {', '.join(LOAD_BALANCE_METHODS)}, "
                             f"not {self.method!r}")
        self.alive: list[int] = list(range(self.num_workers))
        self.load: list[int] = [0] * self.num_workers
        self.dispatched: list[int] = [0] * self.num_workers
        self.tree = ApproxPrefixTree()
        self._rr = 0
        self.decisions = {"cache": 0, "balance": 0, "least_loaded": 0}
        self._last_evict = time.monotonic()

    def select(self, tokens: Sequence[int]) -> int:
        if not self.alive:
            raise NoWorkerAlive("no scheduler worker is alive")
        if self.method == "round_robin":
            w = self.alive[self._rr % len(self.alive)]
            self._rr += 1
        elif self.method == "shortest_queue":
            w = min(self.alive, key=lambda i: (self.load[i], i))
        else:
            w = self._cache_aware(tokens)
        self.load[w] += 1
        self.dispatched[w] += 1
        return w

    def _cache_aware(self, tokens: Sequence[int]) -> int:
        c = self.config
        loads = [self.load[i] for i in self.alive]
        lo, hi = min(loads), max(loads)
        if hi - lo > c.balance_abs_threshold and hi > lo * c.balance_rel_threshold:
            w = min(self.alive, key=lambda i: (self.load[i], i))
            self.decisions["balance"] += 1
        else:
            matches = self.tree.match(tokens)
            best = max(self.alive, key=lambda i: (matches.get(i, 0), -self.load[i], -i))
            if tokens and matches.get(best, 0) / len(tokens) > c.cache_threshold:
                w = best
                self.decisions["cache"] += 1
            else:
                w = min(self.alive, key=lambda i: (self.load[i], self.tree.sizes.get(i, 0), i))
                self.decisions["least_loaded"] += 1
        if tokens:
            self.tree.insert(tokens, w)
            if self.tree.sizes[w] > c.max_tree_tokens:
                self.tree.evict(w, int(c.max_tree_tokens * 0.8))
        return w

    def on_finish(self, worker: int) -> None:
        if self.load[worker] > 0:
            self.load[worker] -= 1

    def remove(self, worker: int) -> None:
        if worker in self.alive:
            self.alive.remove(worker)
        self.load[worker] = 0
        self.tree.remove_worker(worker)

    def stats(self) -> dict[str, Any]:
        return {"method": self.method, "alive": list(self.alive), "in_flight": list(self.load),
                "dispatched": list(self.dispatched),
                **({"decisions": dict(self.decisions),
                    "tree_tokens": [self.tree.sizes.get(i, 0) for i in range(self.num_workers)]}
                   if self.method == "cache_aware" else {})}


# ---------------------------------------------------------------------------- server info
_RATIOS = ("kv_usage", "cache_hit_rate", "hit_rate")


def merge_server_infos(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the workers' server infos: numbers are summed, ratios recomputed (KV usage
    from the slot counts, the cache hit rate from the token counters); others from the first."""
    if len(infos) == 1:
        return dict(infos[0])
    out = _sum_dicts(infos)
    mem = out.get("memory")
    if isinstance(mem, dict) and mem.get("kv_total_slots"):
        mem["kv_usage"] = (mem["kv_total_slots"] - mem["kv_free_slots"]) / mem["kv_total_slots"]
    stats = out.get("stats")
    if isinstance(stats, dict) and "num_prompt_tokens" in stats and "num_cached_tokens" in stats:
        total = stats["num_prompt_tokens"]
        out["cache_hit_rate"] = stats["num_cached_tokens"] / total if total else 0.0
    return out


def _sum_dicts(ds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in ds[0].items():
        vals = [d.get(key) for d in ds]
        if isinstance(first, dict) and all(isinstance(v, dict) for v in vals):
            out[key] = _sum_dicts(vals)
        elif (isinstance(first, int | float) and not isinstance(first, bool)
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)):
            if key in _RATIOS:  # recomputed by the caller where the counts are known
                out[key] = sum(vals) / len(vals)
            else:
                out[key] = sum(vals)
        else:
            out[key] = first
    return out
