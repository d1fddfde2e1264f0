"""StreamMerger: SGLang's stream chunks (cumulative text, output logprobs new since the previous
chunk) come out as text deltas with each chunk's own logprobs; so do servers that repeat the
whole logprob lists."""

from __future__ import annotations

from radixrt.lang.streaming import StreamMerger, merge_meta


def chunk(text, ids, total, lps, length=True):
    meta = {"completion_tokens": total, "output_token_logprobs": lps}
    if length:
        meta["output_token_logprobs_length"] = total
    return {"text": text, "output_ids": ids, "meta_info": meta}


def test_chunks_with_new_logprobs():
    m = StreamMerger()
    out = [m.add(chunk("a", [1], 1, [[-1, 1, None]])),
           m.add(chunk("a", [1, 2], 2, [[-2, 2, None]])),  # a token with no text yet
           m.add(chunk("ab", [1, 2, 3], 3, [[-3, 3, None]])),
           m.add(chunk("aba", [1, 2, 3, 4], 5, [[-4, 4, None], [-5, 5, None]]))]  # coalesced
    assert [t for t, _ in out] == ["a", "", "b", "a"]
    assert [[e[1] for e in meta["output_token_logprobs"]] for _, meta in out] == [[1], [2], [3], [4, 5]]
    assert m.text == "aba"


def test_chunks_with_whole_logprob_lists():
    # SGLang's default server repeats the whole lists (with their length); older ones without it.
    for length in (True, False):
        m = StreamMerger()
        out = [m.add(chunk("a", [1], 1, [[-1, 1, None]], length)),
               m.add(chunk("a", [1, 2], 2, [[-1, 1, None], [-2, 2, None]], length)),
               m.add(chunk("ab", [1, 2, 3], 3, [[-1, 1, None], [-2, 2, None], [-3, 3, None]], length))]
        assert [t for t, _ in out] == ["a", "", "b"]
        assert [[e[1] for e in meta["output_token_logprobs"]] for _, meta in out] == [[1], [2], [3]]


def test_repeated_text_and_revisions():
    m = StreamMerger()
    assert m.add({"text": "a"})[0] == "a"
    assert m.add({"text": "aa"})[0] == "a"  # the same text again is new text
    assert m.add({"text": "aab"})[0] == "b"
    assert m.add({"text": "ax"})[0] == ""  # a revision keeps what was handed out
    assert m.add({"text": "aabc"})[0] == "c"


def test_merge_meta_concatenates_incremental_lists():
    acc = merge_meta(None, {"output_token_logprobs": [1], "completion_tokens": 1})
    acc = merge_meta(acc, {"output_token_logprobs": [2], "completion_tokens": 2})
    assert acc == {"output_token_logprobs": [1, 2], "completion_tokens": 2}
