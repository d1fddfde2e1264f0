"""SGLang's own request fields: what sglang-router 0.3.2 adds to every body it forwards (the
bodies below were captured between the real router and `radixrt serve`) and what SGLang's
servers accept. Each is honoured, ignored after a type check, or accepted only at its "off"
value; a typo is still a 400 (docs/api.md, "SGLang ecosystem fields")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from radixrt.entrypoints.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "Hi"}]

# What sglang-router 0.3.2 sent for `{"text": "Hello", "sampling_params": {...}}`, for a chat
# request without `model` and for a completion.
ROUTER_GENERATE = {
    "text": "Hello", "model": None, "sampling_params": {"max_new_tokens": 4},
    "return_text_in_logprobs": False, "stream": False, "log_metrics": True,
    "return_hidden_states": False, "background": False, "no_logs": False, "return_bytes": False,
    "return_entropy": False,
}
ROUTER_CHAT = {
    "messages": CHAT, "model": "unknown", "logprobs": False, "max_completion_tokens": 4,
    "stream": False, "no_stop_trim": False, "ignore_eos": False, "continue_final_message": False,
    "skip_special_tokens": True, "separate_reasoning": True, "stream_reasoning": True,
    "return_hidden_states": False,
}
ROUTER_COMPLETION = {
    "model": "x", "prompt": "Hi", "max_tokens": 4, "stream": False, "echo": False,
    "no_stop_trim": False, "ignore_eos": False, "skip_special_tokens": True,
    "return_hidden_states": False,
}
# Optional fields the router forwards when a client sets them (captured too).
ROUTER_COMPLETION_OPTIONAL = {"routing_id": "user-1", "sampling_seed": 5}
ROUTER_GENERATE_OPTIONAL = {
    "rid": "abc", "priority": 1, "custom_labels": {"a": "b"}, "data_parallel_rank": 0,
    "sampling_params": {"max_new_tokens": 4, "temperature": 0.0, "no_stop_trim": False,
                        "sampling_seed": 3, "n": 1},
}

# (model, body, field the 400 must name, words of the reason)
REJECTED = [
    (GenerateRequest, {"text": "a", "return_hidden_states": True}, "return_hidden_states", ["hidden states"]),
    (GenerateRequest, {"text": "a", "return_hidden_states": "last"}, "return_hidden_states", ["only false"]),
    (GenerateRequest, {"text": "a", "background": True}, "background", ["background"]),
    (GenerateRequest, {"text": "a", "return_entropy": True}, "return_entropy", ["entropy"]),
    (GenerateRequest, {"text": "a", "data_parallel_rank": 1}, "data_parallel_rank", ["one data-parallel"]),
    (GenerateRequest, {"text": "a", "data_parallel_rank": False}, "data_parallel_rank", ["null or 0"]),
    (GenerateRequest, {"text": "a", "cache_salt": "tenant-1"}, "cache_salt", ["cache namespaces"]),
    (GenerateRequest, {"text": "a", "extra_key": "k"}, "extra_key", ["cache namespaces"]),
    (GenerateRequest, {"text": "a", "lora_path": "adapter"}, "lora_path", ["LoRA"]),
    (GenerateRequest, {"text": "a", "bootstrap_host": "10.0.0.1"}, "bootstrap_host", ["disaggregation"]),
    (GenerateRequest, {"text": "a", "image_data": "x.png"}, "image_data", ["text-only"]),
    (GenerateRequest, {"text": "a", "token_ids_logprob": [1]}, "token_ids_logprob", ["token ids"]),
    (GenerateRequest, {"text": "a", "session_params": {"id": "s"}}, "session_params", ["sessions"]),
    (GenerateRequest, {"text": "a", "no_logs": "yes"}, "no_logs", ["boolean"]),
    (GenerateRequest, {"text": "a", "model": 5}, "model", ["string"]),
    (GenerateRequest, {"text": "a", "priority": "high"}, "priority", ["integer"]),
    (GenerateRequest, {"text": "a", "custom_labels": {"a": 1}}, "custom_labels", ["string"]),
    (GenerateRequest, {"text": "a", "no_log": False}, "no_log", ["Extra inputs"]),  # typo
    (GenerateRequest, {"text": "a", "sampling_params": {"sampling_seed": 1.5}}, "sampling_params",
     ["sampling_seed", "integer"]),
    (GenerateRequest, {"text": "a", "sampling_params": {"sampling_seed": 1, "seed": 2}}, "sampling_params",
     ["sampling_seed", "differs"]),
    (ChatCompletionRequest, {"messages": CHAT, "no_stop_trim": "yes"}, "no_stop_trim", ["boolean"]),
    (ChatCompletionRequest, {"messages": CHAT, "return_hidden_states": True}, "return_hidden_states",
     ["hidden states"]),
    (ChatCompletionRequest, {"messages": CHAT, "separate_reasoning": "no"}, "separate_reasoning", ["boolean"]),
    (ChatCompletionRequest, {"messages": CHAT, "sampling_seed": 1, "seed": 2}, "sampling_seed", ["differs"]),
    (ChatCompletionRequest, {"messages": CHAT, "custom_params": {"a": 1}}, "custom_params", ["custom logit"]),
    (ChatCompletionRequest, {"messages": CHAT, "stream_reasonings": True}, "stream_reasonings",
     ["Extra inputs"]),  # typo
    (ChatCompletionRequest, {"messages": CHAT, "reasoning_effort": "low"}, "reasoning_effort", ["reasoning"]),
    (ChatCompletionRequest, {"messages": [{"role": "assistant", "content": "a", "reasoning_content": "b"}]},
     "messages", ["reasoning"]),
    (CompletionRequest, {"prompt": "a", "routed_dp_rank": 2}, "routed_dp_rank", ["one data-parallel"]),
    (CompletionRequest, {"prompt": "a", "return_routed_experts": True}, "return_routed_experts", ["experts"]),
]


@pytest.mark.parametrize(("model", "body"), [
    (GenerateRequest, ROUTER_GENERATE),
    (GenerateRequest, {**ROUTER_GENERATE, **ROUTER_GENERATE_OPTIONAL}),
    (ChatCompletionRequest, ROUTER_CHAT),
    (CompletionRequest, ROUTER_COMPLETION),
    (CompletionRequest, {**ROUTER_COMPLETION, **ROUTER_COMPLETION_OPTIONAL}),
], ids=["generate", "generate-optional", "chat", "completion", "completion-optional"])
def test_router_bodies_validate(model, body):
    model.model_validate(body)


@pytest.mark.parametrize(("model", "body", "field", "words"), REJECTED,
                         ids=[f"{c[0].__name__}-{c[2]}-{i}" for i, c in enumerate(REJECTED)])
def test_unsupported_values_and_typos_rejected(model, body, field, words):
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    errors = info.value.errors()
    assert any(err["loc"] and err["loc"][0] == field for err in errors), errors
    message = " ".join(err["msg"] for err in errors)
    assert all(w in message for w in words), message


def test_sampling_seed_is_seed():
    req = GenerateRequest.model_validate({"text": "a", "sampling_params": [
        {"sampling_seed": 7, "no_stop_trim": False}, {"seed": 7, "sampling_seed": 7}]})
    assert req.sampling_params == [{"seed": 7, "no_stop_trim": False}, {"seed": 7}]
    assert ChatCompletionRequest.model_validate({"messages": CHAT, "sampling_seed": 7}).seed == 7
    assert CompletionRequest.model_validate({"prompt": "a", "seed": 7, "sampling_seed": 7}).seed == 7


# ----------------------------------------------------------------- over HTTP (shared server)
def test_router_bodies_served(client):
    r = client.post("/generate", json={**ROUTER_GENERATE, **ROUTER_GENERATE_OPTIONAL,
                                       "sampling_params": {"max_new_tokens": 4, "temperature": 0.7,
                                                           "sampling_seed": 11}, "rid": None})
    assert r.status_code == 200, r.text
    same = client.post("/generate", json={"text": "Hello", "sampling_params": {
        "max_new_tokens": 4, "temperature": 0.7, "seed": 11}})
    assert same.json()["output_ids"] == r.json()["output_ids"]  # sampling_seed is the seed
    r = client.post("/v1/chat/completions", json=ROUTER_CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    r = client.post("/v1/completions", json=ROUTER_COMPLETION)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text


def test_unsupported_value_is_a_400_naming_the_field(client):
    r = client.post("/generate", json={**ROUTER_GENERATE, "return_hidden_states": True})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("return_hidden_states: hidden states are not returned")
    r = client.post("/v1/chat/completions", json={**ROUTER_CHAT, "no_stop_trim": "yes"})
    assert r.status_code == 400 and "no_stop_trim" in r.json()["error"]["message"]


def test_no_stop_trim_keeps_the_stop_string(client):
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 8, "temperature": 0}
    base = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = base[2:4]
    if not stop.strip():
        pytest.skip("generated text has no usable stop string")
    cut = client.post("/v1/completions", json={**body, "stop": [stop]}).json()["choices"][0]["text"]
    kept = client.post("/v1/completions", json={**body, "stop": [stop], "no_stop_trim": True})
    kept = kept.json()["choices"][0]["text"]
    assert kept == cut + stop and base.startswith(kept)
    r = client.post("/generate", json={"text": "Count: 1, 2, 3,", "sampling_params": {
        "max_new_tokens": 8, "temperature": 0, "stop": [stop], "no_stop_trim": True}})
    assert r.json()["text"] == kept


def test_routes_the_router_calls(client):
    """Registration (/server_info, /model_info), load reporting (/get_load), flush."""
    info = client.get("/server_info").json()
    assert info["served_model_name"] and info["version"]
    model = client.get("/model_info").json()
    assert model == client.get("/get_model_info").json() and model["is_generation"] is True
    load = client.get("/get_load").json()
    assert isinstance(load, list) and len(load) == 1
    assert set(load[0]) == {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}
    assert all(isinstance(v, int) and v >= 0 for v in load[0].values())
    assert client.post("/flush_cache").status_code == 200  # the router posts without a body
