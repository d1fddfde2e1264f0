"""Servers of their own: API-key enforcement and clean shutdown; a dying scheduler process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.server.conftest import ServerProcess, pid_alive

pytestmark = pytest.mark.timeout(360)

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def keyed_server(default_model_dir):
    s = ServerProcess(api_key=KEY)
    yield s
    s.stop()


@pytest.mark.parametrize(("method", "route", "body"), [
    ("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1}}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("GET", "/v1/models", None),
    ("GET", "/get_model_info", None),
    ("GET", "/get_server_info", None),
    ("GET", "/server_info", None),
    ("GET", "/metrics", None),
    ("GET", "/health_generate", None),
    ("POST", "/flush_cache", None),
    ("POST", "/abort_request", {"rid": "x"}),
])
def test_api_key_required(keyed_server, method, route, body):
    url = keyed_server.url + route
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.request(method, url, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (route, headers, r.text)
        assert "API key" in r.json()["error"]["message"]
    r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text


def test_health_needs_no_key(keyed_server):
    assert httpx.get(keyed_server.url + "/health").status_code == 200


def test_openai_sdk_with_key(keyed_server):
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0) as c:
        assert c.completions.create(model="m", prompt="a", max_tokens=2).choices
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="nope", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()


def test_sigterm_leaves_no_process_behind(keyed_server):
    info = httpx.get(keyed_server.url + "/get_server_info", headers=keyed_server.headers).json()
    children = list(info["pids"].values())
    assert children and all(pid_alive(p) for p in children)

    def in_flight() -> None:  # a request running while the server is told to stop
        try:
            httpx.post(keyed_server.url + "/generate", headers=keyed_server.headers, timeout=60,
                       json={"text": "x", "sampling_params": {"max_new_tokens": 50}})
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    code = keyed_server.stop(signal.SIGTERM, timeout=30)
    assert code is not None, "a descendant outlived the server"
    assert time.monotonic() - t0 < 30
    assert not pid_alive(keyed_server.proc.pid)
    assert not any(pid_alive(p) for p in children)
    assert not any(pid_alive(p.pid) for p in keyed_server.descendants)
    t.join(60)


def test_dead_scheduler_fails_requests_and_health(default_model_dir):
    s = ServerProcess()
    try:
        pids = s.server_info()["pids"]
        results: dict[str, object] = {}

        def non_stream() -> None:
            r = httpx.post(s.url + "/generate", timeout=60, json={
                "text": "x", "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}})
            results["plain"] = (r.status_code, r.json(), time.monotonic())

        def stream() -> None:
            events = []
            with httpx.stream("POST", s.url + "/generate", timeout=60, json={
                    "text": "y", "stream": True,
                    "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
            results["stream"] = (events, time.monotonic())

        threads = [threading.Thread(target=non_stream), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        time.sleep(3)  # both are decoding now
        killed_at = time.monotonic()
        os.kill(pids["scheduler"], signal.SIGKILL)
        for t in threads:
            t.join(30)
        status, body, t_plain = results["plain"]
        assert status == 503 and "scheduler" in body["error"]["message"]
        assert t_plain - killed_at < 5
        events, t_stream = results["stream"]
        assert events[-1] == "[DONE]"
        assert "scheduler" in json.loads(events[-2])["error"]["message"]
        assert t_stream - killed_at < 5
        health = httpx.get(s.url + "/health", timeout=10)
        assert health.status_code == 503
        r = httpx.post(s.url + "/generate", json={"text": "z"}, timeout=10)
        assert r.status_code == 503 and "error" in r.json()
        assert httpx.get(s.url + "/get_server_info", timeout=10).status_code == 503
    finally:
        code = s.stop()
    assert code is not None
    assert not pid_alive(pids["detokenizer"])
