"""RunningKV.append_decode_slots_batch: the whole decode batch's slots at once, the same slots
and table rows as one append_decode_slots call per request."""

from __future__ import annotations

import pytest
import torch

from tests.scheduler.conftest import check_slots_add_up, make_kv, make_req


def running(kv, lens):
    reqs = []
    for i, n in enumerate(lens):
        r = make_req(f"r{i}", [1 + (7 * i + j) % 29 for j in range(n)])
        assert kv.admit(r, kv.cache.match_prefix([]), n)
        r.kv_len += n
        reqs.append(r)
    return reqs


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("ns", [[1, 1, 1, 1, 1], [1, 3, 0, 2, 1], [2, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
def test_batch_matches_one_call_per_request(page_size, ns):
    one, many = make_kv(size=128, page_size=page_size), make_kv(size=128, page_size=page_size)
    lens = [3, 8, 5, 1, 6]
    a, b = running(one, lens), running(many, lens)
    for _ in range(3):  # a few steps: the free lists must stay in step too
        parts = [one.append_decode_slots(r, n) for r, n in zip(a, ns)]
        expected = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        got = many.append_decode_slots_batch(b, ns)
        assert got.dtype == torch.int64 and torch.equal(got, expected)
        assert torch.equal(many.table, one.table)
        for r, s, n in zip(b, a, ns):
            r.kv_len += n
            s.kv_len += n
        check_slots_add_up(many, b)
    assert many.allocator.available_size() == one.allocator.available_size()


def test_batch_without_room_or_with_bad_counts_raises():
    kv = make_kv(size=16)
    reqs = running(kv, [6, 6])
    with pytest.raises(ValueError, match="one non-negative count"):
        kv.append_decode_slots_batch(reqs, [1])
    with pytest.raises(ValueError, match="one non-negative count"):
        kv.append_decode_slots_batch(reqs, [2, -1])
    with pytest.raises(RuntimeError, match="KV allocation failed"):
        kv.append_decode_slots_batch(reqs, [3, 2])  # 4 slots free
    assert kv.allocator.available_size() == 4  # nothing taken
