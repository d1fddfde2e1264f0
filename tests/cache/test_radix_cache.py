"""RadixCache: unit tests plus a stateful property test against a reference model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixrt.cache import radix_cache
from radixrt.cache.memory_pool import KVAllocator
from radixrt.cache.radix_cache import RadixCache

CACHE_SOURCES = str(Path(radix_cache.__file__).resolve().parent)


def make(size: int = 64, ps: int = 1) -> tuple[KVAllocator, RadixCache]:
    alloc = KVAllocator(size, page_size=ps)
    return alloc, RadixCache(alloc)


def put(cache: RadixCache, tokens: list[int]) -> torch.Tensor:
    """Allocate slots for ``tokens`` and insert them; frees the duplicates like a request."""
    kv = cache.allocator.alloc(len(tokens))
    n = cache.insert(tokens, kv)
    aligned = len(tokens) // cache.page_size * cache.page_size
    cache.allocator.free(torch.cat([kv[:n], kv[aligned:]]))
    return kv


def count_lines(fn, limit: int):
    """``(fn(), n)``: n is the number of Python lines ``fn`` ran in ``radixrt/cache/``, a
    measure of work that, unlike a timing, is the same on every machine and under any load.
    Fails as soon as n exceeds ``limit`` (so a quadratic regression fails fast)."""
    n = 0

    def local(frame, event, arg):
        nonlocal n
        if event == "line":
            n += 1
            if n > limit:
                raise AssertionError(f"more than {limit} lines run in radixrt/cache")
        return local

    def start(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(CACHE_SOURCES) else None

    previous = sys.gettrace()
    sys.settrace(start)
    try:
        result = fn()
    finally:
        sys.settrace(previous)
    return result, n


def walk(cache: RadixCache):
    """Yield (node, token prefix up to and including the node's run)."""
    stack = [(c, ()) for c in cache.root.children.values()]
    while stack:
        node, prefix = stack.pop()
        full = prefix + tuple(node.key)
        yield node, full
        stack.extend((c, full) for c in node.children.values())


def contents(cache: RadixCache) -> dict[tuple, tuple]:
    """Every cached page-aligned prefix (a token tuple) -> the KV slots of its last page."""
    out, ps = {}, cache.page_size
    for node, full in walk(cache):
        start = len(full) - len(node.key)
        slots = node.value.tolist()
        for j in range(0, len(slots), ps):
            out[full[:start + j + ps]] = tuple(slots[j:j + ps])
    return out


# ---------------------------------------------------------------------------- unit tests
def test_empty_match_returns_root():
    _, cache = make()
    m = cache.match_prefix([1, 2, 3])
    assert m.last_node is cache.root and m.indices.dtype == torch.int64 and len(m.indices) == 0
    assert len(cache.match_prefix([]).indices) == 0


def test_split_on_partial_match():
    _, cache = make()
    kv = put(cache, [1, 2, 3, 4, 5])
    assert cache.num_nodes() == 1
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.indices.tolist() == kv[:3].tolist()
    assert list(m.last_node.key) == [1, 2, 3] and cache.num_nodes() == 2
    (child,) = m.last_node.children.values()
    assert list(child.key) == [4, 5] and child.value.tolist() == kv[3:].tolist()
    assert child.parent is m.last_node and m.last_node.parent is cache.root
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).indices.tolist() == kv.tolist()
    assert cache.total_size() == 5 and cache.evictable_size() == 5


