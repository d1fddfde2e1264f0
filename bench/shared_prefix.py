"""Prefix sharing: radixrt vs radixrt --disable-radix-cache vs HF transformers `generate`,
same model and prompts, in one process, one run.

Workloads (random token ids so every system sees identical, equal-length inputs):
  shared-prefix -- G groups x P prompts; each group shares a long system prompt, each prompt
                   adds a short unique question; short outputs (SGLang's
                   generated-shared-prefix shape).
  multi-turn    -- C conversations x T turns; each turn sends the whole history (previous
                   turns, their answers, a new user message).
  no-sharing    -- unrelated prompts of the same total size (bookkeeping overhead check).

radixrt gets each wave of requests at once (continuous batching decides); HF gets the same
wave as one padded-free batch per group/turn. Reported: requests/s (median of --repeats
runs), ratios, mean time-to-first-token, cache hit rate.

  python bench/shared_prefix.py [--repeats 3] [--workloads shared-prefix,multi-turn,no-sharing]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bar_plot, markdown_table, median, print_table, save_results  # noqa: E402


def shared_prefix_waves(rng, vocab, groups=4, per_group=8, system_len=512, question_len=16):
    waves = []
    for _ in range(groups):
        system = [rng.randrange(100, vocab - 100) for _ in range(system_len)]
        waves.append([system + [rng.randrange(100, vocab - 100) for _ in range(question_len)]
                      for _ in range(per_group)])
    return [sum(waves, [])], waves  # radixrt: one wave; HF: one batch per group


def no_sharing_waves(rng, vocab, n=32, length=528):
    prompts = [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]
    return [prompts], [prompts[i:i + 8] for i in range(0, n, 8)]


WORKLOADS = {"shared-prefix": shared_prefix_waves, "no-sharing": no_sharing_waves, "multi-turn": None}
OUT_LEN = 8


class FirstTokenTimer:
    """A logits processor that records when HF produces its first token."""

    def __init__(self):
        self.first = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = time.perf_counter()
        return scores


@torch.inference_mode()
def hf_batch(model, prompts, out_len):
    from transformers import LogitsProcessorList

    ids = torch.tensor(prompts)
    timer = FirstTokenTimer()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                         min_new_tokens=out_len, do_sample=False, pad_token_id=0,
                         logits_processor=LogitsProcessorList([timer]))
    return out[:, ids.shape[1]:].tolist(), (timer.first or time.perf_counter()) - t0


def radixrt_wave(engine, prompts, out_len):
    res = engine.generate(input_ids=prompts, sampling_params={
        "max_new_tokens": out_len, "temperature": 0, "ignore_eos": True})
    return [r["output_ids"] for r in res], [r["meta_info"].get("ttft", 0.0) for r in res]


def run_multi_turn(system, engine=None, hf=None, vocab=49152, convs=8, turns=4,
                   first_len=128, user_len=32, out_len=OUT_LEN):
    """Returns (elapsed, requests, ttfts)."""
    rng = random.Random(1234)
    hist = [[rng.randrange(100, vocab - 100) for _ in range(first_len)] for _ in range(convs)]
    users = [[[rng.randrange(100, vocab - 100) for _ in range(user_len)] for _ in range(convs)]
             for _ in range(turns)]
    ttfts = []
    t0 = time.perf_counter()
    for t in range(turns):
        prompts = [h + u for h, u in zip(hist, users[t])]
        if system == "hf":
            outs, ttft = hf_batch(hf, prompts, out_len)
            ttfts += [ttft] * len(prompts)
        else:
            outs, tt = radixrt_wave(engine, prompts, out_len)
            ttfts += tt
        hist = [p + o for p, o in zip(prompts, outs)]
    return time.perf_counter() - t0, convs * turns, ttfts


def run_waves(system, waves_ours, waves_hf, engine=None, hf=None):
    ttfts = []
    n = 0
    t0 = time.perf_counter()
    if system == "hf":
        for w in waves_hf:
            _, ttft = hf_batch(hf, w, OUT_LEN)
            ttfts += [ttft] * len(w)
            n += len(w)
    else:
        for w in waves_ours:
            _, tt = radixrt_wave(engine, w, OUT_LEN)
            ttfts += tt
            n += len(w)
    return time.perf_counter() - t0, n, ttfts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per workload and system (median reported)")
    ap.add_argument("--workloads", default="shared-prefix,multi-turn,no-sharing")
    ap.add_argument("--out", default="docs/img/shared_prefix.png", help="plot file")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from radixrt import Engine

    common = dict(model_path=args.model_path, max_running_requests=64, max_total_tokens=65536)
    cached = Engine(**common)
    uncached = Engine(**common, disable_radix_cache=True)
    vocab = cached.runner.config.vocab_size
    hf = AutoModelForCausalLM.from_pretrained(str(cached.runner.model_dir), dtype=torch.float32).eval()
    systems = {"radixrt": cached, "radixrt-nocache": uncached, "hf": None}

    rows = []
    for name in [w for w in args.workloads.split(",") if w]:
        results = {s: {"t": [], "ttft": [], "n": 0, "hit": []} for s in systems}
        for rep in tqdm(range(args.repeats), desc=name, file=sys.stderr):
            rng = random.Random(100 + rep)
            if name != "multi-turn":
                waves_ours, waves_hf = WORKLOADS[name](rng, vocab)
            for sys_name, eng in systems.items():
                if eng is not None:
                    eng.flush_cache()
                    before = eng.get_stats()
                if name == "multi-turn":
                    dt, n, tt = run_multi_turn(sys_name, engine=eng, hf=hf, vocab=vocab)
                else:
                    dt, n, tt = run_waves(sys_name, waves_ours, waves_hf, engine=eng, hf=hf)
                r = results[sys_name]
                r["t"].append(dt)
                r["n"] = n
                r["ttft"] += tt
                if eng is not None:
                    after = eng.get_stats()
                    prompt = after["num_prompt_tokens"] - before["num_prompt_tokens"]
                    hit = after["num_cached_tokens"] - before["num_cached_tokens"]
                    r["hit"].append(hit / prompt if prompt else 0.0)
        rps = {s: results[s]["n"] / median(results[s]["t"]) for s in systems}
        row = {"workload": name, "requests": results["hf"]["n"]}
        for s in systems:
            row[f"{s} req/s"] = rps[s]
            row[f"{s} TTFT s"] = sum(results[s]["ttft"]) / max(1, len(results[s]["ttft"]))
        row["vs HF"] = rps["radixrt"] / rps["hf"]
        row["vs nocache"] = rps["radixrt"] / rps["radixrt-nocache"]
        row["hit rate"] = median(results["radixrt"]["hit"])
        rows.append(row)
    cached.shutdown()
    uncached.shutdown()
    cols = list(rows[0].keys())
    print()
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    path = save_results("shared_prefix", {"rows": rows, "repeats": args.repeats})
    plot = bar_plot(Path(args.out), "Prefix sharing: requests/s (median)", [r["workload"] for r in rows],
                    {s: [r[f"{s} req/s"] for r in rows] for s in systems}, "requests/s")
    print(f"\nresults: {path}" + (f", plot: {plot}" if plot else ""))


if __name__ == "__main__":
    main()
