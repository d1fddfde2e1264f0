"""PrefillAdder: picks the requests of the next extend batch under the KV budget.

Budget: free slots + evictable cache slots - what running requests are expected to still
need (their remaining max_new_tokens times the scheduler's new-token ratio). Long prompts are
cut into chunks of ``--chunked-prefill-size`` tokens. When a waiting request shares a long
prefix with one already admitted in this batch that the cache does not hold yet, it is held
back one step so the prefix is computed once and then served from the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixrt.scheduler.req import Req
from radixrt.scheduler.policy import match_len_limit

if TYPE_CHECKING:
    from radixrt.scheduler.scheduler import Scheduler

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


class PrefillAdder:
    def __init__(self, sched: Scheduler):
        self.s = sched
        args = sched.args
        budget = args.max_prefill_tokens
        self.chunking = args.chunked_prefill_size > 0
        if self.chunking:
            budget = min(budget, args.chunked_prefill_size)
        self.budget = budget
        self.batch: list[Req] = []
        self.extend_lens: list[int] = []
        self.rejected: list[Req] = []
        self.reserved = sched.reserved_for_running()

    def _room(self) -> float:
        s = self.s
        return s.allocator.available_size() + s.cache.evictable_size() - self.reserved

    def _chunk(self, extend: int) -> int:
        """Tokens of a prompt of ``extend`` remaining tokens to take in this batch."""
        if extend <= self.budget:
            return extend
        if not self.chunking:
            return extend if not self.batch else 0
        ps = self.s.page_size
        return self.budget // ps * ps

    def build(self) -> list[Req]:
        s = self.s
        if s.chunked is not None:
            req = s.chunked
            s.chunked = None
            if not self._extend(req, req.seq_len - req.kv_len):
                s.chunked = req
                return []
        if not s.waiting:
            return self.batch
        max_running = s.args.max_running_requests
        if len(s.running) + len(self.batch) >= max_running or s.req_pool.available_size() == 0:
            return self.batch
        admitted: list[Req] = []
        for req, _ in s.policy.order(list(s.waiting)):
            if self.budget <= 0 or s.chunked is not None:
                break
            if len(s.running) + len(self.batch) >= max_running or s.req_pool.available_size() == 0:
                break
            ok = self._admit(req)
            if ok is None:
                continue  # deferred
            if not ok:
                break
            admitted.append(req)
        for req in admitted:
            s.waiting.remove(req)
        return self.batch

    def _admit(self, req: Req) -> bool | None:
        s = self.s
        token_ids = req.fill_ids
        match = s.cache.match_prefix(token_ids[: match_len_limit(req)])
        m = len(match.indices)
        for other in self.batch:
            shared = common_prefix_len(token_ids, other.fill_ids)
            if shared >= m + IN_BATCH_SHARE_THRESHOLD:
                return None
        extend = req.seq_len - m
        take = self._chunk(extend)
        if take <= 0:
            return False
        future = min(req.remaining_new_tokens(), RESERVE_CLIP) * s.new_token_ratio
        alone = not s.running and not self.batch
        if take + future > self._room() and not (alone and take <= self._room() + self.reserved):
            return False
        row = s.req_pool.alloc()
        if row is None:
            return False
        s.cache.inc_lock_ref(match.last_node)
        slots = s.alloc_slots(take, int(match.indices[-1]) if m else None)
        if slots is None:
            s.cache.dec_lock_ref(match.last_node)
            s.req_pool.free(row)
            return False
        table = s.req_pool.req_to_token
        if m:
            table[row, :m] = match.indices
        table[row, m:m + take] = slots
        req.row, req.kv_len, req.prefix_len, req.last_node = row, m, m, match.last_node
        if req.num_retractions == 0 and req.num_chunks == 0:
            req.cached_tokens = m
            s.stats.num_cached_tokens += m
        self._add(req, take, future)
        return True

    def _extend(self, req: Req, remaining: int) -> bool:
        """Next chunk of a request that already holds a row."""
        s = self.s
        take = self._chunk(remaining)
        if take <= 0:
            return False
        last = int(s.req_pool.req_to_token[req.row, req.kv_len - 1]) if req.kv_len else None
        slots = s.alloc_slots(take, last)
        if slots is None:
            return False
        s.req_pool.req_to_token[req.row, req.kv_len:req.kv_len + take] = slots
        self._add(req, take, min(req.remaining_new_tokens(), RESERVE_CLIP) * s.new_token_ratio)
        return True

    def _add(self, req: Req, take: int, future: float) -> None:
        req.num_chunks += 1
        self.batch.append(req)
        self.extend_lens.append(take)
        self.budget -= take
        self.reserved += future
        if req.kv_len + take < req.seq_len:
            self.s.chunked = req  # continues next step; nothing else joins after it
