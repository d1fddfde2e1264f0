"""The prefill adder: KV budget, chunking, in-batch sharing, one prefix match per request."""

from __future__ import annotations

import pytest
import torch

from radixrt.cache.disk_store import DiskKVStore
from radixrt.cache.hiradix_cache import HiRadixCache
from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool, TokenToKVPool
from radixrt.scheduler.kv import RunningKV
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.prefill_adder import (
    IN_BATCH_SHARE_THRESHOLD,
    PrefillAdder,
    PrefillLimits,
    future_tokens,
)
from tests.scheduler.conftest import check_slots_add_up, make_kv, make_req, run_extend


def limits(max_prefill=1024, chunk=0, max_running=8, page_size=1) -> PrefillLimits:
    return PrefillLimits(max_prefill, chunk, max_running, page_size)


def adder(kv, policy="lpm", running=(), ratio=0.5, **kw) -> PrefillAdder:
    return PrefillAdder(kv, SchedulePolicy(policy, kv.cache), limits(page_size=kv.page_size, **kw),
                        list(running), ratio)


class CountingCache:
    """Counts match_prefix calls on a real cache."""

    def __init__(self, kv):
        self.calls = 0
        inner = kv.cache.match_prefix

        def match(tokens):
            self.calls += 1
            return inner(tokens)

        kv.cache.match_prefix = match


def test_admits_in_policy_order_within_the_budget():
    kv = make_kv(size=64)
    reqs = [make_req(str(i), [10 + i] * 10, max_new_tokens=8) for i in range(4)]
    out = adder(kv, ratio=1.0).build(reqs, None)
    # 10 + 8 each: three fit in 64 slots, the fourth does not.
    assert [r.rid for r in out.reqs] == ["0", "1", "2"] and out.extend_lens == [10, 10, 10]
    assert out.admitted == out.reqs and out.chunked is None
    for r in out.reqs:
        assert r.row is not None and r.kv_len == 0 and r.num_chunks == 1
    run_extend(out)
    check_slots_add_up(kv, out.reqs)


def test_reserved_room_of_running_requests_counts():
    kv = make_kv(size=64)
    running = make_req("run", [1], max_new_tokens=100)
    out = adder(kv, running=[running], ratio=0.5).build([make_req("w", [2] * 20, max_new_tokens=1)], None)
    assert out.reqs == []  # 64 - 50 reserved < 20 + 0.5
    assert future_tokens(running, 0.5) == 50


def test_a_lone_request_may_use_the_reserved_room():
    kv = make_kv(size=32)
    out = adder(kv, ratio=1.0).build([make_req("big", [3] * 20, max_new_tokens=100)], None)
    assert [r.rid for r in out.reqs] == ["big"]


def test_max_running_requests_and_rows_limit_the_batch():
    kv = make_kv(size=256, rows=2)
    reqs = [make_req(str(i), [20 + i] * 4, max_new_tokens=2) for i in range(4)]
    assert len(adder(kv).build(reqs, None).reqs) == 2
    kv = make_kv(size=256)
    assert len(adder(kv, max_running=3).build(reqs, None).reqs) == 3
    kv = make_kv(size=256)
    assert adder(kv, running=[make_req("r", [1])] * 3, max_running=3).build(reqs, None).reqs == []


@pytest.mark.parametrize("page_size", [1, 4])
def test_long_prompt_is_chunked_and_continued(page_size):
    kv = make_kv(size=256, page_size=page_size)
    req = make_req("long", list(range(1, 31)), max_new_tokens=4)
    other = make_req("other", [7, 7], max_new_tokens=4)
    out = adder(kv, chunk=12).build([req, other], None)
    assert out.reqs == [req] and out.extend_lens == [12] and out.chunked is req
    assert out.admitted == [req]  # "other" does not join after a chunk
    run_extend(out)
    out2 = adder(kv, chunk=12).build([other], req)
    assert out2.reqs == [req] and out2.extend_lens == [12] and out2.chunked is req
    run_extend(out2)
    out3 = adder(kv, chunk=12).build([other], req)
    assert out3.reqs == [req, other] and out3.extend_lens == [6, 2] and out3.chunked is None
    run_extend(out3)
    check_slots_add_up(kv, [req, other])


def test_a_request_sharing_an_uncached_prefix_with_the_batch_waits_a_step():
    kv = make_kv(size=512)
    shared = list(range(1, IN_BATCH_SHARE_THRESHOLD + 5))
    a = make_req("a", shared + [1], max_new_tokens=1)
    b = make_req("b", shared + [2], max_new_tokens=1)
    c = make_req("c", [3, 3, 3], max_new_tokens=1)
    out = adder(kv, policy="fcfs").build([a, b, c], None)
    assert [r.rid for r in out.reqs] == ["a", "c"] and b.row is None


