"""HiRadixCache: tier moves, disk persistence and failure handling, plus stateful property
tests against a reference (what was inserted) with the KV contents checked on every match.

Every KV row written here is a function of the whole token prefix it belongs to, so a row
served for the wrong prefix, from a stale slot or a wrong block shows up as a mismatch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixrt.cache import disk_store
from radixrt.cache.base import MatchResult
from radixrt.cache.disk_store import DiskKVStore
from radixrt.cache.hiradix_cache import HiRadixCache
from radixrt.cache.memory_pool import KVAllocator, TokenToKVPool

LAYERS, HEADS, DIM = 2, 1, 2
FP = "test-fingerprint"


def prefix_code(tokens: list[int], i: int) -> float:
    """A number that names ``tokens[:i + 1]`` (exact in float32)."""
    h = 0
    for t in tokens[:i + 1]:
        h = (h * 1000003 + t + 1) % (1 << 22)
    return float(h)


class Rig:
    """A HiRadixCache over small pools, driven like the scheduler drives it."""

    def __init__(self, root: Path, device: int = 64, host: int = 128, ps: int = 1,
                 block: int = 4, disk: bool = True, disk_bytes: int = 1 << 30, fp: str = FP):
        self.root, self.device, self.host, self.ps = root, device, host, ps
        self.block, self.use_disk, self.disk_bytes, self.fp = block, disk, disk_bytes, fp
        self.build()

    def build(self) -> None:
        ps = self.ps
        self.alloc = KVAllocator(self.device, ps)
        self.pool = TokenToKVPool(self.device, LAYERS, HEADS, DIM, torch.float32, page_size=ps)
        self.halloc = KVAllocator(self.host, ps)
        self.hpool = TokenToKVPool(self.host, LAYERS, HEADS, DIM, torch.float32, page_size=ps)
        self.disk = (DiskKVStore(self.root, self.fp, self.block, LAYERS, HEADS, DIM, torch.float32,
                                 self.disk_bytes) if self.use_disk else None)
        self.cache = HiRadixCache(self.alloc, self.pool, self.hpool, self.halloc, self.disk, ps)

    def restart(self, warm: int = 0) -> None:
        """A new cache over the same disk folder; ``warm``: its warm-start budget (tokens)."""
        self.cache.close()
        self.build()
        if warm:
            self.cache.warm_start(warm)

    def expected(self, tokens: list[int], start: int, end: int) -> torch.Tensor:
        codes = torch.tensor([prefix_code(tokens, i) for i in range(start, end)])
        return codes

    def write_kv(self, tokens: list[int], slots: torch.Tensor, start: int) -> None:
        codes = self.expected(tokens, start, len(slots))
        for layer in range(LAYERS):
            self.pool.k_buffers[layer][slots[start:], 0, 0] = codes
            self.pool.k_buffers[layer][slots[start:], 0, 1] = layer
            self.pool.v_buffers[layer][slots[start:], 0, 0] = -codes
            self.pool.v_buffers[layer][slots[start:], 0, 1] = layer + 0.5

    def check_rows(self, tokens: list[int], match: MatchResult) -> None:
        n = len(match.indices)
        codes = self.expected(tokens, 0, n)
        for layer in range(LAYERS):
            k = self.pool.k_buffers[layer][match.indices, 0]
            v = self.pool.v_buffers[layer][match.indices, 0]
            assert torch.equal(k[:, 0], codes), f"layer {layer}: K rows of another prefix"
            assert torch.equal(v[:, 0], -codes) and (k[:, 1] == layer).all()
            assert (v[:, 1] == layer + 0.5).all()

    def lookup(self, tokens: list[int], wait: bool = True) -> MatchResult | None:
        c = self.cache
        while True:
            m = c.fetch(tokens, c.match_prefix(tokens))
            if m is not None:
                self.check_rows(tokens, m)
                return m
            if not wait:
                return None
            c.wait_io(10)

    def request(self, tokens: list[int], wait: bool = True) -> int | None:
        """Run ``tokens`` as a request: reuse the cached prefix, 'compute' the rest, donate
        it. Returns the cached length, or None (waiting for disk, or no room)."""
        c = self.cache
        m = self.lookup(tokens, wait)
        if m is None:
            return None
        n = len(m.indices)
        c.inc_lock_ref(m.last_node)
        last = int(m.indices[-1]) if n else None
        own = self.alloc.alloc(len(tokens) - n, last)
        if own is None:
            c.evict(len(tokens) - n + self.ps)
            own = self.alloc.alloc(len(tokens) - n, last)
        if own is None:
            c.dec_lock_ref(m.last_node)
            return None
        slots = torch.cat([m.indices, own])
        self.write_kv(tokens, slots, n)
        c.cache_finished_req(tokens, slots, n, m.last_node)
        return n


def tier(node) -> int:
    return 0 if node.value is not None else 1 if node.host_value is not None else 2


def check_tree(rig: Rig, locks: int = 0) -> None:
    """Structure, tiers, counters and (with no I/O in flight) slot accounting."""
    c, ps = rig.cache, rig.ps
    dev_tokens = host_tokens = evictable = protected = 0
    leaves, hosted, jobs = set(), set(), set()
    stack = [c.root]
    while stack:
        node = stack.pop()
        for key, child in node.children.items():
            assert child.parent is node and not child.dead
            assert c._child_key(child.key, 0) == key
            assert child.start == node.start + len(node.key)
            assert len(child.key) > 0 and len(child.key) % ps == 0
            assert tier(child) >= (tier(node) if node is not c.root else 0), "tiers go down a path"
            stack.append(child)
        if node is c.root:
            continue
        if node.value is not None:
            assert len(node.value) == len(node.key)
            dev_tokens += len(node.key)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            if not any(ch.value is not None for ch in node.children.values()):
                leaves.add(node)
        if node.host_value is not None:
            assert len(node.host_value) == len(node.key) and node.loading is None
            hosted.add(node)
            host_tokens += len(node.key)
        if node.loading is not None:  # disk blocks being read into device slots (or, if an
            # insert gave the node device slots meanwhile, read in vain and freed when done)
            assert node.lock_ref > 0
            assert len(node.loading.pending[node]) == len(node.key)
            jobs.add(node.loading)
        if tier(node) == 2:
            assert node.disk_end >= node.start + len(node.key), "a disk node must be on disk"
            assert (node.start + len(node.key)) % rig.block == 0 or node.children
    pending = sum(len(job.slots) for job in jobs)
    assert c._evictable == evictable and c._protected == protected + pending
    assert c._leaves == leaves
    assert c._host_nodes == hosted
    assert rig.halloc.available_size() + host_tokens == rig.halloc.size
    if not c._in_flight["read"]:
        assert rig.alloc.available_size() + dev_tokens == rig.alloc.size
    else:  # a job whose nodes all left the tree still holds its slots
        assert rig.alloc.available_size() + dev_tokens + pending <= rig.alloc.size
    if locks == 0:
        assert protected == 0 or c.io_pending()


# ---------------------------------------------------------------------------- unit tests
def test_evicted_run_moves_to_host_and_comes_back(tmp_path):
    rig = Rig(tmp_path, device=32, host=64, disk=False)
    a, b = list(range(1, 25)), list(range(100, 124))
    assert rig.request(a) == 0
    assert rig.request(b) == 0  # evicts a to the host
    assert rig.cache.tier_tokens()["host"] >= 16
    assert rig.request(a) == 24  # back from the host: nothing recomputed
    assert rig.cache.stats.host_to_device_bytes > 0
    check_tree(rig)


def test_fetch_counts_hits_by_tier(tmp_path):
    rig = Rig(tmp_path, device=32, host=64, disk=False)
    a = list(range(1, 25))
    rig.request(a)
    rig.cache.evict(32)
    m = rig.lookup(a)
    assert len(m.indices) == 24 and m.host_tokens == 24 and m.disk_tokens == 0
    rig.cache.note_hit(m)
    assert rig.cache.stats.hit_tokens_host == 24 and rig.cache.stats.hit_tokens_device == 0


def test_host_full_demotes_to_disk_then_reads_back(tmp_path):
    rig = Rig(tmp_path, device=32, host=32, block=4)
    seqs = [[s * 100 + i for i in range(1, 21)] for s in range(1, 6)]
    for s in seqs:
        assert rig.request(s) == 0
    rig.cache.drain_io()
    assert rig.disk.num_blocks() == 5 * 5
    assert rig.cache.tier_tokens()["disk"] > 0
    assert rig.request(seqs[0]) == 20  # from disk, through the host
    assert rig.cache.stats.disk_blocks_read == 5
    check_tree(rig)


def test_restart_reuses_prefix_from_disk(tmp_path):
    rig = Rig(tmp_path, block=4)
    a = list(range(1, 19))  # 4 whole blocks + 2 tokens
    rig.request(a)
    rig.restart()
    assert rig.cache.tier_tokens() == {"device": 0, "host": 0, "disk": 16}
    assert rig.request(a + [7, 7]) == 16
    assert rig.cache.stats.disk_blocks_read == 4
    check_tree(rig)


def test_restart_branches_inside_a_block(tmp_path):
    rig = Rig(tmp_path, block=4)
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 9, 9]  # share 1.5 blocks
    rig.request(a)
    rig.request(b)
    rig.restart()
    check_tree(rig)
    assert rig.request([1, 2, 3, 4, 5, 6, 0, 0]) == 4  # the shared half block is not readable
    assert rig.request(b) == 8 and rig.request(a) == 8
    check_tree(rig)


def test_paged_restart(tmp_path):
    rig = Rig(tmp_path, ps=4, block=8)
    a = list(range(1, 31))
    rig.request(a)
    rig.restart()
    assert rig.request(a) == 24
    check_tree(rig)


def test_foreign_fingerprint_never_served(tmp_path, caplog):
    rig = Rig(tmp_path, block=4)
    rig.request(list(range(1, 13)))
    rig.cache.close()
    (d,) = [p for p in tmp_path.iterdir()]
    other = Rig(tmp_path, block=4, fp="another-model")
    assert other.cache.tier_tokens()["disk"] == 0
    # The same files under the other model's folder: skipped at start-up with a warning.
    target = other.disk.dir
    for f in d.iterdir():
        os.replace(f, target / f.name)
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        other.restart()
    assert other.cache.tier_tokens()["disk"] == 0
    assert "invalid or foreign" in caplog.text
    assert other.request(list(range(1, 13))) == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "tokens", "delete"])
def test_damaged_block_is_recomputed(tmp_path, caplog, damage):
    rig = Rig(tmp_path, block=4)
    a = list(range(1, 17))
    rig.request(a)
    rig.cache.close()
    keys = rig.disk.chain_keys(a, 4)
    path = rig.disk.dir / f"{keys[2]}.kv"
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-3] ^= 0xFF
        path.write_bytes(raw)
    elif damage == "truncate":
        path.write_bytes(raw[:-5])
    elif damage == "header":
        path.write_bytes(raw[:10] + b"garbage" + raw[17:])
    elif damage == "tokens":  # a block that claims the key of other tokens
        path.write_bytes(raw.replace(b"[9, 10, 11, 12]", b"[9, 10, 11, 13]"))
    rig.build()
    if damage == "delete":
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        n = rig.request(a)
    assert n == 8  # the blocks before the damaged one; the rest is recomputed
    assert "hicache" in caplog.text
    check_tree(rig)
    rig.cache.drain_io()
    rig.restart()
    assert rig.request(a) == 16  # written again, whole


def test_tiny_quota_writes_nothing_and_keeps_serving(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        rig = Rig(tmp_path, device=32, host=16, block=4, disk_bytes=100)
        a, b = list(range(1, 25)), list(range(100, 124))
        rig.request(a)
        rig.request(b)
        rig.cache.drain_io()
    assert "exceeds the disk tier's size" in caplog.text
    assert rig.disk.num_blocks() == 0 and rig.cache.stats.disk_blocks_written == 0
    assert rig.request(b) == 24
    check_tree(rig)


def test_quota_keeps_disk_bounded_lru(tmp_path):
    rig = Rig(tmp_path, block=4)
    rig.request(list(range(1, 9)))
    rig.cache.drain_io()
    rig.disk.capacity_bytes = 5 * rig.disk.used_bytes // 2 + 10  # room for 5 blocks
    for s in range(1, 5):
        rig.request([s * 100 + i for i in range(1, 9)])
        rig.cache.drain_io()
    assert rig.disk.used_bytes <= rig.disk.capacity_bytes
    assert len(list(rig.disk.dir.glob("*.kv"))) == rig.disk.num_blocks() <= 5


def test_failing_writer_warns_and_keeps_serving(tmp_path, caplog, monkeypatch):
    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_store.os, "replace", full)
    rig = Rig(tmp_path, device=32, host=16, block=4)
    a, b = list(range(1, 25)), list(range(100, 124))
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        rig.request(a)
        rig.request(b)
        rig.cache.drain_io()
    assert "No space left" in caplog.text
    assert rig.cache.stats.disk_write_errors > 0 and rig.disk.num_blocks() == 0
    assert not [p for p in rig.disk.dir.iterdir()]  # no temporary files left behind
    assert rig.request(a) == 0 and rig.request(b) in (0, 24)
    check_tree(rig)


def test_read_only_dir_serves_without_disk(caplog):
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        rig = Rig(Path("/proc/radixrt-hicache-test"), device=32, host=16, block=4)
    assert not rig.disk.writable and "read-only or unavailable" in caplog.text
    a, b = list(range(1, 25)), list(range(100, 124))
    assert rig.request(a) == 0 and rig.request(b) == 0
    assert rig.request(b) == 24
    check_tree(rig)


def test_files_deleted_under_running_cache(tmp_path, caplog):
    rig = Rig(tmp_path, device=32, host=16, block=4)
    seqs = [[s * 100 + i for i in range(1, 21)] for s in range(1, 5)]
    for s in seqs:
        rig.request(s)
    rig.cache.drain_io()
    for f in rig.disk.dir.iterdir():
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="radixrt.hicache"):
        assert rig.request(seqs[0]) == 0
    assert "disappeared" in caplog.text and rig.cache.stats.disk_read_errors >= 1
    check_tree(rig)


def test_evict_and_insert_while_a_read_is_in_flight(tmp_path):
    rig = Rig(tmp_path, device=32, host=32, block=4)
    seqs = [[s * 100 + i for i in range(1, 21)] for s in range(1, 5)]
    for s in seqs:
        rig.request(s)
    rig.cache.drain_io()
    rig.restart()
    c = rig.cache
    assert rig.lookup(seqs[0], wait=False) is None  # read queued
    assert c.io_pending()
    # A request computed the same tokens without the cache meanwhile: on insert, the loading
    # nodes take its device slots.
    tokens = seqs[0][:12] + [5, 5]
    slots = rig.alloc.alloc(len(tokens))
    rig.write_kv(tokens, slots, 0)
    c.cache_finished_req(tokens, slots, 0, c.root)
    rig.request(seqs[1], wait=False)
    c.evict(64)
    c.drain_io()
    check_tree(rig)
    assert rig.request(seqs[0]) >= 12
    assert rig.request(seqs[2]) == 20
    check_tree(rig)


def test_flush_clears_every_tier(tmp_path):
    rig = Rig(tmp_path, device=32, host=16, block=4)
    for s in range(3):
        rig.request([s * 100 + i for i in range(1, 21)])
    rig.cache.reset()
    assert rig.cache.tier_tokens() == {"device": 0, "host": 0, "disk": 0}
    assert rig.disk.num_blocks() == 0 and not list(rig.disk.dir.glob("*.kv"))
    assert rig.alloc.available_size() == 32 and rig.halloc.available_size() == 16
    rig.restart()
    assert rig.cache.tier_tokens()["disk"] == 0


def test_writes_hold_their_nodes_until_done(tmp_path):
    rig = Rig(tmp_path, device=32, host=16, block=4)
    rig.request(list(range(1, 25)))
    # Whatever the writer's progress, evict() waits for it rather than fail to free.
    assert rig.cache.evict(24) == 24
    check_tree(rig)


def test_a_waiting_scheduler_reads_blocks_alongside_the_reader(tmp_path):
    import threading
    import time

    a = list(range(1, 33))  # 8 blocks
    rig = written(tmp_path, [a], block=4)
    rig.restart()
    inner, by = rig.disk.read_block, []

    def read(key, tokens, into=None):
        me = threading.current_thread().name
        if me != "MainThread":  # the reader holds its first block until the waiter read the rest
            deadline = time.monotonic() + 30
            while len(by) < 7 and time.monotonic() < deadline:
                time.sleep(0.001)
        by.append(me)
        return inner(key, tokens, into)

    rig.disk.read_block = read
    assert rig.request(a) == 32  # lookup waits in wait_io, which reads blocks itself
    assert by.count("MainThread") == 7 and len(by) == 8
    assert rig.cache.stats.disk_blocks_read == 8
    check_tree(rig)


# ---------------------------------------------------------------------------- warm start
class GatedReads:
    """Holds the disk reads of ``rig`` until ``open()`` or until the warm start is being
    cancelled; counts the blocks read."""

    def __init__(self, rig: Rig):
        import threading

        self.gate, self.blocks, self.rig = threading.Event(), [], rig
        self.inner = rig.disk.read_block
        rig.disk.read_block = self.read

    def read(self, key, tokens, into=None):
        import time

        deadline = time.monotonic() + 30
        while not self.gate.is_set():
            if self.rig.cache._warm_cancel.is_set():
                self.gate.set()  # and every read after it
            assert time.monotonic() < deadline, "read never released"
            time.sleep(0.001)
        self.blocks.append(key)
        return self.inner(key, tokens, into)

    def open(self):
        self.gate.set()


def written(tmp_path: Path, seqs: list[list[int]], **kw) -> Rig:
    rig = Rig(tmp_path, **kw)
    for s in seqs:
        assert rig.request(s) == 0
    rig.cache.drain_io()
    return rig


def test_warm_start_loads_recent_runs_within_budget(tmp_path):
    seqs = [[s * 100 + i for i in range(1, 17)] for s in range(1, 5)]  # 4 blocks each
    rig = written(tmp_path, seqs, block=4)
    rig.restart(warm=24)  # room for 1.5 runs: the newest run, then 2 blocks of the next
    c = rig.cache
    c.drain_io()
    assert c.stats.warm_start_tokens == 24 and c.stats.disk_blocks_read == 6
    assert c.tier_tokens() == {"device": 24, "host": 0, "disk": 40}
    check_tree(rig)
    before = c.stats.disk_blocks_read
    m = rig.lookup(seqs[3])  # the newest: on the device already, rows checked
    assert len(m.indices) == 16 and m.disk_tokens == 16
    c.note_hit(m)
    assert c.stats.hit_tokens_disk == 16 and c.stats.disk_blocks_read == before
    assert rig.request(seqs[2]) == 16  # half warm, half read on demand
    assert c.stats.disk_blocks_read == before + 2
    assert rig.request(seqs[0]) == 16  # not warm: read on demand
    check_tree(rig)


def test_warm_start_follows_last_use_across_restarts(tmp_path):
    old, new = [[s * 100 + i for i in range(1, 17)] for s in range(1, 3)]
    rig = written(tmp_path, [old, new], block=4)
    rig.restart()
    assert rig.request(old) == 16  # read from disk: now the most recently used run
    rig.restart(warm=16)
    rig.cache.drain_io()
    m = rig.lookup(old, wait=False)  # on the device: no read needed
    assert m is not None and len(m.indices) == 16
    assert rig.lookup(new, wait=False) is None  # still on disk
    check_tree(rig)


def test_warm_start_off_or_nothing_on_disk(tmp_path):
    rig = written(tmp_path, [list(range(1, 17))], block=4)
    rig.restart(warm=0)
    assert rig.cache.stats.warm_start_tokens == 0 and not rig.cache.io_pending()
    empty = Rig(tmp_path / "empty", block=4)
    assert empty.cache.warm_start(64) == 0 and not empty.cache.io_pending()
    nodisk = Rig(tmp_path / "none", block=4, disk=False)
    assert nodisk.cache.warm_start(64) == 0


def test_warm_start_takes_free_slots_only(tmp_path):
    seqs = [[s * 100 + i for i in range(1, 17)] for s in range(1, 5)]
    rig = written(tmp_path, seqs, block=4)
    rig.restart()
    c = rig.cache
    hold = rig.alloc.alloc(56)  # 8 of 64 slots free
    assert c.warm_start(64) == 8
    c.drain_io()
    assert c.tier_tokens()["device"] == 8 and rig.alloc.available_size() == 0
    rig.alloc.free(hold)
    check_tree(rig)


def test_request_for_a_warm_run_waits_for_it_without_a_second_read(tmp_path):
    seqs = [[s * 100 + i for i in range(1, 17)] for s in range(1, 3)]
    rig = written(tmp_path, seqs, block=4)
    rig.restart()
    gate = GatedReads(rig)
    c = rig.cache
    assert c.warm_start(64) == 32
    assert rig.lookup(seqs[1], wait=False) is None  # being warm-read: wait for it
    check_tree(rig)
    gate.open()
    assert rig.request(seqs[1]) == 16 and rig.request(seqs[0]) == 16
    assert len(gate.blocks) == 8 and len(set(gate.blocks)) == 8  # each block read once
    assert c.stats.warm_start_tokens == 32 and c.stats.warm_start_cancelled == 0
    check_tree(rig)


def test_a_requests_own_read_cancels_the_warm_start(tmp_path):
    seqs = [[s * 100 + i for i in range(1, 17)] for s in range(1, 5)]
    rig = written(tmp_path, seqs, block=4)
    rig.restart()
    gate = GatedReads(rig)
    c = rig.cache
    assert c.warm_start(32) == 32  # the two newest runs
    # The oldest run is not warm: its request reads it and cancels the warm reads queued
    # (the first warm read finishes the block it is in, if any).
    assert rig.lookup(seqs[0], wait=False) is None
    assert rig.request(seqs[0]) == 16
    c.drain_io()
    gate.open()
    assert c.stats.warm_start_cancelled == 2 and c.stats.warm_start_tokens in (0, 4)
    check_tree(rig)
    # What the warm start did not read is still on disk, whole.
    assert rig.request(seqs[3]) == 16 and rig.request(seqs[2]) == 16
    assert c.stats.disk_read_errors == 0
    check_tree(rig)


def test_eviction_cancels_warm_reads_and_evicts_warm_runs(tmp_path):
    seqs = [[s * 100 + i for i in range(1, 17)] for s in range(1, 5)]
    rig = written(tmp_path, seqs, device=32, host=16, block=4)
    rig.restart()
    gate = GatedReads(rig)
    c = rig.cache
    assert c.warm_start(32) == 32  # the whole pool, being read
    # A new request needs the pool: the warm reads stop (after the block the first one is
    # in, if any) and what they read is evicted.
    assert rig.request([9000 + i for i in range(24)]) == 0
    assert c.stats.warm_start_cancelled == 2 and c.stats.warm_start_tokens in (0, 4)
    check_tree(rig)
    c.drain_io()
    check_tree(rig)
    gate.open()
    for s in seqs:  # every run still served, from whichever tier holds it
        assert rig.request(s) == 16
    check_tree(rig)


# ---------------------------------------------------------------------------- property tests
TOKENS = st.lists(st.integers(1, 4), min_size=1, max_size=14)


class HiCacheMachine(RuleBasedStateMachine):
    """Random requests, evictions, locks, I/O completions and restarts; after each step the
    tree and pools are consistent, and every match serves the KV of its own prefix."""

    device, host, ps, block, disk = 48, 64, 1, 4, True

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.rig = Rig(Path(self.tmp.name), self.device, self.host, self.ps, self.block,
                       self.disk)
        self.seqs: list[list[int]] = []
        self.holds: list = []

    def teardown(self):
        self.rig.cache.close()
        self.tmp.cleanup()

    def lcp(self, tokens: list[int]) -> int:
        best = 0
        for s in self.seqs:
            n = 0
            while n < min(len(s), len(tokens)) and s[n] == tokens[n]:
                n += 1
            best = max(best, n)
        return best - best % self.ps

    @initialize()
    def start(self):
        pass

    @rule(base=st.integers(0, 1000), cut=st.integers(0, 40), tail=TOKENS, wait=st.booleans())
    def request(self, base, cut, tail, wait):
        prefix = self.seqs[base % len(self.seqs)][:cut] if self.seqs else []
        tokens = prefix + tail
        expect = self.lcp(tokens)
        n = self.rig.request(tokens, wait)
        if n is None:
            return
        assert n <= expect, "served tokens that were never inserted"
        if not self.disk and not self.holds and self.rig.cache.stats.dropped_tokens == 0:
            assert n == expect, "an in-memory tier lost a run it had room for"
        self.seqs.append(tokens[:len(tokens) - len(tokens) % self.ps])

    @rule(n=st.integers(1, 64))
    def evict(self, n):
        self.rig.cache.evict(n)

    @rule(i=st.integers(0, 1000))
    def hold(self, i):
        if not self.seqs or len(self.holds) >= 2:
            return
        # Waits for reads: which rules can run next (release) must not depend on I/O timing.
        m = self.rig.lookup(self.seqs[i % len(self.seqs)])
        self.rig.cache.inc_lock_ref(m.last_node)
        self.holds.append(m.last_node)

    @precondition(lambda self: self.holds)
    @rule()
    def release(self):
        self.rig.cache.dec_lock_ref(self.holds.pop(0))

    @rule()
    def poll(self):
        self.rig.cache.poll_io()

    @rule()
    def drain(self):
        self.rig.cache.drain_io()
        check_tree(self.rig, len(self.holds))

    @precondition(lambda self: self.disk)
    @rule(i=st.integers(0, 1000), warm=st.sampled_from([0, 0, 8, 24, 48]))
    def restart(self, i, warm):
        while self.holds:
            self.rig.cache.dec_lock_ref(self.holds.pop())
        self.rig.restart(warm)
        check_tree(self.rig)
        if self.seqs:
            s = self.seqs[i % len(self.seqs)]
            m = self.rig.lookup(s)
            b = self.block
            assert len(m.indices) >= len(s) // b * b, "a written block was not found"

    @invariant()
    def consistent(self):
        check_tree(self.rig, len(self.holds))


class HiCacheMemoryMachine(HiCacheMachine):
    """Host tier large enough for everything, no disk: nothing is ever lost."""

    device, host, disk = 32, 4096, False


class HiCachePagedMachine(HiCacheMachine):
    device, host, ps, block = 48, 32, 2, 4


_settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestHiCacheMachine = HiCacheMachine.TestCase
TestHiCacheMachine.settings = _settings
TestHiCacheMemoryMachine = HiCacheMemoryMachine.TestCase
TestHiCacheMemoryMachine.settings = _settings
TestHiCachePagedMachine = HiCachePagedMachine.TestCase
TestHiCachePagedMachine.settings = _settings


def test_readv_fills_more_buffers_than_iov_max_and_stops_at_eof(tmp_path):
    data = bytes(range(256)) * 20  # 5,120 bytes into 1,800 buffers of 3 (more than IOV_MAX)
    f = tmp_path / "x"
    f.write_bytes(data)
    bufs = [bytearray(3) for _ in range(1800)]
    fd = os.open(f, os.O_RDONLY)
    try:
        assert disk_store._readv_all(fd, [memoryview(b) for b in bufs]) == len(data)
    finally:
        os.close(fd)
    assert b"".join(bufs)[:len(data)] == data


def test_fingerprint_follows_weight_contents_and_mode(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "tokenizer.json").write_text("{}")
    memo = tmp_path / "digests.json"
    fp = disk_store.model_fingerprint(model, memo, dtype="float32", page_size=1)
    assert fp == disk_store.model_fingerprint(model, memo, dtype="float32", page_size=1)
    assert fp != disk_store.model_fingerprint(model, memo, dtype="bfloat16", page_size=1)
    assert fp != disk_store.model_fingerprint(model, memo, dtype="float32", page_size=4)
    (model / "tokenizer.json").write_text('{"x": 1}')  # not part of the weights
    assert fp == disk_store.model_fingerprint(model, memo, dtype="float32", page_size=1)
    st = (model / "model.safetensors").stat()
    (model / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")  # same name and size
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert fp != disk_store.model_fingerprint(model, memo, dtype="float32", page_size=1)
    assert len(json.loads(memo.read_text())) >= 3
