"""Decode steps and a 512-token prefill per --quantization mode, in CPU time of one thread.

On a shared machine wall-clock timings of a 2-thread run mostly measure the other jobs (an
OpenMP region waits for a descheduled thread). CPU time of a single-threaded run is inflated
far less, so this script runs with one thread (set ``OMP_NUM_THREADS=1``) and reports
``time.process_time`` per decode step (the scheduler's step, as in ``decode_profile.py``; for
gguf both the one-native-call-per-layer path and the per-op path) and per prefill forward, with
the prefill's linear layers and attention timed apart. Modes alternate in rounds in one process.

  OMP_NUM_THREADS=1 python bench/cpu_time_steps.py [--modes none,int8,gguf] [--batch 1] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, print_table, save_results  # noqa: E402
from decode_profile import Setup  # noqa: E402


class CpuTimer:
    def __init__(self, fn, totals: dict[str, float], name: str):
        self.fn, self.totals, self.name = fn, totals, name

    def __call__(self, *args):
        t0 = time.process_time()
        out = self.fn(*args)
        self.totals[self.name] += time.process_time() - t0
        return out


def decode_steps(s: Setup, n: int, per_op: bool) -> list[float]:
    model = s.runner.model
    fast = model._decode_layers
    if per_op:
        model._decode_layers = None
    out = []
    for _ in range(n):
        t0 = time.process_time()
        s.scheduler.step()
        out.append(time.process_time() - t0)
    model._decode_layers = fast
    return out


def prefill_parts(s: Setup, n: int = 512) -> dict[str, float]:
    """Best of 3 prefill forwards: total, linear layers, attention (CPU seconds)."""
    from radixrt.model.forward_batch import ForwardBatch

    model = s.runner.model
    totals: dict[str, float] = defaultdict(float)
    lins = model.linears()
    attn = model.attn.forward
    for name, lin in lins.items():
        model.set_linear(name, CpuTimer(lin, totals, "linear"))
    model.attn.forward = CpuTimer(attn, totals, "attention")
    ids = list(range(2000, 2000 + n))
    table = torch.arange(s.runner.max_total_tokens - n, s.runner.max_total_tokens).unsqueeze(0)
    best = None
    try:
        for _ in range(3):
            totals.clear()
            fb = ForwardBatch.build(ids, [n], [n], table[0], table, [0])
            t0 = time.process_time()
            s.runner.forward(fb)
            total = time.process_time() - t0
            if best is None or total < best["total"]:
                best = {"total": total, **totals}
    finally:
        for name, lin in lins.items():
            model.set_linear(name, lin)
        model.attn.forward = attn
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--modes", default="none,int8,gguf")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of 8 steps per mode and path")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    setups = {m: Setup(m, args.model_path, args.batch) for m in modes}
    fast: dict[str, list] = {m: [] for m in modes}
    per_op: dict[str, list] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, s in setups.items():
            fast[m] += decode_steps(s, 8, per_op=False)
            per_op[m] += decode_steps(s, 8, per_op=True)
    rows = []
    for m, s in setups.items():
        p = prefill_parts(s)
        one_call = s.runner.model._decode_layers is not None
        rows.append({"mode": s.runner.quantization, "decode_ms": 1e3 * statistics.median(fast[m]),
                     "decode_per_op_ms": 1e3 * statistics.median(per_op[m]),
                     "one_call_per_layer": one_call, "prefill512_s": p["total"],
                     "prefill_tok_s": 512 / p["total"], "prefill_linear_s": p.get("linear", 0.0),
                     "prefill_attention_s": p.get("attention", 0.0)})
    cols = list(rows[0])
    print(f"\nCPU time, {torch.get_num_threads()} thread(s), batch {args.batch}\n")
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    print(f"\nresults: {save_results(f'cpu_time_steps_b{args.batch}', {'rows': rows})}")


if __name__ == "__main__":
    main()