def test_split_keeps_lock_of_locked_node():
    _, cache = make()
    put(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(m.last_node)
    upper = cache.match_prefix([1, 2]).last_node  # splits the locked node
    assert upper.lock_ref == 1 and m.last_node.lock_ref == 1 and m.last_node.parent is upper
    assert cache.protected_size() == 4 and cache.evictable_size() == 0
    cache.dec_lock_ref(m.last_node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 4
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(m.last_node)


def test_insert_returns_already_cached():
    alloc, cache = make()
    assert cache.insert([1, 2, 3], alloc.alloc(3)) == 0
    kv = alloc.alloc(5)
    assert cache.insert([1, 2, 3, 4, 5], kv) == 3
    alloc.free(kv[:3])
    assert cache.total_size() == 5
    kv = alloc.alloc(2)
    assert cache.insert([1, 2], kv) == 2  # fully cached: nothing taken
    alloc.free(kv)
    assert cache.total_size() == 5 and cache.num_nodes() == 3  # [1,2] -> [3] -> [4,5]
    assert cache.insert([], torch.empty(0, dtype=torch.int64)) == 0
    with pytest.raises(ValueError):
        cache.insert([7, 8], torch.empty(1, dtype=torch.int64))


def test_insert_tokens_as_tuple_or_tensor():
    alloc, cache = make()
    kv = alloc.alloc(4)
    cache.insert((5, 6, 7, 8), kv)
    assert cache.match_prefix(torch.tensor([5, 6, 7])).indices.tolist() == kv[:3].tolist()
    assert cache.match_prefix((5, 6, 7, 8, 9)).indices.tolist() == kv.tolist()


def test_lock_protects_from_eviction():
    alloc, cache = make(16)
    a = put(cache, [1, 2, 3, 4])
    put(cache, [5, 6, 7])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(m.last_node)
    assert cache.evict(100) == 3
    assert contents(cache).keys() == {(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)}
    assert cache.match_prefix([1, 2, 3, 4]).indices.tolist() == a.tolist()
    cache.dec_lock_ref(m.last_node)
    assert cache.evict(1) == 4 and cache.total_size() == 0 and alloc.available_size() == 16


def test_lru_eviction_order():
    _, cache = make(32)
    put(cache, [1, 1])
    put(cache, [2, 2])
    put(cache, [3, 3])
    cache.match_prefix([1, 1])  # 2 is now the oldest, then 3
    assert cache.evict(1) == 2
    assert set(contents(cache)) == {(1,), (1, 1), (3,), (3, 3)}
    assert cache.evict(1) == 2
    assert set(contents(cache)) == {(1,), (1, 1)}


def test_evict_climbs_to_parent_and_respects_partial_lru():
    _, cache = make(32)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])  # splits: [1,2] -> {[3], [4]}
    put(cache, [9])
    cache.match_prefix([1, 2, 3])  # [9] and [4] are older than [3]
    assert cache.evict(2) == 2  # [4] then [9] (ties broken by age only)
    assert set(contents(cache)) == {(1,), (1, 2), (1, 2, 3)}
    assert cache.evict(3) == 3  # leaf [3] then its parent [1, 2]
    assert cache.num_nodes() == 0 and cache.evict(5) == 0


def test_page_size_alignment():
    alloc, cache = make(64, ps=4)
    kv = alloc.alloc(10)
    assert cache.insert(list(range(10)), kv) == 0
    assert cache.total_size() == 8  # the partial page is not taken
    alloc.free(kv[8:])
    assert cache.match_prefix(list(range(7))).indices.tolist() == kv[:4].tolist()
    assert len(cache.match_prefix(list(range(3))).indices) == 0
    m = cache.match_prefix([0, 1, 2, 3, 4, 5, 9, 9, 9])  # diverges inside page 2
    assert m.indices.tolist() == kv[:4].tolist() and list(m.last_node.key) == [0, 1, 2, 3]
    assert all(len(n.key) % 4 == 0 for n, _ in walk(cache))
    # A sibling that shares 2 tokens of a page is a separate child keyed by its first page.
    kv2 = alloc.alloc(8)
    assert cache.insert([0, 1, 2, 3, 4, 5, 7, 7], kv2) == 4
    alloc.free(kv2[:4])
    assert len(m.last_node.children) == 2 and cache.total_size() == 12
    assert cache.evict(1) == 4 and cache.total_size() == 8


