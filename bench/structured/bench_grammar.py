"""GBNF grammar (``ebnf``) benchmark: compile time and per-token mask time at the default
model's 49,152-token vocabulary.

Grammars: balanced parentheses (documents 50 deep), arithmetic, llama.cpp's json.gbnf, a SQL
SELECT subset (tests/fsm/test_gbnf_reference.py). Documents: generated from each grammar
(random derivations) plus a hand-written one, tokenized by the tokenizer; every mask along
the walk is timed (``CfgMatcher.fill_bitmask`` into a batch bitmask row), and the token taken
must be in it. Each walk runs ``--repeat`` times; ``mask_*`` take a position's median,
``best_*`` its fastest run (what the matcher costs without preemption by other processes).

Columns per grammar and conversion:
- ``lexemes``: radixrt's conversion (lexemes only where provably exact, ``cfg_lark``);
- ``chars``: every character its own lexeme (always exact, no analysis) — what the analysis buys;
- ``python-earley`` (``--baseline``): what a matcher of radixrt's own in pure Python would cost —
  the reference Earley recognizer stepped through the vocabulary's character trie at a few
  positions (one full mask each).

  python bench/structured/bench_grammar.py [--repeat 3] [--docs 6] [--baseline] [--save]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import markdown_table, print_table, save_results  # noqa: E402

HAND_WRITTEN = {
    "parens": "(" * 50 + "()" * 3 + ")" * 50,
    "arith": "(12.5 + 3) * -(4 - 2 / (7 + 1)) + 100",
    "json": '{"name": "radixrt serving runtime", "values": [1, 2, 3.25, -40], "nested": '
            '{"a": [true, false, null], "text": "a longer string with spaces, commas, and ü"}}',
    "sql": "SELECT name, u.age AS a FROM users JOIN orders ON users.id = orders.uid WHERE age > 30 "
           "AND (name = 'bob' OR NOT x <> y) ORDER BY name DESC LIMIT 10;",
}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not Path(path, "tokenizer.json").exists():
        from radixrt.model.loader import prepare_model_dir

        path = str(prepare_model_dir(None))
    return AutoTokenizer.from_pretrained(path)


def documents(name: str, text: str, n: int) -> list[str]:
    from tests.fsm.test_gbnf_reference import Generator

    gen = Generator(text, seed=17)
    docs = [HAND_WRITTEN[name]]
    while len(docs) < n:
        d = gen.gen(budget=8)
        if len(d) >= 8:
            docs.append(d)
    return docs


def compile_grammar(text: str, vocab, encode, lexemes: bool):
    from radixrt.fsm import cfg
    from radixrt.fsm.cfg_lark import gbnf_to_lark
    from radixrt.fsm.gbnf import parse_gbnf

    if lexemes:
        return cfg.compile_ebnf(text, vocab, vocab.size, (2,), encode)
    llg = cfg._llguidance()
    lark = gbnf_to_lark(parse_gbnf(text), lexemes=False)
    tok = cfg.llguidance_tokenizer(vocab, vocab.size, (2,), encode)
    return cfg.CfgGrammar(text, lark, llg.LLMatcher.grammar_from_lark(lark.text), tok, vocab,
                          vocab.size, (2,), encode=encode)


def mask_times(grammar, docs: list[list[int]], repeat: int) -> tuple[list[float], list[float]]:
    """Per position of every document: the median and the best of ``repeat`` walks (the best
    filters out preemption on a shared machine: an 8 ms time slice lost to another process
    shows up as a one-off spike)."""
    import torch

    from radixrt.fsm.cfg import CfgMatcher

    bitmask = torch.zeros((8, grammar.num_words), dtype=torch.int32)
    out = []
    for ids in docs:
        runs = []
        for _ in range(repeat):
            m = CfgMatcher(grammar)
            times = []
            for t in ids:
                t0 = time.perf_counter()
                m.fill_bitmask(bitmask, 3)
                times.append(time.perf_counter() - t0)
                if not (int(bitmask[3, t >> 5]) >> (t & 31)) & 1 or not m.accept_token(t):
                    raise AssertionError(f"token {t} refused along a document of the grammar")
            if not m.is_accepting():
                raise AssertionError("document not complete")
            runs.append(times)
        out.extend(zip(*runs))
    return [statistics.median(x) for x in out], [min(x) for x in out]


def python_earley_mask(ref, vocab, prefix: str) -> tuple[float, int]:
    """One full mask with the reference Earley recognizer walked through the vocabulary's
    character trie (dead branches pruned): seconds and allowed tokens."""
    trie: dict = {}
    for i, b in enumerate(vocab.token_bytes):
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not s:
            continue
        node = trie
        for c in s:
            node = node.setdefault(c, {})
        node.setdefault(None, []).append(i)
    t0 = time.perf_counter()
    chart = ref.start()
    ref.feed(chart, prefix)
    allowed = 0

    def walk(node):
        nonlocal allowed
        for c, child in node.items():
            if c is None:
                continue
            ok = ref.step(chart, c)
            if ok:
                allowed += len(child.get(None, ()))
                walk(child)
            chart.pop()

    walk(trie)
    return time.perf_counter() - t0, allowed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", default="/tmp/smol/hf")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each walk (median per position)")
    ap.add_argument("--docs", type=int, default=6, help="documents per grammar")
    ap.add_argument("--baseline", action="store_true", help="also time a pure-Python Earley mask")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()

    from radixrt.fsm.vocabulary import get_vocabulary
    from tests.fsm.test_gbnf_reference import ARITH, JSON, PARENS, SQL, Earley

    tok = load_tokenizer(args.tokenizer)
    vocab = get_vocabulary(tok)

    def encode(s: str) -> list[int]:
        return list(tok.encode(s, add_special_tokens=False))

    compile_grammar(PARENS, vocab, encode, True)  # llguidance's tokenizer, built once per vocabulary
    rows = []
    for name, text in (("parens", PARENS), ("arith", ARITH), ("json", JSON), ("sql", SQL)):
        docs = [encode(d) for d in documents(name, text, args.docs)]
        for lexemes in (True, False):
            compiles = []
            for _ in range(3):
                t0 = time.perf_counter()
                g = compile_grammar(text, vocab, encode, lexemes)
                compiles.append(time.perf_counter() - t0)
            times, best = mask_times(g, docs, args.repeat)
            rows.append({
                "grammar": name, "conversion": "lexemes" if lexemes else "chars",
                "lexemes": g.lark.num_lexemes, "char_positions": g.lark.num_char_lexemes,
                "compile_ms": statistics.median(compiles) * 1e3, "tokens": len(times),
                "mask_p50_us": statistics.median(times) * 1e6,
                "mask_p99_us": percentile(times, 0.99) * 1e6,
                "best_p50_us": statistics.median(best) * 1e6,
                "best_p99_us": percentile(best, 0.99) * 1e6,
                "best_max_us": max(best) * 1e6,
            })
            print(rows[-1], flush=True)
    if args.baseline:
        for name, text, prefix in (("arith", ARITH, "(12 + "), ("json", JSON, '{"name": "rad')):
            ref = Earley(text)
            secs = [python_earley_mask(ref, vocab, prefix) for _ in range(3)]
            rows.append({"grammar": name, "conversion": "python-earley", "tokens": 1,
                         "mask_p50_us": statistics.median(s for s, _ in secs) * 1e6,
                         "best_p50_us": min(s for s, _ in secs) * 1e6})
            print(rows[-1], flush=True)
    cols = ["grammar", "conversion", "lexemes", "char_positions", "compile_ms", "tokens",
            "mask_p50_us", "mask_p99_us", "best_p50_us", "best_p99_us", "best_max_us"]
    print()
    print_table(rows, cols)
    print()
    print(markdown_table(rows, cols))
    if args.save:
        print(save_results("structured_grammar", {"rows": rows, "args": vars(args)}))


if __name__ == "__main__":
    main()
