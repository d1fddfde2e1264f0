"""Budget closing end to end on the tiny random model (it rambles in everything a schema or
grammar leaves open): every output validates at every budget from the minimum upward (JSON
schema, regex, and GBNF grammars with unbounded recursion: nested parentheses, arithmetic, JSON
as GBNF, a SQL subset), an output the budget never restricted is token-identical to one with
closing off, and jump-forward still changes nothing."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from radixrt import Engine
from tests.engine.conftest import assert_no_leak
from tests.fsm.test_gbnf_reference import ARITH, JSON, PARENS, SQL, Earley

OPEN = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "object", "properties": {"name": {"type": "string"},
                                                   "ids": {"type": "array", "items": {"type": "integer"}}},
                  "required": ["name", "ids"]},
    },
    "required": ["title", "score", "tags", "owner"],
}
REGEX = r'call\(tool="(search|calculator)", query="[a-z ]+", n=[0-9]+\)'
GBNF = {"ebnf:parens": PARENS, "ebnf:arith": ARITH, "ebnf:json": JSON, "ebnf:sql": SQL}
KINDS = ["json_schema", "regex", *GBNF]
PROMPTS = [[101, 202, 303, 404], [7, 8, 9], [5000, 6000, 7000, 8000, 9000, 10000]]
SAMPLING = [{"temperature": 0}, {"temperature": 1.0, "seed": 1234}, {"temperature": 0.3, "seed": 7}]


@pytest.fixture(scope="module")
def minimum(tiny_model_dir):
    """Fewest tokens of a complete output, per constraint (what the scheduler closes toward)."""
    from transformers import AutoTokenizer

    from radixrt.fsm import GrammarCompiler

    gc = GrammarCompiler(AutoTokenizer.from_pretrained(str(tiny_model_dir)), vocab_size=49152)
    from radixrt.fsm import new_matcher

    out = {}
    for kind, spec in (("json_schema", json.dumps(OPEN)), ("regex", REGEX)):
        g = gc.compile(kind, spec)
        out[kind] = g.closing.close_tokens(g.start_state)
    for kind, text in GBNF.items():
        out[kind] = new_matcher(gc.compile("ebnf", text)).closer().close_tokens()[0]
    gc.close()
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=16384) as eng:
        yield eng


class _Reference(Earley):
    """The reference recognizer with each set's waiting items indexed by nonterminal (the same
    algorithm; long identifiers made the plain one's completions scan whole sets). One text
    at a time, through ``accepts`` (memoized)."""

    def accepts(self, text: str) -> bool:
        hit = _ACCEPTED.get((id(self), text))
        if hit is None:
            hit = _ACCEPTED[(id(self), text)] = super().accepts(text)
        return hit

    def _closure(self, items: set, chart: list[set], pos: int) -> set:
        waiting: dict[str, list] = {}
        for it in items:
            self._index(it, waiting)
        todo = list(items)
        while todo:
            name, alt, dot, origin = todo.pop()
            rhs = self.prods[name][alt]
            new_items = []
            if dot < len(rhs):
                sym = rhs[dot]
                if isinstance(sym, str):
                    new_items += [(sym, k, 0, pos) for k in range(len(self.prods[sym]))]
                    if sym in self.nullable:
                        new_items.append((name, alt, dot + 1, origin))
            else:
                src = waiting if origin == pos else self._waiting[origin]
                new_items += [(p, a, d + 1, o) for p, a, d, o in list(src.get(name, ()))]
            for new in new_items:
                if new not in items:
                    items.add(new)
                    self._index(new, waiting)
                    todo.append(new)
        self._waiting[pos] = waiting
        return items

    def _index(self, item, waiting) -> None:
        name, alt, dot, _ = item
        rhs = self.prods[name][alt]
        if dot < len(rhs) and isinstance(rhs[dot], str):
            waiting.setdefault(rhs[dot], []).append(item)

    def start(self) -> list[set]:
        self._waiting = {}
        return super().start()


_ACCEPTED: dict = {}
_REFERENCES = {kind: _Reference(text) for kind, text in GBNF.items()}


def _check(kind: str, text: str) -> None:
    if kind == "json_schema":
        jsonschema.validate(json.loads(text), OPEN)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    else:
        assert _REFERENCES[kind].accepts(text), text


def _spec(kind: str) -> dict:
    if kind in GBNF:
        return {"ebnf": GBNF[kind]}
    return {"json_schema": json.dumps(OPEN)} if kind == "json_schema" else {"regex": REGEX}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "seeded", "t0.3"])
def test_every_budget_from_the_minimum_closes(engine, minimum, kind, sampling):
    low = minimum[kind]
    closed = 0
    for budget in [low, low + 1, low + 2, low + 3, low + 5, low + 8, low + 13, low + 30, low + 60]:
        params = {"max_new_tokens": budget, **_spec(kind), **sampling}
        on = engine.generate(input_ids=PROMPTS, sampling_params=params)
        off = engine.generate(input_ids=PROMPTS, sampling_params={**params, "no_budget_closing": True})
        for a, b in zip(on, off):
            reason = a["meta_info"]["finish_reason"]
            assert len(a["output_ids"]) <= budget
            _check(kind, a["text"])
            assert "budget_closed" not in b["meta_info"]["finish_reason"]
            if reason.get("budget_closed"):
                closed += 1
                assert reason["type"] in ("stop", "length")
            else:  # never restricted: exactly the tokens of decoding without closing
                assert a["output_ids"] == b["output_ids"]
    assert closed > 0
    assert_no_leak(engine)


@pytest.mark.parametrize("kind", ["json_schema", "ebnf:sql"])
@pytest.mark.parametrize("sampling", SAMPLING[:2], ids=["greedy", "seeded"])
def test_jump_forward_changes_nothing_while_closing(tiny_model_dir, minimum, kind, sampling):
    low = minimum[kind]
    runs = {}
    for jump in (True, False):
        with Engine(model_path=str(tiny_model_dir), max_total_tokens=8192,
                    disable_jump_forward=not jump) as eng:
            runs[jump] = [eng.generate(input_ids=PROMPTS, sampling_params={
                "max_new_tokens": budget, **_spec(kind), **sampling})
                for budget in (low, low + 4, low + 20)]
            if jump and kind == "json_schema":  # (the random model rarely agrees elsewhere)
                assert eng.get_stats()["num_accepted_draft_tokens"] > 0
    for on, off in zip(runs[True], runs[False]):
        for a, b in zip(on, off):
            assert a["output_ids"] == b["output_ids"]
            assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]


def test_unbinding_budget_is_identical(engine):
    # A bounded document that always finishes long before max_new_tokens.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    grammar = 'root ::= ("yes" | "no") " " [0-9] ("," [a-z]{1,3})?'
    for sampling, spec in zip(SAMPLING + SAMPLING, [{"json_schema": json.dumps(schema)}] * 3
                              + [{"ebnf": grammar}] * 3):
        params = {"max_new_tokens": 200, **spec, **sampling}
        on = engine.generate(input_ids=PROMPTS, sampling_params=params)
        off = engine.generate(input_ids=PROMPTS, sampling_params={**params, "no_budget_closing": True})
        for a, b in zip(on, off):
            assert a["output_ids"] == b["output_ids"]
            assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]
            assert "budget_closed" not in a["meta_info"]["finish_reason"]


def test_the_context_length_is_a_budget_too(tiny_model_dir, minimum):
    prompt = list(range(100, 140))
    context = len(prompt) + minimum["json_schema"] + 6
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096, context_length=context) as eng:
        out = eng.generate(input_ids=[prompt], sampling_params={
            "max_new_tokens": 500, "json_schema": json.dumps(OPEN), "temperature": 1.0, "seed": 3})[0]
    assert len(prompt) + len(out["output_ids"]) <= context
    _check("json_schema", out["text"])
    assert out["meta_info"]["finish_reason"].get("budget_closed")


def test_server_flag_turns_it_off(tiny_model_dir, minimum):
    params = {"max_new_tokens": minimum["json_schema"], "json_schema": json.dumps(OPEN),
              "temperature": 1.0, "seed": 5}
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096,
                disable_budget_closing=True) as eng:
        flagged = eng.generate(input_ids=PROMPTS, sampling_params=params)
        per_request = eng.generate(input_ids=PROMPTS,
                                   sampling_params={**params, "no_budget_closing": True})
    assert [r["output_ids"] for r in flagged] == [r["output_ids"] for r in per_request]
    assert all("budget_closed" not in r["meta_info"]["finish_reason"] for r in flagged)
