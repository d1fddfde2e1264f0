"""The OpenAI backend against a mocked OpenAI-compatible API."""

from __future__ import annotations

import json

import httpx
import pytest

import radixrt as sgl
from radixrt.lang import OpenAI, UnsupportedFeatureError

pytestmark = pytest.mark.timeout(60)


class Api:
    def __init__(self):
        self.bodies = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append((request.url.path, body))
        if request.url.path.endswith("/chat/completions"):
            if body.get("stream"):
                parts = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in ("Hel", "lo")]
                parts.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
                data = "".join(f"data: {json.dumps(p)}\n\n" for p in parts) + "data: [DONE]\n\n"
                return httpx.Response(200, content=data.encode())
            content = "yes" if body.get("regex") else "Hello!"
            return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": content},
                                                          "finish_reason": "stop"}],
                                             "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        # /completions with echo: tokens of "The sky is " + choice; " is" then the healed choice.
        prompts = body["prompt"]
        choices = []
        for i, p in enumerate(prompts):
            choice = p[len("The sky is "):]
            tokens = ["The", " sky", " is", " " + choice]
            offsets = [0, 3, 7, 10]
            lps = [None, -1.0, -0.5, -0.2 if choice == "blue" else -2.0]
            choices.append({"index": i, "text": p, "finish_reason": "length",
                            "logprobs": {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets}})
        return httpx.Response(200, json={"choices": choices})


def backend(api, **kw):
    return OpenAI("gpt-4o-mini", api_key="sk", transport=httpx.MockTransport(api), **kw)


@sgl.function
def chat(s):
    s += sgl.system("Be nice.")
    s += sgl.user("Hi")
    s += sgl.assistant(sgl.gen("reply", max_tokens=8, temperature=0))


def test_chat_generate_sends_messages():
    api = Api()
    st = chat.run(backend=backend(api))
    assert st["reply"] == "Hello!"
    path, body = api.bodies[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 8 and body["temperature"] == 0 and "top_k" not in body


def test_chat_streaming():
    st = chat.run(backend=backend(Api()), stream=True)
    assert "".join(st.text_iter("reply")) == "Hello"
    assert st.get_meta_info("reply")["completion_tokens"] == 2


def test_unsupported_features_are_refused_clearly():
    @sgl.function
    def outside_role(s):
        s += sgl.user("Hi") + sgl.gen("x")

    with pytest.raises(UnsupportedFeatureError, match="assistant role"):
        outside_role.run(backend=backend(Api()))

    @sgl.function
    def constrained(s):
        s += sgl.user("Hi") + sgl.assistant(sgl.gen("x", regex="[0-9]+"))

    with pytest.raises(UnsupportedFeatureError, match="regex"):
        constrained.run(backend=backend(Api()))

    @sgl.function
    def choose(s):
        s += sgl.user("Ok?") + sgl.assistant(sgl.select("x", ["yes", "no"]))

    with pytest.raises(UnsupportedFeatureError, match="select"):
        choose.run(backend=backend(Api()))
    # With a compatible server's extensions, select becomes a regex over the choices.
    api = Api()
    st = choose.run(backend=OpenAI("m", base_url="http://localhost:1/v1", transport=httpx.MockTransport(api)))
    assert st["x"] == "yes" and api.bodies[0][1]["regex"] == "(yes|no)"


def test_completion_model_select_uses_echo_logprobs():
    api = Api()

    @sgl.function
    def sky(s):
        s += "The sky is " + sgl.select("color", ["blue", "green"])

    st = sky.run(backend=OpenAI("gpt-3.5-turbo-instruct", api_key="sk", transport=httpx.MockTransport(api)))
    assert st["color"] == "blue"
    body = api.bodies[0][1]
    assert body["echo"] is True and body["max_tokens"] == 0
    # Only the healed token reaching into the choice is scored.
    assert st.get_meta_info("color")["input_token_logprobs"][0] == [[-0.2, None, " blue"]]
