"""Throughput: radixrt's Engine vs Hugging Face transformers' `generate`, same model, same
machine, same prompts, in one run.

Workloads (greedy, ignore_eos so both produce exactly the same number of tokens):
  prefill   -- N prompts of 512 tokens, 1 output token each (prompt tokens/s)
  decode-b1 -- 1 prompt of 16 tokens, 128 output tokens (output tokens/s)
  decode-b32 -- 32 prompts of 16 tokens, 64 output tokens each, batched (output tokens/s)

Each workload runs --repeats times alternating radixrt and HF; the table shows medians and
the ratio. Prompts are random token ids, so the radix cache has nothing to share (it is
flushed between repeats anyway).

  python bench/throughput.py [--model-path PATH] [--repeats 3] [--workloads prefill,decode-b1,decode-b32]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bar_plot, markdown_table, median, print_table, save_results, timed  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per workload and system (median reported)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--out", default="docs/img/throughput.png", help="plot file")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from radixrt import Engine

    engine = Engine(model_path=args.model_path, max_running_requests=64)
    vocab = engine.runner.config.vocab_size
    hf = AutoModelForCausalLM.from_pretrained(str(engine.runner.model_dir), dtype=torch.float32)
    hf.eval()

    rows = []
    names = [w for w in args.workloads.split(",") if w]
    for name in names:
        n, plen, olen, metric = WORKLOADS[name]
        prompts = make_prompts(n, plen, vocab, seed=hash(name) % 1000)
        tokens = n * (plen if metric == "prompt" else olen)
        # Warm-up both (first calls allocate and initialise kernels).
        run_radixrt(engine, prompts[:1], 2)
        run_hf(hf, prompts[:1], 2)
        times = {"radixrt": [], "hf": []}
        same = True
        for _ in tqdm(range(args.repeats), desc=name, file=sys.stderr):
            engine.flush_cache()
            dt, ours = timed(lambda p=prompts, o=olen: run_radixrt(engine, p, o))
            times["radixrt"].append(dt)
            dt, theirs = timed(lambda p=prompts, o=olen: run_hf(hf, p, o))
            times["hf"].append(dt)
            same &= sum(a == b for a, b in zip(ours, theirs)) >= 0.9 * len(ours)
        r_tps = tokens / median(times["radixrt"])
        h_tps = tokens / median(times["hf"])
        rows.append({"workload": name, "requests": n, "prompt_len": plen, "output_len": olen,
                     "metric": f"{metric} tok/s", "radixrt": r_tps, "hf": h_tps,
                     "ratio": r_tps / h_tps, "same_tokens": same})
    engine.shutdown()
    cols = ["workload", "requests", "prompt_len", "output_len", "metric", "radixrt", "hf", "ratio", "same_tokens"]
    print()
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    path = save_results("throughput", {"rows": rows, "repeats": args.repeats})
    plot = bar_plot(Path(args.out), "radixrt vs HF transformers (tokens/s, median)",
                    [r["workload"] for r in rows],
                    {"radixrt": [r["radixrt"] for r in rows], "HF generate": [r["hf"] for r in rows]},
                    "tokens/s")
    print(f"\nresults: {path}" + (f", plot: {plot}" if plot else ""))


if __name__ == "__main__":
    main()
