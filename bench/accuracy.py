"""Accuracy of each --quantization mode against the fp32 reference on the same weights.

Two measures, each mode in its own Engine:
  perplexity  over a fixed English text: the prose of CPython's own documentation topics
              (``pydoc_data/topics.py``, shipped with every CPython, nothing downloaded): topics
              in sorted order, indented code and grammar blocks and heading rules dropped; the
              first --text-tokens tokens, scored in independent windows of --window tokens
              through the Engine's prompt logprobs (so prefill, chunking and the LM head run
              as in serving). Also: how often the mode's most likely next token equals fp32's.
  greedy      64 varied prompts, 32 new tokens each, greedy, one batch: prompts whose tokens are
              identical to fp32's, and the mean number of tokens before the first difference.

Modes:
  none          fp32, the reference
  int8          --quantization int8: smoothed inputs, 8-bit activations per token (what auto
                picks on a CPU with VNNI)
  int8-7bit     the same with 7-bit activations (what a CPU without VNNI gets;
                RADIXRT_CPU_FEATURES=avx2)
  int8-plain    int8 without smoothing
  int8-alpha=A  int8 with smoothing strength A instead of smoothing.ALPHA (e.g. int8-alpha=0.5)
  int8-weights  weight-only int8, simulated: fp32 matmuls on the dequantized int8 weights
  int8-dynamic  smoothed int8 weights with torch's quantized::linear_dynamic (one activation
                scale for all rows of a batch instead of one per token)
  gguf          --quantization gguf: the GGUF file's own blocks on radixrt's kernel, int8
                activations per 32-block (what auto picks for a model from a .gguf file)
  gguf-avx2     the same on the kernel's AVX2 path (RADIXRT_CPU_FEATURES=avx2)

The bar for ``auto``: perplexity within 2% of fp32.

  python bench/accuracy.py [--modes none,int8,...] [--text-tokens 8192] [--window 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, print_table, save_results  # noqa: E402

MODES = ("none", "gguf", "gguf-avx2", "int8", "int8-7bit", "int8-plain", "int8-weights", "int8-dynamic")
PPL_BAR = 0.02

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "Translate to French: I like apples. ->",
    "import numpy as np\nx = np.",
    "Q: What is 12 * 12?\nA:",
    "The mitochondria is",
    "List of planets: Mercury, Venus,",
    "<|im_start|>user\nWhat is the tallest mountain?<|im_end|>\n<|im_start|>assistant\n",
    "Dear Sir or Madam,",
    "SELECT name FROM users WHERE",
    "Water boils at",
    "The best way to learn programming is",
    "In 1492, Columbus",
    "{\"name\": \"Alice\", \"age\":",
    "The quick brown fox",
    "To make a cup of tea, first",
    "Photosynthesis is the process by which",
    "class Stack:\n    def __init__(self):",
    "The largest ocean on Earth is",
    "Here is a haiku about autumn:\n",
    "The French Revolution began in",
    "My favourite book is",
    "for i in range(10):\n    print(",
    "A healthy breakfast usually includes",
    "The speed of light is approximately",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Step 1: Preheat the oven to",
    "The main difference between a virus and a bacterium is",
    "git commit -m \"",
    "Shakespeare wrote",
    "The Pythagorean theorem states that",
    "In machine learning, overfitting means",
    "#include <stdio.h>\n\nint main() {",
    "The weather today is",
    "Monday, Tuesday, Wednesday,",
    "An apple a day",
    "The human heart has four chambers:",
    "<|im_start|>user\nHow do I sort a list in Python?<|im_end|>\n<|im_start|>assistant\n",
    "The Great Wall of China was built",
    "Roses are red,",
    "HTTP status code 404 means",
    "The chemical symbol for gold is",
    "Climate change is caused by",
    "function add(a, b) {",
    "The first man on the moon was",
    "Ingredients: 2 eggs, 1 cup of flour,",
    "The stock market fell today because",
    "A triangle has three sides and",
    "Bonjour, je m'appelle",
    "The theory of relativity was developed by",
    "In the beginning",
    "The recipe calls for",
    "Dogs are loyal animals that",
    "<|im_start|>user\nExplain gravity to a child.<|im_end|>\n<|im_start|>assistant\n",
    "The year 2000 was",
    "To be or not to be,",
    "The internet was invented",
    "SQL stands for",
    "Mount Everest is located in",
    "A prime number is",
    "The most popular sport in the world is",
]


def english_text() -> str:
    """Prose of CPython's documentation topics (pydoc_data), code and grammar blocks dropped."""
    from pydoc_data.topics import topics

    lines: list[str] = []
    for key in sorted(topics):
        for line in topics[key].splitlines() + [""]:
            stripped = line.strip()
            if not stripped:
                if lines and lines[-1]:
                    lines.append("")  # one blank line between paragraphs
            elif not line.startswith("   ") and not set(stripped) <= set("*=-~^"):
                lines.append(stripped)  # not indented code/grammar, not a heading rule
    return "\n".join(lines)


class DynamicPerTensor:
    """Int8 weights of an Int8Linear through quantized::linear_dynamic (one scale per batch)."""

    def __init__(self, lin):
        self.packed, self.bias = lin.packed, lin.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self.packed)
        return y if self.bias is None else y + self.bias


