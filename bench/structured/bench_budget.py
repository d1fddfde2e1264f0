"""Budget closing end to end: how many JSON documents come back valid when max_new_tokens binds.

radixrt's Engine (default model) answers chat prompts asking for a document of each schema
(realistic API-style schemas with unbounded strings, numbers, arrays and open objects; with
``--corpus real``, the 36 real-world schemas of tests/fsm/data/real_schemas), at
temperature 0.3 with a per-request seed, once with budget closing and once with every request's
``no_budget_closing`` set. Reported per ``max_new_tokens``:

- accepted: requests whose schema compiled (the others are rejected before generation);
- valid: outputs that parse and validate against their schema (``jsonschema``, formats
  checked); the ratio valid / accepted;
- cut off: outputs that ended at the token budget without a complete document;
- finished invalid: outputs that ended by the grammar's own stop and still do not validate
  (the grammar's soundness; expected 0);
- closed: outputs whose ``finish_reason`` carries ``budget_closed``.

Grammar rows (``ebnf``, unless ``--no-grammars``): the same on GBNF grammars with unbounded
recursion (arithmetic, llama.cpp's json.gbnf, a SQL SELECT subset, nested parentheses; the
grammars of tests/fsm/test_gbnf_reference.py), prompts asking for one such text, at the small
budgets ``--grammar-max-new-tokens``; valid means the reference recognizer accepts the output.
Then the per-token cost of grammar budget closing: every mask of token walks over documents of
each grammar (``CfgMatcher.fill_bitmask``), plain, with a budget that never binds, and inside
the closing window (medians of ``--repeat`` runs, side by side).

  python bench/structured/bench_budget.py [--docs-per-schema 3] [--max-new-tokens 128 512]
      [--grammar-max-new-tokens 16 32 64] [--prompts-per-grammar 4] [--no-grammars] [--no-schemas]
      [--corpus realistic|real]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "structured"))

from bench_compile import REALISTIC  # noqa: E402
from common import cpu_name, machine_info, markdown_table, print_table, save_results  # noqa: E402

# Schemas as APIs write them: few bounds, so a small model can ramble in any field.
OPEN_SCHEMAS = {
    "recipe": {"type": "object", "properties": {
        "name": {"type": "string"}, "servings": {"type": "integer"},
        "ingredients": {"type": "array", "items": {"type": "object", "properties": {
            "item": {"type": "string"}, "amount": {"type": "string"}},
            "required": ["item", "amount"]}},
        "steps": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "servings", "ingredients", "steps"]},
    "article": {"type": "object", "properties": {
        "headline": {"type": "string"}, "author": {"type": "string"},
        "summary": {"type": "string"}, "keywords": {"type": "array", "items": {"type": "string"}},
        "word_count": {"type": "integer", "minimum": 0}},
        "required": ["headline", "author", "summary", "keywords"]},
    "weather": {"type": "object", "properties": {
        "city": {"type": "string"}, "temperature_c": {"type": "number"},
        "humidity": {"type": "number", "minimum": 0, "maximum": 100},
        "forecast": {"type": "array", "items": {"type": "object", "properties": {
            "day": {"type": "string"}, "high": {"type": "number"}, "low": {"type": "number"}},
            "required": ["day", "high", "low"]}}},
        "required": ["city", "temperature_c", "forecast"]},
    "issue": {"type": "object", "properties": {
        "title": {"type": "string"}, "body": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "assignees": {"type": "array", "items": {"type": "string"}},
        "priority": {"enum": ["low", "medium", "high"]}},
        "required": ["title", "body", "labels", "priority"]},
    "invoice": {"type": "object", "properties": {
        "number": {"type": "string"}, "customer": {"type": "object", "properties": {
            "name": {"type": "string"}, "address": {"type": "string"}},
            "required": ["name", "address"]},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "description": {"type": "string"}, "quantity": {"type": "integer"},
            "unit_price": {"type": "number"}}, "required": ["description", "quantity", "unit_price"]}},
        "total": {"type": "number"}},
        "required": ["number", "customer", "lines", "total"]},
    "profile": {"type": "object", "properties": {
        "username": {"type": "string"}, "bio": {"type": "string"},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
        "followers": {"type": "integer"}},
        "required": ["username", "bio", "links"]},
}
SCHEMAS = {**REALISTIC, **OPEN_SCHEMAS}
STYLES = ["", " Be detailed.", " Use realistic values.", " Make it long."]
GRAMMAR_TASKS = {
    "arith": "Write an arithmetic expression with nested parentheses that computes a large number.",
    "json": "Write a JSON object describing a city: name, population, districts and landmarks.",
    "sql": "Write a SQL query that lists the names and ages of users older than 30, ordered by age.",
    "parens": "Write a string of deeply nested balanced parentheses.",
}


def real_schemas() -> dict[str, dict]:
    """The real-world corpus of ``tests/fsm/data/real_schemas`` (MCP tools, function calling,
    OpenAPI fragments, Kubernetes objects, package.json, tsconfig, a GitHub workflow)."""
    from bench_compile import real_corpus

    return {name: schema for name, schema in real_corpus() if not name.startswith("realistic:")}


def make_requests(tokenizer, docs_per_schema: int, schemas: dict) -> list[tuple[str, str]]:
    out = []
    for k in range(docs_per_schema):
        for name, schema in schemas.items():
            what = name.rsplit("/", 1)[-1].replace("_", " ")
            msg = (f"Write a JSON document describing a {what}, following this "
                   f"JSON schema:\n{json.dumps(schema)}{STYLES[k % len(STYLES)]}")
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": msg}],
                                                   add_generation_prompt=True, tokenize=False)
            out.append((name, prompt))
    return out


def score(docs, results, schemas: dict) -> dict:
    import jsonschema

    valid = cut = finished_invalid = closed = 0
    for (name, _), r in zip(docs, results):
        reason = r["meta_info"]["finish_reason"]
        closed += bool(reason.get("budget_closed"))
        try:
            jsonschema.validate(json.loads(r["text"]), schemas[name],
                                format_checker=jsonschema.FormatChecker())
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            if reason["type"] == "length":
                cut += 1
            else:
                finished_invalid += 1
    return {"valid": valid, "cut off": cut, "finished invalid": finished_invalid, "closed": closed}


def grammar_rows(eng, args) -> list[dict]:
    """valid / accepted on GBNF grammars at small budgets, closing on and off."""
    from tests.fsm.test_gbnf_reference import GRAMMARS, Earley

    tokenizer = eng.tokenizer
    refs = {name: Earley(GRAMMARS[name]) for name in GRAMMAR_TASKS}
    docs = []
    for k in range(args.prompts_per_grammar):
        for name, task in GRAMMAR_TASKS.items():
            msg = f"{task}{STYLES[k % len(STYLES)]} Answer with the text only."
            docs.append((name, tokenizer.apply_chat_template(
                [{"role": "user", "content": msg}], add_generation_prompt=True, tokenize=False)))
    rows = []
    for max_new in args.grammar_max_new_tokens:
        for closing in (True, False):
            params = [{"max_new_tokens": max_new, "ebnf": GRAMMARS[name],
                       "temperature": args.temperature, "seed": 2000 + i,
                       "no_budget_closing": not closing} for i, (name, _) in enumerate(docs)]
            eng.flush_cache()
            t0 = time.perf_counter()
            results = eng.generate([prompt for _, prompt in docs], params)
            wall = time.perf_counter() - t0
            valid = cut = finished_invalid = closed = 0
            for (name, _), r in zip(docs, results):
                reason = r["meta_info"]["finish_reason"]
                closed += bool(reason.get("budget_closed"))
                if refs[name].accepts(r["text"]):
                    valid += 1
                elif reason["type"] == "length":
                    cut += 1
                else:
                    finished_invalid += 1
            rows.append({"max_new_tokens": max_new, "budget closing": "on" if closing else "off",
                         "accepted": len(docs),
                         "valid / accepted": f"{valid}/{len(docs)} ({100 * valid / len(docs):.0f}%)",
                         "cut off": cut, "finished invalid": finished_invalid, "closed": closed,
                         "tokens": sum(len(r["output_ids"]) for r in results),
                         "wall s": round(wall, 1)})
            print(rows[-1], flush=True)
    return rows


def grammar_mask_cost(tokenizer, repeat: int) -> list[dict]:
    """Per-token mask time of ``CfgMatcher.fill_bitmask`` along documents of each grammar:
    plain, with a budget that never binds (the Earley chart is fed), and in the closing window
    (tokens left = what closing needs + 2)."""
    import statistics

    import torch

    from radixrt.fsm import GrammarCompiler, new_matcher
    from tests.fsm.test_gbnf_reference import GRAMMARS, Generator

    gc = GrammarCompiler(tokenizer)
    rows = []
    for name in GRAMMAR_TASKS:
        g = gc.compile("ebnf", GRAMMARS[name])
        gen = Generator(GRAMMARS[name], seed=5)
        walks = [tokenizer.encode(gen.gen(budget=8), add_special_tokens=False) for _ in range(6)]
        new_matcher(g).closer()  # the grammar's tables, built once (not per token)
        modes = {"plain": None, "far budget": 1 << 20, "closing window": -1}
        per_mode: dict[str, list[float]] = {}
        for _ in range(repeat):
            for mode, left in modes.items():
                times = []
                for ids in walks:
                    m = new_matcher(g)
                    bm = torch.zeros((1, g.num_words), dtype=torch.int32)
                    for t in ids:
                        tl = left
                        if left == -1:
                            tl = m.closer().close_tokens()[0] + 2
                        t0 = time.perf_counter()
                        m.fill_bitmask(bm, 0, tl)
                        times.append(time.perf_counter() - t0)
                        m.accept_token(t)
                times.sort()
                per_mode.setdefault(mode + " p50", []).append(times[len(times) // 2])
                per_mode.setdefault(mode + " p99", []).append(times[int(0.99 * len(times))])
        row = {"grammar": name, "tokens": sum(map(len, walks))}
        row.update({k: f"{statistics.median(v) * 1e6:.0f} us" for k, v in per_mode.items()})
        rows.append(row)
        print(row, flush=True)
    gc.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--docs-per-schema", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--grammar-max-new-tokens", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--prompts-per-grammar", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the mask-cost walks")
    ap.add_argument("--no-grammars", action="store_true", help="skip the ebnf rows")
    ap.add_argument("--no-schemas", action="store_true", help="skip the JSON-schema rows")
    ap.add_argument("--corpus", choices=("realistic", "real"), default="realistic",
                    help="JSON schemas: 'realistic' (12 API-style schemas written for this "
                         "benchmark) or 'real' (the 36 real-world schemas of "
                         "tests/fsm/data/real_schemas)")
    args = ap.parse_args()

    from radixrt import Engine
    from radixrt.fsm import GrammarCompiler, GrammarError

    eng = Engine(model_path=args.model_path, max_total_tokens=65536)
    tokenizer = eng.tokenizer
    g_rows = [] if args.no_grammars else grammar_rows(eng, args)
    if args.no_schemas:
        eng.shutdown()
        _report_grammars(g_rows, [] if args.no_grammars else grammar_mask_cost(tokenizer, args.repeat),
                         args)
        return
    schemas = SCHEMAS if args.corpus == "realistic" else real_schemas()
    gc = GrammarCompiler(tokenizer)
    accepted = {}
    for name, schema in schemas.items():
        try:
            gc.compile("json_schema", json.dumps(schema))
            accepted[name] = True
        except GrammarError:
            accepted[name] = False
    gc.close()
    docs = [d for d in make_requests(tokenizer, args.docs_per_schema, schemas) if accepted[d[0]]]
    rows = []
    for max_new in args.max_new_tokens:
        for closing in (True, False):
            params = [{"max_new_tokens": max_new, "json_schema": json.dumps(schemas[name]),
                       "temperature": args.temperature, "seed": 1000 + i,
                       "no_budget_closing": not closing} for i, (name, _) in enumerate(docs)]
            eng.flush_cache()
            t0 = time.perf_counter()
            results = eng.generate([prompt for _, prompt in docs], params)
            wall = time.perf_counter() - t0
            s = score(docs, results, schemas)
            rows.append({"max_new_tokens": max_new, "budget closing": "on" if closing else "off",
                         "accepted": len(docs),
                         "valid / accepted": f"{s['valid']}/{len(docs)} "
                                             f"({100 * s['valid'] / len(docs):.0f}%)",
                         "cut off": s["cut off"], "finished invalid": s["finished invalid"],
                         "closed": s["closed"],
                         "tokens": sum(len(r["output_ids"]) for r in results),
                         "wall s": round(wall, 1)})
            print(rows[-1], flush=True)
    eng.shutdown()
    cols = list(rows[0])
    print_table(rows, cols)
    print()
    print(f"CPU: {cpu_name()}; schemas ({args.corpus}): {len(schemas)} "
          f"({sum(accepted.values())} accepted), "
          f"{args.docs_per_schema} prompts each")
    print(markdown_table(rows, cols))
    save_results("structured_budget" if args.corpus == "realistic" else "structured_budget_real", {"machine": {**machine_info(), "cpu": cpu_name()},
                                       "args": vars(args), "rows": rows})
    if not args.no_grammars:
        _report_grammars(g_rows, grammar_mask_cost(tokenizer, args.repeat), args)


def _report_grammars(rows: list[dict], cost: list[dict], args) -> None:
    if rows:
        print()
        print(f"ebnf grammars ({', '.join(GRAMMAR_TASKS)}), {args.prompts_per_grammar} prompts "
              f"each; CPU: {cpu_name()}")
        print(markdown_table(rows, list(rows[0])))
    if cost:
        print()
        print(markdown_table(cost, list(cost[0])))
    save_results("structured_budget_grammars", {"machine": {**machine_info(), "cpu": cpu_name()},
                                                "args": vars(args), "rows": rows, "mask_cost": cost})


if __name__ == "__main__":
    main()