def test_one_prefix_match_per_waiting_request():
    kv = make_kv(size=512)
    slots = kv.allocator.alloc(8)
    kv.cache.insert([1, 2, 3, 4, 5, 6, 7, 8], slots)
    counter = CountingCache(kv)
    reqs = [make_req(str(i), [1, 2, 3, 4, 5, 6, 7, 8, 9 + i], max_new_tokens=2) for i in range(5)]
    out = adder(kv).build(reqs, None)
    assert len(out.reqs) == 5 and counter.calls == 5
    assert all(r.prefix_len == 8 for r in reqs) and out.cached_tokens == 40
    run_extend(out)
    check_slots_add_up(kv, reqs)


def test_fcfs_matches_at_admission():
    kv = make_kv(size=512)
    counter = CountingCache(kv)
    reqs = [make_req(str(i), [5 + i, 1, 2], max_new_tokens=2) for i in range(3)]
    adder(kv, policy="fcfs").build(reqs, None)
    assert counter.calls == 3


def test_an_eviction_during_admission_refreshes_later_matches():
    """Admitting the first request evicts the cached prefix the second one had matched when
    the queue was ordered: the second is matched again, never given the freed slots."""
    kv = make_kv(size=24)
    kv.cache.insert(list(range(1, 11)), kv.allocator.alloc(10))
    a = make_req("a", [30] * 20, max_new_tokens=0)
    b = make_req("b", list(range(1, 11)) + [12], max_new_tokens=0)
    ad = adder(kv, ratio=0.0)

    def order(waiting):  # a first (as fcfs would), b with the match taken while ordering
        ad.policy.match_generation = kv.cache.generation
        return [(a, None), (b, kv.cache.match_prefix(b.fill_ids[:10]))]

    ad.policy.order = order
    counter = CountingCache(kv)
    gen0 = kv.cache.generation
    out = ad.build([a, b], None)
    assert out.reqs == [a] and kv.cache.generation > gen0  # a's slots: b's evicted prefix
    assert counter.calls == 3  # a at admission, b while ordering, b again after the eviction
    run_extend(out)
    check_slots_add_up(kv, out.reqs)


def test_without_an_eviction_the_ordering_match_is_used():
    kv = make_kv(size=64)
    kv.cache.insert(list(range(1, 11)), kv.allocator.alloc(10))
    b = make_req("b", list(range(1, 11)) + [12], max_new_tokens=0)
    ad = adder(kv)
    counter = CountingCache(kv)
    out = ad.build([b], None)
    assert out.reqs == [b] and b.prefix_len == 10 and counter.calls == 1


def make_tiered_kv(root, size: int = 64) -> RunningKV:
    """RunningKV over a hierarchical cache (host tier, disk tier in ``root``)."""
    alloc = KVAllocator(size)
    pool = TokenToKVPool(size, 1, 1, 2, torch.float32)
    disk = DiskKVStore(root, "fingerprint", 4, 1, 1, 2, torch.float32, 1 << 20)
    cache = HiRadixCache(alloc, pool, TokenToKVPool(64, 1, 1, 2, torch.float32), KVAllocator(64),
                         disk)
    return RunningKV(alloc, ReqToTokenPool(8, 256), cache, 1)


def test_a_request_waits_while_its_prefix_is_read_from_disk(tmp_path):
    kv = make_tiered_kv(tmp_path)
    prefix = list(range(1, 17))
    kv.cache.cache_finished_req(prefix, kv.allocator.alloc(16), 0, kv.cache.root)
    kv.cache.close()  # writes the blocks
    kv = make_tiered_kv(tmp_path)  # a restart: the prefix is on disk only
    a = make_req("a", prefix + [20], max_new_tokens=1)
    b = make_req("b", [30] * 5, max_new_tokens=1)
    out = adder(kv, policy="fcfs").build([a, b], None)
    assert out.reqs == [b] and a.row is None  # a waits; b runs meanwhile
    assert kv.cache.io_pending()
    run_extend(out)
    check_slots_add_up(kv, out.reqs)
    kv.cache.wait_io(10)
    out = adder(kv, policy="fcfs").build([a], None)
    assert out.reqs == [a] and a.prefix_len == 16 and out.extend_lens == [1]
    assert out.cached_tokens == 16 and kv.cache.stats.hit_tokens_disk == 16
    run_extend(out)
    check_slots_add_up(kv, [a, b])
    kv.cache.close()
