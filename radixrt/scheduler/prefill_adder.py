"""PrefillAdder: picks the requests of the next extend batch under the KV budget.

Budget: free slots + evictable cache slots - what running requests are expected to still
need (their remaining max_new_tokens times the new-token ratio). Long prompts are cut into
chunks of ``--chunked-prefill-size`` tokens. When a waiting request shares a long prefix with
one already admitted in this batch that the cache does not hold yet, it is held back one step
so the prefix is computed once and then served from the cache.

The adder works on the KV bookkeeping and the policy it is given, never on the scheduler: it
returns what it admitted and the scheduler updates its queues. Each waiting request is matched
against the prefix cache once per step: the policy's match (taken to order the queue) is
reused unless an eviction since then may have freed its slots. With the hierarchical cache
the match is first completed from the lower tiers (`BasePrefixCache.fetch`); a request whose
prefix is still being read from disk is skipped this step and waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from radixrt.cache.base import MatchResult
from radixrt.scheduler.kv import RunningKV
from radixrt.scheduler.policy import SchedulePolicy, match_len_limit
from radixrt.scheduler.req import Req

# A running request is assumed to need at most this many more tokens when reserving room.
RESERVE_CLIP = 4096
# A waiting request is deferred when it shares at least this many more tokens with a request
# admitted in the same batch than it finds in the cache.
IN_BATCH_SHARE_THRESHOLD = 32


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def future_tokens(req: Req, new_token_ratio: float) -> float:
    """Room a running request is expected to still need for its output."""
    return min(req.remaining_new_tokens(), RESERVE_CLIP) * new_token_ratio


@dataclass
class PrefillLimits:
    """The static part of the budget (from ServerArgs)."""

    max_prefill_tokens: int
    chunked_prefill_size: int  # <= 0: no chunking
    max_running_requests: int
    page_size: int = 1


@dataclass
class PrefillBatch:
    reqs: list[Req] = field(default_factory=list)
    extend_lens: list[int] = field(default_factory=list)
    admitted: list[Req] = field(default_factory=list)  # taken from the waiting queue
    chunked: Req | None = None  # its prompt continues next step
    cached_tokens: int = 0  # prompt tokens the admitted requests found in the cache


class PrefillAdder:
    def __init__(self, kv: RunningKV, policy: SchedulePolicy, limits: PrefillLimits,
                 running: Sequence[Req], new_token_ratio: float):
        self.kv = kv
        self.policy = policy
        self.limits = limits
        self.num_running = len(running)
        self.ratio = new_token_ratio
        self.chunking = limits.chunked_prefill_size > 0
        budget = limits.max_prefill_tokens
        if self.chunking:
            budget = min(budget, limits.chunked_prefill_size)
        self.budget = budget
        self.reserved = sum(future_tokens(r, new_token_ratio) for r in running)
        self.out = PrefillBatch()

    def _room(self) -> float:
        return self.kv.allocator.available_size() + self.kv.cache.evictable_size() - self.reserved

    def _full(self) -> bool:
        return (self.num_running + len(self.out.reqs) >= self.limits.max_running_requests
                or self.kv.req_pool.available_size() == 0)

    def _chunk(self, extend: int) -> int:
        """Tokens of a prompt of ``extend`` remaining tokens to take in this batch."""
        if extend <= self.budget:
            return extend
        if not self.chunking:
            return extend if not self.out.reqs else 0
        ps = self.limits.page_size
        return self.budget // ps * ps

    def build(self, waiting: Sequence[Req], chunked: Req | None) -> PrefillBatch:
        """The next extend batch: first the next chunk of ``chunked`` (a request whose prompt
        is being prefilled in chunks), then waiting requests in the policy's order."""
        out = self.out
        if chunked is not None and not self._extend(chunked):
            out.chunked = chunked
            return out
        if not waiting or self._full():
            return out
        for req, match in self.policy.order(list(waiting)):
            if self.budget <= 0 or out.chunked is not None or self._full():
                break
            ok = self._admit(req, match)
            if ok is None:
                continue  # deferred
            if not ok:
                break
            out.admitted.append(req)
        return out

    def _fresh_match(self, req: Req, match: MatchResult | None) -> MatchResult:
        if match is not None and self.policy.match_generation == self.kv.cache.generation:
            return match
        return self.kv.cache.match_prefix(req.fill_ids[: match_len_limit(req)])

    def _admit(self, req: Req, match: MatchResult | None) -> bool | None:
        match = self.kv.cache.fetch(req.fill_ids[: match_len_limit(req)],
                                    self._fresh_match(req, match))
        if match is None:
            return None  # its cached prefix is being read back from disk: wait
        m = len(match.indices)
        for other in self.out.reqs:
            if common_prefix_len(req.fill_ids, other.fill_ids) >= m + IN_BATCH_SHARE_THRESHOLD:
                return None
        take = self._chunk(req.seq_len - m)
        if take <= 0:
            return False
        future = future_tokens(req, self.ratio)
        alone = self.num_running == 0 and not self.out.reqs
        room = self._room()
        if take + future > room and not (alone and take <= room + self.reserved):
            return False
        if not self.kv.admit(req, match, take):
            return False
        if req.num_retractions == 0 and req.num_chunks == 0:
            req.cached_tokens = m
            self.out.cached_tokens += m
            self.kv.cache.note_hit(match)
        self._add(req, take, future)
        return True

    def _extend(self, req: Req) -> bool:
        """Next chunk of a request that already holds a row."""
        take = self._chunk(req.seq_len - req.kv_len)
        if take <= 0 or not self.kv.extend(req, take):
            return False
        self._add(req, take, future_tokens(req, self.ratio))
        return True

    def _add(self, req: Req, take: int, future: float) -> None:
        req.num_chunks += 1
        self.out.reqs.append(req)
        self.out.extend_lens.append(take)
        self.budget -= take
        self.reserved += future
        if req.kv_len + take < req.seq_len:
            self.out.chunked = req  # continues next step; nothing else joins after it
