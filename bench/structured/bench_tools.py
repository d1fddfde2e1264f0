"""Tool-calling constraint cost: compile time, mask time, and decode overhead on a server.

1. Compile: the structural_tag of N tools (N = 1, 4, 16; tool_choice auto and required), each
   compiled afresh every time (a GrammarCompiler with no grammar cache; the process-wide DFA
   cache of shared subtrees stays warm, as in a server); includes the start state's mask. Median of --repeats.
2. Masks along a text that chats, then calls a tool (the default model's tokenizer): first visit
   of each state (computing its mask) and cached (lookup + copy), per token.
3. With --url (a running `radixrt serve`): the same /generate prompt decoding --tokens tokens
   (greedy, ignore_eos) without a constraint and under the auto constraint (free text: the
   model does not call), alternating, median of --repeats; the ratio is the constraint's cost.

  python bench/structured/bench_tools.py [--url http://127.0.0.1:30000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOOL_SCHEMAS = [
    ("get_weather", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}),
    ("search_web", {"type": "object", "properties": {
        "query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 20}},
        "required": ["query"], "additionalProperties": False}),
    ("send_email", {"type": "object", "properties": {
        "to": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1},
        "subject": {"type": "string", "maxLength": 120}, "body": {"type": "string"},
        "urgent": {"type": "boolean"}}, "required": ["to", "subject", "body"]}),
    ("create_event", {"type": "object", "properties": {
        "title": {"type": "string"}, "start": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer", "minimum": 5}, "attendees": {
            "type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
                "required": ["email"]}}}, "required": ["title", "start"]}),
]


def tools(n: int) -> list[dict]:
    out = []
    for i in range(n):
        name, schema = TOOL_SCHEMAS[i % len(TOOL_SCHEMAS)]
        out.append({"type": "function", "function": {"name": f"{name}_{i}", "parameters": schema}})
    return out


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def bench_compile(tok, repeats: int) -> list[dict]:
    from radixrt.entrypoints.tool_calls import parse_tools
    from radixrt.fsm import GrammarCompiler

    compiler = GrammarCompiler(tok, cache_size=0)
    rows = []
    for n in (1, 4, 16):
        for choice in ("auto", "required"):
            spec = parse_tools(tools(n), choice, True).structural_tag()
            times, states = [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                g = compiler.compile("structural_tag", spec)
                times.append(time.perf_counter() - t0)
                states = g.dfa.num_states
            rows.append({"tools": n, "tool_choice": choice, "dfa_states": states,
                         "compile_ms_p50": median_ms(times)})
    compiler.close()
    return rows


def bench_masks(tok) -> dict:
    from radixrt.entrypoints.tool_calls import format_call, parse_tools
    from radixrt.fsm import GrammarCompiler, GrammarMatcher, allocate_token_bitmask

    compiler = GrammarCompiler(tok)
    g = compiler.compile("structural_tag", parse_tools(tools(4), "auto", True).structural_tag())
    text = ("Sure, I can look that up for you. Let me check the forecast first. "
            + format_call("get_weather_0", '{"city":"Paris","unit":"celsius"}') + " Done.")
    ids = tok.encode(text, add_special_tokens=False)
    bitmask = allocate_token_bitmask(1, compiler.vocab_size)
    first, cached = [], []
    for pass_times in (first, cached):
        m = GrammarMatcher(g)
        for t in ids:
            t0 = time.perf_counter()
            m.fill_bitmask(bitmask, 0)
            pass_times.append(time.perf_counter() - t0)
            assert m.accept_token(t)
    compiler.close()
    q = statistics.quantiles
    return {"tokens": len(ids), "first_visit_ms_p50": median_ms(first),
            "first_visit_ms_max": round(max(first) * 1000, 2),
            "cached_us_p50": round(statistics.median(cached) * 1e6, 1),
            "cached_us_p99": round(q(cached, n=100)[98] * 1e6, 1)}


def bench_server(url: str, tokens: int, repeats: int) -> dict:
    import httpx

    from radixrt.entrypoints.tool_calls import parse_tools

    spec = parse_tools(tools(4), "auto", True).structural_tag()
    prompt = "Write a short story about a lighthouse keeper."
    base = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True, "no_budget_closing": True}
    runs: dict[str, list[float]] = {"plain": [], "auto_tools": []}
    with httpx.Client(base_url=url, timeout=600) as c:
        def once(extra: dict) -> float:
            t0 = time.perf_counter()
            r = c.post("/generate", json={"text": prompt, "sampling_params": {**base, **extra}})
            r.raise_for_status()
            assert r.json()["meta_info"]["completion_tokens"] == tokens
            return time.perf_counter() - t0

        once({"structural_tag": spec})  # warm: compile, first masks, prefix cache
        once({})
        for _ in range(repeats):
            runs["plain"].append(once({}))
            runs["auto_tools"].append(once({"structural_tag": spec}))
    plain, auto = statistics.median(runs["plain"]), statistics.median(runs["auto_tools"])
    return {"tokens": tokens, "plain_s_p50": round(plain, 3), "auto_tools_s_p50": round(auto, 3),
            "ratio": round(auto / plain, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running radixrt server for the decode overhead run")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement (median)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per server request")
    args = ap.parse_args()
    from radixrt.model.loader import prepare_model_dir
    from radixrt.tokenizer import load_tokenizer

    tok = load_tokenizer(prepare_model_dir(None, progress=False))
    out = {"compile": bench_compile(tok, args.repeats), "masks": bench_masks(tok)}
    if args.url:
        out["server"] = bench_server(args.url, args.tokens, args.repeats)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
