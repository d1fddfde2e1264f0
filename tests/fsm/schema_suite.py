"""Run the JSON-Schema-Test-Suite against compiled grammars (shared by the test and the report).

For each schema: either compiling raises GrammarError, or
- every valid instance has an accepted serialization (compact JSON; object keys in any order the
  grammar allows, which is how schema key order is handled; integral floats may be written as
  integers), and its tokenization is accepted token by token and ends in an accepting state;
- no invalid instance has any accepted serialization, and its natural compact serialization is
  rejected token by token (soundness: this must never fail).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from radixrt.fsm import GrammarError, GrammarMatcher

SUITE_DIR = Path(__file__).parent / "data" / "json_schema_test_suite" / "draft2020-12"


def suite_files() -> list[Path]:
    return sorted(SUITE_DIR.glob("*.json")) + sorted(SUITE_DIR.glob("optional/format/*.json"))


def keyword_of(path: Path) -> str:
    return ("format:" if path.parent.name == "format" else "") + path.stem


@dataclass
class KeywordResult:
    schemas: int = 0
    compiled: int = 0
    rejected: int = 0  # GrammarError at compile
    valid_total: int = 0
    valid_accepted: int = 0
    invalid_total: int = 0
    invalid_rejected: int = 0
    unsound: list[str] = field(default_factory=list)  # invalid instances that were accepted
    errors: list[str] = field(default_factory=list)  # crashes other than GrammarError
    compile_seconds: list[float] = field(default_factory=list)


def _forms(value) -> list[str]:
    text = json.dumps(value, ensure_ascii=False)
    forms = [text]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        forms.append(str(int(value)))
    return forms


def serializations(grammar, value, state: int, memo: dict | None = None) -> dict[int, bytes]:
    """End state → one serialization of ``value`` accepted from ``state`` (DFS over key orders)."""
    memo = {} if memo is None else memo
    key = (id(value), state)
    if key in memo:
        return memo[key]
    out: dict[int, bytes] = {}
    walk = grammar.walk
    if isinstance(value, dict):
        start = walk(state, b"{")
        seen: set = set()

        def rec(remaining: frozenset, st: int, acc: bytes, first: bool):
            if (remaining, st) in seen:
                return
            seen.add((remaining, st))
            if not remaining:
                end = walk(st, b"}")
                if end:
                    out.setdefault(end, acc + b"}")
                return
            for k in remaining:
                head = (b"" if first else b",") + json.dumps(k, ensure_ascii=False).encode(
                    "utf-8", "surrogatepass") + b":"
                st2 = walk(st, head)
                if not st2:
                    continue
                for st3, vb in serializations(grammar, value[k], st2, memo).items():
                    rec(remaining - {k}, st3, acc + head + vb, False)

        if start:
            rec(frozenset(value), start, b"{", True)
    elif isinstance(value, list):
        states = {walk(state, b"["): b"["} if walk(state, b"[") else {}
        for i, item in enumerate(value):
            nxt: dict[int, bytes] = {}
            for st, acc in states.items():
                if i:
                    st = walk(st, b",")
                    acc += b","
                    if not st:
                        continue
                for st2, vb in serializations(grammar, item, st, memo).items():
                    nxt.setdefault(st2, acc + vb)
            states = nxt
        for st, acc in states.items():
            end = walk(st, b"]")
            if end:
                out.setdefault(end, acc + b"]")
    else:
        for form in _forms(value):
            try:
                data = form.encode("utf-8")
            except UnicodeEncodeError:
                continue
            end = walk(state, data)
            if end:
                out.setdefault(end, data)
    memo[key] = out
    return out


def accepted_serialization(grammar, value) -> bytes | None:
    for end, data in serializations(grammar, value, grammar.start_state).items():
        if grammar.is_accepting(end):
            return data
    return None


def token_accepts(grammar, tokenizer, text: str) -> bool:
    m = GrammarMatcher(grammar)
    for t in tokenizer.encode(text, add_special_tokens=False):
        if not m.accept_token(t):
            return False
    return m.is_accepting()


def run_suite(compiler, tokenizer, files: list[Path] | None = None) -> dict[str, KeywordResult]:
    import time

    results: dict[str, KeywordResult] = defaultdict(KeywordResult)
    for path in files or suite_files():
        kw = keyword_of(path)
        res = results[kw]
        for group in json.loads(path.read_text()):
            res.schemas += 1
            where = f"{path.name}: {group['description']}"
            t0 = time.perf_counter()
            try:
                grammar = compiler.compile("json_schema", group["schema"])
            except GrammarError:
                res.rejected += 1
                continue
            except Exception as e:  # noqa: BLE001 - reported as a failure
                res.errors.append(f"{where}: {type(e).__name__}: {e}")
                continue
            res.compile_seconds.append(time.perf_counter() - t0)
            res.compiled += 1
            for case in group["tests"]:
                value = case["data"]
                if case["valid"]:
                    res.valid_total += 1
                    data = accepted_serialization(grammar, value)
                    if data is not None and token_accepts(grammar, tokenizer, data.decode()):
                        res.valid_accepted += 1
                else:
                    res.invalid_total += 1
                    data = accepted_serialization(grammar, value)
                    natural = _natural(value)
                    if data is not None or (natural is not None and token_accepts(
                            grammar, tokenizer, natural)):
                        res.unsound.append(f"{where} / {case['description']}: "
                                           f"{(data or b'').decode(errors='replace')!r}")
                    else:
                        res.invalid_rejected += 1
    return dict(results)


def _natural(value) -> str | None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text
