"""The --dp-size dispatcher: prefix affinity, load balance, round robin, dead workers, and the
approximate prefix tree it keeps (pure logic, no processes)."""

from __future__ import annotations

import random

import pytest

from radixrt.managers.dp_dispatch import (
    ApproxPrefixTree,
    CacheAwareConfig,
    Dispatcher,
    NoWorkerAlive,
    merge_server_infos,
)

PREFIX_A = list(range(1000, 1200))
PREFIX_B = list(range(5000, 5200))


def test_tree_match_per_worker():
    t = ApproxPrefixTree()
    t.insert([1, 2, 3, 4, 5], 0)
    t.insert([1, 2, 3, 9], 1)
    t.insert([1, 2, 7], 0)
    assert t.match([1, 2, 3, 4, 5, 6]) == {0: 5, 1: 3}
    assert t.match([1, 2, 3, 9, 9]) == {0: 3, 1: 4}
    assert t.match([1, 2, 7, 7]) == {0: 3, 1: 2}
    assert t.match([8]) == {}
    # sizes: worker 0 holds 1,2 | 3 | 4,5 | 7 = 6 tokens; worker 1 holds 1,2 | 3 | 9 = 4
    assert t.sizes == {0: 6, 1: 4}


def test_tree_matches_a_brute_force_reference():
    rng = random.Random(0)
    t = ApproxPrefixTree()
    held: dict[int, list[list[int]]] = {0: [], 1: [], 2: []}
    for _ in range(300):
        seq = [rng.randrange(4) for _ in range(rng.randrange(1, 12))]
        w = rng.randrange(3)
        t.insert(seq, w)
        held[w].append(seq)
    for _ in range(200):
        q = [rng.randrange(4) for _ in range(rng.randrange(1, 14))]
        expect = {}
        for w, seqs in held.items():
            best = max((_lcp(q, s) for s in seqs), default=0)
            if best:
                expect[w] = best
        assert t.match(q) == expect, q


def _lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_tree_eviction_drops_least_recently_used_leaves():
    t = ApproxPrefixTree()
    t.insert([1] + list(range(10, 20)), 0)  # old
    t.insert([2] + list(range(30, 40)), 0)  # recent
    t.insert([1] + list(range(10, 20)), 1)  # worker 1 keeps its copy
    t.evict(0, 11)
    assert t.sizes[0] == 11
    assert t.match([2] + list(range(30, 40))) == {0: 11}
    assert t.match([1] + list(range(10, 20))) == {1: 11}  # worker 0's old copy went
    t.evict(1, 0)
    assert t.match([1, 10]) == {}
    assert t.sizes[1] == 0


def test_tree_remove_worker():
    t = ApproxPrefixTree()
    t.insert([1, 2, 3], 0)
    t.insert([1, 2, 4], 1)
    t.remove_worker(0)
    assert t.match([1, 2, 3]) == {1: 2}
    assert 0 not in t.sizes
    t.remove_worker(1)
    assert t.num_nodes() == 0


def test_prefix_affinity_keeps_a_prefix_on_one_worker():
    d = Dispatcher(2, "cache_aware")
    first_a = d.select(PREFIX_A + [1])
    first_b = d.select(PREFIX_B + [1])
    assert first_a != first_b  # the second prefix matches nothing: the less loaded worker
    for i in range(20):
        assert d.select(PREFIX_A + [2, i]) == first_a
        assert d.select(PREFIX_B + [2, i]) == first_b
    assert d.decisions["cache"] == 40


def test_short_match_goes_to_the_least_loaded():
    d = Dispatcher(2, "cache_aware")
    w = d.select(list(range(100)))
    # 10 of 100 tokens in common: under the 0.3 threshold, so the idle worker gets it
    assert d.select(list(range(10)) + list(range(500, 590))) == 1 - w


def test_balance_override_when_loads_diverge():
    cfg = CacheAwareConfig(balance_abs_threshold=4, balance_rel_threshold=1.5)
    d = Dispatcher(2, "cache_aware", cfg)
    w = d.select(PREFIX_A)
    picks = [d.select(PREFIX_A + [i]) for i in range(10)]
    # affinity until worker w has more than 4 requests more than the other, then the other
    assert picks[:4] == [w] * 4
    assert 1 - w in picks
    assert d.decisions["balance"] >= 1
    assert max(d.load) - min(d.load) <= 5
    # finished requests bring the load back and affinity returns
    for _ in range(d.load[w]):
        d.on_finish(w)
    for _ in range(d.load[1 - w]):
        d.on_finish(1 - w)
    cache_before = d.decisions["cache"]
    d.select(PREFIX_A + [99])
    assert d.decisions["cache"] == cache_before + 1
    assert sorted(d.load) == [0, 1]


def test_round_robin_and_shortest_queue():
    d = Dispatcher(3, "round_robin")
    assert [d.select(PREFIX_A) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    d = Dispatcher(3, "shortest_queue")
    assert [d.select(PREFIX_A) for _ in range(3)] == [0, 1, 2]
    d.on_finish(1)
    assert d.select(PREFIX_A) == 1
    assert d.load == [1, 1, 1]


@pytest.mark.parametrize("method", ["cache_aware", "round_robin", "shortest_queue"])
def test_a_removed_worker_is_never_chosen(method):
    d = Dispatcher(3, method)
    for i in range(6):
        d.select(PREFIX_A + [i])
    d.remove(1)
    assert d.load[1] == 0
    picks = {d.select(PREFIX_A + [i]) for i in range(30)} | {d.select([i]) for i in range(30)}
    assert 1 not in picks and picks <= {0, 2}
    d.remove(0)
    d.remove(2)
    with pytest.raises(NoWorkerAlive):
        d.select(PREFIX_A)


def test_bad_config():
    with pytest.raises(ValueError, match="load_balance_method"):
        Dispatcher(2, "random")
    with pytest.raises(ValueError, match="dp_size"):
        Dispatcher(0)


def test_merge_server_infos():
    a = {"memory": {"kv_total_slots": 100, "kv_free_slots": 50, "kv_usage": 0.5},
         "num_running_reqs": 2, "cache_hit_rate": 0.9, "device": "cpu",
         "stats": {"num_prompt_tokens": 100, "num_cached_tokens": 90}}
    b = {"memory": {"kv_total_slots": 100, "kv_free_slots": 100, "kv_usage": 0.0},
         "num_running_reqs": 1, "cache_hit_rate": 0.0, "device": "cpu",
         "stats": {"num_prompt_tokens": 300, "num_cached_tokens": 0}}
    m = merge_server_infos([a, b])
    assert m["memory"] == {"kv_total_slots": 200, "kv_free_slots": 150, "kv_usage": 0.25}
    assert m["num_running_reqs"] == 3 and m["device"] == "cpu"
    assert m["cache_hit_rate"] == pytest.approx(90 / 400)
    assert m["stats"] == {"num_prompt_tokens": 400, "num_cached_tokens": 90}
