"""Hierarchical radix cache: the radix tree indexes KV on three tiers (device pool, host pool,
disk) and moves runs between them instead of dropping them.

Every tree node lives on one tier: *device* (``value`` = KV pool slots), *host* (``host_value``
= host pool slots) or *disk* (neither; its run is in `DiskKVStore` blocks). Tiers only go down
a path: a device node's ancestors are on the device, a host node's on the device or the host.
So a match is a device prefix followed by host nodes, then disk nodes.

- Evicting (device LRU, unlocked nodes without device children) copies a node's KV to the
  host pool, making room there by the host LRU; a host node is demoted to the disk tier when
  the disk holds its run, else it is dropped (with its subtree). A run that is neither on the
  host nor on disk is dropped, as in the plain radix cache.
- `fetch` brings a match's lower tiers back: host runs are copied to the device at once; disk
  runs are read by the reader thread straight into new device slots while the scheduler keeps
  stepping (a scheduler with nothing else to do reads blocks too), and the request waits
  (``fetch`` returns None) until the read is applied.
- Disk writes are write-through: when a request finishes, the whole blocks of its sequence
  that the disk lacks are written by a writer thread from the device pool (the nodes stay
  locked, not evictable, until the write completes). ``disk_end`` records how far a node's run
  is on disk.
- Disk nodes are only split at block boundaries (their blocks are whole), except where an
  insert promotes the upper half to the device.
- At start-up the disk's index (block headers) becomes disk nodes; bytes are read on demand.
- Warm start (`warm_start`): right after start-up the most recently written disk runs are read
  in the background into free device slots, up to a budget, so the first requests after a
  restart find them on the device. Warm reads are ordinary read jobs that a request's own read
  (or an eviction that finds nothing else) cancels between two blocks: what was read is kept,
  the rest stays on disk.

Counters ``_evictable`` / ``_protected`` and ``_leaves`` (device nodes without device children)
cover the device tier only, so the scheduler's accounting is unchanged.

Code: this module holds the tree and the moves between device and host; `hicache_disk` the
moves to and from disk (read and write jobs, restore, warm start); `hicache_io` the I/O
threads.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from radixrt.cache.base import MatchResult
from radixrt.cache.disk_store import DiskKVStore
from radixrt.cache.hicache_disk import DiskTier, ReadJob
from radixrt.cache.hicache_io import IOThreads
from radixrt.cache.memory_pool import (
    KVAllocator,
    TokenToKVPool,
    _byte_rows,
    copy_kv,
)
from radixrt.cache.radix_cache import _EMPTY, RadixCache, TreeNode, _as_list, _common_len

logger = logging.getLogger("radixrt.hicache")


@dataclass
class HiCacheStats:
    hit_tokens_device: int = 0  # prompt tokens admitted requests found on each tier
    hit_tokens_host: int = 0
    hit_tokens_disk: int = 0
    device_to_host_bytes: int = 0
    device_to_host_seconds: float = 0.0
    host_to_device_bytes: int = 0
    host_to_device_seconds: float = 0.0
    disk_write_bytes: int = 0
    disk_write_seconds: float = 0.0
    disk_blocks_written: int = 0
    disk_write_errors: int = 0
    disk_read_bytes: int = 0
    disk_read_seconds: float = 0.0
    disk_blocks_read: int = 0
    disk_read_errors: int = 0  # missing, torn, corrupt or foreign blocks (recomputed)
    dropped_tokens: int = 0  # evicted with no lower tier to take them
    warm_start_tokens: int = 0  # read from disk into the device pool by the warm start
    warm_start_cancelled: int = 0  # warm reads cut short by a request's read or an eviction


class HiRadixCache(DiskTier, IOThreads, RadixCache):
    def __init__(self, allocator: KVAllocator, device_pool: TokenToKVPool,
                 host_pool: TokenToKVPool, host_allocator: KVAllocator,
                 disk: DiskKVStore | None = None, page_size: int | None = None):
        super().__init__(allocator, page_size)
        if host_allocator.page_size != allocator.page_size:
            raise ValueError("the host pool must use the device pool's page size")
        if disk is not None and disk.block_tokens % self.page_size:
            raise ValueError(f"disk block of {disk.block_tokens} tokens is not a multiple of "
                             f"page_size {self.page_size}")
        self.device_pool = device_pool
        self.host_pool = host_pool
        self.host_allocator = host_allocator
        self.disk = disk
        self.stats = HiCacheStats()
        self._done: queue.Queue = queue.Queue()  # finished jobs, applied on the caller thread
        self._jobs: dict[str, queue.Queue] = {}
        self._threads: list[threading.Thread] = []
        self._reading: ReadJob | None = None  # the read job the reader thread is on
        # A CPU pool's [layer, K/V] buffers as NumPy byte rows, in the disk payload's order.
        self._pool_rows = [] if device_pool.device.type != "cpu" else [
            _byte_rows(buf) for layer in range(device_pool.num_layers)
            for buf in (device_pool.k_buffers[layer], device_pool.v_buffers[layer])]
        self._in_flight = {"read": 0, "write": 0}
        # Device nodes brought back from a lower tier ("host" / "disk") that no admitted
        # request has used yet: the hit counters attribute them to that tier.
        self._origin: dict[TreeNode, str] = {}
        self._warm_cancel = threading.Event()
        self._warm_in_flight = 0
        self._recent: list[list[int]] = []  # restored runs, most recently written first
        if disk is not None:
            self._restore(disk.scan())

    def _init_tree(self) -> None:
        super()._init_tree()
        self._host_nodes: set[TreeNode] = set()
        self._origin = {}

    # ------------------------------------------------------------------ tier helpers
    @staticmethod
    def _has_device_child(node: TreeNode) -> bool:
        return any(c.value is not None for c in node.children.values())

    def _is_disk_only(self, node: TreeNode) -> bool:
        return node.value is None and node.host_value is None

    def _gain_device(self, node: TreeNode, slots: torch.Tensor) -> None:
        """``node`` (not on the device, its parent is) now holds device ``slots``."""
        node.value = slots
        if node.lock_ref:
            self._protected += len(node.key)
        else:
            self._evictable += len(node.key)
        self._leaves.discard(node.parent)
        if not self._has_device_child(node):
            self._leaves.add(node)

    def _lose_device(self, node: TreeNode) -> torch.Tensor:
        """Take the device slots of an unlocked device node without device children."""
        slots = node.value
        node.value = None
        self._origin.pop(node, None)
        self._evictable -= len(node.key)
        self._leaves.discard(node)
        parent = node.parent
        if parent is not self.root and parent.value is not None and not self._has_device_child(parent):
            self._leaves.add(parent)
        return slots

    def _drop(self, node: TreeNode) -> None:
        """Remove ``node`` (no device slots, unlocked) and its subtree from the tree, freeing
        their host slots (a loading node's device slots are freed by its read job)."""
        parent = node.parent
        if parent.children.get(self._child_key(node.key, 0)) is node:
            del parent.children[self._child_key(node.key, 0)]
        stack = [node]
        while stack:
            n = stack.pop()
            n.dead = True
            self._host_nodes.discard(n)
            self._origin.pop(n, None)
            if n.host_value is not None:
                self.host_allocator.free(n.host_value)
                n.host_value = None
            stack.extend(n.children.values())
        if parent is not self.root and parent.value is not None and not self._has_device_child(parent):
            self._leaves.add(parent)

    # ------------------------------------------------------------------ tree walk
    def _split(self, node: TreeNode, k: int) -> TreeNode:
        parent = node.parent
        upper = TreeNode(node.key[:k], None if node.value is None else node.value[:k].clone(),
                         parent, node.last_access_time)
        upper.start = node.start
        upper.lock_ref = node.lock_ref
        upper.disk_end = min(node.disk_end, node.start + k)
        if node.value is not None:
            node.value = node.value[k:].clone()
        if node.host_value is not None:
            upper.host_value = node.host_value[:k].clone()
            node.host_value = node.host_value[k:].clone()
            if node in self._host_nodes:
                self._host_nodes.add(upper)
        if node in self._origin:
            self._origin[upper] = self._origin[node]
        if node.loading is not None:
            job = upper.loading = node.loading
            job.nodes.add(upper)
            pending = job.pending[node]
            job.pending[upper], job.pending[node] = pending[:k], pending[k:]
        node.start += k
        node.key = node.key[k:]
        node.parent = upper
        upper.children[self._child_key(node.key, 0)] = node
        parent.children[self._child_key(upper.key, 0)] = upper
        return upper

    def _path(self, tokens: list[int], end: int, fine: bool = False) -> list[TreeNode]:
        """Nodes along ``tokens[:end]`` on every tier, splitting where the path ends inside a
        node, stamped as used. A disk-only node is only split at a block boundary (a lookup
        must not leave a disk node that ends inside a block, whose block it could not name),
        unless ``fine``: an insert about to give it device slots, or a restore that needs a
        branch point inside a block."""
        tick = next(self._clock)
        node, pos, path = self.root, 0, []
        self.root.last_access_time = tick
        block = self.disk.block_tokens if self.disk is not None else self.page_size
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            k = _common_len(child.key, tokens, pos, end)
            k -= k % self.page_size
            if k < len(child.key) and not fine and self._is_disk_only(child):
                k = (child.start + k) // block * block - child.start
            if k <= 0:
                break
            if k < len(child.key):
                child = self._split(child, k)
            child.last_access_time = tick
            path.append(child)
            pos += k
            node = child
        return path

    def _walk(self, tokens: list[int], end: int):
        path = self._path(tokens, end)
        dev = [n for n in path if n.value is not None]
        return (dev[-1] if dev else self.root), [n.value for n in dev], sum(len(n.key) for n in dev)

    # ------------------------------------------------------------------ lookup / insert
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """The device part of the longest cached prefix (see `fetch` for the rest)."""
        self.poll_io()
        tokens = _as_list(token_ids)
        node, values, _ = self._walk(tokens, len(tokens) - len(tokens) % self.page_size)
        if not values:
            return MatchResult(_EMPTY.clone(), self.root)
        return MatchResult(values[0].clone() if len(values) == 1 else torch.cat(values), node)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Insert like the radix cache; nodes of the path on lower tiers take the caller's
        device slots (their lower copies are freed), so the return value is where the device
        prefix ended: the caller's slots after it now belong to the cache."""
        tokens = _as_list(token_ids)
        end = len(tokens) - len(tokens) % self.page_size
        if len(kv_indices) < end:
            raise ValueError(f"{len(kv_indices)} KV slots for {end} tokens")
        path = self._path(tokens, end, fine=True)
        dev_end, pos = 0, 0
        for n in path:
            pos = n.start + len(n.key)
            if n.value is not None:
                dev_end = pos
                continue
            if n.host_value is not None:
                self.host_allocator.free(n.host_value)
                n.host_value = None
                self._host_nodes.discard(n)
            self._gain_device(n, kv_indices[n.start:pos].to(torch.int64).clone())
        if pos < end:
            parent = path[-1] if path else self.root
            leaf = TreeNode(tokens[pos:end], kv_indices[pos:end].to(torch.int64).clone(), parent,
                            parent.last_access_time)
            parent.children[self._child_key(tokens, pos)] = leaf
            self._leaves.discard(parent)
            self._leaves.add(leaf)
            self._evictable += end - pos
        return dev_end

    def cache_finished_req(self, token_ids, kv_indices, prefix_len, last_node) -> None:
        super().cache_finished_req(token_ids, kv_indices, prefix_len, last_node)
        self._write_through(_as_list(token_ids))

    # ------------------------------------------------------------------ eviction
    def evict(self, num_tokens: int) -> int:
        """Free device slots from unlocked leaves of the device tier, least recently used
        first, moving their KV down a tier. Waits for pending disk writes (which hold their
        nodes) when nothing else is left to evict."""
        if num_tokens <= 0:
            return 0
        self.poll_io()
        freed, released = 0, []
        while True:
            heap = [(n.last_access_time, n.id, n) for n in self._leaves if n.lock_ref == 0]
            heapq.heapify(heap)
            while freed < num_tokens and heap:
                _, _, node = heapq.heappop(heap)
                parent = node.parent
                released.append(self._demote_device(node))
                freed += len(released[-1])
                if parent in self._leaves and parent.lock_ref == 0:
                    heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
            if freed >= num_tokens:
                break
            if self._warm_in_flight:  # warm reads hold slots: stop them, keep what was read
                self._warm_cancel.set()
                while self._warm_in_flight:
                    self.wait_io()
                continue
            if not self._in_flight["write"]:
                break
            self.wait_io(writes=True)
        if released:
            self.allocator.free(torch.cat(released))
            self.generation += 1
        return freed

    def _demote_device(self, node: TreeNode) -> torch.Tensor:
        n = len(node.key)
        host = self._host_alloc(n)
        if host is not None:
            t0 = time.perf_counter()
            copy_kv(self.device_pool, node.value, self.host_pool, host)
            self.stats.device_to_host_seconds += time.perf_counter() - t0
            self.stats.device_to_host_bytes += n * self._bytes_per_token()
            slots = self._lose_device(node)
            node.host_value = host
            self._host_nodes.add(node)
            return slots
        slots = self._lose_device(node)
        self._to_disk_or_drop(node)
        return slots

    def _to_disk_or_drop(self, node: TreeNode) -> None:
        """``node`` has no device or host slots left: keep the part of its run that is on disk
        (whole blocks) as a disk node, drop the rest with its subtree."""
        block = self.disk.block_tokens if self.disk is not None else 0
        end = node.start + len(node.key)
        keep = min(node.disk_end, end) // block * block if block else 0
        if keep <= node.start:
            self.stats.dropped_tokens += len(node.key)
            self._drop(node)
            return
        if keep < end:
            self._split(node, keep - node.start)
            self.stats.dropped_tokens += len(node.key)
            self._drop(node)  # the lower part, after the last whole block on disk

    def _host_alloc(self, n: int) -> torch.Tensor | None:
        """``n`` host slots, making room by demoting host LRU leaves to disk (or dropping)."""
        slots = self.host_allocator.alloc(n)
        if slots is not None or n > self.host_allocator.size:
            return slots
        heap = [(x.last_access_time, x.id, x) for x in self._host_nodes if self._host_evictable(x)]
        heapq.heapify(heap)
        while heap and self.host_allocator.available_size() < n:
            _, _, x = heapq.heappop(heap)
            parent = x.parent
            self.host_allocator.free(x.host_value)
            x.host_value = None
            self._host_nodes.discard(x)
            self._to_disk_or_drop(x)
            if parent in self._host_nodes and self._host_evictable(parent):
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        return self.host_allocator.alloc(n)

    @staticmethod
    def _host_evictable(node: TreeNode) -> bool:
        return (node.lock_ref == 0
                and not any(c.host_value is not None for c in node.children.values()))

    def _bytes_per_token(self) -> int:
        p = self.device_pool
        return TokenToKVPool.bytes_per_token(p.num_layers, p.k_buffers[0].shape[1],
                                             p.k_buffers[0].shape[2], p.k_buffers[0].dtype)

    # ------------------------------------------------------------------ bring back
    def fetch(self, token_ids: Sequence[int], match: MatchResult) -> MatchResult | None:
        """Bring the lower-tier part of ``token_ids``' cached prefix to the device. Returns
        the longer match, ``match``'s device prefix when nothing more is cached (or there is no
        room), or None while disk blocks of the prefix are being read (ask again next step)."""
        self.poll_io()
        tokens = _as_list(token_ids)
        path = self._path(tokens, len(tokens) - len(tokens) % self.page_size)
        lower = [n for n in path if n.value is None]
        if not lower:
            return self._device_match(path) if self._origin else match
        if any(n.loading is not None for n in lower):
            return None
        hosted = []
        for n in lower:
            if n.host_value is None:
                break
            hosted.append(n)
        if hosted and not self._load_host(hosted):
            return self._device_match(path)
        on_disk = self._whole_blocks(lower[len(hosted):])
        if on_disk and self._start_read(tokens, on_disk):
            return None
        return self._device_match(path)

    def _device_match(self, path: list[TreeNode]) -> MatchResult:
        dev = [x for x in path if x.value is not None]
        if not dev:
            return MatchResult(_EMPTY.clone(), self.root)
        origin = {"host": 0, "disk": 0}
        for x in dev:
            if x in self._origin:
                origin[self._origin[x]] += len(x.key)
        return MatchResult(torch.cat([x.value for x in dev]), dev[-1], host_tokens=origin["host"],
                           disk_tokens=origin["disk"])

    def _load_host(self, hosted: list[TreeNode]) -> bool:
        """Copy host nodes (consecutive on a path below the device part) to the device."""
        n = sum(len(x.key) for x in hosted)
        last = hosted[-1]
        self.inc_lock_ref(last)  # the whole path stays while room is made
        try:
            slots = self.allocator.alloc(n)
            if slots is None:
                self.evict(n + self.page_size)
                slots = self.allocator.alloc(n)
            if slots is None:
                return False
            t0 = time.perf_counter()
            copy_kv(self.host_pool, torch.cat([x.host_value for x in hosted]), self.device_pool, slots)
            self.stats.host_to_device_seconds += time.perf_counter() - t0
            self.stats.host_to_device_bytes += n * self._bytes_per_token()
            off = 0
            for x in hosted:
                self.host_allocator.free(x.host_value)
                x.host_value = None
                self._host_nodes.discard(x)
                self._gain_device(x, slots[off:off + len(x.key)])
                self._origin[x] = "host"
                off += len(x.key)
        finally:
            self.dec_lock_ref(last)
        return True

    def note_hit(self, match: MatchResult) -> None:
        self.stats.hit_tokens_host += match.host_tokens
        self.stats.hit_tokens_disk += match.disk_tokens
        self.stats.hit_tokens_device += len(match.indices) - match.host_tokens - match.disk_tokens
        node = match.last_node
        while self._origin and node is not None:
            self._origin.pop(node, None)
            node = node.parent

    # ------------------------------------------------------------------ reset / stats
    def reset(self, clear_disk: bool = True) -> None:
        """Drop every tier (the disk's files of this model too, unless ``clear_disk`` is
        False)."""
        self.drain_io()
        if self._protected:
            raise RuntimeError(f"reset() while {self._protected} cached slots are locked")
        dev, host = [], []
        for n in self._iter_nodes():
            if n.value is not None:
                dev.append(n.value)
            if n.host_value is not None:
                host.append(n.host_value)
            n.dead = True
        if dev:
            self.allocator.free(torch.cat(dev))
        if host:
            self.host_allocator.free(torch.cat(host))
        self.generation += 1
        self._init_tree()
        if clear_disk and self.disk is not None:
            self.disk.clear()

    def tier_tokens(self) -> dict[str, int]:
        out = {"device": 0, "host": 0, "disk": 0}
        for n in self._iter_nodes():
            tier = "device" if n.value is not None else "host" if n.host_value is not None else "disk"
            out[tier] += len(n.key)
        return out

    def tier_stats(self) -> dict[str, object]:
        self.poll_io()
        bpt = self._bytes_per_token()
        out: dict[str, object] = asdict(self.stats)
        out.update({
            "host_capacity_tokens": self.host_allocator.size,
            "host_used_tokens": self.host_allocator.size - self.host_allocator.available_size(),
            "host_capacity_bytes": self.host_allocator.size * bpt,
            "tree_tokens": self.tier_tokens(),
            "io_in_flight": dict(self._in_flight),
        })
        if self.disk is not None:
            out["disk"] = self.disk.stats()
        return out
