"""Every malformed request gets a 4xx JSON error naming the problem; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import assert_no_kv_leak

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "hi"}]

# (route, JSON body, expected status, words the error message must contain)
CASES = [
    # /generate: prompt shape
    ("/generate", {}, 400, ["text", "input_ids"]),
    ("/generate", {"sampling_params": {"max_new_tokens": 2}}, 400, ["input_ids"]),
    ("/generate", {"text": "a", "input_ids": [1, 2]}, 400, ["input_ids"]),
    ("/generate", {"text": 5}, 400, ["text"]),
    ("/generate", {"text": ""}, 400, ["text", "empty"]),
    ("/generate", {"text": []}, 400, ["prompt"]),
    ("/generate", {"text": [1, 2]}, 400, ["text"]),
    ("/generate", {"input_ids": "abc"}, 400, ["input_ids"]),
    ("/generate", {"input_ids": [1, -5]}, 400, ["input_ids", "vocabulary"]),
    ("/generate", {"input_ids": [1, 10_000_000]}, 400, ["input_ids", "vocabulary"]),
    ("/generate", {"input_ids": [[1, 2], [3, 99_999_999]]}, 400, ["input_ids[1]", "vocabulary"]),
    ("/generate", {"input_ids": [1, 2.5]}, 400, ["input_ids"]),
    ("/generate", {"input_ids": [7] * 9000}, 400, ["input_ids", "context length"]),
    ("/generate", {"text": "hello " * 9000}, 400, ["text", "context length"]),
    # /generate: fields
    ("/generate", {"text": "a", "unknown_field": 1}, 400, ["unknown_field"]),
    ("/generate", {"text": "a", "stream": "yes"}, 400, ["stream"]),
    ("/generate", {"text": "a", "rid": 5}, 400, ["rid"]),
    ("/generate", {"text": ["a", "b"], "rid": "one"}, 400, ["rid"]),
    ("/generate", {"text": "a", "return_logprob": "true"}, 400, ["return_logprob"]),
    ("/generate", {"text": "a", "top_logprobs_num": -1}, 400, ["top_logprobs_num"]),
    ("/generate", {"text": "a", "top_logprobs_num": 100000}, 400, ["top_logprobs_num"]),
    ("/generate", {"text": "a", "logprob_start_len": -7}, 400, ["logprob_start_len"]),
    ("/generate", {"text": "a", "image_data": "x.png"}, 400, ["image_data"]),
    ("/generate", {"text": ["a", "b"], "return_logprob": [True]}, 400, ["return_logprob"]),
    # /generate: sampling params
    ("/generate", {"text": "a", "sampling_params": 3}, 400, ["sampling_params"]),
    ("/generate", {"text": "a", "sampling_params": {"bogus": 1}}, 400, ["bogus"]),
    ("/generate", {"text": "a", "sampling_params": {"temperature": -1}}, 400, ["temperature"]),
    ("/generate", {"text": "a", "sampling_params": {"temperature": "hot"}}, 400, ["temperature"]),
    ("/generate", {"text": "a", "sampling_params": {"top_p": 0}}, 400, ["top_p"]),
    ("/generate", {"text": "a", "sampling_params": {"top_p": 1.5}}, 400, ["top_p"]),
    ("/generate", {"text": "a", "sampling_params": {"top_k": 0}}, 400, ["top_k"]),
    ("/generate", {"text": "a", "sampling_params": {"min_p": 2}}, 400, ["min_p"]),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": -1}}, 400, ["max_new_tokens"]),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": 1.5}}, 400, ["max_new_tokens"]),
    ("/generate", {"text": "a", "sampling_params": {"n": 0}}, 400, ["n"]),
    ("/generate", {"text": "a", "sampling_params": {"frequency_penalty": 3}}, 400, ["frequency_penalty"]),
    ("/generate", {"text": "a", "sampling_params": {"repetition_penalty": 0}}, 400, ["repetition_penalty"]),
    ("/generate", {"text": "a", "sampling_params": {"stop": [""]}}, 400, ["stop"]),
    ("/generate", {"text": "a", "sampling_params": {"stop_token_ids": [-1]}}, 400, ["stop_token_ids"]),
    ("/generate", {"text": "a", "sampling_params": {"seed": "x"}}, 400, ["seed"]),
    ("/generate", {"text": "a", "sampling_params": {"json_schema": "{oops"}}, 400, ["json_schema"]),
    ("/generate", {"text": "a", "sampling_params": {"regex": "a", "ebnf": "b"}}, 400, ["regex"]),
    ("/generate", {"text": ["a", "b"], "sampling_params": [{}]}, 400, ["sampling_params"]),
    ("/generate", {"text": "a", "sampling_params": {"regex": "(("}}, 400, ["regex"]),
    ("/generate", {"text": "a", "sampling_params": {"json_schema": '{"type": "frobnicate"}'}}, 400,
     ["json_schema"]),
    ("/generate", {"text": "a", "stream": True, "sampling_params": {"regex": "(("}}, 400, ["regex"]),
    # /v1/completions
    ("/v1/completions", {}, 400, ["prompt"]),
    ("/v1/completions", {"prompt": None}, 400, ["prompt"]),
    ("/v1/completions", {"prompt": "a", "max_tokens": -1}, 400, ["max_tokens"]),
    ("/v1/completions", {"prompt": "a", "temperature": 2.5}, 400, ["temperature"]),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, ["top_p"]),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400, ["n"]),
    ("/v1/completions", {"prompt": "a", "logprobs": 50}, 400, ["logprobs"]),
    ("/v1/completions", {"prompt": "a", "presence_penalty": -3}, 400, ["presence_penalty"]),
    ("/v1/completions", {"prompt": "a", "stop": 5}, 400, ["stop"]),
    ("/v1/completions", {"prompt": "a", "suffix": "z"}, 400, ["suffix"]),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"5": 1.0}}, 400, ["logit_bias"]),
    ("/v1/completions", {"prompt": "a", "best_of": 3}, 400, ["best_of"]),
    ("/v1/completions", {"prompt": "a", "frobnicate": True}, 400, ["frobnicate"]),
    ("/v1/completions", {"prompt": [1, 99_999_999]}, 400, ["prompt", "vocabulary"]),
    ("/v1/completions", {"prompt": "a", "top_k": 0}, 400, ["top_k"]),
    ("/v1/completions", {"prompt": "a", "stream_options": {"include_usage": "y"}}, 400, ["include_usage"]),
    # /v1/chat/completions
    ("/v1/chat/completions", {}, 400, ["messages"]),
    ("/v1/chat/completions", {"messages": []}, 400, ["messages"]),
    ("/v1/chat/completions", {"messages": "hi"}, 400, ["messages"]),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, ["role"]),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, ["role"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, ["content"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, ["type"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, ["extra"]),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, ["top_logprobs"]),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 99, "logprobs": True}, 400, ["top_logprobs"]),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": -2}, 400, ["max_completion_tokens"]),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "xml"}}, 400, ["response_format"]),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema"}}, 400,
     ["response_format"]),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}, "regex": "a"},
     400, ["response_format"]),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, ["tools"]),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "frobnicate"}}}}, 400, ["json_schema"]),
    ("/v1/chat/completions", {"messages": CHAT, "seed": 1.5}, 400, ["seed"]),
    ("/v1/chat/completions", {"messages": CHAT, "stop": [""]}, 400, ["stop"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 9000}]}, 400,
     ["messages", "context length"]),
    # control routes
    ("/abort_request", {}, 400, ["rid"]),
    ("/abort_request", {"rid": 5}, 400, ["rid"]),
    ("/flush_cache", {"empty_cache": "no"}, 400, ["empty_cache"]),
]


@pytest.mark.parametrize(("route", "body", "status", "words"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_request(client, route, body, status, words):
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["type"]
    for w in words:
        assert w in err["message"], (w, err["message"])


@pytest.mark.parametrize("route", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_invalid_json(client, route):
    r = client.post(route, content=b'{"text": "a",', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post(route, content=b'[1, 2]', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_body_not_json_object_without_content_type(client):
    r = client.post("/generate", content=b"text=hello")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_oversized_body(client):
    big = b'{"text": "' + b"a" * (17 * 2**20) + b'"}'
    r = client.post("/generate", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]


def test_oversized_chunked_body(client):
    def chunks():
        yield b'{"text": "'
        for _ in range(17):
            yield b"a" * 2**20
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/generate").status_code == 405
    assert "error" in client.get("/nope").json()


def test_still_healthy_after_bad_input(client, server):
    assert client.get("/health").status_code == 200
    r = client.post("/generate", json={"text": "Still alive?", "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] >= 1
    assert_no_kv_leak(server)


def test_stream_bad_input_is_4xx_not_sse(server):
    r = httpx.post(server.url + "/generate", timeout=60, json={
        "text": "a", "stream": True, "sampling_params": {"temperature": -1}})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
