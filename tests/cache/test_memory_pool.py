"""KVAllocator and ReqToTokenPool."""

from __future__ import annotations

import pytest
import torch

from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool, TokenToKVPool


def _pages(slots: torch.Tensor, ps: int) -> set[int]:
    return {int(s) // ps for s in slots}


@pytest.mark.parametrize("ps", [1, 4])
def test_alloc_free_round_trip(ps):
    a = KVAllocator(32, page_size=ps)
    assert a.available_size() == 32
    x = a.alloc(10)
    assert x.dtype == torch.int64 and len(x) == 10
    assert len(set(x.tolist())) == 10
    assert 0 not in x.tolist() and int(x.max()) <= 32 + ps - 1
    # Whole pages are taken: 10 slots occupy 3 pages of 4.
    assert a.available_size() == 32 - (10 if ps == 1 else 12)
    y = a.alloc(32 - 16)
    assert not set(x.tolist()) & set(y.tolist())
    a.free(x)
    a.free(y.tolist())  # lists are accepted too
    assert a.available_size() == 32
    z = a.alloc(32)
    assert sorted(z.tolist()) == sorted({p * ps + i for p in range(1, 32 // ps + 1) for i in range(ps)})
    assert a.alloc(1) is None


def test_paged_slots_are_page_aligned_runs():
    a = KVAllocator(64, page_size=4)
    x = a.alloc(9).tolist()
    # Slot j of a fresh allocation sits at offset j % 4 of its page.
    assert all(s % 4 == j % 4 for j, s in enumerate(x))
    assert [s // 4 for s in x[:4]] == [x[0] // 4] * 4


def test_alloc_continues_partial_page():
    a = KVAllocator(64, page_size=4)
    x = a.alloc(6)  # pages P, Q; Q half used
    before = a.available_size()
    y = a.alloc(1, last_slot=int(x[-1]))
    assert int(y[0]) == int(x[-1]) + 1  # same page, next slot
    assert a.available_size() == before  # no new page
    z = a.alloc(3, last_slot=int(y[0]))  # one slot left in the page, then a fresh page
    assert int(z[0]) == int(y[0]) + 1 and int(z[0]) % 4 == 3
    assert int(z[1]) % 4 == 0 and int(z[1]) // 4 not in _pages(x, 4)
    assert a.available_size() == before - 4
    # A last_slot that ends its page starts a new one.
    w = a.alloc(2, last_slot=int(z[0]))
    assert int(w[0]) % 4 == 0 and a.available_size() == before - 8
    a.free(torch.cat([x, y, z, w]))
    assert a.available_size() == 64


def test_last_slot_must_be_in_allocated_page():
    a = KVAllocator(16, page_size=4)
    with pytest.raises(ValueError):
        a.alloc(2, last_slot=0)  # the padding page
    x = a.alloc(2)
    a.free(x)
    with pytest.raises(ValueError):
        a.alloc(2, last_slot=int(x[-1]))  # page already freed
    assert a.available_size() == 16


@pytest.mark.parametrize("ps", [1, 4])
def test_alloc_failure_has_no_side_effects(ps):
    a = KVAllocator(16, page_size=ps)
    x = a.alloc(6)
    free_before = list(a._free_pages)
    assert a.alloc(11) is None
    assert a._free_pages == free_before and a.available_size() == 16 - len(_pages(x, ps)) * ps
    if ps > 1:
        # Tail of the partial page would fit, but the extra pages do not.
        assert a.alloc(2 + 9, last_slot=int(x[-1])) is None
        assert a._free_pages == free_before
    assert a.alloc(0).numel() == 0


@pytest.mark.parametrize("ps", [1, 4])
def test_double_free_raises(ps):
    a = KVAllocator(16, page_size=ps)
    x = a.alloc(4)
    a.free(x)
    with pytest.raises(RuntimeError):
        a.free(x)
    y = a.alloc(1)
    if ps == 1:  # the same slot twice in one call
        with pytest.raises(RuntimeError):
            a.free(torch.cat([y, y]))
        assert a.available_size() == 15
    with pytest.raises(RuntimeError):
        a.free([0])
    a.free(y)
    assert a.available_size() == 16


@pytest.mark.parametrize("ps", [1, 4])
def test_slot_zero_never_handed_out(ps):
    a = KVAllocator(64, page_size=ps)
    got = []
    while (x := a.alloc(3)) is not None:
        got += x.tolist()
    assert 0 not in got and min(got) >= ps
    a.free(got)
    assert a.available_size() == 64
    a.clear()
    assert a.available_size() == 64


def test_free_of_partial_page_frees_whole_page():
    a = KVAllocator(16, page_size=4)
    x = a.alloc(3)
    a.free(x[1:2])
    assert a.available_size() == 16


def test_bad_sizes():
    with pytest.raises(ValueError):
        KVAllocator(10, page_size=4)
    with pytest.raises(ValueError):
        KVAllocator(2, page_size=4)


def test_req_to_token_pool_rows():
    p = ReqToTokenPool(3, 8)
    assert p.req_to_token.shape == (3, 8) and p.req_to_token.dtype == torch.int64
    rows = [p.alloc() for _ in range(3)]
    assert sorted(rows) == [0, 1, 2] and p.available_size() == 0
    assert p.alloc() is None
    p.req_to_token[rows[1], :3] = torch.tensor([5, 6, 7])
    p.free(rows[1])
    assert p.available_size() == 1 and p.alloc() == rows[1]
    p.clear()
    assert p.available_size() == 3


def test_token_to_kv_pool_has_padding_page():
    pool = TokenToKVPool(16, num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32,
                         page_size=4)
    assert pool.k_buffers[0].shape == (20, 2, 4)
    assert torch.all(pool.k_buffers[1][0] == 0) and torch.all(pool.v_buffers[0][0] == 0)
    slots = torch.tensor([4, 7])
    pool.set_kv(1, slots, torch.ones(2, 2, 4), torch.full((2, 2, 4), 2.0))
    assert torch.all(pool.k_buffers[1][slots] == 1) and torch.all(pool.v_buffers[1][slots] == 2)
