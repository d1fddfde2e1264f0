"""Queue policies: lpm, dfs-weight, fcfs, random, and the fcfs fallback for long queues."""

from __future__ import annotations

import torch

from radixrt.scheduler.policy import FCFS_FALLBACK_QUEUE_LEN, SchedulePolicy, match_len_limit
from tests.scheduler.conftest import make_kv, make_req


def _cached(kv, tokens: list[int]) -> None:
    slots = kv.allocator.alloc(len(tokens))
    kv.cache.insert(tokens, slots)


def test_lpm_longest_cached_prefix_first_stable_on_ties():
    kv = make_kv()
    _cached(kv, [1, 2, 3, 4, 5, 6])
    reqs = [make_req("a", [9, 9, 9]), make_req("b", [1, 2, 7, 7]), make_req("c", [1, 2, 3, 4, 5, 8]),
            make_req("d", [8, 8])]
    order = SchedulePolicy("lpm", kv.cache).order(reqs)
    assert [r.rid for r, _ in order] == ["c", "b", "a", "d"]
    assert [len(m.indices) for _, m in order] == [5, 2, 0, 0]


def test_matches_respect_the_match_limit():
    """At least one token is computed; prompt logprobs keep their positions uncached."""
    kv = make_kv()
    _cached(kv, [1, 2, 3, 4])
    whole = make_req("w", [1, 2, 3, 4])
    lp = make_req("l", [1, 2, 3, 4, 5])
    lp.return_logprob, lp.logprob_start_len = True, 2
    assert match_len_limit(whole) == 3 and match_len_limit(lp) == 1
    order = dict((r.rid, len(m.indices)) for r, m in SchedulePolicy("lpm", kv.cache).order([whole, lp]))
    assert order == {"w": 3, "l": 1}


def test_dfs_weight_runs_a_branch_together_heaviest_first():
    kv = make_kv()
    _cached(kv, [1, 2, 3])
    _cached(kv, [5, 6, 7])
    reqs = [make_req("x1", [1, 2, 3, 9]), make_req("y1", [5, 6, 7, 9]), make_req("x2", [1, 2, 3, 8]),
            make_req("y2", [5, 6, 7, 8]), make_req("x3", [1, 2, 3, 7])]
    order = [r.rid for r, _ in SchedulePolicy("dfs-weight", kv.cache).order(reqs)]
    assert order[:3] == ["x1", "x2", "x3"] or sorted(order[:3]) == ["x1", "x2", "x3"]
    assert sorted(order[3:]) == ["y1", "y2"]


def test_fcfs_and_random_do_not_match():
    kv = make_kv()
    reqs = [make_req(str(i), [i + 1, 2]) for i in range(5)]
    assert [(r.rid, m) for r, m in SchedulePolicy("fcfs", kv.cache).order(reqs)] == \
        [(r.rid, None) for r in reqs]
    a = [r.rid for r, _ in SchedulePolicy("random", kv.cache, seed=3).order(reqs)]
    b = [r.rid for r, _ in SchedulePolicy("random", kv.cache, seed=3).order(reqs)]
    assert a == b and sorted(a) == sorted(r.rid for r in reqs)


def test_long_queue_falls_back_to_fcfs():
    kv = make_kv(size=512)
    _cached(kv, [1, 2, 3])
    reqs = [make_req(str(i), [9, i % 30]) for i in range(FCFS_FALLBACK_QUEUE_LEN)]
    reqs.append(make_req("hit", [1, 2, 3, 4]))
    order = SchedulePolicy("lpm", kv.cache).order(reqs)
    assert order[-1][0].rid == "hit" and all(m is None for _, m in order)


def test_order_records_the_cache_generation_it_matched_under():
    kv = make_kv()
    _cached(kv, [1, 2, 3])
    policy = SchedulePolicy("lpm", kv.cache)
    policy.order([make_req("a", [1, 2, 3, 4])])
    assert policy.match_generation == kv.cache.generation
    kv.cache.evict(10)
    assert policy.match_generation != kv.cache.generation
    assert torch.equal(kv.cache.match_prefix([1, 2, 3]).indices, torch.empty(0, dtype=torch.int64))
