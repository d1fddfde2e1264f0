"""StreamMerger: cumulative and delta chunks both come out as deltas."""

from __future__ import annotations

from radixrt.lang.streaming import StreamMerger, merge_meta


def chunk(text, ids, total, lps):
    return {"text": text, "output_ids": ids, "meta_info": {"completion_tokens": total,
                                                           "output_token_logprobs": lps}}


def test_cumulative_chunks():
    m = StreamMerger()
    out = [m.add(chunk("a", [1], 1, [[-1, 1, None]])),
           m.add(chunk("a", [1, 2], 2, [[-1, 1, None], [-2, 2, None]])),  # token with no text yet
           m.add(chunk("ab", [1, 2, 3], 3, [[-1, 1, None], [-2, 2, None], [-3, 3, None]]))]
    assert [t for t, _ in out] == ["a", "", "b"]
    assert [len(meta["output_token_logprobs"]) for _, meta in out] == [1, 1, 1]


def test_delta_chunks_that_repeat_earlier_text():
    # "a" then "a": a delta reading must not mistake the second chunk for "no new text".
    m = StreamMerger()
    out = [m.add(chunk("a", [1], 1, [[-1, 1, None]])), m.add(chunk("a", [1], 2, [[-1, 1, None]]))]
    assert [t for t, _ in out] == ["a", "a"] and m.text == "aa"


def test_without_ids_falls_back_to_prefix_check():
    m = StreamMerger()
    assert m.add({"text": "he"})[0] == "he"
    assert m.add({"text": "hello"})[0] == "llo"
    assert StreamMerger("delta").add({"text": "x"})[0] == "x"


def test_merge_meta_concatenates_incremental_lists():
    acc = merge_meta(None, {"output_token_logprobs": [1], "completion_tokens": 1})
    acc = merge_meta(acc, {"output_token_logprobs": [2], "completion_tokens": 2})
    assert acc == {"output_token_logprobs": [1, 2], "completion_tokens": 2}
