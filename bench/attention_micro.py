"""Paged decode attention micro-benchmark: native CPU kernel vs the torch fallback (gather + SDPA).

Shapes follow the default model's attention (9 query heads, 3 kv heads, head_dim 64) on one
layer's pool. Slots are a random permutation of the pool (a realistic, non-contiguous layout).

  decode: B in (1, 8, 32) x L in (128, 512, 2048), and B=32 L=200; one query per request

(Extend attention has no native kernel: both backends run it through SDPA.)

Each case is run --repeats times (after a warm-up) for both implementations, interleaved;
the table shows median milliseconds per call, the speedup torch/native (of the medians), and
the fastest single call of each (useful on a machine shared with other jobs).

  python bench/attention_micro.py [--repeats 9] [--heads 9 --kv-heads 3 --head-dim 64] [--save]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table, median, print_table, save_results  # noqa: E402

from radixrt.model import native  # noqa: E402


def make_pool(total_tokens: int, kv: int, d: int, gen: torch.Generator):
    num_slots = total_tokens + 1  # slot 0 = padding
    k_buf = torch.randn(num_slots, kv, d, generator=gen)
    v_buf = torch.randn(num_slots, kv, d, generator=gen)
    perm = torch.randperm(num_slots - 1, generator=gen) + 1
    return k_buf, v_buf, perm


def rows_from(perm: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
    rows = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int64)
    off = 0
    for b, s in enumerate(seq_lens):
        rows[b, :s] = perm[off:off + s]
        off += s
    return rows


def bench_pair(fn_native, fn_torch, repeats: int) -> dict[str, float]:
    fn_native(), fn_torch()  # warm-up
    tn, tt = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = fn_native()
        tn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = fn_torch()
        tt.append(time.perf_counter() - t0)
    n, t = median(tn) * 1e3, median(tt) * 1e3
    return {"native_ms": n, "torch_ms": t, "speedup": t / n,
            "native_min_ms": min(tn) * 1e3, "torch_min_ms": min(tt) * 1e3,
            "max_abs_diff": (a - b).abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--save", action="store_true", help="write bench/results/attention_micro.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = native.load_native()
    if ops is None:
        sys.exit(f"native kernels unavailable: {native.native_unavailable_reason()}")
    H, KV, D = args.heads, args.kv_heads, args.head_dim
    scale = 1 / math.sqrt(D)
    gen = torch.Generator().manual_seed(0)
    print(f"threads={torch.get_num_threads()} isa={ops.isa()} H={H} KV={KV} D={D} repeats={args.repeats}")

    rows = []
    decode_cases = [(b, n) for b in (1, 8, 32) for n in (128, 512, 2048)] + [(32, 200)]
    for B, L in decode_cases:
        k_buf, v_buf, perm = make_pool(B * L, KV, D, gen)
        idx = rows_from(perm, [L] * B)
        seq = torch.full((B,), L, dtype=torch.int64)
        q = torch.randn(B, H, D, generator=gen)
        call = (q, k_buf, v_buf, idx, seq, scale)
        rows.append({"case": f"decode B={B} L={L}",
                     **bench_pair(partial(ops.decode, *call),
                                  partial(native.torch_paged_decode_attention, *call), args.repeats)})

    cols = ["case", "native_ms", "torch_ms", "speedup", "native_min_ms", "torch_min_ms", "max_abs_diff"]
    print_table(rows, cols)
    if args.save:
        path = save_results("attention_micro", {"args": vars(args), "isa": ops.isa(), "rows": rows,
                                                "markdown": markdown_table(rows, cols)})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
