"""Hierarchical (tiered, persistent) cache: two measurements, ratios from one run.

(a) restart -- a server is started, given a 2,000-token prefix, and stopped; then, --repeats
    times, two new servers on the same --hicache-dir one after the other: one with the warm
    start off (--hicache-warm-start-ratio 0: the KV is read from disk on demand, when the
    request arrives) and one with the default warm start (the most recent disk runs are read
    into the pool in the background at start-up). Each gets one unrelated request as long as
    the measured ones (process warm-up: the first forward at that context length pays one-time
    costs, e.g. fresh allocator pages for the attention's K/V gathers, which would otherwise
    land on whichever request comes first), waits until that request's KV is written to disk
    (the writer thread would share the CPU with the next request; nothing waits for the warm
    start's reads), then the prefix plus
    a fresh 16-token suffix (restart), the same prefix again with another suffix (hot: the KV
    is in the pool); the on-demand server then gets an unseen 2,016-token prompt (computed).
    Time to first token = latency of a /generate with max_new_tokens=1 (input ids, so no
    tokenization). Reported: medians, restart/hot per server, compute/restart (on demand).
(b) working set 4x the pool -- G prefixes of P tokens, each followed by short unique
    questions, round-robin for R rounds through a KV pool of G * P / 4 slots; the same
    requests on an Engine with the tiers on and with --disable-hierarchical-cache (each a new
    Engine and a fresh tier folder per repeat). Reported: requests/s (median) and the ratio.

  python bench/tiered_cache.py [--repeats 3] [--parts restart,working-set]
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median, print_table, save_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = 49152


def rand_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, VOCAB - 100) for _ in range(n)]


class Server:
    def __init__(self, hicache_dir: str, extra: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "radixrt", "serve", "--port", str(self.port),
               "--hicache-dir", hicache_dir, "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError("server did not start")

    def ttft(self, ids: list[int]) -> tuple[float, int]:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
        t0 = time.perf_counter()
        r = httpx.post(self.url + "/generate", json=body, timeout=600)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        return dt, r.json()["meta_info"]["cached_tokens"]

    def wait_writes(self) -> None:
        while self.info()["hicache"]["io_in_flight"]["write"]:
            time.sleep(0.05)

    def info(self) -> dict:
        return httpx.get(self.url + "/get_server_info", timeout=60).json()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def part_restart(args) -> dict:
    rng = random.Random(7)
    prefix = rand_ids(rng, args.prefix_len)
    extra = ["--max-total-tokens", "16384"]
    if args.model_path:
        extra += ["--model-path", args.model_path]
    with tempfile.TemporaryDirectory() as d:
        s = Server(d, extra)
        s.ttft(prefix + rand_ids(rng, 16))
        s.wait_writes()
        s.stop()
        rows: dict[str, list] = {k: [] for k in (
            "restart", "hot", "restart warm", "hot warm", "compute", "restart_cached",
            "restart warm_cached", "disk_read_s", "warm_tokens_before_request",
            "blocks_read_by_restart", "blocks_read_by_restart warm")}
        for _ in range(args.repeats):
            for mode, flags in (("", ["--hicache-warm-start-ratio", "0"]), (" warm", [])):
                s = Server(d, extra + flags)
                try:
                    s.ttft(rand_ids(rng, args.warmup_len))  # process warm-up, unrelated tokens
                    s.wait_writes()  # its KV's disk write would share the CPU with the next request
                    before = s.info()["hicache"]
                    if mode:
                        rows["warm_tokens_before_request"].append(before["warm_start_tokens"])
                    t, c = s.ttft(prefix + rand_ids(rng, 16))
                    rows["restart" + mode].append(t)
                    rows[f"restart{mode}_cached"].append(c)
                    rows["blocks_read_by_restart" + mode].append(
                        s.info()["hicache"]["disk_blocks_read"] - before["disk_blocks_read"])
                    if not mode:
                        rows["disk_read_s"].append(s.info()["hicache"]["disk_read_seconds"])
                    t, c = s.ttft(prefix + rand_ids(rng, 16))
                    assert c >= args.prefix_len - 64, c
                    rows["hot" + mode].append(t)
                    if not mode:
                        t, c = s.ttft(rand_ids(rng, args.prefix_len + 16))
                        assert c == 0, c
                        rows["compute"].append(t)
                finally:
                    s.stop()
    out = {k: median(v) for k, v in rows.items()}
    out["restart / hot"] = out["restart"] / out["hot"]
    out["restart warm / hot"] = out["restart warm"] / out["hot warm"]
    out["compute / restart"] = out["compute"] / out["restart"]
    out["samples"] = rows
    return out


def part_working_set(args) -> dict:
    from radixrt import Engine

    g, p, rounds, q = args.groups, args.group_prefix_len, args.rounds, args.questions
    pool = g * p // 4
    rng = random.Random(11)
    prefixes = [rand_ids(rng, p) for _ in range(g)]
    requests = [prefixes[i] + rand_ids(rng, 16) for _ in range(rounds) for i in range(g)
                for _ in range(q)]
    params = {"max_new_tokens": 8, "temperature": 0}
    times: dict[str, list[float]] = {"tiers": [], "no tiers": []}
    hits: dict[str, list[float]] = {"tiers": [], "no tiers": []}
    # One-time process costs (native kernels, the grammar caches' warm-up thread that every
    # Engine starts, allocator growth) go to an untimed Engine, not to the first timed one.
    with tempfile.TemporaryDirectory() as d, Engine(
            model_path=args.model_path, max_total_tokens=pool, max_running_requests=q,
            chunked_prefill_size=p, hicache_dir=d, disable_hierarchical_cache=True) as eng:
        eng.generate(input_ids=requests[:q], sampling_params=params)
        deadline = time.monotonic() + 120
        while eng.scheduler.grammars.warm_up_status == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
    for _ in range(args.repeats):
        for name, kw in (("tiers", {}), ("no tiers", {"disable_hierarchical_cache": True})):
            with tempfile.TemporaryDirectory() as d, Engine(
                    model_path=args.model_path, max_total_tokens=pool, max_running_requests=q,
                    chunked_prefill_size=p, hicache_dir=d, **kw) as eng:
                t0 = time.perf_counter()
                for i in range(0, len(requests), q):  # one group's questions at a time
                    eng.generate(input_ids=requests[i:i + q], sampling_params=params)
                times[name].append(time.perf_counter() - t0)
                st = eng.get_stats()
                hits[name].append(st["cache_hit_rate"])
    n = len(requests)
    out = {f"{k} req/s": n / median(v) for k, v in times.items()}
    out["tiers / no tiers"] = out["tiers req/s"] / out["no tiers req/s"]
    out["hit rate tiers"] = median(hits["tiers"])
    out["hit rate no tiers"] = median(hits["no tiers"])
    out.update(requests=n, pool_tokens=pool, working_set_tokens=g * p, samples=times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: embedded SmolLM2-135M)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--parts", default="restart,working-set")
    ap.add_argument("--prefix-len", type=int, default=2000, help="(a) prefix tokens")
    ap.add_argument("--warmup-len", type=int, default=2016,
                    help="(a) tokens of the unrelated warm-up request (default: as long as the "
                         "measured requests)")
    ap.add_argument("--groups", type=int, default=8, help="(b) prefixes")
    ap.add_argument("--group-prefix-len", type=int, default=1000,
                    help="(b) tokens per prefix (a system prompt, few-shot block or document)")
    ap.add_argument("--rounds", type=int, default=3, help="(b) passes over the prefixes")
    ap.add_argument("--questions", type=int, default=1, help="(b) requests per prefix and pass")
    args = ap.parse_args()
    results = {}
    if "restart" in args.parts:
        r = part_restart(args)
        results["restart"] = r
        cols = ["restart", "hot", "restart / hot", "restart warm", "hot warm",
                "restart warm / hot", "compute", "compute / restart"]
        print_table([r], cols)
        print(markdown_table([r], cols))
    if "working-set" in args.parts:
        r = part_working_set(args)
        results["working_set"] = r
        cols = ["tiers req/s", "no tiers req/s", "tiers / no tiers", "hit rate tiers",
                "hit rate no tiers"]
        print_table([r], cols)
        print(markdown_table([r], cols))
    print("results:", save_results("tiered_cache", {"args": vars(args), **results}))


if __name__ == "__main__":
    main()
