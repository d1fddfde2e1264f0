"""Where the time of one decode step goes, per --quantization mode.

The scheduling core runs in this thread (no Engine thread, no processes): --batch requests
(default 1) with 16-token prompts decode greedily; after a warm-up, wall-clock timers around the parts of each
step add up:
  linear: qkv, o, gate_up, down   the dense layers of the 30 decoder layers
  lm_head                         the LM head
  attention                       paged decode attention (native kernel or torch)
  element-wise                    the rest of the model forward: embedding lookup, norms,
                                  residual adds, RoPE + KV store, SiLU * up
  sampling                        the sampler (greedy here)
  scheduler + Python              the rest of the step: batch planning, KV bookkeeping,
                                  finish checks, Python between the parts
Modes alternate in blocks of steps. The table gives each part's mean over the middle half of
the timed steps (ranked by wall time: a typical step whose parts add up to its time, without
the steps a busy machine stalled), the median step without the timers, and the rate the dense
layers and the LM head achieved (GOP/s, 2 ops per multiply-add; those rows are not ms).

In the gguf mode a decode step normally runs each decoder layer as one native call
(``radixrt_qg.decode_layer``), which has no Python-level parts to time: the timed steps take the
per-op path (the same arithmetic), and the last row gives the untimed per-op step next to the
untimed one-call-per-layer step.

With --cpu-time every timer reads the process's CPU time instead of the wall clock: on a
machine shared with other jobs, run it single-threaded (OMP_NUM_THREADS=1) for a breakdown the
other jobs do not distort.

  python bench/decode_profile.py [--modes none,int8] [--batch 1] [--steps 96] [--block 16] [--cpu-time]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, print_table, save_results  # noqa: E402

PARTS = ["qkv", "o", "gate_up", "down", "lm_head", "attention", "element-wise", "sampling",
         "scheduler + Python"]


CLOCK = {"fn": time.perf_counter}  # --cpu-time: time.process_time


def in_features(lin) -> int:
    k = getattr(lin, "in_features", None)
    return int(k) if k is not None else int(lin.weight_t.shape[0])  # fp32 Linear keeps W^T


class Timer:
    """Wraps a callable; adds its wall (or CPU) time to ``totals[name]``."""

    def __init__(self, fn, totals: dict[str, float], name: str):
        self.fn, self.totals, self.name = fn, totals, name

    def __call__(self, *args, **kwargs):
        clock = CLOCK["fn"]
        t0 = clock()
        out = self.fn(*args, **kwargs)
        self.totals[self.name] += clock() - t0
        return out


class Setup:
    def __init__(self, mode: str, model_path: str | None, batch: int):
        from radixrt.config import ServerArgs
        from radixrt.model.runner import ModelRunner
        from radixrt.sampling_params import SamplingParams
        from radixrt.scheduler.req import Req
        from radixrt.scheduler.scheduler import Scheduler
        from radixrt.tokenizer import load_tokenizer

        args = ServerArgs(model_path=model_path, quantization=mode, max_total_tokens=16384)
        self.runner = ModelRunner(args)
        self.scheduler = Scheduler(args, self.runner, load_tokenizer(self.runner.model_dir))
        # Enough tokens for the warm-up and the measured steps; few enough that the KV budget
        # admits the whole batch at once.
        params = SamplingParams(max_new_tokens=400, temperature=0, ignore_eos=True)
        for i in range(batch):
            prompt = list(range(1000 + 16 * i, 1016 + 16 * i))
            self.scheduler.add_request(Req(rid=f"{mode}-{i}", prompt_ids=prompt, params=params))
        while len(self.scheduler.running) < batch or any(r.kv_len < len(r.prompt_ids)
                                                          for r in self.scheduler.running):
            self.scheduler.step()  # the prefills
        self.totals: dict[str, float] = defaultdict(float)
        model, t = self.runner.model, self.totals
        self.plain = {"model": model.forward, "attn": model.attn.forward, "sampler": self.scheduler.post.sampler,
                      "linears": model.linears()}
        self.timed = {"model": Timer(model.forward, t, "model"), "attn": Timer(model.attn.forward, t, "attention"),
                      "sampler": Timer(self.scheduler.post.sampler, t, "sampling"),
                      "linears": {n: Timer(lin, t, n.rsplit(".", 1)[-1]) for n, lin in model.linears().items()}}

    def install(self, which: dict) -> None:
        model = self.runner.model
        model.forward = which["model"]
        model.attn.forward = which["attn"]
        self.scheduler.post.sampler = which["sampler"]
        for name, lin in which["linears"].items():
            model.set_linear(name, lin)

    def steps(self, n: int, timed: bool, per_op: bool = False) -> list[dict[str, float]]:
        self.install(self.timed if timed else self.plain)
        model = self.runner.model
        fast = model._decode_layers
        if timed or per_op:
            model._decode_layers = None
        out = []
        clock = CLOCK["fn"]
        for _ in range(n):
            self.totals.clear()
            t0 = clock()
            self.scheduler.step()
            wall = clock() - t0
            t = dict(self.totals)
            layers = sum(t.get(k, 0.0) for k in ("qkv", "o", "gate_up", "down", "lm_head"))
            parts = {k: t.get(k, 0.0) for k in ("qkv", "o", "gate_up", "down", "lm_head")}
            parts["attention"] = t.get("attention", 0.0)
            parts["element-wise"] = t.get("model", 0.0) - layers - parts["attention"]
            parts["sampling"] = t.get("sampling", 0.0)
            parts["scheduler + Python"] = wall - t.get("model", 0.0) - parts["sampling"]
            parts["step"] = wall
            out.append(parts)
        self.install(self.plain)
        model._decode_layers = fast
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--modes", default="none,int8", help="--quantization modes to compare")
    ap.add_argument("--batch", type=int, default=1, help="requests decoding together")
    ap.add_argument("--steps", type=int, default=96,
                    help="decode steps measured per mode, timed and untimed each (at most ~190)")
    ap.add_argument("--block", type=int, default=16, help="steps per turn before switching mode")
    ap.add_argument("--cpu-time", action="store_true", help="time in CPU time of the process, not wall time")
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK["fn"] = time.process_time
    modes = [m for m in args.modes.split(",") if m]
    setups = {m: Setup(m, args.model_path, args.batch) for m in modes}
    for s in setups.values():  # warm-up
        s.steps(8, timed=True)
        s.steps(8, timed=False)
    timed: dict[str, list] = {m: [] for m in modes}
    plain: dict[str, list] = {m: [] for m in modes}
    per_op: dict[str, list] = {m: [] for m in modes}
    for _ in tqdm(range(max(1, args.steps // args.block)), desc="blocks", file=sys.stderr):
        for m, s in setups.items():
            timed[m] += s.steps(args.block, timed=True)
            plain[m] += [p["step"] for p in s.steps(args.block, timed=False)]
            if s.runner.model._decode_layers is not None:
                per_op[m] += [p["step"] for p in s.steps(args.block, timed=False, per_op=True)]
    typical = {}
    for m in modes:
        ranked = sorted(timed[m], key=lambda p: p["step"])
        typical[m] = ranked[len(ranked) // 4: len(ranked) - len(ranked) // 4]
    rows = []
    for part in PARTS + ["step"]:
        row = {"part": part if part != "step" else "step (with timers)"}
        for m in modes:
            row[f"{m} ms"] = 1e3 * statistics.fmean(p[part] for p in typical[m])
        rows.append(row)
    rows.append({"part": "step (no timers)", **{f"{m} ms": 1e3 * statistics.median(plain[m]) for m in modes}})
    if any(per_op.values()):
        rows.append({"part": "step, per-op path (no timers)",
                     **{f"{m} ms": 1e3 * statistics.median(per_op[m] or plain[m]) for m in modes}})
    # Achieved rate of the dense layers (2 ops per multiply-add, one row per request).
    for label, parts in (("linear layers GOP/s", ("qkv", "o", "gate_up", "down")), ("LM head GOP/s", ("lm_head",))):
        row = {"part": label}
        for m in modes:
            lins = setups[m].runner.model.linears()
            ops = sum(2 * in_features(lin) * lin.out_features * args.batch for name, lin in lins.items()
                      if name.rsplit(".", 1)[-1] in parts)
            secs = statistics.fmean(sum(p[k] for k in parts) for p in typical[m])
            row[f"{m} ms"] = ops / secs / 1e9 if secs > 0 else float("nan")
        rows.append(row)
    cols = ["part"] + [f"{m} ms" for m in modes]
    threads = torch.get_num_threads()
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"\none decode step of {args.batch} request(s), {len(plain[modes[0]])} steps per mode, {threads} threads, "
          f"{clock}\n")
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    path = save_results(f"decode_profile_b{args.batch}", {"rows": rows, "modes": modes, "batch": args.batch})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