def test_cache_finished_req_paged():
    alloc, cache = make(64, ps=4)
    seq = list(range(10))
    kv = alloc.alloc(10)
    cache.cache_finished_req(seq, kv, 0, cache.root)
    assert cache.total_size() == 8 and alloc.available_size() == 64 - 8
    # Second request shares the first 8 tokens via match, computes 6 more.
    m = cache.match_prefix(seq + [20, 21, 22, 23])
    cache.inc_lock_ref(m.last_node)
    own = alloc.alloc(6, last_slot=int(m.indices[-1]))
    kv2 = torch.cat([m.indices, own])
    cache.cache_finished_req(seq[:8] + [8, 9, 20, 21, 22, 23], kv2, 8, m.last_node)
    assert cache.total_size() == 12 and cache.protected_size() == 0
    assert alloc.available_size() + cache.total_size() == 64


def test_cache_finished_req_frees_duplicates():
    alloc, cache = make(32)
    # Two requests compute the same tokens concurrently; the second one's slots are duplicates.
    kv_a, kv_b = alloc.alloc(4), alloc.alloc(4)
    cache.cache_finished_req([1, 2, 3, 4], kv_a, 0, cache.root)
    cache.cache_finished_req([1, 2, 3, 4, 5][:4], kv_b, 0, cache.root)
    assert cache.match_prefix([1, 2, 3, 4]).indices.tolist() == kv_a.tolist()
    assert alloc.available_size() == 32 - 4


def test_cache_unfinished_req_replaces_duplicates_and_moves_lock():
    alloc, cache = make(32, ps=2)
    put(cache, [1, 2, 3, 4])
    cached = cache.match_prefix([1, 2]).indices
    # A request that did not see the cache computed [1,2,3,4,5,6,7] itself.
    kv = alloc.alloc(7)
    m = cache.cache_unfinished_req([1, 2, 3, 4, 5, 6, 7], kv, 0, cache.root)
    assert len(m.indices) == 6 and m.indices[:2].tolist() == cached.tolist()
    assert m.indices[4:].tolist() == kv[4:6].tolist()
    assert m.last_node.lock_ref == 1 and cache.protected_size() == 6
    kv[:6] = m.indices
    # Accounting: free + own (the partial page) + tree == total.
    assert alloc.available_size() + 2 + cache.total_size() == 32
    kv2 = torch.cat([kv, alloc.alloc(1, last_slot=int(kv[-1]))])
    cache.cache_finished_req([1, 2, 3, 4, 5, 6, 7, 8], kv2, 6, m.last_node)
    assert cache.protected_size() == 0 and alloc.available_size() + cache.total_size() == 32


def test_reset():
    alloc, cache = make(32)
    put(cache, [1, 2, 3])
    put(cache, [1, 5])
    m = cache.match_prefix([1, 5])
    cache.inc_lock_ref(m.last_node)
    with pytest.raises(RuntimeError):
        cache.reset()
    cache.dec_lock_ref(m.last_node)
    cache.reset()
    assert cache.num_nodes() == 0 and cache.total_size() == 0 and alloc.available_size() == 32
    assert len(cache.match_prefix([1, 2]).indices) == 0


def test_lock_root_and_none_are_noops():
    _, cache = make()
    cache.inc_lock_ref(None)
    cache.inc_lock_ref(cache.root)
    cache.dec_lock_ref(cache.root)
    cache.dec_lock_ref(None)
    assert cache.protected_size() == 0


def test_pretty_print(capsys):
    _, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    text = cache.pretty_print()
    assert "3 nodes" in text and capsys.readouterr().out.strip() == text


def test_long_match_is_not_a_token_loop():
    """Matching compares runs with list slices, not token by token in Python: the lines it
    runs grow with the nodes on the path and the 256-token chunks that narrow a mismatch, a
    few thousand here, where a per-token loop would run at least one per token (n)."""
    n = 200_000
    alloc, cache = make(n + 64)
    seq = list(range(n))
    kv = alloc.alloc(n)
    cache.insert(seq, kv)
    probe = seq[: n - 5] + [-1] * 10
    limit = n // 40
    m, _ = count_lines(lambda: cache.match_prefix(probe), limit)  # splits once
    assert len(m.indices) == n - 5
    for _ in range(3):  # matched and re-inserted along the split path
        m, _ = count_lines(lambda: cache.match_prefix(probe), limit)
        assert len(m.indices) == n - 5
        assert count_lines(lambda: cache.insert(seq, kv), limit)[0] == n


