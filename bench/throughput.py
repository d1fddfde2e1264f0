"""Throughput: radixrt's Engine vs Hugging Face transformers' `generate`, same model, same
machine, same prompts, in one run.

Workloads (greedy, ignore_eos so both produce exactly the same number of tokens):
  prefill   -- N prompts of 512 tokens, 1 output token each (prompt tokens/s)
  decode-b1 -- 1 prompt of 16 tokens, 128 output tokens (output tokens/s)
  decode-b32 -- 32 prompts of 16 tokens, 64 output tokens each, batched (output tokens/s)

Each workload runs --repeats times alternating radixrt and HF; the table shows medians and
the ratio. Prompts are random token ids, so the radix cache has nothing to share (it is
flushed between repeats anyway).

With several --quantization modes (e.g. ``none,int8``), radixrt in each mode is compared
instead of HF (alternating the same way, a fresh Engine per mode and run, timed after its
warm-up); ``ratio`` is the last mode over the first and ``same_tokens`` the share of requests
whose tokens are identical in both.

With --cpu-time each run is timed in CPU time of the process instead of the wall clock: run
with OMP_NUM_THREADS=1 on a machine other jobs share, for a per-core comparison they distort
least (radixrt's caller thread only waits; HF runs in the caller).

  python bench/throughput.py [--model-path PATH] [--repeats 3] [--workloads prefill,decode-b1,decode-b32]
                             [--quantization none | none,int8] [--cpu-time]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bar_plot, markdown_table, median, print_table, save_results  # noqa: E402

CLOCK = {"fn": time.perf_counter}  # --cpu-time: time.process_time


def timed(fn):
    clock = CLOCK["fn"]
    t0 = clock()
    out = fn()
    return clock() - t0, out

WORKLOADS = {
    # name: (num prompts, prompt len, output len, metric)
    "prefill": (4, 512, 1, "prompt"),
    "decode-b1": (1, 16, 128, "output"),
    "decode-b32": (32, 16, 64, "output"),
}


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


def run_radixrt(engine, prompts: list[list[int]], out_len: int) -> list[list[int]]:
    params = {"max_new_tokens": out_len, "temperature": 0, "ignore_eos": True}
    res = engine.generate(input_ids=prompts, sampling_params=params)
    return [r["output_ids"] for r in res]


@torch.inference_mode()
def run_hf(model, prompts: list[list[int]], out_len: int) -> list[list[int]]:
    ids = torch.tensor(prompts)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                         min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


class RadixrtSystem:
    def __init__(self, mode: str, model_path: str | None, keep: bool):
        self.mode, self.model_path = mode, model_path
        self.engine = self._start()
        self.vocab_size = self.engine.runner.config.vocab_size
        self.model_dir = self.engine.runner.model_dir
        if not keep:
            self.close()

    def _start(self):
        from radixrt import Engine

        engine = Engine(model_path=self.model_path, quantization=self.mode, max_running_requests=64)
        run_radixrt(engine, [[100, 200, 300]], 2)  # warm-up: first calls allocate, initialise kernels
        return engine

    def measure(self, prompts: list[list[int]], out_len: int) -> tuple[float, list[list[int]]]:
        engine = self.engine or self._start()
        engine.flush_cache()
        try:
            return timed(lambda: run_radixrt(engine, prompts, out_len))
        finally:
            if self.engine is None:
                engine.shutdown()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


class HFSystem:
    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.eval()
        run_hf(self.model, [[100, 200, 300]], 2)  # warm-up

    def measure(self, prompts: list[list[int]], out_len: int) -> tuple[float, list[list[int]]]:
        return timed(lambda: run_hf(self.model, prompts, out_len))

    def close(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per workload and system (median reported)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--quantization", default="none",
                    help="radixrt's --quantization; several, comma-separated, compare those modes instead of HF")
    ap.add_argument("--out", default=None, help="plot file (default: docs/img/throughput[_quantization].png; "
                                                   "with --cpu-time bench/results/..._cpu.png)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time runs in CPU time of the process (use with OMP_NUM_THREADS=1 on a shared machine)")
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK["fn"] = time.process_time

    modes = [m for m in args.quantization.split(",") if m]
    # One mode: one Engine for the whole run, against HF. Several modes: an Engine per mode
    # and run, shut down before the next mode's starts (timed after its warm-up), because two
    # live Engines mean two stepping threads with OpenMP pools, which slows both (see
    # radixrt.model.runner.on_fresh_thread).
    systems = {f"radixrt {m}" if len(modes) > 1 else "radixrt": RadixrtSystem(m, args.model_path, len(modes) == 1)
               for m in modes}
    vocab = next(iter(systems.values())).vocab_size
    if len(modes) == 1:
        systems["hf"] = HFSystem(next(iter(systems.values())).model_dir)
    names = list(systems)

    rows = []
    for name in [w for w in args.workloads.split(",") if w]:
        n, plen, olen, metric = WORKLOADS[name]
        prompts = make_prompts(n, plen, vocab, seed=zlib.crc32(name.encode()) % 1000)
        tokens = n * (plen if metric == "prompt" else olen)
        times: dict[str, list[float]] = {s: [] for s in names}
        outs: dict[str, list[list[int]]] = {}
        for _ in tqdm(range(args.repeats), desc=name, file=sys.stderr):
            for s, system in systems.items():
                dt, outs[s] = system.measure(prompts, olen)
                times[s].append(dt)
        row = {"workload": name, "requests": n, "prompt_len": plen, "output_len": olen, "metric": f"{metric} tok/s"}
        row.update({s: tokens / median(times[s]) for s in names})
        base, other = names[0], names[-1]
        row["ratio"] = row[base] / row[other] if other == "hf" else row[other] / row[base]
        same = sum(a == b for a, b in zip(outs[base], outs[other]))
        row["same_tokens"] = same >= 0.9 * n if other == "hf" else f"{same}/{n}"
        rows.append(row)
    for system in systems.values():
        system.close()
    cols = ["workload", "requests", "prompt_len", "output_len", "metric", *names, "ratio", "same_tokens"]
    print()
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    result = "throughput" if len(modes) == 1 else "throughput_quantization"
    path = save_results(result, {"rows": rows, "repeats": args.repeats, "quantization": modes,
                                 "clock": "cpu" if args.cpu_time else "wall", "threads": torch.get_num_threads()})
    title = ("radixrt vs HF transformers" if len(modes) == 1 else "radixrt by --quantization") + " (tokens/s, median)"
    # A CPU-time run is a side measurement: its plot stays out of the docs unless --out says so.
    default_plot = f"bench/results/{result}_cpu.png" if args.cpu_time else f"docs/img/{result}.png"
    plot = bar_plot(Path(args.out or default_plot), title, [r["workload"] for r in rows],
                    {s: [r[s] for r in rows] for s in names}, "tokens/s")
    print(f"\nresults: {path}" + (f", plot: {plot}" if plot else ""))


if __name__ == "__main__":
    main()
