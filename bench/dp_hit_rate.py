"""Prefix-cache hit rate of `radixrt serve --dp-size N` per dispatch method, on a workload of
prefix groups (each group: one long shared prefix, different questions), requests of all
groups interleaved and sent `--concurrency` at a time. Starts one server per configuration
(the default model) and prints a markdown table. The disk tier of the hierarchical cache is
off (`--hicache-storage-backend none`): it keeps KV across restarts, which would let one run
hit on another's prompts.

    python bench/dp_hit_rate.py --groups 4 --per-group 8 --concurrency 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.server.conftest import ServerProcess  # noqa: E402

TOPICS = ["astronomy", "cooking", "gardening", "chess", "sailing", "pottery", "geology", "music"]


def workload(groups: int, per_group: int) -> list[str]:
    prefixes = [f"You are an expert on {TOPICS[g % len(TOPICS)]} (group {g}). "
                + f"Answer briefly and precisely about {TOPICS[g % len(TOPICS)]}. " * 10
                for g in range(groups)]
    return [prefixes[g] + f"Question {i}: name one fact number {i}."
            for i in range(per_group) for g in range(groups)]


def run(config: list[str], prompts: list[str], concurrency: int) -> dict:
    s = ServerProcess(*config)
    try:
        before = s.server_info()
        t0 = time.perf_counter()

        def one(p: str) -> int:
            r = httpx.post(s.url + "/generate", timeout=300, json={
                "text": p, "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
            r.raise_for_status()
            return r.json()["meta_info"]["completion_tokens"]

        with cf.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, prompts))
        wall = time.perf_counter() - t0
        after = s.server_info()
        prompt = after["stats"]["num_prompt_tokens"] - before["stats"]["num_prompt_tokens"]
        cached = after["stats"]["num_cached_tokens"] - before["stats"]["num_cached_tokens"]
        sent = [w["dispatched"] for w in after.get("workers", [])] or [len(prompts)]
        return {"hit": cached / prompt, "wall": wall, "sent": sent}
    finally:
        s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--dp-size", type=int, default=2)
    a = ap.parse_args()
    prompts = workload(a.groups, a.per_group)
    configs = {"1 worker": ["--hicache-storage-backend", "none"]}
    for m in ("cache_aware", "round_robin", "shortest_queue"):
        configs[f"--dp-size {a.dp_size} {m}"] = ["--dp-size", str(a.dp_size),
                                                 "--load-balance-method", m,
                                                 "--hicache-storage-backend", "none"]
    print("| configuration | cache hit rate | requests per worker | wall s |")
    print("|---|---|---|---|")
    for name, cfg in configs.items():
        r = run(cfg, prompts, a.concurrency)
        print(f"| {name} | {r['hit']:.3f} | {r['sent']} | {r['wall']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
