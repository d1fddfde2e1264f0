"""The server and the offline Engine build results from the same pipeline pieces (progress
reports, detokenizer, per-request state, result and chunk builders), so the same request gives
the same fields, text, ids and logprobs on both, streamed or not."""

from __future__ import annotations

import pytest
import torch

from radixrt import Engine
from tests.server.test_native import assert_same_logprobs, generate_stream

pytestmark = pytest.mark.timeout(300)

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
LOGPROBS = {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2,
            "return_text_in_logprobs": True}
PER_CHUNK = ("output_token_logprobs", "output_top_logprobs")


@pytest.fixture(scope="module")
def engine(default_model_dir):
    """An Engine computing like the test server (one thread: the same float sums)."""
    threads = torch.get_num_threads()
    eng = Engine(max_total_tokens=4096, num_threads=1)
    yield eng
    eng.shutdown()
    torch.set_num_threads(threads)


def _server(client, **body):
    r = client.post("/generate", json={"text": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _engine(engine, sampling_params, stream=False, **kw):
    return engine.generate(PROMPT, sampling_params, stream=stream, **kw)


def test_same_result_fields(client, engine):
    for extra in ({}, LOGPROBS):
        srv = _server(client, sampling_params=GREEDY, **extra)
        eng = _engine(engine, GREEDY, **extra)
        assert set(srv) == set(eng) == {"text", "output_ids", "meta_info"}
        assert (srv["text"], srv["output_ids"]) == (eng["text"], eng["output_ids"])
        sm, em = srv["meta_info"], eng["meta_info"]
        assert set(sm) == set(em)
        for key in ("prompt_tokens", "completion_tokens", "finish_reason"):
            assert sm[key] == em[key], key
        for m in (sm, em):
            assert 0 < m["ttft"] <= m["e2e_latency"]
            assert 0 <= m["cached_tokens"] < m["prompt_tokens"]
        if extra:
            assert sm["output_token_logprobs_length"] == em["output_token_logprobs_length"] == 8
            for key in ("input_token_logprobs", "input_top_logprobs", *PER_CHUNK):
                assert_same_logprobs(sm[key], em[key])


def _check_chunks(chunks: list[dict], full: dict) -> None:
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]
    seen = 0
    for c in chunks:
        m = c["meta_info"]
        assert m["output_token_logprobs_length"] == m["completion_tokens"] == len(c["output_ids"])
        assert len(m["output_token_logprobs"]) == len(m["output_top_logprobs"]) == m["completion_tokens"] - seen
        assert m["input_token_logprobs"] == chunks[0]["meta_info"]["input_token_logprobs"]
        seen = m["completion_tokens"]
    assert_same_logprobs(chunks[0]["meta_info"]["input_token_logprobs"], full["meta_info"]["input_token_logprobs"])
    for key in PER_CHUNK:
        assert_same_logprobs([e for c in chunks for e in c["meta_info"][key]], full["meta_info"][key])
    last = chunks[-1]["meta_info"]
    assert set(last) == set(full["meta_info"]) and last["finish_reason"] == full["meta_info"]["finish_reason"]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert 0 < last["ttft"] <= last["e2e_latency"]


def test_streamed_logprobs_add_up_to_the_result(client, engine):
    params = {**GREEDY, "max_new_tokens": 12}
    srv_full = _server(client, sampling_params=params, **LOGPROBS)
    srv_chunks = generate_stream(client, {"text": PROMPT, "sampling_params": params, **LOGPROBS})
    _check_chunks(srv_chunks, srv_full)
    eng_full = _engine(engine, params, **LOGPROBS)
    eng_chunks = list(_engine(engine, params, stream=True, **LOGPROBS))
    _check_chunks(eng_chunks, eng_full)
    assert set(srv_chunks[0]) == set(eng_chunks[0]) == {"text", "output_ids", "meta_info"}
    assert set(srv_chunks[-1]["meta_info"]) == set(eng_chunks[-1]["meta_info"])
    assert srv_chunks[-1]["text"] == eng_chunks[-1]["text"]


def test_stop_strings_never_leak(client, engine):
    params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
    base = _server(client, sampling_params=params)["text"]
    assert len(base) > 8
    stops = [[base[4:7]], [base[5:6], "\u00a7never\u00a7"]]  # several characters; one among others
    for stop in stops:
        p = {**params, "stop": stop}
        want = base[:min(base.find(s) for s in stop if s in base)]
        srv = _server(client, sampling_params=p)
        eng = _engine(engine, p)
        assert srv["text"] == eng["text"] == want
        assert srv["meta_info"]["finish_reason"] == eng["meta_info"]["finish_reason"]
        for chunks in (generate_stream(client, {"text": PROMPT, "sampling_params": p}),
                       list(_engine(engine, p, stream=True))):
            assert all(s not in c["text"] for c in chunks for s in stop)
            assert chunks[-1]["text"] == want
            assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "stop"
