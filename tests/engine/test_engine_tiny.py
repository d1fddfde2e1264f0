"""Engine behaviour on a tiny random-weight Llama: batching, caching, memory pressure,
sampling parameters, logprobs. Fast; the real-model equivalence tests live in
test_engine_real.py."""

from __future__ import annotations

import random
import re
import time

import pytest

from radixrt import Engine
from tests.engine.conftest import assert_no_leak

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def _prompts(n: int, length: int, seed: int = 0, shared: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    head = [rng.randrange(100, 40000) for _ in range(shared)]
    return [head + [rng.randrange(100, 40000) for _ in range(length)] for _ in range(n)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = Engine(model_path=str(tiny_model_dir), max_total_tokens=4096, max_running_requests=16)
    yield eng
    eng.shutdown()


def _outputs(eng, prompts, params=GREEDY):
    return [r["output_ids"] for r in eng.generate(input_ids=prompts, sampling_params=params)]


def test_batch_equals_alone(engine):
    prompts = _prompts(6, 20, seed=1) + _prompts(2, 5, seed=2)
    together = _outputs(engine, prompts)
    engine.flush_cache()
    alone = [engine.generate(input_ids=p, sampling_params=GREEDY)["output_ids"] for p in prompts]
    assert together == alone
    assert_no_leak(engine)


def test_text_prompts_and_result_shape(engine):
    res = engine.generate("Hello there", {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert set(res) == {"text", "output_ids", "meta_info"}
    m = res["meta_info"]
    assert m["completion_tokens"] == 5 == len(res["output_ids"])
    assert m["prompt_tokens"] == len(engine.tokenizer.encode("Hello there"))
    assert m["finish_reason"]["type"] == "length"
    batch = engine.generate(["a", "b c"], {"max_new_tokens": 2, "ignore_eos": True})
    assert isinstance(batch, list) and len(batch) == 2
    assert_no_leak(engine)


def test_cache_hits_reported(engine):
    p = _prompts(1, 64, seed=3)[0]
    first = engine.generate(input_ids=p, sampling_params=GREEDY)
    second = engine.generate(input_ids=p, sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] == len(p) - 1
    assert second["output_ids"] == first["output_ids"]
    # The previous answer is cached too (multi-turn): prompt + output hits.
    third = engine.generate(input_ids=p + first["output_ids"], sampling_params=GREEDY)
    assert third["meta_info"]["cached_tokens"] >= len(p) + len(first["output_ids"]) - 2
    assert_no_leak(engine)


def test_stats_name_the_precision_and_cpu(engine):
    stats = engine.get_stats()
    assert stats["quantization"] in ("none", "int8")
    assert {"avx2", "avx512", "vnni", "bf16", "amx"} <= set(stats["cpu_features"])
    assert stats["kv"]["free"] + stats["kv"]["running"] + stats["kv"]["cached"] == stats["kv"]["total"]


def test_shared_prefix_computed_once(engine):
    engine.flush_cache()
    before = engine.get_stats()["num_prefill_tokens"]
    prompts = _prompts(8, 8, seed=4, shared=200)
    _outputs(engine, prompts)
    computed = engine.get_stats()["num_prefill_tokens"] - before
    # The 200-token prefix once, each 8-token suffix once (plus a little slack).
    assert computed <= 200 + 8 * 8 + 8, computed
    assert_no_leak(engine)


def test_n_and_seed(engine):
    # The tiny model is very peaked: a high temperature makes samples differ.
    params = {"max_new_tokens": 8, "temperature": 100.0, "seed": 7, "n": 3, "ignore_eos": True}
    a = engine.generate("Once upon", params)
    b = engine.generate("Once upon", params)
    assert len(a) == 3 and [r["output_ids"] for r in a] == [r["output_ids"] for r in b]
    assert len({tuple(r["output_ids"]) for r in a}) > 1
    # Same seed alone vs inside a batch of unrelated requests: same tokens.
    single = {"max_new_tokens": 8, "temperature": 1.0, "seed": 11, "ignore_eos": True}
    alone = engine.generate(input_ids=[5, 6, 7], sampling_params=single)["output_ids"]
    mixed = engine.generate(input_ids=[[9, 9], [5, 6, 7], [1, 2, 3, 4]],
                            sampling_params=[{"max_new_tokens": 4, "temperature": 1.0}, single,
                                             {"max_new_tokens": 9, "temperature": 0.5, "seed": 1}])
    assert mixed[1]["output_ids"] == alone
    assert_no_leak(engine)


def test_stop_token_ids_and_min_new_tokens(engine):
    base = engine.generate(input_ids=[10, 20, 30], sampling_params=GREEDY)["output_ids"]
    stop_at = base[3]
    r = engine.generate(input_ids=[10, 20, 30], sampling_params={
        "temperature": 0, "max_new_tokens": 12, "stop_token_ids": [stop_at]})
    assert r["output_ids"][-1] == stop_at and len(r["output_ids"]) == base.index(stop_at) + 1
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_at}
    r = engine.generate(input_ids=[10, 20, 30], sampling_params={
        "temperature": 0, "max_new_tokens": 12, "min_new_tokens": 12, "stop_token_ids": [stop_at]})
    assert len(r["output_ids"]) == 12 and stop_at not in r["output_ids"]
    assert_no_leak(engine)


def test_stop_strings_not_emitted(engine):
    base = engine.generate(input_ids=[11, 22, 33], sampling_params=GREEDY)
    text = base["text"]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip("generated text has no usable stop string")
    r = engine.generate(input_ids=[11, 22, 33], sampling_params={**GREEDY, "stop": [stop]})
    assert stop not in r["text"]
    assert text.startswith(r["text"])
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert_no_leak(engine)


def test_no_stop_trim_keeps_the_matched_stop_string(engine):
    base = engine.generate(input_ids=[11, 22, 33], sampling_params=GREEDY)
    text = base["text"]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip("generated text has no usable stop string")
    r = engine.generate(input_ids=[11, 22, 33],
                        sampling_params={**GREEDY, "stop": [stop], "no_stop_trim": True})
    assert r["text"].endswith(stop) and text.startswith(r["text"])
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert_no_leak(engine)


def test_stop_regex_cuts_at_first_match(engine):
    base = engine.generate(input_ids=[11, 22, 33], sampling_params=GREEDY)
    text = base["text"]
    piece = text[len(text) // 2:len(text) // 2 + 2]
    if not piece.strip():
        pytest.skip("generated text has no usable stop piece")
    pattern = "(?:" + re.escape(piece) + ")+"
    r = engine.generate(input_ids=[11, 22, 33], sampling_params={**GREEDY, "stop_regex": pattern})
    want = text[:re.search(pattern, text).start()]
    assert r["text"] == want
    assert r["meta_info"]["finish_reason"]["type"] == "stop"
    assert re.fullmatch(pattern, r["meta_info"]["finish_reason"]["matched"])
    # SGLang's frontend always sends the field, empty when unused.
    r = engine.generate(input_ids=[11, 22, 33], sampling_params={**GREEDY, "stop_regex": []})
    assert r["text"] == text
    with pytest.raises(ValueError, match="stop_regex"):
        engine.generate(input_ids=[11, 22, 33], sampling_params={**GREEDY, "stop_regex": "("})
    assert_no_leak(engine)


def test_logprobs(engine):
    r = engine.generate(input_ids=[3, 4, 5, 6, 7], sampling_params={**GREEDY, "max_new_tokens": 4},
                        return_logprob=True, logprob_start_len=0, top_logprobs_num=3)
    m = r["meta_info"]
    assert len(m["output_token_logprobs"]) == 4
    assert [t[1] for t in m["output_token_logprobs"]] == r["output_ids"]
    assert len(m["input_token_logprobs"]) == 5 and m["input_token_logprobs"][0][0] is None
    # Greedy: the chosen token is the top-1 of the top logprobs.
    for (lp, tok, _), top in zip(m["output_token_logprobs"], m["output_top_logprobs"]):
        assert top[0][1] == tok and abs(top[0][0] - lp) < 1e-5 and len(top) == 3
    # Prompt logprobs do not depend on the cache.
    again = engine.generate(input_ids=[3, 4, 5, 6, 7], sampling_params={**GREEDY, "max_new_tokens": 1},
                            return_logprob=True, logprob_start_len=0)
    a = [x[0] for x in m["input_token_logprobs"][1:]]
    b = [x[0] for x in again["meta_info"]["input_token_logprobs"][1:]]
    assert a == pytest.approx(b, abs=1e-4)
    # A one-token prompt still reports its token (with no logprob).
    one = engine.generate(input_ids=[9], sampling_params={**GREEDY, "max_new_tokens": 1},
                          return_logprob=True, logprob_start_len=0, top_logprobs_num=2)
    assert [x[:2] for x in one["meta_info"]["input_token_logprobs"]] == [[None, 9]]
    assert one["meta_info"]["input_top_logprobs"] == [None]
    assert_no_leak(engine)


def _ids(entries: list) -> list:
    return [_ids(e) if isinstance(e[0], list) else e[1] for e in entries]


def _values(entries: list) -> list:
    return [v for e in entries for v in (_values(e) if isinstance(e[0], list) else [e[0]])]


def test_streaming_equals_non_streaming(engine):
    """The server's stream chunks: text and output_ids so far, output logprobs new since the
    previous chunk (their concatenation is the non-streamed list)."""
    params = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    kw = {"return_logprob": True, "top_logprobs_num": 2}
    full = engine.generate("The quick brown", params, **kw)
    chunks = list(engine.generate("The quick brown", params, stream=True, **kw))
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]
    seen = 0
    for c in chunks:
        m = c["meta_info"]
        assert m["output_token_logprobs_length"] == m["completion_tokens"] == len(c["output_ids"])
        assert len(m["output_token_logprobs"]) == len(m["output_top_logprobs"]) == m["completion_tokens"] - seen
        seen = m["completion_tokens"]
    for key in ("output_token_logprobs", "output_top_logprobs"):
        streamed = [e for c in chunks for e in c["meta_info"][key]]
        assert _ids(streamed) == _ids(full["meta_info"][key])
        assert _values(streamed) == pytest.approx(_values(full["meta_info"][key]), abs=1e-4)
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert set(chunks[-1]["meta_info"]) == set(full["meta_info"])
    assert 0 < full["meta_info"]["ttft"] <= full["meta_info"]["e2e_latency"]
    assert_no_leak(engine)


def test_stop_string_never_streamed(engine):
    base = engine.generate(input_ids=[11, 22, 33], sampling_params=GREEDY)["text"]
    stop = base[len(base) // 2:len(base) // 2 + 2]
    if not stop.strip():
        pytest.skip("generated text has no usable stop string")
    params = {**GREEDY, "stop": [stop]}
    full = engine.generate(input_ids=[11, 22, 33], sampling_params=params)
    chunks = list(engine.generate(input_ids=[11, 22, 33], sampling_params=params, stream=True))
    assert full["text"] == base[:base.index(stop)]
    assert all(stop not in c["text"] for c in chunks) and chunks[-1]["text"] == full["text"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert_no_leak(engine)


def test_stream_closed_early_aborts(engine):
    it = engine.generate("Once", {"max_new_tokens": 500, "ignore_eos": True}, stream=True)
    next(it)
    it.close()
    kv = engine.kv_accounting()
    for _ in range(100):  # the abort reaches the scheduler thread asynchronously
        if kv["running"] == 0:
            break
        time.sleep(0.05)
        kv = engine.kv_accounting()
    assert_no_leak(engine)


def test_bad_requests(engine):
    with pytest.raises(ValueError, match="temperature"):
        engine.generate("x", {"temperature": -1})
    with pytest.raises(ValueError, match="unknown"):
        engine.generate("x", {"max_tokens": 3})
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate(input_ids=[10**7], sampling_params={"max_new_tokens": 1})
    with pytest.raises(ValueError, match="context length"):
        engine.generate(input_ids=[5] * 2000, sampling_params={"max_new_tokens": 1})
    # The server's wording, naming the field (and the prompt of a batch).
    with pytest.raises(ValueError, match=r"^input_ids\[1\]: token id -1 is outside the vocabulary"):
        engine.generate(input_ids=[[5], [-1]], sampling_params={"max_new_tokens": 1})
    with pytest.raises(ValueError, match="^prompt: the prompt is empty"):
        engine.generate("", {"max_new_tokens": 1})
    with pytest.raises(ValueError, match="^top_logprobs_num"):
        engine.generate("x", {"max_new_tokens": 1}, return_logprob=True, top_logprobs_num=-2)
    # Found by the scheduler (the constraint does not compile): the same error, after the fact.
    with pytest.raises(ValueError, match="regex"):
        engine.generate("x", {"max_new_tokens": 1, "regex": "(unclosed"})
    assert engine.generate("ok", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1
    assert_no_leak(engine)


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("disable_cache", [False, True])
def test_memory_pressure_same_outputs(tiny_model_dir, page_size, disable_cache):
    """A pool so small that eviction and retraction happen constantly changes nothing."""
    prompts = _prompts(12, 30, seed=5, shared=40) + _prompts(6, 50, seed=6)
    params = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=100000, page_size=page_size,
                disable_radix_cache=disable_cache) as big:
        expected = _outputs(big, prompts, params)
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=400, page_size=page_size,
                disable_radix_cache=disable_cache, chunked_prefill_size=64,
                max_running_requests=16) as small:
        got = _outputs(small, prompts, params)
        stats = small.get_stats()
        assert stats["num_retractions"] > 0
        assert_no_leak(small)
    assert got == expected


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight", "fcfs", "random"])
def test_policies_same_outputs(tiny_model_dir, policy):
    prompts = _prompts(5, 10, seed=8, shared=30) + _prompts(5, 10, seed=9)
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=2048, schedule_policy=policy) as eng:
        got = _outputs(eng, prompts)
        eng.flush_cache()
        alone = [eng.generate(input_ids=p, sampling_params=GREEDY)["output_ids"] for p in prompts]
        assert got == alone
        assert_no_leak(eng)


def test_chunked_prefill_matches(tiny_model_dir):
    prompts = _prompts(3, 300, seed=10)
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096, chunked_prefill_size=64) as eng:
        chunked = _outputs(eng, prompts)
        assert_no_leak(eng)
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096, chunked_prefill_size=-1) as eng:
        whole = _outputs(eng, prompts)
    assert chunked == whole
