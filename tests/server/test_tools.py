"""Tool calling on /v1/chat/completions through the official `openai` SDK against a real
server (default model), plus the prompt rendering and output parsing without one."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pydantic
import pytest

from radixrt.entrypoints.protocol import ChatMessage
from radixrt.entrypoints.tool_calls import (
    TRIGGER,
    ToolCallError,
    ToolCallParser,
    format_call,
    parse_tools,
    render_messages,
)
from radixrt.tokenizer import chat_template_renders_tools, load_tokenizer
from tests.server.conftest import assert_no_kv_leak

pytestmark = pytest.mark.timeout(300)

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]


class GetWeather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=24)
    days: int


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0) as c:
        yield c


def check_calls(calls, names=SCHEMAS) -> None:
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_") and c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), names[c.function.name])


# ----------------------------------------------------------------- through the server
def test_required_one_call(oai):
    r = oai.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, temperature=0, max_tokens=60)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    assert len(ch.message.tool_calls) == 1
    check_calls(ch.message.tool_calls)


def test_named_function(oai):
    r = oai.chat.completions.create(model="m", messages=ASK, tools=TOOLS, temperature=0.7, seed=3,
                                    tool_choice={"type": "function", "function": {"name": "add"}},
                                    parallel_tool_calls=False, max_tokens=60)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and [c.function.name for c in ch.message.tool_calls] == ["add"]
    check_calls(ch.message.tool_calls, {"add": ADD})


def test_parallel_calls(oai):
    # min_tokens keeps EOS away after the first call: with parallel calls the grammar's only
    # way on is another call; without them it ends after the first.
    kw = dict(model="m", messages=ASK, tools=TOOLS[:1], tool_choice="required", temperature=0,
              max_tokens=90, extra_body={"min_tokens": 30})
    r = oai.chat.completions.create(**kw, parallel_tool_calls=True)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) >= 2
    assert len({c.id for c in calls}) == len(calls)
    check_calls(calls)
    one = oai.chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls" and len(one.message.tool_calls) == 1
    check_calls(one.message.tool_calls)


def test_budget_closes_calls(oai):
    """An unbounded string argument at a tight max_tokens: budget closing ends every call
    complete and valid; a budget too small for any call ends with finish_reason length."""
    note = {"type": "object", "properties": {"text": {"type": "string"}, "tags": {
        "type": "array", "items": {"type": "string"}}}, "required": ["text", "tags"]}
    kw = dict(model="m", messages=[{"role": "user", "content": "Write a long note about Rome."}],
              tools=[{"type": "function", "function": {"name": "note", "parameters": note}}],
              tool_choice="required", parallel_tool_calls=False, temperature=0.8, seed=1)
    r = oai.chat.completions.create(**kw, n=3, max_tokens=40)
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls"
        check_calls(ch.message.tool_calls, {"note": note})
    cut = oai.chat.completions.create(**kw, max_tokens=12).choices[0]
    assert cut.finish_reason == "length"


def test_stream_accumulates_through_the_sdk(oai):
    tools = [openai.pydantic_function_tool(GetWeather)]
    msgs = [{"role": "user", "content": "Weather in Paris for the next 3 days?"}]
    kw = dict(model="m", messages=msgs, tools=tools, tool_choice="required", temperature=0, max_tokens=70)
    with oai.chat.completions.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert all(isinstance(c.function.parsed_arguments, GetWeather) for c in streamed.message.tool_calls)
    whole = oai.chat.completions.parse(**kw).choices[0]  # greedy: the same calls
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls]
    assert isinstance(whole.message.tool_calls[0].function.parsed_arguments, GetWeather)


def test_stream_chunks_follow_openai(oai):
    chunks = list(oai.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=60, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, rest = deltas[0][0], [d[0] for d in deltas[1:]]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name in SCHEMAS and first.function.arguments == ""
    assert rest and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    args = "".join(d.function.arguments for d in rest)
    jsonschema.validate(json.loads(args), SCHEMAS[first.function.name])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_round_trip_with_tool_result(oai):
    kw = dict(model="m", tools=TOOLS, temperature=0)
    first = oai.chat.completions.create(messages=ASK, tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=60, **kw)
    call = first.choices[0].message.tool_calls[0]
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_celsius": 31}'}
    # The SDK's message sent back whole, as applications do.
    msgs = ASK + [first.choices[0].message.model_dump(), result]
    r = oai.chat.completions.create(messages=msgs, max_tokens=30, **kw)
    ch = r.choices[0]
    assert ch.finish_reason in ("stop", "length", "tool_calls")
    assert ch.message.content or ch.message.tool_calls
    # The call and its result are in the prompt (exact rendering: test_render_without_template_tools).
    assert r.usage.prompt_tokens > first.usage.prompt_tokens + 20
    # And a further call may follow the result.
    again = oai.chat.completions.create(messages=msgs, tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=60, **kw)
    check_calls(again.choices[0].message.tool_calls)


def test_auto_invited_call(oai):
    """A conversation that shows the model calling the tool invites another call. Sampled
    (seeded, several choices) so the test does not hang on one greedy path: every choice that
    opens a call completes a valid one, and some choice does."""
    def turn(city: str, temp: int) -> list[dict]:
        cid = f"call_{city}"
        return [{"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "tool_calls": [{"id": cid, "type": "function", "function": {
                    "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
                {"role": "tool", "tool_call_id": cid, "content": json.dumps({"temperature": temp})},
                {"role": "assistant", "content": f"It is {temp} degrees in {city}."}]

    msgs = turn("Rome", 21) + turn("Berlin", 15) + [{"role": "user", "content": "What is the weather in Paris?"}]
    r = oai.chat.completions.create(model="m", messages=msgs, tools=TOOLS[:1], temperature=0.8, seed=1,
                                    n=6, max_tokens=40)
    called = [ch for ch in r.choices if ch.message.tool_calls]
    assert called, [ch.message.content for ch in r.choices]
    for ch in r.choices:
        if ch.message.tool_calls:
            assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1  # parallel: default on
            check_calls(ch.message.tool_calls, {"get_weather": WEATHER})
        assert TRIGGER not in (ch.message.content or "")


def test_auto_without_invitation(oai):
    kw = dict(model="m", messages=[{"role": "user", "content": "Say hello to me."}], tools=TOOLS,
              tool_choice="auto", temperature=0, max_tokens=30)
    r = oai.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.message.tool_calls is None and ch.message.content and ch.finish_reason in ("stop", "length")
    streamed = list(oai.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == ch.message.content


def test_structural_tag_on_generate(client):
    spec = {"structures": [{"begin": "<a>", "schema": ADD, "end": "</a>"}], "triggers": ["<a>"],
            "at_least_one": True, "stop_after_first": True}
    r = client.post("/generate", json={"text": "Add 2 and 3:", "sampling_params": {
        "structural_tag": json.dumps(spec), "max_new_tokens": 30, "temperature": 0}})
    assert r.status_code == 200, r.text
    text = r.json()["text"]
    assert text.startswith("<a>") and text.endswith("</a>")
    jsonschema.validate(json.loads(text[3:-4]), ADD)


def test_structural_tag_with_ignore_eos(client):
    """Free text may end anywhere, but with ignore_eos an EOS must not end the grammar while
    the request goes on: the constraint keeps EOS out and the request runs to its length."""
    spec = {"structures": [{"begin": "<a>", "schema": ADD, "end": "</a>"}], "triggers": ["<a>"]}
    # (The model's first choice after this raw prompt is EOS.)
    r = client.post("/generate", json={"text": "Write a short story about a lighthouse keeper.", "sampling_params": {
        "structural_tag": json.dumps(spec), "max_new_tokens": 12, "temperature": 0, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    assert meta["finish_reason"]["type"] == "length" and meta["completion_tokens"] == 12, meta


def test_structural_tag_response_format(oai):
    """SGLang's response_format form of the same constraint."""
    msgs = [{"role": "user", "content": 'Repeat exactly: <w>{"city":"Rome"}</w>'}]
    r = oai.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=40, response_format={
        "type": "structural_tag", "triggers": ["<w>"],
        "structures": [{"begin": "<w>", "schema": WEATHER, "end": "</w>"}]})
    parts = r.choices[0].message.content.split("<w>")[1:]
    assert parts, r.choices[0].message.content
    for part in parts:  # every section is complete and valid
        assert "</w>" in part
        jsonschema.validate(json.loads(part.split("</w>")[0]), WEATHER)


