"""KV bookkeeping of running requests: reserve, release, share, and room for decoding.

A running request holds a row of the ``ReqToTokenPool``: the KV slot of each of its tokens.
Its first ``prefix_len`` slots belong to the prefix cache (under the locked ``last_node``); the
rest it owns until it finishes or is retracted, when `release` donates them to the cache.
Invariant (tested after every scenario): free + held by running requests + held by the
cache == total slots.
"""

from __future__ import annotations

import torch

from radixrt.cache.base import BasePrefixCache, MatchResult
from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool
from radixrt.cache.no_cache import NoPrefixCache
from radixrt.scheduler.req import Req


class RunningKV:
    def __init__(self, allocator: KVAllocator, req_pool: ReqToTokenPool, cache: BasePrefixCache,
                 page_size: int):
        self.allocator = allocator
        self.req_pool = req_pool
        self.cache = cache
        self.page_size = page_size

    @property
    def table(self) -> torch.Tensor:
        return self.req_pool.req_to_token

    # ------------------------------------------------------------------ reserve
    def alloc_slots(self, n: int, last_slot: int | None = None) -> torch.Tensor | None:
        """``n`` slots continuing the page of ``last_slot``, evicting cache leaves if needed."""
        slots = self.allocator.alloc(n, last_slot)
        if slots is None:
            self.cache.evict(n + self.page_size)
            slots = self.allocator.alloc(n, last_slot)
        return slots

    def admit(self, req: Req, match: MatchResult, take: int) -> bool:
        """Give a waiting request a row holding its cached prefix (``match``, locked from now
        on) and slots for its next ``take`` tokens. False (and nothing held) when either the
        row or the slots cannot be had."""
        row = self.req_pool.alloc()
        if row is None:
            return False
        m = len(match.indices)
        self.cache.inc_lock_ref(match.last_node)
        slots = self.alloc_slots(take, int(match.indices[-1]) if m else None)
        if slots is None:
            self.cache.dec_lock_ref(match.last_node)
            self.req_pool.free(row)
            return False
        if m:
            self.table[row, :m] = match.indices
        self.table[row, m:m + take] = slots
        req.row, req.kv_len, req.prefix_len, req.last_node = row, m, m, match.last_node
        return True

    def extend(self, req: Req, take: int) -> bool:
        """Slots for the next ``take`` tokens of a request that already holds a row."""
        last = self.last_slot(req) if req.kv_len else None
        slots = self.alloc_slots(take, last)
        if slots is None:
            return False
        self.table[req.row, req.kv_len:req.kv_len + take] = slots
        return True

    def last_slot(self, req: Req) -> int:
        return int(self.table[req.row, req.kv_len - 1])

    def decode_need(self, running: list[Req]) -> int:
        """Slots the next decode step must allocate: each request's uncommitted tokens and
        draft, beyond the free tail of its last page, in whole pages."""
        ps = self.page_size
        total = 0
        for r in running:
            n = r.seq_len - r.kv_len + len(r.draft_ids) - (-r.kv_len) % ps
            total += -(-max(n, 0) // ps) * ps
        return total

    def decode_shortfall(self, running: list[Req]) -> int:
        return max(0, self.decode_need(running) - self.allocator.available_size())

    def append_decode_slots(self, req: Req, n: int) -> torch.Tensor:
        """Slots for ``n`` new tokens after ``req``'s last one (room made beforehand)."""
        slots = self.allocator.alloc(n, self.last_slot(req))
        if slots is None:
            raise RuntimeError("KV allocation failed after reserving decode memory")
        self.table[req.row, req.kv_len:req.kv_len + n] = slots
        return slots

    def append_decode_slots_batch(self, reqs: list[Req], ns: list[int]) -> torch.Tensor:
        """``append_decode_slots`` for a whole decode batch: the slots of ``ns[i]`` new tokens
        after each ``reqs[i]``'s last one, concatenated in order (room made beforehand). With
        single-slot pages this is one allocation and one table write for the batch (the same
        slots the per-request calls would hand out), not a few small tensor ops per request."""
        if self.page_size > 1:  # each request continues its own last page
            parts = [self.append_decode_slots(r, n) for r, n in zip(reqs, ns, strict=True)]
            return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        total = sum(ns)
        if len(ns) != len(reqs) or min(ns, default=0) < 0:
            raise ValueError(f"need one non-negative count per request, got {ns} for {len(reqs)}")
        if total == 0:
            return torch.empty(0, dtype=torch.int64)
        slots = self.allocator.alloc(total)
        if slots is None:
            raise RuntimeError("KV allocation failed after reserving decode memory")
        # One by one, each request would take the free list's last n slots (in list order):
        # hand out the block from its end the same way.
        if min(ns) == 1 == max(ns):  # one token each (plain decode)
            slots = slots.flip(0)
            rows, cols = [r.row for r in reqs], [r.kv_len for r in reqs]
        else:
            block, order, end = slots.tolist(), [], total
            for n in ns:
                order.extend(block[end - n:end])
                end -= n
            slots = torch.tensor(order, dtype=torch.int64)
            rows = [r.row for r, n in zip(reqs, ns) for _ in range(n)]
            cols = [r.kv_len + i for r, n in zip(reqs, ns) for i in range(n)]
        self.table[torch.tensor(rows), torch.tensor(cols)] = slots
        return slots

    def commit_draft(self, req: Req, kept: int, proposed: int) -> None:
        """KV was written for ``proposed`` draft tokens after ``req.kv_len``; keep the first
        ``kept`` and free the slots of the rest (the page holding the last kept slot stays)."""
        base = req.kv_len
        req.kv_len = base + kept
        dropped = self.table[req.row, base + kept:base + proposed].clone()
        if not dropped.numel():
            return
        if self.page_size > 1:
            keep_page = self.last_slot(req) // self.page_size
            dropped = dropped[dropped // self.page_size != keep_page]
        self.allocator.free(dropped)

    # ------------------------------------------------------------------ release / share
    def release(self, req: Req) -> None:
        """Give a request's KV to the cache (or the allocator) and free its row."""
        if req.row is None:
            return
        slots = self.table[req.row, :req.kv_len].clone()
        self.cache.cache_finished_req(req.fill_ids[:req.kv_len], slots, req.prefix_len, req.last_node)
        self.req_pool.free(req.row)
        req.row, req.kv_len, req.prefix_len, req.last_node = None, 0, 0, None
        req.draft_ids = []

    def share(self, req: Req) -> None:
        """Insert a running request's computed tokens into the cache so others can share them;
        its row then points at the cache's slots for that prefix."""
        if isinstance(self.cache, NoPrefixCache):
            return
        slots = self.table[req.row, :req.kv_len].clone()
        m = self.cache.cache_unfinished_req(req.fill_ids[:req.kv_len], slots, req.prefix_len,
                                            req.last_node)
        n = len(m.indices)
        self.table[req.row, :n] = m.indices
        req.prefix_len, req.last_node = n, m.last_node

    # ------------------------------------------------------------------ accounting
    def held_slots(self, req: Req) -> int:
        """Slots owned by ``req`` itself (not by the cache), counted in whole pages."""
        if req.row is None or req.kv_len <= req.prefix_len:
            return 0
        ps = self.page_size
        own = self.table[req.row, req.prefix_len:req.kv_len]
        return len(torch.unique(own // ps)) * ps if ps > 1 else own.numel()

    def accounting(self, holders: list[Req]) -> dict[str, int]:
        return {
            "total": self.allocator.size,
            "free": self.allocator.available_size(),
            "running": sum(self.held_slots(r) for r in holders),
            "cached": self.cache.total_size(),
        }
