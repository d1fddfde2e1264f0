"""OpenAI-compatible routes, through the official `openai` SDK and raw HTTP."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import assert_no_kv_leak

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0) as c:
        yield c


def test_models(oai):
    models = oai.models.list().data
    assert len(models) == 1 and models[0].id and models[0].owned_by == "radixrt"


def test_completion(oai):
    r = oai.completions.create(model="m", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_completion_batch_n_and_stop(oai):
    r = oai.completions.create(model="m", prompt=["Hello", "1, 2, 3,"], max_tokens=5, temperature=0,
                               n=2, stop=["\n"])
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both samples agree
    assert all("\n" not in c.text for c in r.choices)
    assert r.usage.completion_tokens >= 4


def test_completion_logprobs_and_echo(oai):
    r = oai.completions.create(model="m", prompt="The sky is", max_tokens=3, temperature=0,
                               logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text.startswith("The sky is")
    lp = c.logprobs
    assert lp.token_logprobs[0] is None  # the first prompt token has no logprob
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert lp.top_logprobs[0] is None and all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])


def test_completion_token_prompt(oai, client):
    ids = [t for _, t, _ in client.post("/generate", json={
        "text": "Once upon", "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
        "logprob_start_len": 0}).json()["meta_info"]["input_token_logprobs"]]
    a = oai.completions.create(model="m", prompt=ids, max_tokens=4, temperature=0)
    b = oai.completions.create(model="m", prompt="Once upon", max_tokens=4, temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_completion_stream_equals_non_stream(oai):
    kw = dict(model="m", prompt="Roses are red,", max_tokens=10, temperature=0)
    full = oai.completions.create(**kw).choices[0].text
    chunks = list(oai.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")


def test_chat(oai):
    r = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=8, temperature=0)
    msg = r.choices[0].message
    assert r.object == "chat.completion" and msg.role == "assistant" and msg.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 8


def test_chat_stream_equals_non_stream(oai):
    kw = dict(model="m", messages=CHAT, max_tokens=10, temperature=0)
    full = oai.chat.completions.create(**kw).choices[0].message.content
    chunks = list(oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_chat_n_seed_and_max_completion_tokens(oai):
    kw = dict(model="m", messages=CHAT, max_completion_tokens=5, temperature=1.0, seed=3, n=2)
    a = oai.chat.completions.create(**kw)
    b = oai.chat.completions.create(**kw)
    assert len(a.choices) == 2
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens <= 10


def test_chat_logprobs(oai):
    r = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=4, temperature=0,
                                    logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token  # greedy
        assert bytes(item.bytes).decode(errors="replace") == item.token


def test_chat_cached_tokens_reported(oai, server):
    messages = [{"role": "system", "content": "You are terse. " * 10}, *CHAT]
    oai.chat.completions.create(model="m", messages=messages, max_tokens=2, temperature=0)
    r = oai.chat.completions.create(model="m", messages=messages, max_tokens=2, temperature=0)
    if server.server_info()["disable_radix_cache"]:
        pytest.skip("radix cache disabled")
    assert r.usage.prompt_tokens_details.cached_tokens > 0


def test_chat_stream_disconnect_frees_kv(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": CHAT, "max_tokens": 1000, "stream": True, "ignore_eos": True}) as r:
            next(line for line in r.iter_lines() if line.startswith("data:"))
    assert_no_kv_leak(server)


def test_response_format_json_schema(oai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Is water wet? Answer in JSON."}],
        max_tokens=20, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert json.loads(r.choices[0].message.content)["ok"] in (True, False)


def test_budget_closing_through_the_openai_sdk(oai):
    """A schema left open (an unbounded string) at a small max_tokens still comes back as a
    complete document; the per-request switch is accepted as an SGLang extension."""
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    kw = dict(model="m", messages=[{"role": "user", "content": "Tell a very long story, as JSON."}],
              max_tokens=12, temperature=0,
              response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    closed = oai.chat.completions.create(**kw)
    assert isinstance(json.loads(closed.choices[0].message.content)["story"], str)
    assert closed.usage.completion_tokens <= 12
    raw = oai.chat.completions.create(**kw, extra_body={"no_budget_closing": True})
    assert raw.choices[0].finish_reason in ("stop", "length")


def test_structured_fields_are_validated(client):
    bad = client.post("/v1/chat/completions", json={
        "messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
    assert bad.status_code == 400 and "schema" in bad.json()["error"]["message"]
    bad = client.post("/v1/completions", json={"prompt": "x", "json_schema": "{not json"})
    assert bad.status_code == 400 and "json_schema" in bad.json()["error"]["message"]
    bad = client.post("/v1/completions", json={"prompt": "x", "regex": "a", "json_schema": json.dumps({})})
    assert bad.status_code == 400


def test_openai_error_shape(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="m", messages=CHAT, temperature=3)
    assert "temperature" in str(e.value)