@pytest.mark.parametrize("body, field", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": None, "tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS + [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[2].function.name"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"response_format": {"type": "json_object"}}, "tools"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "messages[0].tool_calls[0].function.name"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_is_400(client, body, field, stream):
    req = {"model": "m", "messages": ASK, "tools": TOOLS, "max_tokens": 4, "stream": stream, **body}
    if req["tools"] is None:
        del req["tools"]
    r = client.post("/v1/chat/completions", json=req)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(field), r.json()


def test_no_leak(server):
    assert_no_kv_leak(server)


# ----------------------------------------------------------------- without a server
def messages(*dicts) -> list[ChatMessage]:
    return [ChatMessage(**d) for d in dicts]


HISTORY = (
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Nice"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "31"},
    {"role": "tool", "tool_call_id": "call_2", "content": "28"},
)


@pytest.fixture(scope="module")
def tok(default_model_dir):
    return load_tokenizer(default_model_dir)


def test_render_without_template_tools(tok):
    assert not chat_template_renders_tools(tok, TRIGGER)  # SmolLM2's template ignores tools
    plan = parse_tools(TOOLS, None, None)
    msgs, kwargs = render_messages(messages(*HISTORY), plan, native=False)
    assert kwargs == {} and msgs[0]["role"] == "system" and '"name": "get_weather"' in msgs[0]["content"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == format_call("get_weather", '{"city":"Paris"}') + "\n" + \
        format_call("get_weather", '{"city":"Nice"}')
    assert msgs[3]["content"] == "<tool_response>\n31\n</tool_response>\n<tool_response>\n28\n</tool_response>"
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert msgs[2]["content"] in text and "<tool_response>\n31" in text
    # tool_choice none: the tools are not described, the history still is.
    none, _ = render_messages(messages(*HISTORY), parse_tools(TOOLS, "none", None), native=False)
    assert none[0]["role"] == "user" and none[1]["content"] == msgs[2]["content"]


HERMES_LIKE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function.name }}:{{ c.function.arguments | tojson }}</tool_call>{% endfor %}"
    "{% elif m.role == 'tool' %}{{ m.tool_call_id }}={{ m.content }}{% else %}{{ m.content }}"
    "{% endif %}{% endfor %}"
)


