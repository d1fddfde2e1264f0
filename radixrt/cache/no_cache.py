"""The prefix cache used with ``--disable-radix-cache``: nothing is shared, every request's
slots go straight back to the allocator when it finishes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from radixrt.cache.base import BasePrefixCache, MatchResult
from radixrt.cache.memory_pool import KVAllocator


class NoPrefixCache(BasePrefixCache):
    def __init__(self, allocator: KVAllocator):
        self.allocator = allocator
        self.page_size = allocator.page_size

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64), None)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        return 0

    def inc_lock_ref(self, node: Any) -> None:
        pass

    def dec_lock_ref(self, node: Any) -> None:
        pass

    def evict(self, num_tokens: int) -> int:
        return 0

    def reset(self) -> None:
        pass

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def cache_finished_req(self, token_ids, kv_indices, prefix_len, last_node) -> None:
        self.allocator.free(kv_indices)

    def cache_unfinished_req(self, token_ids, kv_indices, prefix_len, last_node) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64), None)
