"""KV bookkeeping of running requests: admit, extend, share, decode slots, drafts, release —
the slots always add up (free + running + cached == total)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scheduler.conftest import check_slots_add_up, make_kv, make_req


def admit(kv, req, take=None):
    m = kv.cache.match_prefix(req.fill_ids[:req.seq_len - 1])
    take = req.seq_len - len(m.indices) if take is None else take
    assert kv.admit(req, m, take)
    req.kv_len += take
    return len(m.indices)


@pytest.mark.parametrize("page_size", [1, 4])
def test_admit_share_release_round_trip(page_size):
    kv = make_kv(size=64, page_size=page_size)
    a = make_req("a", list(range(1, 11)))
    assert admit(kv, a) == 0
    check_slots_add_up(kv, [a])
    kv.share(a)  # a's prompt becomes shareable; a keeps its slots through the cache
    aligned = 10 - 10 % page_size
    assert a.prefix_len == aligned
    check_slots_add_up(kv, [a])
    b = make_req("b", list(range(1, 11)) + [20, 21])
    assert admit(kv, b) == aligned  # b reuses a's prefix
    assert torch.equal(kv.table[b.row, :aligned], kv.table[a.row, :aligned])
    check_slots_add_up(kv, [a, b])
    for r in (a, b):
        kv.release(r)
        assert r.row is None
    check_slots_add_up(kv, [])
    assert kv.cache.total_size() >= aligned


def test_admit_fails_cleanly_without_room():
    kv = make_kv(size=8)
    req = make_req("big", list(range(1, 13)))
    m = kv.cache.match_prefix([])
    assert not kv.admit(req, m, 12)
    assert req.row is None and kv.req_pool.available_size() == 8
    assert kv.allocator.available_size() == 8


def test_admit_fails_cleanly_without_a_row():
    kv = make_kv(size=64, rows=1)
    admit(kv, make_req("a", [1, 2]))
    req = make_req("b", [3, 4])
    free = kv.allocator.available_size()
    assert not kv.admit(req, kv.cache.match_prefix([]), 2)
    assert kv.allocator.available_size() == free


@pytest.mark.parametrize("page_size", [1, 4])
def test_decode_need_counts_whole_pages_beyond_the_last_page(page_size):
    kv = make_kv(size=64, page_size=page_size)
    r = make_req("r", [1, 2, 3])
    admit(kv, r)
    r.output_ids.append(5)  # one uncommitted token
    expect = 1 if page_size == 1 else 0  # 3 tokens leave room in the first page of 4
    assert kv.decode_need([r]) == expect
    r.draft_ids = [6, 7, 8]
    expect = 4 if page_size == 1 else 4  # 4 more tokens: one past the page -> one new page
    assert kv.decode_need([r]) == expect


@pytest.mark.parametrize("page_size", [1, 4])
def test_commit_draft_frees_the_rejected_tail(page_size):
    kv = make_kv(size=64, page_size=page_size)
    r = make_req("r", [1, 2, 3])
    admit(kv, r)
    r.output_ids.append(5)
    kv.append_decode_slots(r, 1 + 6)  # the token and a 6-token draft
    r.kv_len += 1
    free_before = kv.allocator.available_size()
    kv.commit_draft(r, 2, 6)
    assert r.kv_len == 6
    r.output_ids.extend([6, 7])
    freed = kv.allocator.available_size() - free_before
    # Positions 6..9 dropped. Paged: 6 and 7 share the kept token's page and stay with the
    # request; 8 and 9 are the only used slots of the next page, which is freed whole.
    assert freed == 4
    check_slots_add_up(kv, [r])
    kv.release(r)
    check_slots_add_up(kv, [])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_size=st.sampled_from([1, 2, 4]),
       ops=st.lists(st.tuples(st.sampled_from(["admit", "decode", "share", "release", "evict"]),
                              st.integers(0, 3), st.integers(1, 6)), min_size=1, max_size=40))
def test_slots_add_up_under_any_sequence(page_size, ops):
    kv = make_kv(size=128, page_size=page_size, rows=4, context=128)
    live = []
    n = 0
    for op, pick, k in ops:
        if op == "admit" and kv.req_pool.available_size():
            base = [1 + pick] * 4 + list(range(10, 10 + k))  # prompts share prefixes
            req = make_req(f"r{n}", base)
            n += 1
            m = kv.cache.match_prefix(req.fill_ids[:req.seq_len - 1])
            take = req.seq_len - len(m.indices)
            if kv.admit(req, m, take):
                req.kv_len += take
                live.append(req)
        elif op == "decode" and live:
            r = live[pick % len(live)]
            r.output_ids.extend(range(40, 40 + k))
            if kv.allocator.available_size() >= kv.decode_need([r]) and r.kv_len + k < 120:
                kv.append_decode_slots(r, k)
                r.kv_len += k
            else:
                del r.output_ids[-k:]
        elif op == "share" and live:
            kv.share(live[pick % len(live)])
        elif op == "release" and live:
            kv.release(live.pop(pick % len(live)))
        elif op == "evict":
            kv.cache.evict(k * 4)
        check_slots_add_up(kv, live)
    for r in live:
        kv.release(r)
    check_slots_add_up(kv, [])
    kv.cache.reset()
    assert kv.allocator.available_size() == kv.allocator.size
