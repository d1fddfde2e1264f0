"""Scale-out: `radixrt serve` replicas behind SGLang's router (sglang-router, cache-aware),
one run, one machine.

Four ways to serve the same shared-prefix workload (G system prompts x Q questions through
`POST /generate`, greedy, fixed output length, C requests in flight, the groups interleaved):
  direct-1 -- one replica, no router
  router-1 -- the router over that one replica
  direct-2 -- two replicas, no router: the client sends group g to replica g % 2 (the ideal
              split, for comparison)
  router-2 -- the router over the two replicas
They alternate for --repeats rounds (prefix caches flushed before each); the table shows
medians: requests/s, output tokens/s, mean latency and the prefix-cache hit rate summed over
the replicas, with ratios of requests/s (router-2 / router-1 is the scale-out behind the
router). Then the router's overhead per request: the workload's prompts with one output
token, one at a time, alternating direct and router-1; the median latency difference.

Every replica gets --num-threads torch threads (default 1: on a 2-core machine two replicas
of one thread each can use both cores without thrashing); --pin-cores also pins replica i to
core i, as if each had a machine of its own.

  python bench/scale_out.py [--groups 4] [--questions 12] [--output-len 16] [--concurrency 8]
      [--repeats 3] [--overhead-requests 40] [--num-threads 1] [--pin-cores]

Results: bench/results/scale_out.json and bench/results/scale_out.png; the replicas' and
routers' logs: $TMPDIR/radixrt-scale-out/*.log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import RESULTS_DIR, bar_plot, markdown_table, median, print_table, save_results  # noqa: E402

WORDS = ("river stone cloud paper engine garden signal market window forest silver number "
         "planet letter bridge winter orange castle pocket ladder summer candle motor island "
         "harbor meadow violin rocket tunnel velvet copper lantern desert marble falcon").split()
COLUMNS = ["setup", "replicas", "req_s", "out_tok_s", "latency_s", "hit_rate", "ratio"]


# ----------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} not ready after {timeout}s")


LOG_DIR = Path(tempfile.gettempdir()) / "radixrt-scale-out"


def log_file(name: str):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return open(LOG_DIR / f"{name}.log", "w")  # open as long as the process runs


def start_replica(args: argparse.Namespace, index: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "radixrt", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--num-threads", str(args.num_threads), "--log-level", "warning"]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    pin = None
    if args.pin_cores:  # the replica and its worker processes on one core of their own
        core = index % os.cpu_count()
        pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file(f"replica{index}"), stderr=subprocess.STDOUT,
                            preexec_fn=pin)
    return proc, f"http://127.0.0.1:{port}"


def start_router(worker_urls: list[str], name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls,
           "--policy", "cache_aware", "--host", "127.0.0.1", "--port", str(port),
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
           "--shutdown-grace-period-secs", "1", "--log-level", "warn"]
    proc = subprocess.Popen(cmd, stdout=log_file(name), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def all_healthy() -> bool:
        workers = httpx.get(url + "/workers", timeout=5).json()["workers"]
        return sorted(w["url"] for w in workers if w["is_healthy"]) == sorted(worker_urls)

    wait_until(proc, all_healthy, "router", 60)
    return proc, url


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


# ----------------------------------------------------------------- workload
def make_prompts(groups: int, questions: int, seed: int = 0) -> list[tuple[int, str]]:
    """(group, text), interleaved: every group's first question, then every group's second..."""
    rng = random.Random(seed)
    systems = [f"System {g}: " + " ".join(rng.choice(WORDS) for _ in range(120)) for g in range(groups)]
    asks = [f"Question {q}: what is the {rng.choice(WORDS)} of the {rng.choice(WORDS)}?"
            for q in range(questions)]
    return [(g, f"{systems[g]}\n\n{asks[q]}") for q in range(questions) for g in range(groups)]


@dataclass
class Setup:
    targets: list[str]  # where the client sends group g: targets[g % len(targets)]
    replicas: list[str]  # the replicas that serve it


async def _round(targets: list[str], prompts: list[tuple[int, str]], output_len: int,
                 concurrency: int) -> dict[str, float]:
    """Group g goes to targets[g % len(targets)]."""
    params = {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(http: httpx.AsyncClient, group: int, text: str) -> None:
        nonlocal tokens
        async with limit:
            t0 = time.perf_counter()
            r = await http.post(targets[group % len(targets)] + "/generate",
                                json={"text": text, "sampling_params": params})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["meta_info"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http, g, text) for g, text in prompts))
        wall = time.perf_counter() - t0
    return {"req_s": len(prompts) / wall, "out_tok_s": tokens / wall,
            "latency_s": statistics.fmean(latencies)}


def stats(urls: list[str]) -> list[dict[str, int]]:
    return [httpx.get(u + "/get_server_info", timeout=60).json()["stats"] for u in urls]


def flush(urls: list[str]) -> None:
    for u in urls:
        httpx.post(u + "/flush_cache", timeout=60).raise_for_status()


def run_round(setup: Setup, all_replicas: list[str], prompts: list[tuple[int, str]],
              args: argparse.Namespace) -> dict[str, Any]:
    flush(all_replicas)
    before = stats(setup.replicas)
    res = asyncio.run(_round(setup.targets, prompts, args.output_len, args.concurrency))
    after = stats(setup.replicas)
    prompt = sum(a["num_prompt_tokens"] - b["num_prompt_tokens"] for b, a in zip(before, after))
    cached = sum(a["num_cached_tokens"] - b["num_cached_tokens"] for b, a in zip(before, after))
    served = [a["num_finished"] - b["num_finished"] for b, a in zip(before, after)]
    return {**res, "hit_rate": cached / prompt, "served": served}


def router_overhead(direct: str, routed: str, prompts: list[str], n: int) -> dict[str, float]:
    """Median per-request latency through the router minus direct: the workload's prompts
    (already cached, one output token, so both sides do the same small amount of work), one
    at a time, alternating which side goes first, on kept-alive connections."""
    params = {"max_new_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"direct": [], "router": []}
    with httpx.Client(base_url=direct, timeout=120) as d, httpx.Client(base_url=routed, timeout=120) as r:
        sides = [("direct", d), ("router", r)]
        for i in tqdm(range(-4, n), desc="router overhead", file=sys.stderr):  # 4 to warm up
            text = prompts[i % len(prompts)]
            for name, client in sides if i % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                client.post("/generate", json={"text": text, "sampling_params": params}).raise_for_status()
                if i >= 0:
                    times[name].append(time.perf_counter() - t0)
    dm, rm = median(times["direct"]), median(times["router"])
    return {"direct_ms": 1000 * dm, "router_ms": 1000 * rm, "overhead_ms": 1000 * (rm - dm), "requests": n}


# ----------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--groups", type=int, default=4, help="system prompts")
    ap.add_argument("--questions", type=int, default=12, help="questions per system prompt")
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds per setup (medians)")
    ap.add_argument("--overhead-requests", type=int, default=40)
    ap.add_argument("--num-threads", type=int, default=1, help="torch threads per replica")
    ap.add_argument("--pin-cores", action="store_true",
                    help="pin replica i (all its processes) to core i (Linux)")
    args = ap.parse_args()

    load_start = os.getloadavg()[0]
    procs: list[subprocess.Popen] = []
    try:
        urls = []
        for i in range(2):  # both load at once
            proc, url = start_replica(args, i)
            procs.append(proc)
            urls.append(url)
        for proc, url in zip(procs, urls):
            wait_until(proc, lambda u=url: httpx.get(u + "/health", timeout=2).status_code == 200, "replica")
        r0, r1 = urls
        router1, url1 = start_router([r0], "router1")
        router2, url2 = start_router([r0, r1], "router2")
        procs += [router1, router2]
        setups = {"direct-1": Setup([r0], [r0]), "router-1": Setup([url1], [r0]),
                  "direct-2": Setup([r0, r1], [r0, r1]), "router-2": Setup([url2], [r0, r1])}

        prompts = make_prompts(args.groups, args.questions)
        for setup in setups.values():  # warm-up: first requests, connections
            asyncio.run(_round(setup.targets, prompts[: args.groups], 2, args.groups))
        runs: dict[str, list[dict]] = {s: [] for s in setups}
        order = list(setups)
        for rep in tqdm(range(args.repeats), desc="rounds", file=sys.stderr):
            for name in order if rep % 2 == 0 else order[::-1]:
                runs[name].append(run_round(setups[name], [r0, r1], prompts, args))
        overhead = router_overhead(r0, url1, [text for _, text in prompts], args.overhead_requests)

        rows = []
        for name, results in runs.items():
            med = {k: statistics.median(x[k] for x in results)
                   for k in ("req_s", "out_tok_s", "latency_s", "hit_rate")}
            rows.append({"setup": name, "replicas": len(setups[name].replicas), **med})
        by = {r["setup"]: r for r in rows}
        for a, b in (("router-1", "direct-1"), ("direct-2", "direct-1"), ("router-2", "router-1")):
            by[a]["ratio"] = f"{by[a]['req_s'] / by[b]['req_s']:.2f} vs {b}"
        print()
        print_table(rows, COLUMNS)
        print(f"\nscale-out behind the router (router-2 / router-1 requests/s): "
              f"{by['router-2']['req_s'] / by['router-1']['req_s']:.2f}x; two replicas without it "
              f"(direct-2 / direct-1): {by['direct-2']['req_s'] / by['direct-1']['req_s']:.2f}x; "
              f"router / direct: {by['router-1']['req_s'] / by['direct-1']['req_s']:.2f}x with one "
              f"replica, {by['router-2']['req_s'] / by['direct-2']['req_s']:.2f}x with two")
        print(f"router overhead per request: {overhead['overhead_ms']:.2f} ms (median latency "
              f"{overhead['router_ms']:.1f} ms via the router, {overhead['direct_ms']:.1f} ms direct)")
        print()
        print(markdown_table(rows, COLUMNS))
        load = (load_start, os.getloadavg()[0])
        path = save_results("scale_out", {"args": vars(args), "rows": rows, "runs": runs,
                                          "router_overhead": overhead, "load_average": load,
                                          "prompts": len(prompts)})
        plot = bar_plot(RESULTS_DIR / "scale_out.png", "Shared-prefix workload: requests/s (median)",
                        [r["setup"] for r in rows], {"requests/s": [r["req_s"] for r in rows]}, "requests/s")
        print(f"\nload average {load[0]:.1f} -> {load[1]:.1f}; results: {path}" + (f", plot: {plot}" if plot else ""))
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
