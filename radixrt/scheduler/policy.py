"""Orders the waiting queue: lpm (longest cached prefix first), dfs-weight (walk the radix
tree, heaviest subtree first, so requests sharing a branch run together), fcfs, random."""

from __future__ import annotations

import random
from collections import defaultdict

from radixrt.cache.base import BasePrefixCache, MatchResult
from radixrt.scheduler.req import Req

# Past this many waiting requests, prefix matching every one each step costs more than it
# saves: fall back to first come first served.
FCFS_FALLBACK_QUEUE_LEN = 128


def match_len_limit(req: Req) -> int:
    """How many leading tokens of ``req.fill_ids`` may come from the cache: at least one token
    must be computed to get logits, and prompt logprobs need the logits of the positions they
    cover."""
    limit = req.seq_len - 1
    if req.wants_prompt_logprobs and not req.input_token_logprobs_done:
        limit = min(limit, max(req.logprob_start_len - 1, 0))
    return max(limit, 0)


class SchedulePolicy:
    def __init__(self, name: str, cache: BasePrefixCache, seed: int = 0):
        self.name = name
        self.cache = cache
        self.rng = random.Random(seed)
        self.match_generation = -1  # the cache's generation when `order` last matched


    def match(self, req: Req) -> MatchResult:
        return self.cache.match_prefix(req.fill_ids[: match_len_limit(req)])

    def order(self, waiting: list[Req]) -> list[tuple[Req, MatchResult | None]]:
        """Waiting requests in admission order, with their prefix matches when computed (valid
        while the cache's ``generation`` equals ``match_generation``)."""
        name = self.name
        if name in ("lpm", "dfs-weight") and len(waiting) > FCFS_FALLBACK_QUEUE_LEN:
            name = "fcfs"
        if name == "fcfs":
            return [(r, None) for r in waiting]
        if name == "random":
            out = list(waiting)
            self.rng.shuffle(out)
            return [(r, None) for r in out]
        self.match_generation = self.cache.generation
        matched = [(r, self.match(r)) for r in waiting]
        if name == "lpm":
            # Stable sort: equal matches keep arrival order.
            return sorted(matched, key=lambda rm: -len(rm[1].indices))
        return self._dfs_weight(matched)

    @staticmethod
    def _dfs_weight(matched: list[tuple[Req, MatchResult]]) -> list[tuple[Req, MatchResult]]:
        """Depth-first over the tree, heaviest subtree (most waiting requests) first."""
        by_node: dict[int, list[tuple[Req, MatchResult]]] = defaultdict(list)
        weight: dict[int, int] = defaultdict(int)
        roots: dict[int, object] = {}
        for rm in matched:
            by_node[id(rm[1].last_node)].append(rm)
        for rm in matched:
            node = rm[1].last_node
            while node is not None:
                weight[id(node)] += 1
                if getattr(node, "parent", None) is None:
                    roots[id(node)] = node
                node = getattr(node, "parent", None)
        out: list[tuple[Req, MatchResult]] = []
        stack = list(roots.values())
        while stack:
            node = stack.pop()
            out.extend(by_node.get(id(node), []))
            children = [c for c in getattr(node, "children", {}).values() if weight.get(id(c))]
            # Pushed lightest first so the heaviest is visited next.
            stack.extend(sorted(children, key=lambda c: weight[id(c)]))
        return out
