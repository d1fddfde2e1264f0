"""SGLang-compatible native routes against a real server process."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from tests.server.conftest import assert_no_kv_leak, wait_idle

# The first test of the session also waits for the shared server to start.
pytestmark = pytest.mark.timeout(300)

GREEDY = {"temperature": 0, "max_new_tokens": 8}


def sse_events(response: httpx.Response) -> list:
    """Parse `data: ...` lines; the last must be [DONE]."""
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        if payload == "[DONE]":
            events.append("[DONE]")
        else:
            events.append(json.loads(payload))
    assert events and events[-1] == "[DONE]", events
    return events[:-1]


def assert_same_logprobs(a: list, b: list, tol: float = 1e-4) -> None:
    """Logprob triples (or top-logprob lists of them) with the same tokens and close values."""
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            assert x is None and y is None
        elif isinstance(x[0], list):
            assert_same_logprobs(x, y, tol)
        else:
            assert x[1:] == y[1:] and (x[0] == y[0] or abs(x[0] - y[0]) <= tol), (x, y)


def generate_stream(client: httpx.Client, body: dict) -> list[dict]:
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def test_generate_single(client):
    r = client.post("/generate", json={"text": "The capital of France is",
                                       "sampling_params": {**GREEDY, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["text"], str) and out["text"]
    assert len(out["output_ids"]) == 8
    meta = out["meta_info"]
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] == 8
    assert meta["finish_reason"] == {"type": "length"}
    assert meta["cached_tokens"] >= 0 and 0 < meta["ttft"] <= meta["e2e_latency"]


def test_text_and_input_ids_agree(client):
    a = client.post("/generate", json={"text": "Water boils at", "sampling_params": GREEDY,
                                       "return_logprob": True, "logprob_start_len": 0}).json()
    ids = [tok for _, tok, _ in a["meta_info"]["input_token_logprobs"]]
    assert len(ids) == a["meta_info"]["prompt_tokens"]
    b = client.post("/generate", json={"input_ids": ids, "sampling_params": GREEDY}).json()
    assert a["output_ids"] == b["output_ids"] and a["text"] == b["text"]


def test_stream_equals_non_stream(client):
    body = {"text": "Once upon a time,", "sampling_params": {**GREEDY, "max_new_tokens": 12}}
    full = client.post("/generate", json=body).json()
    chunks = generate_stream(client, body)
    texts = [c["text"] for c in chunks]
    for prev, cur in zip(texts, texts[1:], strict=False):
        assert cur.startswith(prev)  # cumulative, like SGLang
    assert texts[-1] == full["text"]
    assert chunks[-1]["output_ids"] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert all("output_token_logprobs_length" not in c["meta_info"] for c in chunks)  # no logprobs asked
    # What SGLang's RuntimeEndpoint.generate_stream does with these chunks:
    pos, pieces = 0, []
    for c in chunks:
        piece = c["text"][pos:]
        pos += len(piece)
        pieces.append(piece)
    assert "".join(pieces) == full["text"]


def test_stream_logprobs_like_sglang(client):
    """SGLang's frontend test (test_programs.test_stream_logprobs): each chunk carries only the
    output logprobs new since the previous one, and output_token_logprobs_length ==
    completion_tokens; input logprobs are whole in every chunk."""
    body = {"text": "Once upon a time,", "sampling_params": {**GREEDY, "max_new_tokens": 12},
            "return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 1}
    full = client.post("/generate", json=body).json()["meta_info"]
    chunks = generate_stream(client, body)
    prev = 0
    for c in chunks:
        m = c["meta_info"]
        assert m["completion_tokens"] == m["output_token_logprobs_length"] == len(c["output_ids"])
        assert len(m["output_token_logprobs"]) == len(m["output_top_logprobs"]) == m["completion_tokens"] - prev
        assert m["input_token_logprobs"] == chunks[0]["meta_info"]["input_token_logprobs"]
        assert m["input_top_logprobs"] == chunks[0]["meta_info"]["input_top_logprobs"]
        prev = m["completion_tokens"]
    assert prev == full["completion_tokens"] == full["output_token_logprobs_length"] == 12
    # The two requests ran with different cache hits: the same tokens, logprobs equal to rounding.
    for key in ("input_token_logprobs", "input_top_logprobs"):
        assert_same_logprobs(chunks[0]["meta_info"][key], full[key])
    for key in ("output_token_logprobs", "output_top_logprobs"):
        assert_same_logprobs([e for c in chunks for e in c["meta_info"][key]], full[key])


def test_batch_matches_single(client):
    prompts = ["1, 2, 3,", "The sky is", "def f(x):"]
    batch = client.post("/generate", json={"text": prompts, "sampling_params": GREEDY}).json()
    assert isinstance(batch, list) and len(batch) == 3
    for p, res in zip(prompts, batch, strict=True):
        single = client.post("/generate", json={"text": p, "sampling_params": GREEDY}).json()
        assert single["output_ids"] == res["output_ids"]


def test_batch_per_prompt_sampling_params(client):
    out = client.post("/generate", json={
        "text": ["a b", "c d"],
        "sampling_params": [{"max_new_tokens": 2, "temperature": 0, "ignore_eos": True},
                            {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}]}).json()
    assert [o["meta_info"]["completion_tokens"] for o in out] == [2, 4]


def test_n_samples_seeded(client):
    body = {"text": "My favourite food is",
            "sampling_params": {"max_new_tokens": 6, "temperature": 1.0, "n": 3, "seed": 11,
                                "ignore_eos": True}}
    a = client.post("/generate", json=body).json()
    b = client.post("/generate", json=body).json()
    assert len(a) == 3
    assert [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
    assert len({x["meta_info"]["id"] for x in a}) == 3


def test_logprobs(client):
    r = client.post("/generate", json={
        "text": "The capital of France is", "sampling_params": {**GREEDY, "max_new_tokens": 4},
        "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 3,
        "return_text_in_logprobs": True}).json()
    meta = r["meta_info"]
    inp, out = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert len(inp) == meta["prompt_tokens"] and inp[0][0] is None
    assert all(lp <= 0 for lp, _, _ in inp[1:])
    assert [t for _, t, _ in out] == r["output_ids"]
    assert all(isinstance(text, str) for _, _, text in out)
    tops = meta["output_top_logprobs"]
    assert len(tops) == len(out) and all(len(t) == 3 for t in tops)
    for (lp, tok, _), top in zip(out, tops, strict=True):  # greedy: the chosen token is the top one
        assert top[0][1] == tok and abs(top[0][0] - lp) < 1e-4
    assert meta["input_top_logprobs"][0] is None


def test_select_style_scoring(client):
    """What SGLang's RuntimeEndpoint.select sends: a batch, no new tokens, prompt logprobs."""
    out = client.post("/generate", json={
        "text": ["The sky is blue", "The sky is green"],
        "sampling_params": {"max_new_tokens": 0, "temperature": 0},
        "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": 2}).json()
    assert len(out) == 2
    for res in out:
        meta = res["meta_info"]
        assert meta["completion_tokens"] == 0 and res["output_ids"] == []
        assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"] - 2
        assert all(isinstance(x[2], str) for x in meta["input_token_logprobs"])


