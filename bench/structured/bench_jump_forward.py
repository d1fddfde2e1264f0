"""End-to-end JSON generation with jump-forward on vs off, side by side in one process.

radixrt's Engine (default model) generates JSON documents for key-heavy schemas, once with
every request's ``no_jump_forward`` set and once without, alternating, with the prefix cache
flushed before each run so both pay the same prefill. Reported per whitespace setting:

- throughput (completion tokens / s; median of ``--repeats`` greedy runs) and its ratio;
- forward passes, jump-forward draft tokens proposed / kept;
- agreement: documents whose output token ids are identical in both modes (greedy, and
  sampled at temperature 0.7 with a per-request seed);
- canonical tokenization: documents whose output ids equal ``tokenizer.encode(text)``;
- validity: documents that parse and validate against their schema (finished ones).

  python bench/structured/bench_jump_forward.py [--num-docs 96] [--concurrency 1 8]
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

from common import bar_plot, machine_info, markdown_table, median, print_table, save_results  # noqa: E402

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "first_name": {"type": "string", "maxLength": 20}, "last_name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "occupation": {"type": "string", "maxLength": 30}, "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30}, "is_married": {"type": "boolean"},
        "number_of_children": {"type": "integer", "minimum": 0, "maximum": 12}},
        "required": ["first_name", "last_name", "age", "occupation", "city", "country", "is_married",
                     "number_of_children"], "additionalProperties": False},
    "product": {"type": "object", "properties": {
        "product_name": {"type": "string", "maxLength": 30},
        "category": {"enum": ["electronics", "kitchen", "garden", "toys", "books", "clothing"]},
        "price_in_dollars": {"type": "number", "minimum": 0, "maximum": 10000},
        "available_in_stock": {"type": "boolean"},
        "manufacturer": {"type": "object", "properties": {
            "company_name": {"type": "string", "maxLength": 30},
            "country_of_origin": {"type": "string", "maxLength": 30}},
            "required": ["company_name", "country_of_origin"], "additionalProperties": False},
        "warranty_years": {"type": "integer", "minimum": 0, "maximum": 10}},
        "required": ["product_name", "category", "price_in_dollars", "available_in_stock",
                     "manufacturer", "warranty_years"], "additionalProperties": False},
    "tool_call": {"type": "object", "properties": {
        "function_name": {"const": "book_flight_ticket"},
        "arguments": {"type": "object", "properties": {
            "departure_city": {"type": "string", "maxLength": 30},
            "destination_city": {"type": "string", "maxLength": 30},
            "departure_date": {"type": "string", "format": "date"},
            "number_of_passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            "travel_class": {"enum": ["economy", "premium_economy", "business", "first"]}},
            "required": ["departure_city", "destination_city", "departure_date",
                         "number_of_passengers", "travel_class"], "additionalProperties": False}},
        "required": ["function_name", "arguments"], "additionalProperties": False},
}
TOPICS = {
    "person": ["baker", "pilot", "nurse", "teacher", "farmer", "chef", "lawyer", "painter",
               "firefighter", "librarian", "carpenter", "dentist", "musician", "engineer",
               "journalist", "gardener"],
    "product": ["a blender", "a laptop", "a garden hose", "a toy robot", "a cookbook", "a winter jacket",
                "headphones", "a coffee grinder", "a lawn mower", "a board game", "a novel", "sneakers",
                "a smartphone", "a frying pan", "a tent", "a desk lamp"],
    "tool_call": ["Paris to Rome", "Tokyo to Seoul", "New York to Boston", "Madrid to Lisbon",
                  "Berlin to Vienna", "Sydney to Perth", "Cairo to Dubai", "Oslo to Stockholm",
                  "Lima to Quito", "Delhi to Mumbai", "Toronto to Chicago", "Athens to Istanbul",
                  "Nairobi to Accra", "Dublin to London", "Seattle to Denver", "Milan to Zurich"],
}
ASK = {
    "person": "Describe a fictional {} as JSON with first_name, last_name, age, occupation, city, "
              "country, is_married and number_of_children.",
    "product": "Describe {} for an online shop as JSON with product_name, category, price_in_dollars, "
               "available_in_stock, manufacturer (company_name, country_of_origin) and warranty_years.",
    "tool_call": "Call the book_flight_ticket tool for {} next week, as JSON with function_name and "
                 "arguments.",
}
STYLES = ["", " Be creative.", " Keep it short.", " Use realistic values.", " Make it unusual.",
          " It is for a test.", " Answer only with JSON.", " Think of someone famous."]


def make_docs(tokenizer, n: int) -> list[tuple[str, str]]:
    """(schema name, chat prompt) pairs, cycling over schemas, topics and styles."""
    docs = []
    names = list(SCHEMAS)
    for i in range(n):
        name = names[i % len(names)]
        topic = TOPICS[name][(i // len(names)) % len(TOPICS[name])]
        style = STYLES[(i // (len(names) * len(TOPICS[name]))) % len(STYLES)]
        msg = ASK[name].format(topic) + style
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": msg}],
                                               add_generation_prompt=True, tokenize=False)
        docs.append((name, prompt))
    return docs


def run(eng, docs, jump: bool, sampled: bool, max_new: int):
    params = []
    for i, (name, _) in enumerate(docs):
        p = {"max_new_tokens": max_new, "json_schema": json.dumps(SCHEMAS[name]),
             "no_jump_forward": not jump, "temperature": 0}
        if sampled:
            p.update(temperature=0.7, seed=1000 + i)
        params.append(p)
    eng.flush_cache()
    s0 = eng.get_stats()
    t0 = time.perf_counter()
    results = eng.generate([prompt for _, prompt in docs], params)
    wall = time.perf_counter() - t0
    s1 = eng.get_stats()
    d = {k: s1[k] - s0[k] for k in ("num_forward_steps", "num_draft_tokens",
                                   "num_accepted_draft_tokens", "num_generated_tokens")}
    return results, wall, d


def doc_checks(tokenizer, docs, results) -> tuple[int, int, int]:
    """(canonical, valid, finished) counts."""
    import jsonschema

    canonical = valid = finished = 0
    for (name, _), r in zip(docs, results):
        ids = list(r["output_ids"])
        if isinstance(r["meta_info"]["finish_reason"].get("matched"), int):
            ids = ids[:-1]  # the EOS token is not text
        canonical += tokenizer.encode(r["text"], add_special_tokens=False) == ids
        if r["meta_info"]["finish_reason"]["type"] == "stop":
            finished += 1
            try:
                jsonschema.validate(json.loads(r["text"]), SCHEMAS[name],
                                    format_checker=jsonschema.FormatChecker())
                valid += 1
            except (ValueError, jsonschema.ValidationError):
                pass
    return canonical, valid, finished


def timed_run(eng, docs, jump: bool, concurrency: int, max_new: int) -> tuple[float, dict]:
    """Completion tokens / s with at most ``concurrency`` requests in flight (chunks in turn)."""
    total_wall, total = 0.0, {}
    for i in range(0, len(docs), concurrency):
        _, wall, d = run(eng, docs[i:i + concurrency], jump, False, max_new)
        total_wall += wall
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total["num_generated_tokens"] / total_wall, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--num-docs", type=int, default=96,
                    help="documents for the agreement / canonical / validity checks (all in flight)")
    ap.add_argument("--timing-docs", type=int, default=12, help="documents per timing run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                    help="requests in flight during the timing runs")
    ap.add_argument("--repeats", type=int, default=3, help="timing runs per mode (median)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--whitespace", nargs="*", default=["compact", r"[ \n]{0,16}"],
                    help="JSON whitespace settings: 'compact' (the default) or a regex passed as "
                         "--constrained-json-whitespace-pattern; timing runs use the first")
    args = ap.parse_args()

    from tqdm import tqdm

    from radixrt import Engine

    speed_rows, quality_rows = [], []
    total = 2 * args.repeats * len(args.concurrency) + 4 * len(args.whitespace)
    bar = tqdm(total=total, desc="runs", unit="run")
    for wi, ws in enumerate(args.whitespace):
        eng = Engine(model_path=args.model_path, max_total_tokens=32768,
                     constrained_json_whitespace_pattern=None if ws == "compact" else ws)
        tok = eng.tokenizer
        if wi == 0:
            tdocs = make_docs(tok, args.timing_docs)
            run(eng, tdocs[:2], True, False, args.max_new_tokens)  # warm-up (grammar compile)
            for c in args.concurrency:
                speeds = {False: [], True: []}
                stats = {}
                for rep in range(args.repeats):
                    for jump in ((False, True) if rep % 2 == 0 else (True, False)):
                        sp, stats[jump] = timed_run(eng, tdocs, jump, c, args.max_new_tokens)
                        speeds[jump].append(sp)
                        bar.update()
                on, off = median(speeds[True]), median(speeds[False])
                speed_rows.append({
                    "whitespace": ws, "concurrency": c, "tok_per_s_off": round(off, 1),
                    "tok_per_s_on": round(on, 1), "speedup": round(on / off, 2),
                    "forward_passes_off": stats[False]["num_forward_steps"],
                    "forward_passes_on": stats[True]["num_forward_steps"],
                    "draft_kept": f"{stats[True]['num_accepted_draft_tokens']}/{stats[True]['num_draft_tokens']}",
                })
        docs = make_docs(tok, args.num_docs)
        outs = {}
        for jump in (False, True):
            for sampled in (False, True):
                outs[(jump, sampled)] = run(eng, docs, jump, sampled, args.max_new_tokens)[0]
                bar.update()
        eng.shutdown()
        same = {s: sum(a["output_ids"] == b["output_ids"] for a, b in zip(outs[(False, s)], outs[(True, s)]))
                for s in (False, True)}
        for jump in (False, True):
            canon = valid = fin = 0
            for s in (False, True):
                c_, v, f = doc_checks(tok, docs, outs[(jump, s)])
                canon, valid, fin = canon + c_, valid + v, fin + f
            quality_rows.append({
                "whitespace": ws, "jump_forward": "on" if jump else "off",
                "identical_greedy": f"{same[False]}/{len(docs)}",
                "identical_seeded": f"{same[True]}/{len(docs)}",
                "canonical": f"{canon}/{2 * len(docs)}", "valid_json": f"{valid}/{fin}",
            })
    bar.close()
    scols = ["whitespace", "concurrency", "tok_per_s_off", "tok_per_s_on", "speedup",
             "forward_passes_off", "forward_passes_on", "draft_kept"]
    qcols = ["whitespace", "jump_forward", "identical_greedy", "identical_seeded", "canonical", "valid_json"]
    print_table(speed_rows, scols)
    print()
    print_table(quality_rows, qcols)
    print("\n" + markdown_table(speed_rows, scols) + "\n\n" + markdown_table(quality_rows, qcols))
    path = save_results("structured_jump_forward", {"args": vars(args), "machine": machine_info(),
                                                    "speed": speed_rows, "quality": quality_rows})
    plot = bar_plot(ROOT / "docs" / "img" / "structured_jump_forward.png",
                    "JSON generation throughput, jump-forward off vs on",
                    [f"concurrency {r['concurrency']}" for r in speed_rows],
                    {"off": [r["tok_per_s_off"] for r in speed_rows],
                     "on": [r["tok_per_s_on"] for r in speed_rows]}, "completion tokens / s")
    print(f"\nresults: {path}" + (f"; plot: {plot}" if plot else ""))


if __name__ == "__main__":
    main()
