"""Linear-layer routes on this CPU: fp32 (radixrt's `Linear`) vs int8 and the alternatives.

Routes, each on the same random weight, timed in alternating rounds (median per route):
  fp32        radixrt.model.linear.Linear (x @ W^T GEMV at one row, oneDNN-packed for batches)
  int8        radixrt.model.linear.Int8Linear (int8 weights per channel, int8 rows; fbgemm)
  dynamic     torch.ops.quantized.linear_dynamic on the same packed weights (one scale for the
              whole input: the batch's rows share it)
  w8-pack     torch._weight_int8pack_mm (weight-only int8)
  w8-dequant  weight-only int8, dequantized to fp32 on every call, then x @ W^T
  bf16        F.linear in bfloat16 (only meaningful on CPUs with native BF16)
  q4_1        radixrt.model.gguf_weights.GGUFLinear on Q4_1 blocks of the weight (the gguf
              mode's kernel, radixrt/csrc/quant_gemm.cpp, on this CPU's fastest path)
  q8_0        the same on Q8_0 blocks (the default model's LM head)

Each route's time (us) and rate (GOP/s, 2 ops per multiply-add) are listed too; without the
fp32 route, only those.

Shapes: the default model's (SmolLM2-135M: fused qkv, o, fused gate/up, down, LM head) and
square layers 64..1024 to find where int8 starts to pay (``AUTO_MIN_WEIGHTS``).

  python bench/linear_micro.py [--rows 1,32] [--rounds 50] [--routes fp32,int8,...] [--threads N] [--cpu-time]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median, print_table, save_results  # noqa: E402

from radixrt.model.linear import Int8Linear, Linear, quantize_weight  # noqa: E402

MODEL_SHAPES = {"qkv 960x576": (960, 576), "o 576x576": (576, 576), "gate_up 3072x576": (3072, 576),
                "down 576x1536": (576, 1536), "lm_head 49152x576": (49152, 576)}
SQUARE_SHAPES = {f"{n}x{n}": (n, n) for n in (64, 128, 256, 384, 512, 768, 1024)}
ROUTES = ("fp32", "int8", "dynamic", "w8-pack", "w8-dequant", "bf16", "q4_1", "q8_0")


def make_routes(weight: torch.Tensor, x: torch.Tensor, names: list[str]) -> dict:
    out = {}
    if "fp32" in names:
        lin = Linear(weight)
        out["fp32"] = lambda: lin(x)
    if "int8" in names or "dynamic" in names:
        q8 = Int8Linear(weight)
        if "int8" in names:
            out["int8"] = lambda: q8(x)
        if "dynamic" in names:
            out["dynamic"] = lambda: torch.ops.quantized.linear_dynamic(x, q8.packed)
    q, scale = quantize_weight(weight)
    if "w8-pack" in names:
        out["w8-pack"] = lambda: torch._weight_int8pack_mm(x, q, scale)
    if "w8-dequant" in names:
        out["w8-dequant"] = lambda: x @ (q.float() * scale[:, None]).t()
    if "bf16" in names:
        wb, xb = weight.bfloat16(), x.bfloat16()
        out["bf16"] = lambda: F.linear(xb, wb)
    for qtype in ("q4_1", "q8_0"):
        if qtype in names and weight.shape[1] % 32 == 0:
            from gguf import GGMLQuantizationType
            from gguf.quants import quantize

            from radixrt.model.gguf_weights import GGUFLinear, pack_blocks

            t = GGMLQuantizationType[qtype.upper()]
            ql = GGUFLinear(pack_blocks(quantize(weight.numpy(), t), qtype.upper()))
            out[qtype] = lambda ql=ql: ql(x)
    return out


CLOCK = {"fn": time.perf_counter}  # --cpu-time: time.process_time


def measure(shape: tuple[int, int], rows: int, names: list[str], rounds: int) -> dict[str, float]:
    n, k = shape
    gen = torch.Generator().manual_seed(n * 7 + k)
    weight = torch.randn(n, k, generator=gen) * k ** -0.5
    x = torch.randn(rows, k, generator=gen)
    routes = make_routes(weight, x, names)
    for fn in routes.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in routes}
    budget = max(3, rounds if n * k < 10_000_000 else rounds // 4)
    clock = CLOCK["fn"]
    for _ in range(budget):
        for name, fn in routes.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,32", help="comma-separated batch sizes (rows of x)")
    ap.add_argument("--rounds", type=int, default=50, help="alternating rounds per shape (median)")
    ap.add_argument("--routes", default=",".join(ROUTES), help="subset of " + ",".join(ROUTES))
    ap.add_argument("--shapes", default="model,square", help="model, square or both")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time in CPU time of the process (with --threads 1: what other jobs on a shared "
                         "machine distort least)")
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK["fn"] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [r for r in args.routes.split(",") if r]
    shapes = {}
    if "model" in args.shapes:
        shapes.update(MODEL_SHAPES)
    if "square" in args.shapes:
        shapes.update(SQUARE_SHAPES)
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    jobs = [(label, shape, rows) for rows in rows_list for label, shape in shapes.items()]
    for label, shape, rows in tqdm(jobs, desc="shapes", file=sys.stderr):
        t = measure(shape, rows, names, args.rounds)
        row = {"shape": label, "rows": rows, "fp32_us": t.get("fp32", float("nan")) * 1e6}
        ops = 2 * shape[0] * shape[1] * rows
        for name in names:
            if name != "fp32" and "fp32" in t:
                row[name] = t["fp32"] / t[name]  # speed-up over fp32
            if name in t:
                row[f"{name} us"] = t[name] * 1e6
                row[f"{name} GOP/s"] = ops / t[name] / 1e9
        results.append(row)
    cols = ["shape", "rows", "fp32_us"] + [n for n in names if n != "fp32" and "fp32" in names]
    cols += [f"{n} {unit}" for n in names for unit in ("us", "GOP/s")]
    print(f"\nspeed-up over fp32, then each route's time and GOP/s (2 ops per multiply-add; median of "
          f"alternating rounds), {torch.get_num_threads()} threads\n")
    print_table(results, cols)
    print()
    print(markdown_table(results, cols))
    print(f"\nresults: {save_results('linear_micro', {'rows': results})}")


if __name__ == "__main__":
    main()
