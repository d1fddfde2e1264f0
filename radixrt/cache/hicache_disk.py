"""The disk tier's moves for `HiRadixCache`: read jobs (disk blocks into device slots, for a
request or for the warm start), write-through jobs (finished sequences' whole blocks to disk),
and the tree built from the disk's index at start-up. Jobs are prepared and applied on the
scheduler's thread; `_read` / `_write` run on the I/O threads (`hicache_io`).

Only NumPy moves KV on the I/O threads: a torch op there would open a second OpenMP team next
to the forward's (see `radixrt.model.runner.on_fresh_thread`).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from radixrt.cache.disk_store import BlockInfo
from radixrt.cache.memory_pool import gather_kv, scatter_kv
from radixrt.cache.radix_cache import TreeNode

logger = logging.getLogger("radixrt.hicache")


class ReadJob:
    def __init__(self, lock_node: TreeNode, span_start: int, first: int, blocks: list,
                 slots: torch.Tensor, cancel: threading.Event | None = None):
        self.nodes: set[TreeNode] = set()
        self.pending: dict[TreeNode, torch.Tensor] = {}  # each node's share of ``slots``
        self.lock_node = lock_node
        self.span_start = span_start  # absolute position of slots[0]
        self.first = first  # first block index
        self.blocks = blocks  # [(key, tokens)] for blocks first, first + 1, ...
        self.slots = slots  # device slots for positions span_start .. (read-only once queued)
        self.ok_end = span_start  # set by the reader: blocks read OK cover up to here
        self.nbytes = 0
        self.seconds = 0.0
        self.errors = 0
        # Warm-start reads share one event: set, every queued warm read stops before its next
        # block (one event, so a later warm read never fills nodes below an earlier one that
        # stopped short).
        self.cancel = cancel
        self.cancelled = False
        # Blocks are taken in order by the reader thread and by a scheduler thread waiting
        # for the job (`HiRadixCache.wait_io`), under ``lock``.
        self.lock = threading.Condition()
        self.next = 0  # the next block to take
        self.active = 0  # blocks being read
        self.ok = [False] * len(blocks)
        self.closed = False


class WriteJob:
    def __init__(self, tokens: list[int], lock_node: TreeNode, keys: list[str],
                 blocks: list[tuple[int, torch.Tensor]]):
        self.tokens = tokens  # the sequence (whole blocks)
        self.lock_node = lock_node
        self.keys = keys  # key of every block of tokens
        self.blocks = blocks  # [(block index, device slots)] to write
        self.nbytes = 0
        self.seconds = 0.0
        self.written = 0
        self.errors = 0


class DiskTier:
    """Mixin of `HiRadixCache`: the moves to and from the disk tier (see its docstring for the
    tree's rules)."""

    def _whole_blocks(self, nodes: list[TreeNode]) -> list[TreeNode]:
        """``nodes`` (disk nodes along a path) up to the last block boundary: the blocks of a
        run that ends inside a block hold tokens the path does not name. A node across that
        boundary is split there."""
        if self.disk is None:
            return []
        b = self.disk.block_tokens
        out = list(nodes)
        while out:
            last = out[-1]
            end = last.start + len(last.key)
            if end % b == 0:
                break
            cut = end // b * b
            if cut > last.start:
                out[-1] = self._split(last, cut - last.start)
                break
            out.pop()
        return out

    def _within(self, nodes: list[TreeNode], limit: int) -> list[TreeNode]:
        """The leading ``nodes`` that hold at most ``limit`` tokens and end at a block
        boundary (``nodes`` may start inside a block), the last one split there if needed."""
        if not nodes:
            return []
        end = (nodes[0].start + limit) // self.disk.block_tokens * self.disk.block_tokens
        out = []
        for x in nodes:
            if x.start >= end:
                break
            if x.start + len(x.key) > end:
                out.append(self._split(x, end - x.start))
                break
            out.append(x)
        return out

    def _start_read(self, tokens: list[int], nodes: list[TreeNode], warm: bool = False) -> int:
        """Queue a read of disk nodes ``nodes`` (consecutive on one path below the device
        part, the last ending at a block boundary) straight into new device slots. Returns the
        tokens queued: 0 when nothing could be (no room). A ``warm`` read (warm start) takes free slots only
        and can be cancelled; any other read cancels the warm reads still queued, which would
        delay it."""
        b = self.disk.block_tokens
        if not warm:
            self._cancel_warm()
        limit = self.allocator.size // 2 // b * b  # one read takes at most half the pool
        held = nodes[-1]
        self.inc_lock_ref(held)  # the path stays while room is made
        try:
            slots = None
            while nodes and limit >= b:
                nodes = self._within(nodes, limit)
                n = sum(len(x.key) for x in nodes)
                slots = self.allocator.alloc(n)
                if slots is None and not warm:
                    self.evict(n + self.page_size)
                    slots = self.allocator.alloc(n)
                if slots is not None:
                    break
                limit = limit // 2 // b * b
            if slots is None or not nodes:
                return 0
            # Ascending slots: a whole block then usually lands in consecutive pool rows,
            # which the reader fills straight from the file.
            slots = slots.sort().values
            start, end = nodes[0].start, nodes[-1].start + len(nodes[-1].key)
            first = start // b
            keys = self.disk.chain_keys(tokens, end // b)[first:]
            blocks = [(k, tokens[(first + i) * b:(first + i + 1) * b]) for i, k in enumerate(keys)]
            job = ReadJob(nodes[-1], start, first, blocks, slots,
                           self._warm_cancel if warm else None)
            if warm:
                self._warm_in_flight += 1
            off = 0
            for x in nodes:
                job.pending[x] = slots[off:off + len(x.key)]
                x.loading = job
                job.nodes.add(x)
                off += len(x.key)
            # Slots being filled count as cached and locked until the job is applied.
            self._protected += len(slots)
            self.inc_lock_ref(nodes[-1])
            self._submit("read", job)
            return len(slots)
        finally:
            self.dec_lock_ref(held)

    def _read(self, job: ReadJob) -> None:
        """The reader thread's share of ``job`` (a scheduler waiting in `wait_io` takes blocks
        too); returns when every block taken, by either thread, is done."""
        with job.lock:
            self._reading = job
        try:
            self._read_blocks(job)
        finally:
            with job.lock:
                self._reading = None
                while job.active:
                    job.lock.wait()
                job.closed = True  # a helper that comes late takes nothing
        b = self.disk.block_tokens
        n = 0
        while n < len(job.blocks) and job.ok[n]:
            n += 1
        job.ok_end = job.span_start if n == 0 else (job.first + n) * b

    def _read_blocks(self, job: ReadJob, deadline: float | None = None) -> None:
        """Read blocks of ``job`` in order, one at a time, until none are left, one failed,
        the job is cancelled or (a helper) ``deadline`` (time.monotonic) has passed. Several
        threads may run this on one job."""
        b, pool = self.disk.block_tokens, self.device_pool
        while deadline is None or time.monotonic() < deadline:
            with job.lock:
                i = job.next
                if job.closed or job.cancelled or job.errors or i >= len(job.blocks):
                    return
                if job.cancel is not None and job.cancel.is_set():
                    job.cancelled = True
                    return
                job.next += 1
                job.active += 1
            try:
                key, tokens = job.blocks[i]
                t0 = time.perf_counter()
                pos = job.span_start if i == 0 else (job.first + i) * b
                lo = pos - (job.first + i) * b
                off = pos - job.span_start
                slots = job.slots[off:off + b - lo]
                first = int(slots[0])
                if lo == 0 and self._pool_rows and int(slots[-1]) - first == b - 1:
                    # A whole block into consecutive rows: read the file straight into the pool.
                    into = [rows[first:first + b] for rows in self._pool_rows]
                    ok = self.disk.read_block(key, tokens, into) is not None
                else:
                    data = self.disk.read_block(key, tokens)
                    ok = data is not None
                    if ok:
                        scatter_kv(pool, slots, data[:, :, lo:])
            except Exception:  # a bug: report it, fail the block (recomputed), keep serving
                logger.exception("hicache: reading a KV block failed")
                ok = False
            with job.lock:
                job.active -= 1
                job.ok[i] = ok
                if ok:
                    job.nbytes += self.disk.block_bytes
                    job.seconds += time.perf_counter() - t0
                else:
                    job.errors += 1
                job.lock.notify_all()

    def _finish_read(self, job: ReadJob) -> None:
        self.stats.disk_read_bytes += job.nbytes
        self.stats.disk_read_seconds += job.seconds
        self.stats.disk_blocks_read += len(job.blocks) - job.errors
        self.stats.disk_read_errors += job.errors
        self._protected -= len(job.slots)
        if job.cancel is not None:
            self._warm_in_flight -= 1
            self.stats.warm_start_tokens += job.ok_end - job.span_start
            self.stats.warm_start_cancelled += job.cancelled
            if not self._warm_in_flight:
                self._warm_cancel.clear()
        # A cancelled read leaves the nodes it did not reach on disk, whole; a failed one
        # drops them (their blocks are gone).
        keep = job.cancelled and not job.errors
        unused = []
        for x in sorted(job.nodes, key=lambda n: n.start):
            x.loading = None
            slots = job.pending.pop(x)
            end = x.start + len(x.key)
            if x.dead or x.value is not None:  # gone, or recomputed meanwhile
                unused.append(slots)
            elif end <= job.ok_end:
                self._gain_device(x, slots)
                self._origin[x] = "disk"
            elif x.start < job.ok_end:  # read up to a damaged block: keep what was read
                k = job.ok_end - x.start
                upper = self._split(x, k)
                self._gain_device(upper, slots[:k])
                self._origin[upper] = "disk"
                unused.append(slots[k:])
                if not keep:
                    self._drop(x)
            else:
                unused.append(slots)
                if not keep:
                    self._drop(x)
        self.dec_lock_ref(job.lock_node)
        if unused:
            self.allocator.free(torch.cat(unused))
            self.generation += 1

    def _write_through(self, tokens: list[int]) -> None:
        disk = self.disk
        if disk is None or not disk.writable:
            return
        b = disk.block_tokens
        nb = len(tokens) // b
        if nb == 0:
            return
        path = self._path(tokens, nb * b)
        dev = [x for x in path if x.value is not None]
        nb = sum(len(x.key) for x in dev) // b
        if nb == 0:
            return
        keys = disk.chain_keys(tokens, nb)
        # Blocks another queued job also writes are written (skipped) again: jobs run in order
        # on one thread, so this job's completion sees all of its blocks on disk.
        todo = [i for i, k in enumerate(keys) if not disk.contains(k)]
        if not todo:
            self._mark_disk(tokens, keys)
            return
        slots = torch.cat([x.value for x in dev])
        lock = dev[-1]
        while lock.start >= nb * b:  # the node that ends the last whole block
            lock = lock.parent
        job = WriteJob(tokens[:nb * b], lock, keys, [(i, slots[i * b:(i + 1) * b]) for i in todo])
        self.inc_lock_ref(lock)
        self._submit("write", job)

    def _write(self, job: WriteJob) -> None:
        b = self.disk.block_tokens
        for i, slots in job.blocks:
            t0 = time.perf_counter()
            data = gather_kv(self.device_pool, slots)
            parent = job.keys[i - 1] if i else self.disk.root_key
            if self.disk.write_block(job.keys[i], parent, job.tokens[i * b:(i + 1) * b], data):
                job.written += 1
                job.nbytes += data.numel() * data.element_size()
            else:
                job.errors += 1
            job.seconds += time.perf_counter() - t0

    def _finish_write(self, job: WriteJob) -> None:
        self.dec_lock_ref(job.lock_node)
        self.stats.disk_write_bytes += job.nbytes
        self.stats.disk_write_seconds += job.seconds
        self.stats.disk_blocks_written += job.written
        self.stats.disk_write_errors += job.errors
        self._mark_disk(job.tokens, job.keys)

    def _mark_disk(self, tokens: list[int], keys: list[str]) -> None:
        """Record on the nodes of ``tokens``' path how far their runs are on disk (the
        leading blocks the disk holds)."""
        n = 0
        while n < len(keys) and self.disk.contains(keys[n]):
            n += 1
        end = n * self.disk.block_tokens
        node, pos = self.root, 0
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            seg = min(len(child.key), end - pos)
            if child.key[:seg] != tokens[pos:pos + seg]:
                break
            child.disk_end = max(child.disk_end, child.start + seg)
            if seg < len(child.key):
                break
            pos += seg
            node = child

    def _restore(self, blocks: dict[str, BlockInfo]) -> None:
        """Disk nodes for every chain of blocks found on disk that starts at the root."""
        children: dict[str, list[str]] = {}
        for key, info in blocks.items():
            children.setdefault(info.parent, []).append(key)
        stack = [(k, []) for k in children.get(self.disk.root_key, [])]
        restored = 0
        order = {key: i for i, key in enumerate(blocks)}  # oldest file first
        runs: list[tuple[int, list[int]]] = []
        while stack:
            key, prefix = stack.pop()
            tokens = prefix + blocks[key].tokens
            kids = children.get(key, [])
            if kids:
                stack.extend((k, tokens) for k in kids)
                continue
            runs.append((order[key], tokens))
            path = self._path(tokens, len(tokens), fine=True)
            pos = path[-1].start + len(path[-1].key) if path else 0
            for x in path:
                x.disk_end = max(x.disk_end, x.start + len(x.key))
            if pos < len(tokens):
                parent = path[-1] if path else self.root
                leaf = TreeNode(tokens[pos:], None, parent, parent.last_access_time)
                leaf.disk_end = len(tokens)
                parent.children[self._child_key(tokens, pos)] = leaf
            restored += len(tokens) - pos
        runs.sort(key=lambda r: -r[0])
        self._recent = [tokens for _, tokens in runs]
        if restored:
            logger.info("hicache: %d tokens of KV on disk in %s", restored, self.disk.dir)

    def warm_start(self, max_tokens: int) -> int:
        """Queue background reads of the most recently written disk runs into free device
        slots, at most ``max_tokens`` (and never more than the pool has free: nothing is
        evicted for it). A request that needs a node being warm-read waits for that read
        instead of reading it again; a request that needs another read, or an eviction that
        finds nothing else, cancels what is left of the warm start. Returns the tokens
        queued."""
        if self.disk is None or max_tokens <= 0:
            return 0
        b = self.disk.block_tokens
        budget = min(max_tokens, self.allocator.available_size()) // b * b
        queued = 0
        for tokens in self._recent:
            if budget - queued < b:
                break
            path = self._path(tokens, len(tokens))
            lower = [n for n in path if n.value is None]
            # A prefix another warm read is filling is skipped: reads run in order and stop
            # together, so this one only lands if that one did.
            while lower and lower[0].loading is not None:
                lower.pop(0)
            if not lower or any(n.loading is not None or n.host_value is not None
                                for n in lower):
                continue
            nodes = self._whole_blocks(lower)
            if nodes:
                nodes = self._within(nodes, budget - queued)
            if nodes:
                queued += self._start_read(tokens, nodes, warm=True)
        self._recent = []
        if queued:
            logger.info("hicache: warm start reads %d tokens of KV from disk", queued)
        return queued

    def _cancel_warm(self) -> None:
        if self._warm_in_flight:
            self._warm_cancel.set()
