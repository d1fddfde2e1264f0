"""`radixrt serve --dp-size 2`: two scheduler workers behind one HTTP front (real processes,
the default model). Greedy outputs match one worker, a shared prefix stays on one worker (its
cache hit rate shows it), a killed worker fails only its own requests while the other serves
the rest, and nothing outlives the server. The tests share one server and run in file order:
the last one kills a worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.server.conftest import ServerProcess, pid_alive, wait_idle

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village",
           "List three colors:"]
GREEDY = {"max_new_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def dp_server(default_model_dir):
    s = ServerProcess("--dp-size", "2")
    yield s
    s.stop()


def generate(url: str, text: str, params: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(url + "/generate", json={"text": text, "sampling_params": params},
                      timeout=timeout)


def test_greedy_outputs_match_one_worker(dp_server, server):
    # Concurrent, so that both workers serve some of them.
    got: dict[str, str] = {}

    def run(p: str) -> None:
        r = generate(dp_server.url, p, GREEDY)
        assert r.status_code == 200, r.text
        got[p] = r.json()["text"]

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in PROMPTS:
        r = generate(server.url, p, GREEDY)
        assert r.status_code == 200
        assert got[p] == r.json()["text"], p
    info = dp_server.server_info()
    assert [w["dp_rank"] for w in info["workers"]] == [0, 1]
    assert all(w["dispatched"] > 0 for w in info["workers"]), info["dp"]
    assert set(info["pids"]) == {"scheduler-0", "scheduler-1", "detokenizer"}
    # totals are the sums of the workers' numbers
    assert info["stats"]["num_prompt_tokens"] == sum(
        w["stats"]["num_prompt_tokens"] for w in info["workers"])
    load = httpx.get(dp_server.url + "/get_load", timeout=30).json()
    assert [entry["dp_rank"] for entry in load] == [0, 1]


def test_shared_prefix_stays_on_one_worker(dp_server):
    r = httpx.post(dp_server.url + "/flush_cache", timeout=30)
    assert r.status_code == 200 and r.json()["success"], r.text
    before = wait_idle(dp_server)["workers"]
    prefix = ("You are a careful assistant. Answer in one short sentence, plainly, without "
              "lists. " * 12)
    for i in range(6):
        r = generate(dp_server.url, prefix + f"Question {i}: what is {i} plus {i}?",
                     {"max_new_tokens": 1, "temperature": 0})
        assert r.status_code == 200, r.text
    after = dp_server.server_info()["workers"]
    sent = [a["dispatched"] - b["dispatched"] for a, b in zip(after, before, strict=True)]
    assert sorted(sent) == [0, 6], sent
    hot = sent.index(6)
    prompt = after[hot]["stats"]["num_prompt_tokens"] - before[hot]["stats"]["num_prompt_tokens"]
    cached = after[hot]["stats"]["num_cached_tokens"] - before[hot]["stats"]["num_cached_tokens"]
    # 5 of 6 requests find the ~160-token prefix cached
    assert cached / prompt > 0.7, (cached, prompt)
    assert metrics_total(dp_server) >= 6


def metrics_total(s: ServerProcess) -> float:
    text = httpx.get(s.url + "/metrics", timeout=30).text
    assert 'radixrt_dp_worker_dispatched_total{dp_rank="1"}' in text
    line = next(ln for ln in text.splitlines() if ln.startswith("radixrt_prompt_tokens_total"))
    return float(line.split()[-1])


def test_killed_worker_fails_only_its_requests(dp_server):
    info = dp_server.server_info()
    pids = info["pids"]
    results: dict[int, tuple[int, dict, float]] = {}
    params = {"max_new_tokens": 160, "ignore_eos": True, "temperature": 0}

    def run(i: int) -> None:
        text = f"Story number {i}: a traveller walks north and"
        if i % 2 == 0:
            r = generate(dp_server.url, text, params, timeout=90)
            results[i] = (r.status_code, r.json(), time.monotonic())
            return
        events = []  # odd ones stream: a failure is an error event, then [DONE]
        with httpx.stream("POST", dp_server.url + "/generate", timeout=90, json={
                "text": text, "sampling_params": params, "stream": True}) as r:
            if r.status_code != 200:  # failed before its first chunk: a plain error answer
                r.read()
                results[i] = (r.status_code, r.json(), time.monotonic())
                return
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        results[i] = (503 if "error" in last else 200, last, time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while True:  # both workers decoding
        workers = dp_server.server_info()["workers"]
        if all(w["num_running_reqs"] > 0 for w in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    victim_in_flight = workers[1]["in_flight"]
    killed_at = time.monotonic()
    os.kill(pids["scheduler-1"], signal.SIGKILL)
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    failed = [(code, body, at) for code, body, at in results.values() if code != 200]
    assert len(failed) == victim_in_flight
    for code, body, at in failed:
        assert code == 503 and "scheduler-1" in body["error"]["message"], body
        assert at - killed_at < 5
    served = [body for code, body, _ in results.values() if code == 200]
    assert len(served) == 4 - victim_in_flight
    assert all(b["meta_info"]["completion_tokens"] == 160 for b in served)
    # the survivor serves everything new; the server stays healthy
    assert httpx.get(dp_server.url + "/health", timeout=10).status_code == 200
    for p in PROMPTS[:2]:
        assert generate(dp_server.url, p, {"max_new_tokens": 4}).status_code == 200
    info = dp_server.server_info()
    assert [w["alive"] for w in info["workers"]] == [True, False]
    assert "scheduler-1" in info["workers"][1]["error"]
    assert info["dp"]["alive"] == [0]
    assert httpx.post(dp_server.url + "/flush_cache", timeout=30).status_code == 200
    # clean shutdown: nothing outlives the server
    code = dp_server.stop()
    assert code is not None
    for pid in pids.values():
        assert not pid_alive(pid)
