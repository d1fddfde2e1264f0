"""RuntimeEndpoint over HTTP without a model: request shapes, SSE parsing, and that every
failure (error status, dead server, silent server, broken stream) raises instead of hanging."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

import radixrt as sgl
from radixrt.lang import BackendConnectionError, BackendError, BackendTimeoutError, RuntimeEndpoint

pytestmark = pytest.mark.timeout(60)

MODEL_INFO = {"model_path": "/models/Qwen2-0.5B-Instruct", "tokenizer_path": "/nonexistent/dir"}


def sse(*objs, done=True) -> bytes:
    body = "".join(f"data: {json.dumps(o)}\n\n" for o in objs)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def endpoint(handler) -> RuntimeEndpoint:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/get_model_info":
            return httpx.Response(200, json=MODEL_INFO)
        return handler(request)

    return RuntimeEndpoint("http://server.test", api_key="k", transport=httpx.MockTransport(route))


@sgl.function
def prog(s):
    s += "Hello" + sgl.gen("out", max_tokens=4)


def test_generate_request_and_chat_template_fallback():
    seen = []

    def handler(request):
        seen.append((request.headers["authorization"], json.loads(request.content)))
        return httpx.Response(200, json={"text": " world", "output_ids": [1], "meta_info": {"prompt_tokens": 1}})

    ep = endpoint(handler)
    assert ep.chat_template.name == "chatml"  # tokenizer dir unreadable: matched by model name
    assert prog.run(backend=ep, temperature=0)["out"] == " world"
    auth, body = seen[0]
    assert auth == "Bearer k"
    assert body == {"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": 0, "top_p": 1.0,
                                                         "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
                                                         "presence_penalty": 0.0, "ignore_eos": False,
                                                         "stop": ["<|im_end|>"]}}


def test_error_status_carries_the_server_message():
    ep = endpoint(lambda r: httpx.Response(400, json={"error": {"message": "sampling_params.top_k: must be -1"}}))
    with pytest.raises(BackendError, match="top_k: must be -1") as info:
        prog.run(backend=ep)
    assert info.value.status == 400


def test_streaming_cumulative_sse_and_mid_stream_errors():
    chunks = [{"text": "a", "output_ids": [1], "meta_info": {"completion_tokens": 1}},
              {"text": "a b", "output_ids": [1, 2], "meta_info": {"completion_tokens": 2}}]
    ep = endpoint(lambda r: httpx.Response(200, content=sse(*chunks)))
    assert list(prog.run(backend=ep, stream=True).text_iter("out")) == ["a", " b"]

    err = {"error": {"message": "the scheduler died", "code": 503}}
    ep = endpoint(lambda r: httpx.Response(200, content=sse(chunks[0], err)))
    with pytest.raises(BackendError, match="scheduler died"):
        list(prog.run(backend=ep, stream=True).text_iter("out"))

    ep = endpoint(lambda r: httpx.Response(200, content=sse(chunks[0], done=False)))
    with pytest.raises(BackendConnectionError, match="without \\[DONE\\]"):
        list(prog.run(backend=ep, stream=True).text_iter())


def test_nobody_listening_raises_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendConnectionError):
        RuntimeEndpoint(f"http://127.0.0.1:{port}", connect_timeout=2)


def test_silent_server_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            RuntimeEndpoint(f"http://127.0.0.1:{port}", timeout=1.0)
        assert time.monotonic() - start < 10


def test_shut_down_endpoint_raises():
    ep = endpoint(lambda r: httpx.Response(200, json={"text": "", "meta_info": {}}))
    ep.shutdown()
    with pytest.raises(BackendConnectionError, match="shut down"):
        prog.run(backend=ep)


def test_runtime_flags_and_failed_start():
    from radixrt.lang.backends.runtime import server_flags

    assert server_flags({"model_path": None, "disable_radix_cache": True, "max_total_tokens": 4096,
                         "log_level": "error", "enable_x": False}) == [
        "--disable-radix-cache", "--max-total-tokens", "4096", "--log-level", "error"]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no-such-flag"):
        sgl.Runtime(no_such_flag=1, launch_timeout=60)
    assert time.monotonic() - start < 60
