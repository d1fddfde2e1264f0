"""Paged decode attention micro-benchmark: native CPU kernel vs the torch fallback (gather + SDPA).

Shapes follow the default model's attention (9 query heads, 3 kv heads, head_dim 64) on one
layer's pool. Slots are a random permutation of the pool (a realistic, non-contiguous layout).

  decode: B in (1, 8, 32) x L in (128, 512, 2048), and B=32 L=200; one query per request

(Extend attention has no native kernel: both backends run it through SDPA.)

Each case is run --repeats times (after a warm-up) for both implementations, interleaved;
the table shows median milliseconds per call, the speedup torch/native (of the medians), and
the fastest single call of each (useful on a machine shared with other jobs).

  python bench/attention_micro.py [--repeats 9] [--heads 9 --kv-heads 3 --head-dim 64] [--save]

--step instead times the native kernel alone over one batch-decode step: --batch requests x
--keys keys on each of --layers layers' own pools (slots a random permutation; all layers
together larger than the L3 cache, as in serving), process CPU time, median of --repeats steps.
--source-dir builds the kernels from another copy of radixrt/csrc (a before/after comparison:
run both, alternating, in separate processes):

  OMP_NUM_THREADS=1 python bench/attention_micro.py --step --threads 1 --repeats 15 [--source-dir DIR]
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


def step_bench(ops, args) -> None:
    H, KV, D = args.heads, args.kv_heads, args.head_dim
    B, L = args.batch, args.keys
    gen = torch.Generator().manual_seed(0)
    slots = B * (L + 32) + 1
    pools = [(torch.randn(slots, KV, D, generator=gen), torch.randn(slots, KV, D, generator=gen))
             for _ in range(args.layers)]
    perm = torch.randperm(slots - 1, generator=gen) + 1
    idx = perm[: B * L].view(B, L).contiguous()
    seq = torch.full((B,), L, dtype=torch.int64)
    qs = [torch.randn(B, H, D, generator=gen) for _ in range(args.layers)]
    scale = 1 / math.sqrt(D)

    def step():
        for (k, v), q in zip(pools, qs):
            ops.decode(q, k, v, idx, seq, scale)

    for _ in range(3):
        step()
    ts = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        step()
        ts.append(time.process_time() - t0)
    print(f"step B={B} L={L} layers={args.layers} threads={torch.get_num_threads()} isa={ops.isa()}: "
          f"median {median(ts) * 1e3:.3f} ms CPU, min {min(ts) * 1e3:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--save", action="store_true", help="write bench/results/attention_micro.json")
    ap.add_argument("--step", action="store_true", help="time one batch-decode step over --layers pools")
    ap.add_argument("--batch", type=int, default=32, help="--step: requests")
    ap.add_argument("--keys", type=int, default=48, help="--step: keys per request")
    ap.add_argument("--layers", type=int, default=30, help="--step: layers (each its own pool)")
    ap.add_argument("--source-dir", type=Path, default=None,
                    help="build the kernels from this copy of radixrt/csrc instead")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.source_dir is not None:
        src = args.source_dir.resolve()
        native._SOURCE = src / "paged_attention.cpp"
        native._FUSED_SOURCE = src / "fused_ops.cpp"
        native._QGEMM_SOURCE = src / "quant_gemm.cpp"
        native._HEADERS = [src / "fast_exp.h", src / "team_size.h"]
    ops = native.load_native()
    if ops is None:
        sys.exit(f"native kernels unavailable: {native.native_unavailable_reason()}")
    if args.step:
        step_bench(ops, args)
        return
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
