"""JSON-Schema-Test-Suite report: per keyword, what compiles and how many instances pass.

Runs tests/fsm/schema_suite.py over the draft 2020-12 subset in tests/fsm/data with the default
model's tokenizer and prints a markdown table; ``--write`` replaces the table in
docs/structured.md (between the ``suite-report`` markers).

  python bench/structured/schema_suite_report.py [--tokenizer /tmp/smol/hf] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fsm"))

DOC = ROOT / "docs" / "structured.md"
START, END = "<!-- suite-report:start -->", "<!-- suite-report:end -->"


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "–"


def report(results) -> str:
    lines = ["| keyword | schemas | compiled | rejected (GrammarError) | valid accepted | "
             "invalid rejected | unsound | errors |",
             "|---|---|---|---|---|---|---|---|"]
    tot = dict.fromkeys(("s", "c", "r", "va", "vt", "ir", "it", "u", "e"), 0)
    for kw, r in sorted(results.items()):
        lines.append(f"| {kw} | {r.schemas} | {r.compiled} | {r.rejected} | "
                     f"{pct(r.valid_accepted, r.valid_total)} | "
                     f"{pct(r.invalid_rejected, r.invalid_total)} | {len(r.unsound)} | "
                     f"{len(r.errors)} |")
        for k, v in (("s", r.schemas), ("c", r.compiled), ("r", r.rejected),
                     ("va", r.valid_accepted), ("vt", r.valid_total), ("ir", r.invalid_rejected),
                     ("it", r.invalid_total), ("u", len(r.unsound)), ("e", len(r.errors))):
            tot[k] += v
    lines.append(f"| **total** | {tot['s']} | {tot['c']} | {tot['r']} | "
                 f"{pct(tot['va'], tot['vt'])} | {pct(tot['ir'], tot['it'])} | {tot['u']} | "
                 f"{tot['e']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="/tmp/smol/hf")
    ap.add_argument("--write", action="store_true", help=f"update the table in {DOC}")
    args = ap.parse_args()
    from schema_suite import run_suite
    from transformers import AutoTokenizer

    from radixrt.fsm import GrammarCompiler

    tok_dir = args.tokenizer
    if not Path(tok_dir, "tokenizer.json").exists():
        from radixrt.model.loader import prepare_model_dir

        tok_dir = str(prepare_model_dir(None))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    compiler = GrammarCompiler(tokenizer)
    table = report(run_suite(compiler, tokenizer))
    compiler.close()
    print(table)
    if args.write:
        text = DOC.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{DOC} has no {START} ... {END} section")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{table}\n{END}{tail}")
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
