"""Structured-generation benchmark: grammar compile time and per-step mask cost.

Corpus: every schema of the JSON-Schema-Test-Suite subset in tests/fsm/data (deduplicated; the
ones radixrt rejects are counted, not timed) plus a few realistic API-style schemas. Each compile
uses a fresh GrammarCompiler cache (the process-wide DFA cache of shared subtrees such as "any JSON
value" stays warm, as in a server) and includes the start state's mask.

Mask costs are measured along random token walks (uniform over allowed tokens) through the
realistic schemas with the default model's tokenizer:
- cached: ``GrammarMatcher.fill_bitmask`` for a state whose mask is cached (a lookup + copy);
- first visit: computing a state's mask (trie walk against the DFA);
- apply: ``apply_token_bitmask_`` on [B, 49152] float32 logits (torch, 1 thread).

  python bench/structured/bench_compile.py [--tokenizer /tmp/smol/hf] [--save]
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


def corpus() -> tuple[list[tuple[str, object]], int]:
    from schema_suite import suite_files

    seen: set[str] = set()
    out = []
    for path in suite_files():
        for group in json.loads(path.read_text()):
            key = json.dumps(group["schema"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((f"{path.stem}: {group['description']}", group["schema"]))
    suite_count = len(out)
    out += [(f"realistic: {k}", v) for k, v in REALISTIC.items()]
    return out, suite_count


def bench_compile(tokenizer) -> tuple[dict, list[dict]]:
    from radixrt.fsm import GrammarCompiler, GrammarError

    schemas, _ = corpus()
    times, rejected, slowest = [], 0, []
    # Warm the process-wide caches the way a server's first requests would.
    warm = GrammarCompiler(tokenizer)
    warm.compile("json_schema", {})
    warm.close()
    for name, schema in schemas:
        gc = GrammarCompiler(tokenizer)  # empty grammar cache
        t0 = time.perf_counter()
        try:
            g = gc.compile("json_schema", schema)
            dt = time.perf_counter() - t0
            times.append(dt)
            slowest.append((dt, name, g.dfa.num_states))
        except GrammarError:
            rejected += 1
        finally:
            gc.close()
    slowest.sort(reverse=True)
    summary = {"schemas": len(schemas), "compiled": len(times), "rejected": rejected,
               "p50_ms": 1e3 * percentile(times, 0.5), "p90_ms": 1e3 * percentile(times, 0.9),
               "p99_ms": 1e3 * percentile(times, 0.99), "max_ms": 1e3 * max(times)}
    return summary, [{"schema": n, "ms": 1e3 * t, "dfa_states": s} for t, n, s in slowest[:5]]


def bench_masks(tokenizer, walks: int = 6) -> dict:
    import torch

    from radixrt.fsm import (
        GrammarCompiler,
        GrammarMatcher,
        allocate_token_bitmask,
        apply_token_bitmask_,
    )

    gc = GrammarCompiler(tokenizer)
    cached, first = [], []
    for _name, schema in REALISTIC.items():
        g = gc.compile("json_schema", schema)
        bitmask = allocate_token_bitmask(1, g.vocab_size)
        for seed in range(walks):
            rng = random.Random(seed)
            m = GrammarMatcher(g)
            for _ in range(60):
                if m.is_terminated():
                    break
                if not g.has_mask(m.state):
                    t0 = time.perf_counter()
                    g.mask(m.state)
                    first.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m.fill_bitmask(bitmask, 0)
                cached.append(time.perf_counter() - t0)
                ids = m.allowed_token_ids()
                m.accept_token(rng.choice(ids))
    gc.close()
    apply = {}
    for batch in (1, 8, 32):
        logits = torch.randn(batch, 49152)
        bm = allocate_token_bitmask(batch, 49152)
        ts = []
        for _ in range(50):
            t0 = time.perf_counter()
            apply_token_bitmask_(logits, bm)
            ts.append(time.perf_counter() - t0)
        apply[batch] = statistics.median(ts)
    return {"steps": len(cached), "states_first_visited": len(first),
            "fill_cached_p50_us": 1e6 * percentile(cached, 0.5),
            "fill_cached_p99_us": 1e6 * percentile(cached, 0.99),
            "first_visit_p50_ms": 1e3 * percentile(first, 0.5),
            "first_visit_p99_ms": 1e3 * percentile(first, 0.99),
            "first_visit_max_ms": 1e3 * max(first),
            **{f"apply_B{b}_us": 1e6 * t for b, t in apply.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="/tmp/smol/hf")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning distorts small ops

    tok_dir = args.tokenizer
    if not Path(tok_dir, "tokenizer.json").exists():
        from radixrt.model.loader import prepare_model_dir

        tok_dir = str(prepare_model_dir(None))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    summary, slowest = bench_compile(tokenizer)
    print("\n## compile (json_schema, including the first mask)\n")
    print_table([summary], list(summary))
    print("\nslowest:")
    print_table(slowest, ["schema", "ms", "dfa_states"])
    masks = bench_masks(tokenizer)
    print("\n## masks\n")
    rows = [{"metric": k, "value": v} for k, v in masks.items()]
    print_table(rows, ["metric", "value"])
    print("\nmarkdown:\n")
    print(markdown_table([summary], list(summary)))
    print()
    print(markdown_table(rows, ["metric", "value"]))
    if args.save:
        print(save_results("structured_compile", {"compile": summary, "slowest": slowest,
                                                  "masks": masks}))


if __name__ == "__main__":
    main()
