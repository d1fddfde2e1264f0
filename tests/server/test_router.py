"""Two `radixrt serve` replicas behind SGLang's real router (``sglang-router``, cache-aware
policy) on localhost, as docs/scale-out.md runs them.

- A shared-prefix workload (system prompts x questions, through the router's `/generate` and
  `/v1/chat/completions`) succeeds entirely, and the prefix-cache hit rate summed over the
  replicas is at least 0.9x that of one replica serving the same workload directly.
- A replica killed (SIGKILL, with its worker processes) while requests run on it: those
  requests fail within seconds (none hangs), the router takes the replica out, and the rest of
  the workload is served by the other replica.

Without sglang-router installed the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess, free_port, wait_idle

pytestmark = pytest.mark.timeout(400)

ROUTER_VERSION = "0.3.2"
# Fault detection within ~2 s (defaults: a health check every 60 s, 3 failures to take a
# worker out). Retries off, so that a request in flight on a dead replica reports the failure
# instead of possibly being retried elsewhere (docs/scale-out.md says what the defaults do).
ROUTER_FLAGS = ["--policy", "cache_aware", "--health-check-interval-secs", "1",
                "--health-failure-threshold", "2", "--disable-retries",
                "--shutdown-grace-period-secs", "1", "--log-level", "warn"]
REQUEST_TIMEOUT_S = 60
GROUPS, QUESTIONS, MAX_NEW_TOKENS = 3, 5, 8
APIS = ("generate", "chat")

WORDS = ("river stone cloud paper engine garden signal market window forest silver number "
         "planet letter bridge winter orange castle pocket ladder summer candle motor island "
         "harbor meadow violin rocket tunnel velvet copper lantern desert marble falcon").split()


def _require_router() -> None:
    try:
        version = metadata.version("sglang-router")
    except metadata.PackageNotFoundError:
        msg = f"sglang-router is not installed (pip install sglang-router=={ROUTER_VERSION}; dev extra)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    assert version == ROUTER_VERSION, f"sglang-router {version} installed, tests pin {ROUTER_VERSION}"


# ----------------------------------------------------------------- the router process
class RouterProcess:
    """`python -m sglang_router.launch_router` over ``worker_urls`` on a free localhost port."""

    def __init__(self, worker_urls: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls,
               "--host", "127.0.0.1", "--port", str(self.port), "--prometheus-host", "127.0.0.1",
               "--prometheus-port", str(free_port()), *ROUTER_FLAGS]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="sglang-router-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.wait_workers(lambda healthy: healthy == set(worker_urls), 60)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, n: int = 3000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def healthy_workers(self) -> set[str]:
        workers = httpx.get(self.url + "/workers", timeout=5).json()["workers"]
        return {w["url"] for w in workers if w["is_healthy"]}

    def wait_workers(self, done, timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                healthy = self.healthy_workers()
                if done(healthy):
                    return healthy
            except httpx.TransportError:
                healthy = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"router workers {healthy} after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def cluster(default_model_dir):
    _require_router()
    with ThreadPoolExecutor(2) as pool:  # the two replicas load at the same time
        starts = [pool.submit(ServerProcess) for _ in range(2)]
        replicas = [f.result() for f in starts]
    router = None
    try:
        router = RouterProcess([r.url for r in replicas])
        yield router, replicas
    finally:
        if router is not None:
            router.stop()
        for r in replicas:
            r.stop()


# ----------------------------------------------------------------- the workload
@dataclass(frozen=True)
class Req:
    api: str  # "generate" or "chat"
    group: int
    system: str
    question: str


def make_workload(seed: int = 0) -> list[Req]:
    """Per API, GROUPS system prompts of ~120 words x QUESTIONS short questions."""
    rng = random.Random(seed)
    systems = [f"System {g}: " + " ".join(rng.choice(WORDS) for _ in range(120)) for g in range(GROUPS)]
    questions = [f"Question {q}: what is the {rng.choice(WORDS)} of the {rng.choice(WORDS)}?"
                 for q in range(QUESTIONS)]
    return [Req(api, g, systems[g], q) for api in APIS for g in range(GROUPS) for q in questions]


@dataclass
class Outcome:
    ok: bool
    detail: str
    seconds: float


async def send(client: httpx.AsyncClient, base: str, req: Req, max_new_tokens: int = MAX_NEW_TOKENS,
               stream: bool = False) -> Outcome:
    """One request; ok only for a 200 with a complete result (a whole stream ends in [DONE]
    with no error event). Transport errors are outcomes, not exceptions."""
    if req.api == "generate":
        path, body = "/generate", {"text": f"{req.system}\n\n{req.question}", "stream": stream,
                                   "sampling_params": {"max_new_tokens": max_new_tokens,
                                                       "temperature": 0, "ignore_eos": True}}
    else:
        path, body = "/v1/chat/completions", {
            "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": req.question}],
            "max_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    t0 = time.monotonic()
    try:
        if not stream:
            r = await client.post(base + path, json=body)
            return Outcome(r.status_code == 200, f"{r.status_code} {r.text[:200]}", time.monotonic() - t0)
        async with client.stream("POST", base + path, json=body) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        errors = [x for x in lines if x.startswith('data: {"error"')]
        ok = r.status_code == 200 and bool(lines) and lines[-1] == "data: [DONE]" and not errors
        return Outcome(ok, f"{r.status_code} {len(lines)} events, last {lines[-1:]}, errors {errors[:1]}",
                       time.monotonic() - t0)
    except httpx.HTTPError as e:
        return Outcome(False, f"{type(e).__name__}: {e}", time.monotonic() - t0)


async def run_workload(base: str, reqs: list[Req], concurrency: int = 4) -> list[Outcome]:
    """All requests, `concurrency` at a time, the groups interleaved (every group's first
    question, then every group's second, ...): the same schedule for one replica and for the
    router. (Sent one at a time, every new prefix would go to the first replica: the
    cache-aware policy gives a prefix it has not seen to the least-loaded worker.)"""
    order = sorted(reqs, key=lambda r: (_question_index(r, reqs), r.api, r.group))
    limit = asyncio.Semaphore(concurrency)

    async def limited(client, r):
        async with limit:
            return await send(client, base, r)

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        return await asyncio.gather(*(limited(client, r) for r in order))


def _question_index(req: Req, reqs: list[Req]) -> int:
    same = [r for r in reqs if (r.api, r.group) == (req.api, req.group)]
    return same.index(req)


def stats(replica: ServerProcess) -> dict[str, int]:
    return replica.server_info()["stats"]


def flush(replicas: list[ServerProcess]) -> None:
    for r in replicas:
        wait_idle(r)
        httpx.post(r.url + "/flush_cache", timeout=30).raise_for_status()


def hit_rate(before: list[dict], after: list[dict]) -> float:
    prompt = sum(a["num_prompt_tokens"] - b["num_prompt_tokens"] for b, a in zip(before, after))
    cached = sum(a["num_cached_tokens"] - b["num_cached_tokens"] for b, a in zip(before, after))
    return cached / prompt


# ----------------------------------------------------------------- tests
def test_shared_prefix_workload_through_router(cluster):
    router, replicas = cluster
    reqs = make_workload()

    flush(replicas)
    before = [stats(replicas[0])]
    direct = asyncio.run(run_workload(replicas[0].url, reqs))
    assert all(o.ok for o in direct), [o.detail for o in direct if not o.ok]
    single = hit_rate(before, [stats(replicas[0])])

    flush(replicas)
    before = [stats(r) for r in replicas]
    routed = asyncio.run(run_workload(router.url, reqs))
    assert all(o.ok for o in routed), [o.detail for o in routed if not o.ok]
    after = [stats(r) for r in replicas]
    both = hit_rate(before, after)
    served = [a["num_finished"] - b["num_finished"] for b, a in zip(before, after)]

    print(f"hit rate: one replica {single:.3f}, two behind the router {both:.3f}; served {served}")
    assert sum(served) == len(reqs)
    assert min(served) > 0, f"the router sent everything to one replica: {served}"
    assert single > 0.5  # the workload shares prefixes
    assert both >= 0.9 * single, (both, single)


def _which_replica(replicas: list[ServerProcess], router: RouterProcess, req: Req) -> int:
    """Send one short request through the router; the index of the replica that served it."""
    before = [stats(r)["num_finished"] for r in replicas]
    async def one():
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            return await send(client, router.url, req, max_new_tokens=1)
    out = asyncio.run(one())
    assert out.ok, out.detail
    grown = [i for i, r in enumerate(replicas) if stats(r)["num_finished"] > before[i]]
    assert len(grown) == 1, grown
    return grown[0]


def test_replica_killed_mid_run(cluster):
    router, replicas = cluster
    reqs = make_workload(seed=1)
    keys = sorted({(r.api, r.group) for r in reqs})
    first = {k: next(r for r in reqs if (r.api, r.group) == k) for k in keys}
    # Spread the prefixes over the replicas (all at once, as in run_workload), then find out
    # where each went: the router keeps sending a prefix where it sent it first.
    warm = asyncio.run(run_workload(router.url, list(first.values()), concurrency=len(keys)))
    assert all(o.ok for o in warm), [o.detail for o in warm]
    home = {k: _which_replica(replicas, router, first[k]) for k in keys}
    victim = max((0, 1), key=lambda i: sum(h == i for h in home.values()))
    survivor = 1 - victim
    on_victim = [k for k in keys if home[k] == victim]
    on_survivor = [k for k in keys if home[k] == survivor]

    async def scenario():
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            # Long requests on the victim, streamed and not; shorter ones on the survivor.
            doomed = [asyncio.create_task(send(client, router.url, first[k], 400, stream))
                      for k in on_victim for stream in (False, True)]
            spared = [asyncio.create_task(send(client, router.url, first[k], 24)) for k in on_survivor]
            deadline = time.monotonic() + 30
            while replicas[victim].server_info()["num_running_reqs"] < len(doomed):
                assert time.monotonic() < deadline, "requests never started on the victim"
                await asyncio.sleep(0.1)
            t_kill = time.monotonic()
            replicas[victim].stop(signal.SIGKILL, timeout=10)
            doomed_out = await asyncio.wait_for(asyncio.gather(*doomed), 90)
            spared_out = await asyncio.wait_for(asyncio.gather(*spared), 90)
            return doomed_out, spared_out, t_kill

    doomed, spared, t_kill = asyncio.run(scenario())
    assert doomed and not any(o.ok for o in doomed), [o.detail for o in doomed]
    assert all(o.seconds < 45 for o in doomed), [(o.seconds, o.detail) for o in doomed]
    assert all(o.ok for o in spared), [o.detail for o in spared]
    print("in flight on the killed replica:", *[o.detail[:160] for o in doomed], sep="\n  ")

    router.wait_workers(lambda healthy: replicas[victim].url not in healthy, 30)
    print(f"the router took the replica out {time.monotonic() - t_kill:.1f}s after the kill")

    before = stats(replicas[survivor])["num_finished"]
    rest = asyncio.run(run_workload(router.url, reqs))
    assert all(o.ok for o in rest), [o.detail for o in rest if not o.ok]
    assert stats(replicas[survivor])["num_finished"] - before == len(reqs)