def test_evict_many_leaves_is_not_quadratic():
    n = 10_000
    alloc, cache = make(2 * n)
    kv = alloc.alloc(2 * n)
    for i in range(n):  # n leaves of 2 tokens, all under the root
        cache.insert([i, 7], kv[2 * i:2 * i + 2])
    # A scan of the tree per evicted leaf would run ~n^2 / 2 = 5e7 lines; a heap, a few
    # dozen per leaf.
    assert count_lines(lambda: cache.evict(2 * n - 100), limit=50 * n)[0] == 2 * n - 100
    assert cache.num_nodes() == 50 and alloc.available_size() == 2 * n - 100


# ---------------------------------------------------------------------------- stateful test
class RadixMachine(RuleBasedStateMachine):
    """Drives a RadixCache like a scheduler would and checks it against a reference model.

    Reference: ``ref`` maps every cached token prefix to the KV slot of its last token and
    ``ref_time`` to the test tick of the last operation that touched it. "Requests" hold a
    token list, their KV slot list, their cached prefix length and a locked node.
    """

    PS = 1
    POOL = 48
    ALPHABET = 3
    MAX_LEN = 14
    MAX_RUNNING = 4

    def __init__(self):
        super().__init__()
        self.alloc = KVAllocator(self.POOL, page_size=self.PS)
        self.cache = RadixCache(self.alloc)
        self.ref: dict[tuple, int] = {}
        self.ref_time: dict[tuple, int] = {}
        self.tick = 0
        self.running: list[dict] = []
        self.pins: list[tuple] = []  # (node, locked prefix)
        self.seen: list[list[int]] = [[0] * self.MAX_LEN]

    # ---------------------------------------------------------------- helpers
    def _seq(self, base: int, cut: int, suffix: list[int]) -> list[int]:
        """Prefix of a sequence seen before + fresh tokens: prefixes collide often."""
        old = self.seen[base % len(self.seen)]
        fresh = [t % self.ALPHABET for t in suffix]
        seq = (old[: cut % (len(old) + 1)] + fresh)[: self.MAX_LEN]
        if seq and len(self.seen) < 50:
            self.seen.append(seq)
        return seq

    def _ref_match_len(self, seq: list[int]) -> int:
        n, ps = 0, self.PS
        while n + ps <= len(seq) and tuple(seq[: n + ps]) in self.ref:
            n += ps
        return n

    def _touch(self, seq: list[int], n: int) -> None:
        self.tick += 1
        for j in range(self.PS, n + 1, self.PS):
            self.ref_time[tuple(seq[:j])] = self.tick

    def _ref_slots(self, seq: list[int], n: int) -> list[int]:
        """The reference's KV slots for the first ``n`` (page-aligned) tokens of ``seq``."""
        return [s for j in range(self.PS, n + 1, self.PS) for s in self.ref[tuple(seq[:j])]]

    def _check_match(self, seq: list[int]):
        m = self.cache.match_prefix(seq)
        n = self._ref_match_len(seq)
        assert len(m.indices) == n and n % self.PS == 0
        assert m.indices.tolist() == self._ref_slots(seq, n)
        assert (m.last_node is self.cache.root) == (n == 0)
        self._touch(seq, n)
        return m

    def _ref_insert(self, seq: list[int], kv: torch.Tensor) -> None:
        aligned = len(seq) // self.PS * self.PS
        for j in range(self.PS, aligned + 1, self.PS):
            self.ref.setdefault(tuple(seq[:j]), tuple(kv[j - self.PS:j].tolist()))
        self._touch(seq, aligned)

    def _locked_prefixes(self) -> list[tuple]:
        return ([tuple(r["seq"][: r["prefix_len"]]) for r in self.running]
                + [p for _, p in self.pins])

    def _alloc(self, n: int, last_slot: int | None) -> torch.Tensor | None:
        slots = self.alloc.alloc(n, last_slot)
        if slots is None:
            self._evict(n + self.PS)
            slots = self.alloc.alloc(n, last_slot)
        return slots

    def _evict(self, n: int) -> None:
        before = contents(self.cache)
        avail, evictable = self.alloc.available_size(), self.cache.evictable_size()
        freed = self.cache.evict(n)
        after = contents(self.cache)
        removed = before.keys() - after.keys()
        assert after.keys() <= before.keys()
        assert freed == len(removed) * self.PS <= evictable
        assert self.alloc.available_size() == avail + freed
        assert freed >= n or self.cache.evictable_size() == 0
        # Locked data survives.
        for p in self._locked_prefixes():
            assert all(p[:j] in after for j in range(self.PS, len(p) + 1, self.PS))
        # LRU: nothing evicted is newer than an unlocked leaf that stayed.
        locked = {p[:j] for p in self._locked_prefixes()
                  for j in range(self.PS, len(p) + 1, self.PS)}
        extended = {p[:-self.PS] for p in after}
        leaves = [p for p in after if p not in extended and p not in locked]
        if removed and leaves:
            assert max(self.ref_time[p] for p in removed) <= min(self.ref_time[p] for p in leaves)
        for p in removed:
            assert p not in locked
            del self.ref[p], self.ref_time[p]

    # ---------------------------------------------------------------- rules
    seq_args = dict(base=st.integers(0, 100), cut=st.integers(0, 100),
                    suffix=st.lists(st.integers(0, 3), max_size=12))

    @rule(**seq_args)
    def match(self, base, cut, suffix):
        self._check_match(self._seq(base, cut, suffix))

    @rule(**seq_args)
    def insert_directly(self, base, cut, suffix):
        seq = self._seq(base, cut, suffix)
        kv = self._alloc(len(seq), None)
        if kv is None:
            return
        n_ref = self._ref_match_len(seq)
        n = self.cache.insert(seq, kv)
        assert n == n_ref
        aligned = len(seq) // self.PS * self.PS
        self._ref_insert(seq, kv)
        self.alloc.free(torch.cat([kv[:n], kv[aligned:]]))

    @precondition(lambda self: len(self.running) < self.MAX_RUNNING)
    @rule(**seq_args)
    def start_request(self, base, cut, suffix):
        seq = self._seq(base, cut, suffix)
        if not seq:
            return
        m = self._check_match(seq)
        self.cache.inc_lock_ref(m.last_node)
        n = len(m.indices)
        own = self._alloc(len(seq) - n, int(m.indices[-1]) if n else None)
        if own is None:
            self.cache.dec_lock_ref(m.last_node)
            return
        self.running.append(dict(seq=seq, kv=torch.cat([m.indices, own]), prefix_len=n,
                                 node=m.last_node))

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 100), extra=st.lists(st.integers(0, 3), min_size=1, max_size=5))
    def extend_request(self, i, extra):
        req = self.running[i % len(self.running)]
        extra = [t % self.ALPHABET for t in extra]
        if len(req["seq"]) + len(extra) > 2 * self.MAX_LEN:
            return
        slots = self._alloc(len(extra), int(req["kv"][-1]))
        if slots is not None:
            req["seq"] = req["seq"] + extra
            req["kv"] = torch.cat([req["kv"], slots])

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 100))
    def finish_request(self, i):
        req = self.running.pop(i % len(self.running))
        self.cache.cache_finished_req(req["seq"], req["kv"], req["prefix_len"], req["node"])
        self._ref_insert(req["seq"], req["kv"])

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 100))
    def unfinished_request(self, i):
        req = self.running[i % len(self.running)]
        seq, kv = req["seq"], req["kv"].clone()
        m = self.cache.cache_unfinished_req(seq, kv, req["prefix_len"], req["node"])
        aligned = len(seq) // self.PS * self.PS
        self._ref_insert(seq, kv)
        assert len(m.indices) == aligned
        assert m.indices.tolist() == self._ref_slots(seq, aligned)
        kv[:aligned] = m.indices
        req.update(kv=kv, prefix_len=aligned, node=m.last_node)

    @precondition(lambda self: len(self.pins) < 3)
    @rule(**seq_args)
    def lock(self, base, cut, suffix):
        seq = self._seq(base, cut, suffix)
        m = self._check_match(seq)
        self.cache.inc_lock_ref(m.last_node)
        self.pins.append((m.last_node, tuple(seq[: len(m.indices)])))

    @precondition(lambda self: self.pins)
    @rule(i=st.integers(0, 100))
    def unlock(self, i):
        node, _ = self.pins.pop(i % len(self.pins))
        self.cache.dec_lock_ref(node)

    @rule(n=st.integers(0, 24))
    def evict(self, n):
        self._evict(n)

    @rule()
    def reset(self):
        if self.cache.protected_size():
            with pytest.raises(RuntimeError):
                self.cache.reset()
            return
        self.cache.reset()
        self.ref.clear()
        self.ref_time.clear()

    # ---------------------------------------------------------------- invariants
    @invariant()
    def tree_matches_reference(self):
        cache, ps = self.cache, self.PS
        expected_lock: dict[int, int] = {}
        for node in [r["node"] for r in self.running] + [n for n, _ in self.pins]:
            while node is not cache.root:
                expected_lock[id(node)] = expected_lock.get(id(node), 0) + 1
                node = node.parent
        evictable = protected = 0
        time_map: dict[int, int] = {}
        for node, _full in walk(cache):
            assert len(node.key) == len(node.value) > 0 and len(node.key) % ps == 0
            assert node.value.dtype == torch.int64
            first = node.key[0] if ps == 1 else tuple(node.key[:ps])
            assert node.parent.children[first] is node
            assert node.parent.last_access_time >= node.last_access_time
            assert node.lock_ref == expected_lock.get(id(node), 0)
            if node.lock_ref:
                protected += len(node.value)
            else:
                evictable += len(node.value)
            is_leaf = not node.children
            assert (node in cache._leaves) == is_leaf
        assert (cache.evictable_size(), cache.protected_size()) == (evictable, protected)
        assert len(cache._leaves) == sum(1 for n, _ in walk(cache) if not n.children)
        got = contents(cache)
        assert got == self.ref
        # The tree's clock and the reference's ticks order every prefix the same way.
        for node, full in walk(cache):
            start = len(full) - len(node.key)
            for j in range(start + ps, len(full) + 1, ps):
                t = self.ref_time[full[:j]]
                assert time_map.setdefault(node.last_access_time, t) == t
        ticks = [time_map[t] for t in sorted(time_map)]
        assert ticks == sorted(set(ticks))

    @invariant()
    def slot_accounting(self):
        ps = self.PS
        tree_slots = [s for page in contents(self.cache).values() for s in page]
        own = []
        for r in self.running:
            own += r["kv"][r["prefix_len"]:].tolist()
            assert r["kv"][: r["prefix_len"]].tolist() == self._ref_slots(r["seq"], r["prefix_len"])
        own_pages = {s // ps for s in own}
        tree_pages = {s // ps for s in tree_slots}
        assert len(set(own)) == len(own) and len(set(tree_slots)) == len(tree_slots)
        assert not own_pages & tree_pages
        assert not any(bool(self.alloc._is_free[p]) for p in own_pages | tree_pages)
        assert len(tree_slots) == self.cache.total_size()
        assert (self.alloc.available_size() + len(own_pages) * ps + self.cache.total_size()
                == self.alloc.size)

    def teardown(self):
        for r in self.running:
            self.cache.cache_finished_req(r["seq"], r["kv"], r["prefix_len"], r["node"])
        for node, _ in self.pins:
            self.cache.dec_lock_ref(node)
        assert self.cache.protected_size() == 0
        self.cache.reset()
        assert self.alloc.available_size() == self.alloc.size


class RadixMachinePaged(RadixMachine):
    PS = 4
    POOL = 96
    ALPHABET = 2
    MAX_LEN = 22


_settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestRadixStateful = _settings(RadixMachine).TestCase
TestRadixStatefulPaged = RadixMachinePaged.TestCase  # inherits the settings
