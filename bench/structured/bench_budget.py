"""Budget closing end to end: how many JSON documents come back valid when max_new_tokens binds.

radixrt's Engine (default model) answers chat prompts asking for a document of each schema
(realistic API-style schemas with unbounded strings, numbers, arrays and open objects), at
temperature 0.3 with a per-request seed, once with budget closing and once with every request's
``no_budget_closing`` set. Reported per ``max_new_tokens``:

- accepted: requests whose schema compiled (the others are rejected before generation);
- valid: outputs that parse and validate against their schema (``jsonschema``, formats
  checked); the ratio valid / accepted;
- cut off: outputs that ended at the token budget without a complete document;
- finished invalid: outputs that ended by the grammar's own stop and still do not validate
  (the grammar's soundness; expected 0);
- closed: outputs whose ``finish_reason`` carries ``budget_closed``.

  python bench/structured/bench_budget.py [--docs-per-schema 3] [--max-new-tokens 128 512]
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


def make_requests(tokenizer, docs_per_schema: int) -> list[tuple[str, str]]:
    out = []
    for k in range(docs_per_schema):
        for name, schema in SCHEMAS.items():
            msg = (f"Write a JSON document describing a {name.replace('_', ' ')}, following this "
                   f"JSON schema:\n{json.dumps(schema)}{STYLES[k % len(STYLES)]}")
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": msg}],
                                                   add_generation_prompt=True, tokenize=False)
            out.append((name, prompt))
    return out


def score(docs, results) -> dict:
    import jsonschema

    valid = cut = finished_invalid = closed = 0
    for (name, _), r in zip(docs, results):
        reason = r["meta_info"]["finish_reason"]
        closed += bool(reason.get("budget_closed"))
        try:
            jsonschema.validate(json.loads(r["text"]), SCHEMAS[name],
                                format_checker=jsonschema.FormatChecker())
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            if reason["type"] == "length":
                cut += 1
            else:
                finished_invalid += 1
    return {"valid": valid, "cut off": cut, "finished invalid": finished_invalid, "closed": closed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--docs-per-schema", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--temperature", type=float, default=0.3)
    args = ap.parse_args()

    from radixrt import Engine
    from radixrt.fsm import GrammarCompiler, GrammarError

    eng = Engine(model_path=args.model_path, max_total_tokens=65536)
    tokenizer = eng.tokenizer
    gc = GrammarCompiler(tokenizer)
    accepted = {}
    for name, schema in SCHEMAS.items():
        try:
            gc.compile("json_schema", json.dumps(schema))
            accepted[name] = True
        except GrammarError:
            accepted[name] = False
    gc.close()
    docs = [d for d in make_requests(tokenizer, args.docs_per_schema) if accepted[d[0]]]
    rows = []
    for max_new in args.max_new_tokens:
        for closing in (True, False):
            params = [{"max_new_tokens": max_new, "json_schema": json.dumps(SCHEMAS[name]),
                       "temperature": args.temperature, "seed": 1000 + i,
                       "no_budget_closing": not closing} for i, (name, _) in enumerate(docs)]
            eng.flush_cache()
            t0 = time.perf_counter()
            results = eng.generate([prompt for _, prompt in docs], params)
            wall = time.perf_counter() - t0
            s = score(docs, results)
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
    print(f"CPU: {cpu_name()}; schemas: {len(SCHEMAS)} ({sum(accepted.values())} accepted), "
          f"{args.docs_per_schema} prompts each")
    print(markdown_table(rows, cols))
    save_results("structured_budget", {"machine": {**machine_info(), "cpu": cpu_name()},
                                       "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
