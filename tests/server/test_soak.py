"""Soak: 200 mixed requests, 32 at a time, some cancelled at random. Ends with no error, no
hung request and every KV slot accounted for."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

from tests.server.conftest import assert_no_kv_leak

pytestmark = pytest.mark.timeout(420)

NUM_REQUESTS = 200
CONCURRENCY = 32
DEADLINE_S = 120
SYSTEM = "You are a concise assistant. Answer in one short sentence. "
QUESTIONS = ["What is rain?", "Name a fruit.", "Why is the sky blue?", "Count to three.",
             "What is 2+2?", "Say hello.", "Describe a cat.", "What is Python?"]


class Outcome:
    def __init__(self) -> None:
        self.ok = 0
        self.cancelled = 0
        self.errors: list[str] = []
        self.pending: dict[int, str] = {}  # request -> what it is (reported if the soak hangs)


def _check_result(res: dict) -> None:
    assert isinstance(res["text"], str)
    assert res["meta_info"]["finish_reason"]["type"] in ("length", "stop"), res["meta_info"]


async def _one(client: httpx.AsyncClient, i: int, rng: random.Random, out: Outcome) -> None:
    prompt = SYSTEM + rng.choice(QUESTIONS) + f" (#{i % 17})"
    params = {"max_new_tokens": rng.randint(1, 12), "temperature": rng.choice([0, 0.7, 1.0])}
    if rng.random() < 0.2:
        params["stop"] = [rng.choice([".", "\n", " the"])]
    kind = rng.choice(["native", "native", "native_stream", "chat", "completion_stream", "batch", "n2"])
    cancel = rng.random() < 0.2
    rid = f"soak-{i}"
    out.pending[i] = f"{kind} cancel={cancel} {params}"

    async def run() -> None:
        if kind == "native":
            r = await client.post("/generate", json={"text": prompt, "rid": rid, "sampling_params": params})
            r.raise_for_status()
            _check_result(r.json())
        elif kind == "batch":
            r = await client.post("/generate", json={"text": [prompt, prompt[::-1]], "sampling_params": params})
            r.raise_for_status()
            assert len(r.json()) == 2 and all(_check_result(x) is None for x in r.json())
        elif kind == "n2":
            r = await client.post("/generate", json={"text": prompt, "sampling_params": {**params, "n": 2}})
            r.raise_for_status()
            assert len(r.json()) == 2
        elif kind == "chat":
            r = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": prompt}], "max_tokens": params["max_new_tokens"],
                "temperature": params["temperature"]})
            r.raise_for_status()
            assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")
        else:
            if kind == "native_stream":
                url, body = "/generate", {"text": prompt, "rid": rid, "sampling_params": params, "stream": True}
            else:
                url, body = "/v1/completions", {"prompt": prompt, "max_tokens": params["max_new_tokens"],
                                                "stream": True}
            async with client.stream("POST", url, json=body) as r:
                r.raise_for_status()
                last = None
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        last = line[6:]
                        if last != "[DONE]":
                            assert "error" not in json.loads(last), last
                assert last == "[DONE]"

    if not cancel:
        await run()
        out.ok += 1
        return
    task = asyncio.ensure_future(run())
    await asyncio.sleep(rng.uniform(0.0, 1.5))
    if rng.random() < 0.5 and kind in ("native", "native_stream"):
        r = await client.post("/abort_request", json={"rid": rid})  # server-side abort
        assert r.status_code == 200
        try:
            await task
            out.ok += 1
        except (httpx.HTTPStatusError, AssertionError):
            out.cancelled += 1  # aborted requests finish with finish_reason "abort"
        return
    task.cancel()  # the client goes away: the connection closes
    try:
        await task
        out.ok += 1
    except asyncio.CancelledError:
        out.cancelled += 1


def test_soak(server):
    rng = random.Random(1234)
    out = Outcome()

    async def main() -> None:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def guarded(i: int) -> None:
            # A client per request: a cancelled request must not leave a pooled connection
            # behind that later requests would wait for.
            async with sem, httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as client:
                try:
                    await _one(client, i, random.Random(rng.random()), out)
                except Exception as e:  # collected, reported below
                    out.errors.append(f"request {i}: {type(e).__name__}: {e}")
                out.pending.pop(i, None)

        tasks = [asyncio.ensure_future(guarded(i)) for i in range(NUM_REQUESTS)]
        _, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
        if pending:
            info = server.server_info()
            for t in pending:
                t.cancel()
            raise AssertionError(
                f"soak not done after {DEADLINE_S}s: {out.ok} ok, {out.cancelled} cancelled, "
                f"{len(out.pending)} pending, e.g. {list(out.pending.items())[:5]}; scheduler: "
                f"running {info['num_running_reqs']}, waiting {info['num_waiting_reqs']}")

    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    print(f"soak: {NUM_REQUESTS} requests in {elapsed:.1f}s ({out.cancelled} cancelled)")
    assert not out.errors, out.errors[:5]
    assert out.ok + out.cancelled == NUM_REQUESTS
    assert out.cancelled > 10  # the random cancellations really happened
    assert elapsed < DEADLINE_S
    assert_no_kv_leak(server)
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.post(server.url + "/flush_cache").status_code == 200
    mem = server.server_info()["memory"]
    assert mem["kv_free_slots"] == mem["kv_total_slots"]
