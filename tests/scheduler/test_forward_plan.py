"""Which tokens a step feeds and which logits rows belong to which request."""

from __future__ import annotations

from radixrt.scheduler.forward_plan import plan_decode, plan_extend
from tests.scheduler.conftest import make_kv, make_req


def test_extend_plan_rows_for_sampling_and_prompt_logprobs():
    kv = make_kv(size=64)
    a = make_req("a", [1, 2, 3, 4, 5])
    a.return_logprob, a.logprob_start_len = True, 0
    b = make_req("b", [6, 7, 8, 9, 10, 11])  # a chunk of 4: not sampled this step
    for r, take in ((a, 5), (b, 4)):
        assert kv.admit(r, kv.cache.match_prefix([]), take)
    plan = plan_extend([a, b], [5, 4], kv.table)
    fb = plan.forward_batch
    assert fb.input_ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert fb.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    # a's prompt logprobs: logits at positions 0..3 predict tokens 1..4; then its sample row.
    assert plan.prompt_logprob_rows == [(a, 0, 1, 4)]
    assert plan.sample_rows == [(a, 4)]
    assert fb.logits_indices.tolist() == [0, 1, 2, 3, 4]
    assert a.input_token_logprobs == [(None, 1)]  # the first prompt token has none


def test_decode_plan_feeds_the_new_token_then_the_draft():
    kv = make_kv(size=64)
    a, b = make_req("a", [1, 2, 3]), make_req("b", [4, 5])
    for r in (a, b):
        assert kv.admit(r, kv.cache.match_prefix([]), r.seq_len)
        r.kv_len = r.seq_len
        r.output_ids.append(9)
    b.draft_ids = [7, 8]
    plan = plan_decode([a, b], kv)
    fb = plan.forward_batch
    assert fb.input_ids.tolist() == [9, 9, 7, 8]
    assert fb.positions.tolist() == [3, 2, 3, 4]
    assert plan.fresh == [1, 1] and plan.drafts == [[], [7, 8]]
    assert fb.logits_indices.tolist() == [0, 1, 2, 3] and plan.first_row == [0, 1]
    assert fb.seq_lens.tolist() == [4, 5]
    assert kv.table[b.row, 2:5].tolist() == fb.out_cache_loc[1:].tolist()


def test_decode_plan_of_one_request_views_its_table_row():
    kv = make_kv(size=64)
    a = make_req("a", [1, 2, 3])
    assert kv.admit(a, kv.cache.match_prefix([]), a.seq_len)
    a.kv_len = a.seq_len
    a.output_ids.append(9)
    fb = plan_decode([a], kv).forward_batch
    assert fb.is_decode and fb.input_ids.tolist() == [9] and fb.positions.tolist() == [3]
    assert fb.kv_indices.shape == (1, 4) and fb.kv_indices.is_contiguous()
    assert fb.kv_indices.data_ptr() == kv.table[a.row].data_ptr()  # no copy
    assert fb.kv_indices[0].tolist() == kv.table[a.row, :4].tolist()
    assert fb.extend_lens.tolist() == [1] and fb.q_starts.tolist() == [0] and fb.logits_indices.tolist() == [0]


def test_decode_plan_pads_shorter_sequences_with_slot_zero():
    kv = make_kv(size=64)
    a, b = make_req("a", [1, 2, 3, 4, 5]), make_req("b", [6])
    for r in (a, b):
        assert kv.admit(r, kv.cache.match_prefix([]), r.seq_len)
        r.kv_len = r.seq_len
        r.output_ids.append(7)
    fb = plan_decode([a, b], kv).forward_batch
    assert fb.kv_indices.shape == (2, 6)
    assert fb.kv_indices[0].tolist() == kv.table[a.row, :6].tolist()
    assert fb.kv_indices[1, :2].tolist() == kv.table[b.row, :2].tolist()
    assert fb.kv_indices[1, 2:].tolist() == [0, 0, 0, 0]
    assert kv.table[b.row, :2].tolist() != [0, 0]  # the table itself is untouched
    assert fb.seq_lens.tolist() == [6, 2] and fb.positions.tolist() == [5, 1]
    assert fb.q_starts.tolist() == [0, 1] and fb.logits_indices.tolist() == [0, 1]
