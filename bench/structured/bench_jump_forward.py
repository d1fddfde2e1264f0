"""Jump-forward vs plain constrained decoding with the default model (greedy, CPU).

For each prompt/schema pair the model decodes greedily under the grammar twice: token by token,
and with jump-forward (forced text appended as retokenized tokens, possibly rolling back the last
tokens, holding back a final token a longer token could extend). Reported: whether the outputs
are identical, model forward passes used, tokens appended by jump-forward, and whether the final
token sequence equals the tokenizer's canonical tokenization of the text.

  python bench/structured/bench_jump_forward.py [--model /tmp/smol/hf] [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import markdown_table, print_table  # noqa: E402

CASES = [
    ("Describe a fictional person.", {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                         "city": {"type": "string", "maxLength": 40}},
        "required": ["name", "age", "city"], "additionalProperties": False}),
    ("Give a product for an online shop.", {
        "type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                         "price": {"type": "number", "minimum": 0},
                                         "in_stock": {"type": "boolean"},
                                         "category": {"enum": ["books", "toys", "food", "tools"]}},
        "required": ["title", "price", "in_stock", "category"], "additionalProperties": False}),
    ("Call a tool to get the weather in Paris.", {
        "type": "object", "properties": {"tool": {"const": "get_weather"},
                                         "arguments": {"type": "object", "properties": {
                                             "location": {"type": "string", "maxLength": 40},
                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
                                             "required": ["location", "unit"],
                                             "additionalProperties": False}},
        "required": ["tool", "arguments"], "additionalProperties": False}),
    ("List three colors.", {
        "type": "object", "properties": {"colors": {"type": "array", "minItems": 3, "maxItems": 3,
                                                    "items": {"type": "string", "maxLength": 20}}},
        "required": ["colors"], "additionalProperties": False}),
    ("Plan a meeting.", {
        "type": "object", "properties": {"topic": {"type": "string", "maxLength": 50},
                                         "date": {"type": "string", "format": "date"},
                                         "attendees": {"type": "array", "maxItems": 3,
                                                       "items": {"type": "string",
                                                                 "maxLength": 20}}},
        "required": ["topic", "date", "attendees"], "additionalProperties": False}),
    ("Answer yes or no with a reason: is the sky blue?", {
        "type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                         "reason": {"type": "string", "maxLength": 80}},
        "required": ["answer", "reason"], "additionalProperties": False}),
]


def decode(model, tokenizer, grammar, prompt_ids: list[int], jump: bool, max_new: int):
    import torch

    from radixrt.fsm import allocate_token_bitmask, apply_token_bitmask_

    m = grammar.matcher()
    out: list[int] = []
    forwards = jumped = 0
    bitmask = allocate_token_bitmask(1, grammar.vocab_size)
    while len(out) < max_new and not m.is_terminated():
        if jump:
            jf = m.jump_forward()
            if jf:
                m.apply_jump_forward(jf)
                del out[len(out) - jf.rollback:]
                out += jf.token_ids
                jumped += len(jf.token_ids)
                if m.is_terminated():
                    break
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + out])).logits[:, -1, :].float()
        forwards += 1
        m.fill_bitmask(bitmask, 0)
        apply_token_bitmask_(logits, bitmask)
        token = int(logits.argmax(-1))
        if not m.accept_token(token):
            raise RuntimeError("masked argmax was rejected")
        if token in grammar.eos_token_ids:
            break
        out.append(token)
    text = tokenizer.decode(out)
    canonical = tokenizer.encode(text, add_special_tokens=False) == out
    return text, forwards, jumped, canonical


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smol/hf")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from radixrt.fsm import GrammarCompiler

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    eos = [tokenizer.eos_token_id]
    compiler = GrammarCompiler(tokenizer, vocab_size=model.config.vocab_size, eos_token_ids=eos)
    rows = []
    t0 = time.perf_counter()
    for prompt, schema in CASES:
        messages = [{"role": "user", "content": f"{prompt} Answer in JSON."}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
        grammar = compiler.compile("json_schema", schema)
        plain = decode(model, tokenizer, grammar, list(prompt_ids), False, args.max_new_tokens)
        jumpy = decode(model, tokenizer, grammar, list(prompt_ids), True, args.max_new_tokens)
        rows.append({"prompt": prompt[:32], "same_text": plain[0] == jumpy[0],
                     "forwards_plain": plain[1], "forwards_jump": jumpy[1],
                     "jumped_tokens": jumpy[2], "canonical_plain": plain[3],
                     "canonical_jump": jumpy[3], "plain": plain[0][:60], "jump": jumpy[0][:60]})
    compiler.close()
    cols = ["prompt", "same_text", "forwards_plain", "forwards_jump", "jumped_tokens",
            "canonical_plain", "canonical_jump"]
    print_table(rows, cols)
    for r in rows:
        print(f"- {r['prompt']}\n    plain: {r['plain']!r}\n    jump:  {r['jump']!r}")
    same = sum(r["same_text"] for r in rows)
    saved = 1 - sum(r["forwards_jump"] for r in rows) / sum(r["forwards_plain"] for r in rows)
    print(f"\nidentical outputs: {same}/{len(rows)}; forward passes saved: {saved:.0%}; "
          f"{time.perf_counter() - t0:.0f}s")
    print("\n" + markdown_table(rows, cols))


if __name__ == "__main__":
    main()