def test_render_with_template_tools(tok, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", HERMES_LIKE)
    assert chat_template_renders_tools(tok, TRIGGER)
    msgs, kwargs = render_messages(messages(*HISTORY), parse_tools(TOOLS, "auto", None), native=True)
    text = tok.apply_chat_template(msgs, tokenize=False, **kwargs)
    assert text == ('<tools>get_weather;add;</tools>[user]Weather in Paris?[assistant]'
                    '<tool_call>get_weather:{"city": "Paris"}</tool_call>'
                    '<tool_call>get_weather:{"city": "Nice"}</tool_call>[tool]call_1=31[tool]call_2=28')


def test_parser_streamed_equals_whole():
    text = (' Sure. \n' + format_call("get_weather", '{"city":"a}</tool_call>b","n":[1,{"x":"]"}]}')
            + "\n" + format_call("add", '{"a":1,"b":2}') + "\n")
    whole = ToolCallParser()
    whole.feed(text, final=True)
    streamed, events = ToolCallParser(), []
    for k in range(1, len(text) + 1):
        events += streamed.feed(text[:k])
    events += streamed.feed(text, final=True)
    assert whole.result()[0] == streamed.result()[0] == " Sure."
    for parser in (whole, streamed):
        calls = parser.result()[1]
        assert [(c.name, c.arguments) for c in calls] == [
            ("get_weather", '{"city":"a}</tool_call>b","n":[1,{"x":"]"}]}'), ("add", '{"a":1,"b":2}')]
        assert parser.all_complete
    assert "".join(e[2] for e in events if e[0] == "args") == \
        '{"city":"a}</tool_call>b","n":[1,{"x":"]"}]}{"a":1,"b":2}'


def test_parser_plain_text_and_cut_calls():
    for text in ("a <tool> b <tool_cal", "x\n\n", ""):
        p = ToolCallParser()
        events = []
        for k in range(1, len(text) + 1):
            events += p.feed(text[:k])
        events += p.feed(text, final=True)
        assert p.result() == (text, []) and "".join(e[1] for e in events) == text
    cut = ToolCallParser()
    cut.feed(format_call("add", '{"a":1,"b":2}')[:-15], final=True)
    assert cut.calls and not cut.all_complete


def test_plan_errors():
    with pytest.raises(ToolCallError, match="tool_choice"):
        parse_tools(None, "required", None)
    plan = parse_tools(TOOLS, {"type": "function", "function": {"name": "add"}}, False)
    tag = json.loads(plan.structural_tag())
    assert [s["schema"] for s in tag["structures"]] == [ADD]
    assert tag["at_least_one"] and tag["stop_after_first"] and plan.tool_of_structure(0) == 1
    assert parse_tools(TOOLS, "none", None).structural_tag() is None
    auto = json.loads(parse_tools(TOOLS, None, None).structural_tag())
    assert not auto["at_least_one"] and not auto["stop_after_first"] and len(auto["structures"]) == 2


def test_http_errors_are_json(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "m", "messages": ASK, "tools": [{"type": "function", "function": {"name": "x", "parameters": []}}]},
        headers=server.headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("tools[0].function.parameters")