def dequantized(lin):
    """An fp32 Linear on the int8-rounded weights of an fp32 Linear (weight-only int8)."""
    from radixrt.model.linear import Linear, quantize_weight

    q, scale = quantize_weight(lin.weight_t.t())
    return Linear((q.float() * scale[:, None]).contiguous(), lin.bias)


def swap_linears(model, fn) -> None:
    for layer in model.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(layer, name, fn(getattr(layer, name)))
    model.lm_head = fn(model.lm_head)


def make_engine(mode: str, model_path: str | None):
    from radixrt import Engine
    from radixrt.model.loader import default_cache_dir
    from radixrt.model.quantization import plan_quantization
    from radixrt.model.smoothing import cached_activation_maxima
    from radixrt.tokenizer import load_tokenizer

    quant = "int8" if mode in ("int8", "int8-7bit", "int8-dynamic") else "none"
    if mode.startswith("gguf"):
        quant = "gguf"
    if mode in ("int8-7bit", "gguf-avx2"):
        os.environ["RADIXRT_CPU_FEATURES"] = "avx2"
    try:
        engine = Engine(model_path=model_path, quantization=quant, max_total_tokens=16384,
                        max_running_requests=64)
    finally:
        os.environ.pop("RADIXRT_CPU_FEATURES", None)
    model = engine.runner.model
    if mode == "int8-weights":
        swap_linears(model, dequantized)
    elif mode == "int8-dynamic":
        swap_linears(model, DynamicPerTensor)
    elif mode == "int8-plain":
        model.quantize(plan_quantization("int8"), None)
    elif mode.startswith("int8-alpha="):
        runner = engine.runner
        act_max = cached_activation_maxima(model, runner.model_dir, load_tokenizer(runner.model_dir),
                                           default_cache_dir())
        model.quantize(plan_quantization("int8"), act_max, float(mode.split("=")[1]))
    elif mode not in ("none", "int8", "int8-7bit", "gguf", "gguf-avx2"):
        raise SystemExit(f"unknown mode {mode!r}")
    return engine


def score_text(engine, windows: list[list[int]], desc: str) -> tuple[float, list[int]]:
    """(total negative log-likelihood, argmax token at every scored position)."""
    nll, argmax = 0.0, []
    for ids in tqdm(windows, desc=desc, file=sys.stderr, leave=False):
        engine.flush_cache()
        r = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                            return_logprob=True, logprob_start_len=0, top_logprobs_num=1)
        m = r["meta_info"]
        nll -= sum(lp for lp, _tok, *_ in m["input_token_logprobs"][1:])
        argmax += [top[0][1] for top in m["input_top_logprobs"][1:]]
    return nll, argmax


def greedy(engine) -> list[list[int]]:
    engine.flush_cache()
    params = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}
    return [r["output_ids"] for r in engine.generate(PROMPTS, params)]


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--text-tokens", type=int, default=8192, help="tokens of text scored (>= 4096)")
    ap.add_argument("--window", type=int, default=1024, help="tokens per independently scored window")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if modes[0] != "none":
        modes.insert(0, "none")  # the reference comes first

    from radixrt.tokenizer import load_tokenizer

    text = english_text()
    results, ref = [], None
    for mode in tqdm(modes, desc="modes", file=sys.stderr):
        engine = make_engine(mode, args.model_path)
        try:
            if ref is None:
                tok = load_tokenizer(engine.runner.model_dir)
                ids = tok.encode(text)[: args.text_tokens]
                windows = [ids[i:i + args.window] for i in range(0, len(ids), args.window)]
                scored = sum(len(w) - 1 for w in windows)
            nll, argmax = score_text(engine, windows, mode)
            outs = greedy(engine)
            m = engine.runner.model
            layers = f"{m.num_int8_linears + m.num_gguf_linears}/{len(m.linears())}"
        finally:
            engine.shutdown()
        row = {"mode": mode, "quantized_layers": layers, "ppl": math.exp(nll / scored)}
        if ref is None:
            ref = {"ppl": row["ppl"], "argmax": argmax, "outs": outs}
        row["ppl_vs_fp32"] = f"{100 * (row['ppl'] / ref['ppl'] - 1):+.2f}%"
        row["next_token_agree"] = f"{100 * sum(a == b for a, b in zip(argmax, ref['argmax'])) / len(argmax):.2f}%"
        row["greedy_identical"] = f"{sum(a == b for a, b in zip(outs, ref['outs']))}/{len(PROMPTS)}"
        row["tokens_to_first_diff"] = sum(first_difference(a, b) for a, b in zip(outs, ref["outs"])) / len(PROMPTS)
        row["within_bar"] = abs(row["ppl"] / ref["ppl"] - 1) <= PPL_BAR
        results.append(row)
    cols = ["mode", "quantized_layers", "ppl", "ppl_vs_fp32", "next_token_agree", "greedy_identical",
            "tokens_to_first_diff", "within_bar"]
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    print(f"\ntext: CPython {sys.version.split()[0]} pydoc_data topics prose (sha256 {digest}), "
          f"{scored} scored tokens in windows of {args.window}; greedy: {len(PROMPTS)} prompts x 32 tokens\n")
    print_table(results, cols)
    print()
    print(markdown_table(results, cols))
    path = save_results("accuracy", {"rows": results, "text_sha256": digest, "scored_tokens": scored,
                                     "window": args.window})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