def test_stop_string_is_never_emitted(client):
    body = {"text": "Count: 1, 2, 3, 4,", "sampling_params": {"temperature": 0, "max_new_tokens": 16,
                                                               "ignore_eos": True}}
    base = client.post("/generate", json=body).json()["text"]
    assert len(base) > 6
    stop = base[3:6]
    want = base[:base.find(stop)]
    body["sampling_params"]["stop"] = [stop]
    res = client.post("/generate", json=body).json()
    assert res["text"] == want
    assert res["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    chunks = generate_stream(client, body)
    assert all(stop not in c["text"] for c in chunks)
    assert chunks[-1]["text"] == want


def test_sglang_frontend_payload_with_stop_regex(client):
    # The sampling_params object SGLang's frontend (RuntimeEndpoint) sends for every gen.
    sp = {"max_new_tokens": 16, "min_new_tokens": 0, "n": 1, "stop": [], "stop_token_ids": [],
          "stop_regex": [], "temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
          "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": True, "regex": None,
          "json_schema": None}
    body = {"text": "Count: 1, 2, 3, 4,", "sampling_params": sp}
    res = client.post("/generate", json=body)
    assert res.status_code == 200, res.text
    base = res.json()["text"]
    m = re.search(r"\d+,", base)
    assert m is not None, base
    sp["stop_regex"] = [r"\d+,"]
    res = client.post("/generate", json=body).json()
    assert res["text"] == base[:m.start()]
    assert res["meta_info"]["finish_reason"] == {"type": "stop", "matched": m.group(0)}
    sp["stop_regex"] = "(unclosed"
    res = client.post("/generate", json=body)
    assert res.status_code == 400 and "stop_regex" in res.json()["error"]["message"]


def test_regex_constraint(client):
    out = client.post("/generate", json={"text": "My area code is ", "sampling_params": {
        "regex": "[0-9]{3}", "max_new_tokens": 8, "temperature": 0}}).json()
    assert out["text"].isdigit() and len(out["text"]) == 3, out
    assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_abort_request(client, server):
    rid = "abort-me-1"
    body = {"text": "Tell me a long story.", "rid": rid, "stream": True,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
    with client.stream("POST", "/generate", json=body) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["meta_info"]["finish_reason"] is None
        a = httpx.post(server.url + "/abort_request", json={"rid": rid})
        assert a.status_code == 200 and a.json()["aborted"] == 1
        events = [json.loads(line[5:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert events[-1]["meta_info"]["completion_tokens"] < 400
    assert_no_kv_leak(server)


def test_duplicate_rid_rejected(client, server):
    body = {"text": "Hello", "rid": "dup-rid", "stream": True,
            "sampling_params": {"max_new_tokens": 300, "ignore_eos": True}}
    with client.stream("POST", "/generate", json=body) as r:
        # Keep the line iterator referenced: a dropped, half-read httpx iterator closes the
        # connection, which (correctly) aborts the request and frees its rid.
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        second = httpx.post(server.url + "/generate", json={**body, "stream": False}, timeout=60)
        assert second.status_code == 400 and "dup-rid" in second.json()["error"]["message"]
        # The first request is unaffected and still streams.
        assert json.loads(next(line for line in lines if line.startswith("data:"))[5:])["meta_info"]["id"] == "dup-rid"
        httpx.post(server.url + "/abort_request", json={"rid": "dup-rid"})
    assert_no_kv_leak(server)


def test_disconnect_mid_stream_frees_kv(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/generate", json={
                "text": "Write an essay.", "stream": True,
                "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}}) as r:
            next(line for line in r.iter_lines() if line.startswith("data:"))
    # Leaving the block closes the connection mid-stream.
    info = wait_idle(server, timeout=20)
    assert info["memory"]["kv_running_slots"] == 0


def test_disconnect_before_first_token_frees_kv(server):
    long_prompt = "word " * 400  # a prefill likely still running at the disconnect
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", timeout=0.3, json={
            "text": long_prompt, "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}})
    before = server.server_info()["stats"]["num_generated_tokens"]
    assert_no_kv_leak(server)
    # Aborted promptly: far fewer than the 1000 tokens asked for were generated.
    assert server.server_info()["stats"]["num_generated_tokens"] - before < 50


def test_concurrent_requests_are_batched(client, server):
    results: list = []

    def one(i: int) -> None:
        r = httpx.post(server.url + "/generate", timeout=120, json={
            "text": f"Number {i} is", "sampling_params": {**GREEDY, "ignore_eos": True}})
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8, results
    assert time.perf_counter() - t0 < 120
    assert_no_kv_leak(server)


def test_flush_cache_and_memory(client, server):
    client.post("/generate", json={"text": "A cached prefix for flushing", "sampling_params": GREEDY})
    mem = assert_no_kv_leak(server)
    r = client.post("/flush_cache")
    assert r.status_code == 200 and r.json()["success"] is True
    mem = server.server_info()["memory"]
    assert mem["kv_cached_slots"] == 0 and mem["kv_free_slots"] == mem["kv_total_slots"]
    # SGLang's RuntimeEndpoint.flush_cache sends a JSON body.
    assert client.post("/flush_cache", json={"empty_cache": True}).status_code == 200


def test_prefix_cache_hit_reported(client, server):
    prompt = "You are a helpful assistant. " * 8 + "Question: what is two plus two?"
    client.post("/generate", json={"text": prompt, "sampling_params": GREEDY})
    again = client.post("/generate", json={"text": prompt, "sampling_params": GREEDY}).json()
    if server.server_info()["disable_radix_cache"]:
        pytest.skip("radix cache disabled")
    assert again["meta_info"]["cached_tokens"] > 0


def test_info_routes(client, server):
    info = client.get("/get_model_info").json()
    assert info["is_generation"] is True and info["model_path"] and info["tokenizer_path"]
    a = client.get("/get_server_info").json()
    b = client.get("/server_info").json()
    for key in ("memory", "num_running_reqs", "num_waiting_reqs", "cache_hit_rate", "stats",
                "max_running_requests", "model_info"):
        assert key in a and key in b
    assert set(a["memory"]) >= {"kv_total_slots", "kv_free_slots", "kv_cached_slots", "kv_running_slots"}
    assert a["num_waiting_tokens"] >= 0
    # The precision chosen for this CPU and what it was chosen from.
    m = a["model_info"]
    assert m["quantization"] in ("none", "int8", "gguf") and m["quantization_plan"]
    assert {"avx2", "avx512", "vnni", "bf16", "amx"} <= set(m["cpu_features"])
    assert a["grammar_warm_up"] in ("running", "done")  # the grammar caches warm at start
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200


def test_metrics(client):
    client.post("/generate", json={"text": "metrics please", "stream": False, "sampling_params": GREEDY})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("radixrt_num_running_reqs", "radixrt_num_waiting_reqs", "radixrt_prompt_tokens_total",
                 "radixrt_generation_tokens_total", "radixrt_prefix_cache_queries_total",
                 "radixrt_prefix_cache_hits_total", "radixrt_kv_cache_usage",
                 "radixrt_time_to_first_token_seconds_bucket", "radixrt_inter_token_latency_seconds_bucket",
                 "radixrt_e2e_request_latency_seconds_bucket", "radixrt_jump_forward_draft_tokens_total",
                 "radixrt_jump_forward_accepted_tokens_total", "radixrt_canonical_redraws_total"):
        assert name in text, name
    count = next(line for line in text.splitlines() if line.startswith("radixrt_e2e_request_latency_seconds_count"))
    assert float(count.split()[-1]) >= 1
