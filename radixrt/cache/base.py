"""The prefix-cache interface. The radix cache and the no-sharing cache implement it, so
``--disable-radix-cache`` is another implementation rather than branches in the scheduler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MatchResult:
    """What a prefix lookup found.

    ``indices`` are the KV slots of the matched prefix (int64, length = matched tokens, always
    a multiple of page_size); ``last_node`` is an opaque handle that the caller locks while the
    request runs and passes back to `cache_finished_req` / `cache_unfinished_req`.
    ``host_tokens`` / ``disk_tokens``: how many of them `fetch` just brought back from the
    host and disk tiers (the rest were on the device).
    """

    indices: torch.Tensor
    last_node: Any
    host_tokens: int = 0
    disk_tokens: int = 0


class BasePrefixCache(ABC):
    page_size: int
    # Bumped whenever cached slots go back to the allocator (evict, reset): a MatchResult taken
    # under an older generation may name freed slots and must be looked up again.
    generation: int = 0

    @abstractmethod
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest cached prefix of ``token_ids`` (whole pages). Splits a node if needed; marks
        the path as used (LRU)."""

    @abstractmethod
    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Insert a sequence with its KV slots (only whole pages are taken). Returns how many
        leading tokens were already cached; the caller owns (and must free) those of its own
        slots ``kv_indices[:returned]`` that it did not get from the cache."""

    @abstractmethod
    def inc_lock_ref(self, node: Any) -> None:
        """Protect ``node`` and its ancestors from eviction."""

    @abstractmethod
    def dec_lock_ref(self, node: Any) -> None:
        """Undo one `inc_lock_ref`."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` slots from unlocked leaves, least recently used first,
        back to the allocator (fewer if not enough are evictable). Returns slots freed."""

    @abstractmethod
    def reset(self) -> None:
        """Drop every cached entry (the slots go back to the allocator)."""

    @abstractmethod
    def evictable_size(self) -> int:
        """Slots held by the cache and not locked."""

    @abstractmethod
    def protected_size(self) -> int:
        """Slots held by the cache and locked by running requests."""

    def total_size(self) -> int:
        return self.evictable_size() + self.protected_size()

    @abstractmethod
    def cache_finished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                           prefix_len: int, last_node: Any) -> None:
        """A request finished: donate its KV (``kv_indices`` covers ``token_ids``; the first
        ``prefix_len`` slots came from the cache under ``last_node``), free what the cache does
        not keep, and unlock ``last_node``."""

    @abstractmethod
    def cache_unfinished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                             prefix_len: int, last_node: Any) -> MatchResult:
        """A request is still running (chunked prefill, retraction point): insert what it has
        computed so far so others can share it. Slots that turned out to be duplicates are
        freed and replaced by the cache's own; returns the new prefix (its ``indices`` replace
        the request's first ``len(indices)`` slots) with ``last_node`` locked in place of the
        old one."""

    # ------------------------------------------------------------------ lower tiers
    # A cache without lower tiers (radix, none) keeps these defaults.
    def fetch(self, token_ids: Sequence[int], match: MatchResult) -> MatchResult | None:
        """Bring the part of ``token_ids``' cached prefix that lives below the device back to
        it. Returns the (possibly longer) match, or None while it is being read: the request
        waits and asks again at a later step."""
        return match

    def note_hit(self, match: MatchResult) -> None:
        """An admitted request used ``match`` (per-tier hit counters)."""
        return None

    def io_pending(self) -> bool:
        """Background transfers are in flight."""
        return False

    def wait_io(self, timeout: float | None = None) -> None:
        """Block until a background transfer finishes (or ``timeout``)."""
        return None

    def close(self) -> None:
        """Finish background work and stop its threads."""
        return None

    def tier_stats(self) -> dict[str, Any]:
        """Per-tier sizes, hits, bytes and timings (empty without lower tiers)."""
        return {}
