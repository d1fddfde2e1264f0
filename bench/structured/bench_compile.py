"""Structured-generation benchmark: grammar compile time and per-step mask cost.

Corpora, reported separately: "real" — the real-world schemas in tests/fsm/data/real_schemas
(MCP tools, function calling, OpenAPI fragments, Kubernetes objects, package.json, tsconfig, a
GitHub workflow) plus a few realistic API-style schemas; "suite" — every schema of the
JSON-Schema-Test-Suite subset in tests/fsm/data (deduplicated). Rejected schemas are counted, not
timed. Each compile uses a fresh GrammarCompiler cache (the process-wide DFA cache of shared
subtrees such as "any JSON value" stays warm, as in a server) and includes the start state's
mask. Per schema the median of ``--repeat`` compiles is taken, as wall time and as this
process's CPU time (``cpu_*``: what the compile costs when other processes share the CPU).

Mask costs are measured along random token walks (uniform over allowed tokens) through the
real schemas with the default model's tokenizer:
- cached: ``GrammarMatcher.fill_bitmask`` for a state whose mask is cached (a lookup + copy);
- first visit: computing a state's mask (trie walk against the DFA, canonical-token check);
- per step: what a decode step pays for its mask (first visit + fill, or the cached fill),
  as wall time and as this process's CPU time (``per_step_cpu_*``), after the vocabulary-level
  warm-up a server does at start (``GrammarCompiler.warm_caches``);
- apply: ``apply_token_bitmask_`` on [B, 49152] float32 logits with masks of visited states,
  every row by index as the scheduler calls it (``apply_B*``: radixrt's path, the C loop on
  CPU; ``apply_B*_torch``: the torch reference; torch 1 thread).

  python bench/structured/bench_compile.py [--tokenizer /tmp/smol/hf] [--repeat 3] [--no-masks]
      [--no-compile] [--save]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "fsm"))

from common import markdown_table, print_table, save_results  # noqa: E402

REALISTIC = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 64}, "age": {"type": "integer", "minimum": 0,
                                                              "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8}},
        "required": ["name", "age"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "created": {"type": "string", "format": "date-time"},
        "status": {"enum": ["pending", "paid", "shipped", "cancelled"]},
        "items": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 999},
            "price": {"type": "number", "minimum": 0}},
            "required": ["sku", "quantity", "price"], "additionalProperties": False}},
        "note": {"type": ["string", "null"]}},
        "required": ["id", "status", "items"], "additionalProperties": False},
    "tool_call": {"type": "object", "properties": {
        "name": {"enum": ["search", "calculator", "weather"]},
        "arguments": {"type": "object"}}, "required": ["name", "arguments"],
        "additionalProperties": False},
    "tree": {"$defs": {"node": {"type": "object", "properties": {
        "label": {"type": "string"}, "children": {"type": "array",
                                                  "items": {"$ref": "#/$defs/node"}}},
        "required": ["label"], "additionalProperties": False}}, "$ref": "#/$defs/node"},
    "event": {"type": "object", "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 100},
        "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time"},
        "location": {"anyOf": [{"type": "string"}, {"type": "object", "properties": {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180}},
            "required": ["lat", "lon"], "additionalProperties": False}]},
        "attendees": {"type": "array", "items": {"type": "string", "format": "email"}}},
        "required": ["title", "start"], "additionalProperties": False},
    "open_config": {"type": "object", "properties": {
        "version": {"const": 2}, "debug": {"type": "boolean"},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10}}, "required": ["version"]},
}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


REAL_DIR = ROOT / "tests" / "fsm" / "data" / "real_schemas"


def real_corpus() -> list[tuple[str, object]]:
    out = [(f"realistic: {k}", v) for k, v in REALISTIC.items()]
    for path in sorted(REAL_DIR.glob("*.json")):
        out += [(f"{path.stem}/{k}", v) for k, v in json.loads(path.read_text()).items()]
    return out


def suite_corpus() -> list[tuple[str, object]]:
    from schema_suite import suite_files

    seen: set[str] = set()
    out = []
    for path in suite_files():
        for group in json.loads(path.read_text()):
            key = json.dumps(group["schema"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((f"{path.stem}: {group['description']}", group["schema"]))
    return out


def bench_compile(tokenizer, schemas: list[tuple[str, object]], corpus: str, repeat: int = 3
                  ) -> tuple[dict, list[dict], list[str]]:
    """Per schema: the median of ``repeat`` compiles, each with an empty grammar cache."""
    from radixrt.fsm import GrammarCompiler, GrammarError

    times, rejected, slowest, reasons = [], 0, [], []
    # Warm the process-wide caches the way a server's first requests would.
    warm = GrammarCompiler(tokenizer)
    warm.compile("json_schema", {})
    warm.compile("json_schema", {"type": "integer", "enum": [1]})  # imports the validator
    warm.close()
    try:
        from radixrt.fsm.json_schema import warm_caches
    except ImportError:  # an older radixrt, measured for comparison
        warm_caches = None
    if warm_caches is not None:
        warm_caches()
    cpu_times = []
    for name, schema in schemas:
        runs, cpu_runs = [], []
        try:
            for _ in range(repeat):
                gc = GrammarCompiler(tokenizer, max_workers=1)  # empty grammar cache
                try:
                    c0, t0 = time.process_time(), time.perf_counter()
                    g = gc.compile("json_schema", schema)
                    runs.append(time.perf_counter() - t0)
                    cpu_runs.append(time.process_time() - c0)
                finally:
                    gc.close()
        except GrammarError as e:
            rejected += 1
            reasons.append(f"{name}: {e}")
            continue
        dt = statistics.median(runs)
        times.append(dt)
        cpu_times.append(statistics.median(cpu_runs))
        slowest.append((dt, name, g.dfa.num_states))
    slowest.sort(reverse=True)
    summary = {"corpus": corpus, "schemas": len(schemas), "compiled": len(times),
               "rejected": rejected, "p50_ms": 1e3 * percentile(times, 0.5),
               "p90_ms": 1e3 * percentile(times, 0.9), "p99_ms": 1e3 * percentile(times, 0.99),
               "max_ms": 1e3 * max(times), "cpu_p50_ms": 1e3 * percentile(cpu_times, 0.5),
               "cpu_p99_ms": 1e3 * percentile(cpu_times, 0.99)}
    return (summary, [{"schema": n, "ms": 1e3 * t, "dfa_states": s} for t, n, s in slowest[:5]],
            reasons)


def bench_masks(tokenizer, schemas: list[tuple[str, object]], walks: int = 3) -> dict:
    import numpy as np
    import torch

    from radixrt.fsm import (
        GrammarCompiler,
        GrammarMatcher,
        allocate_token_bitmask,
        apply_token_bitmask_,
    )

    gc = GrammarCompiler(tokenizer)
    if hasattr(gc, "warm_caches"):  # what a server does at start (an older radixrt had none)
        gc.warm_caches()
    cached, first, step, step_cpu = [], [], [], []
    state_masks: list[np.ndarray] = []  # masks of visited states, for the apply timings
    for _name, schema in schemas:
        g = gc.compile("json_schema", schema)
        bitmask = allocate_token_bitmask(1, g.vocab_size)
        for seed in range(walks):
            rng = random.Random(seed)
            m = GrammarMatcher(g)
            for _ in range(60):
                if m.is_terminated():
                    break
                t_first = c_first = 0.0
                if not g.has_mask(m.state):
                    c0, t0 = time.process_time(), time.perf_counter()
                    g.mask(m.state)
                    t_first = time.perf_counter() - t0
                    c_first = time.process_time() - c0
                    first.append(t_first)
                c0, t0 = time.process_time(), time.perf_counter()
                m.fill_bitmask(bitmask, 0)
                cached.append(time.perf_counter() - t0)
                step.append(t_first + cached[-1])
                step_cpu.append(c_first + time.process_time() - c0)
                if len(state_masks) < 64:
                    state_masks.append(bitmask[0].numpy().copy())
                ids = m.allowed_token_ids()
                m.accept_token(rng.choice(ids))
    gc.close()
    # Applying masks as the scheduler does (its constrained rows by index), with the masks of
    # states the walks visited, radixrt's path (the C loop for float32 CPU logits) and the
    # torch reference.
    from radixrt.fsm.bitmask import apply_token_bitmask_torch

    visited = state_masks
    apply = {}
    for batch in (1, 8, 32):
        bm = torch.from_numpy(np.stack([visited[i % len(visited)] for i in range(batch)]))
        rows = list(range(batch))
        for name, fn in (("", apply_token_bitmask_), ("_torch", apply_token_bitmask_torch)):
            ts = []
            for _ in range(20):
                logits = torch.randn(batch, 49152)
                t0 = time.perf_counter()
                fn(logits, bm, rows)
                ts.append(time.perf_counter() - t0)
            apply[f"{batch}{name}"] = statistics.median(ts)
    return {"steps": len(cached), "states_first_visited": len(first),
            "fill_cached_p50_us": 1e6 * percentile(cached, 0.5),
            "fill_cached_p99_us": 1e6 * percentile(cached, 0.99),
            "per_step_p50_us": 1e6 * percentile(step, 0.5),
            "per_step_p90_us": 1e6 * percentile(step, 0.9),
            "per_step_p99_us": 1e6 * percentile(step, 0.99),
            "per_step_cpu_p99_us": 1e6 * percentile(step_cpu, 0.99),
            "per_step_over_1ms": sum(t > 1e-3 for t in step),
            "first_visit_p50_ms": 1e3 * percentile(first, 0.5),
            "first_visit_p99_ms": 1e3 * percentile(first, 0.99),
            "first_visit_max_ms": 1e3 * max(first),
            **{f"apply_B{b}_us": 1e6 * t for b, t in apply.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="/tmp/smol/hf")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="compiles per schema (median)")
    ap.add_argument("--no-masks", action="store_true", help="compile times only")
    ap.add_argument("--no-compile", action="store_true", help="mask times only")
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning distorts small ops

    tok_dir = args.tokenizer
    if not Path(tok_dir, "tokenizer.json").exists():
        from radixrt.model.loader import prepare_model_dir

        tok_dir = str(prepare_model_dir(None))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    real = real_corpus()
    summaries, slowest_all = [], {}
    corpora = [] if args.no_compile else [("real", real), ("suite", suite_corpus())]
    for corpus_name, schemas in corpora:
        summary, slowest, reasons = bench_compile(tokenizer, schemas, corpus_name, args.repeat)
        summaries.append(summary)
        slowest_all[corpus_name] = slowest
        print(f"\n## compile, {corpus_name} (json_schema, including the first mask)\n")
        print_table([summary], list(summary))
        print("\nslowest:")
        print_table(slowest, ["schema", "ms", "dfa_states"])
        if corpus_name == "real" and reasons:
            print("\nrejected:\n" + "\n".join(reasons))
    masks = {} if args.no_masks else bench_masks(tokenizer, real)
    rows = [{"metric": k, "value": v} for k, v in masks.items()]
    if rows:
        print("\n## masks (token walks through the real schemas)\n")
        print_table(rows, ["metric", "value"])
    print("\nmarkdown:\n")
    if summaries:
        print(markdown_table(summaries, list(summaries[0])))
    if rows:
        print()
        print(markdown_table(rows, ["metric", "value"]))
    if args.save:
        print(save_results("structured_compile", {"compile": summaries,
                                                  "slowest": slowest_all, "masks": masks}))


if __name__ == "__main__":
    main()
