"""The structural_tag constraint (radixrt/fsm/structural_tag.py, a GrammarCompiler kind): the exact language of
free text with tagged JSON sections, token by token on the default model's tokenizer."""

from __future__ import annotations

import functools
import json

import pytest

from radixrt.fsm import GrammarCompiler, GrammarError, GrammarMatcher
from radixrt.fsm.structural_tag import parse_structural_tag
from radixrt.tokenizer import load_tokenizer

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
          "required": ["city"], "additionalProperties": False}
BEGIN = '<tool_call>\n{"name": "get_weather", "arguments": '
END = "}\n</tool_call>"


def call(city: str) -> str:
    return BEGIN + json.dumps({"city": city}, separators=(",", ":")) + END


def spec(**options) -> str:
    return json.dumps({"structures": [{"begin": BEGIN, "schema": SCHEMA, "end": END},
                                      {"begin": '<tool_call>\n{"name": "noop", "arguments": ',
                                       "schema": {"type": "object", "properties": {},
                                                  "additionalProperties": False}, "end": END}],
                       "triggers": ["<tool_call>"], **options})


@pytest.fixture(scope="module")
def tags(default_model_dir):
    tok = load_tokenizer(default_model_dir)
    compiler = GrammarCompiler(tok)
    yield tok, functools.partial(compiler.compile, "structural_tag")
    compiler.close()


def accepts(tags, spec_text: str, text: str, end: bool = True) -> bool:
    """Whether the grammar takes ``text`` (tokenized as the tokenizer would) and, with
    ``end``, may stop there (EOS)."""
    tok, st = tags
    m = GrammarMatcher(st(spec_text))
    if not m.accept_tokens(tok.encode(text, add_special_tokens=False)):
        return False
    return not end or m.accept_token(tok.eos_token_id)


def test_free_text_and_calls(tags):
    s = spec()
    assert accepts(tags, s, "Just text, no call. <tool> <tool_cal is fine")
    assert accepts(tags, s, "Let me look. " + call("Paris") + " and " + call("Rome") + " done")
    assert accepts(tags, s, call("Paris"))
    # The trigger inside an argument string is just text of the string.
    assert accepts(tags, s, call("a<tool_call>b"))
    # A trigger must start a complete section: not free text, not a cut-off call.
    assert not accepts(tags, s, "oops <tool_call> plain text")
    assert not accepts(tags, s, BEGIN + '{"city":"Paris"')
    assert accepts(tags, s, BEGIN + '{"city":"Paris"', end=False)  # a prefix is fine mid-way


def test_arguments_follow_the_schema(tags):
    s = spec()
    assert not accepts(tags, s, BEGIN + '{"town":"Paris"}' + END, end=False)
    assert not accepts(tags, s, BEGIN + '{"city":3}' + END, end=False)
    assert not accepts(tags, s, BEGIN + '{"city":"' + "x" * 21 + '"}' + END, end=False)
    assert not accepts(tags, s, '<tool_call>\n{"name": "other", "arguments": {}' + END, end=False)
    assert accepts(tags, s, '<tool_call>\n{"name": "noop", "arguments": {}' + END)


def test_stop_after_first(tags):
    tok, st = tags
    s = spec(stop_after_first=True)
    assert accepts(tags, s, "text only")
    m = GrammarMatcher(st(s))
    assert m.accept_tokens(tok.encode("Sure: " + call("Paris"), add_special_tokens=False))
    assert m.is_terminated()  # nothing may follow: the request ends here
    assert not accepts(tags, s, call("Paris") + " more", end=False)


def test_at_least_one(tags):
    s = spec(at_least_one=True)
    assert accepts(tags, s, call("Paris"))
    assert accepts(tags, s, call("Paris") + "\n" + call("Rome"))
    assert not accepts(tags, s, "text first " + call("Paris"), end=False)
    assert not accepts(tags, s, "", end=True)
    tok, st = tags
    m = GrammarMatcher(st(spec(at_least_one=True, stop_after_first=True)))
    assert m.accept_tokens(tok.encode(call("Paris"), add_special_tokens=False)) and m.is_terminated()


def test_cache(tags):
    _, st = tags
    s = spec()
    assert st(s) is st(s)


@pytest.mark.parametrize("bad, field", [
    ({"structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}], "triggers": ["<b>"]},
     "structures[0].begin"),
    ({"structures": [], "triggers": ["<a>"]}, "structures"),
    ({"structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}], "triggers": []}, "triggers"),
    ({"structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}], "triggers": ["<a>"],
      "extra": 1}, "unknown field"),
    ({"structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}], "triggers": ["<a>"],
      "at_least_one": "yes"}, "at_least_one"),
])
def test_bad_specs(bad, field):
    with pytest.raises(GrammarError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_structural_tag(json.dumps(bad))


def test_bad_schema_names_its_structure(tags):
    _, st = tags
    bad = {"structures": [{"begin": "<a>", "schema": {"type": "string", "pattern": "(?<=x)y"},
                           "end": "</a>"}], "triggers": ["<a>"]}
    with pytest.raises(GrammarError, match=r"structures\[0\]\.schema"):
        st(json.dumps(bad))
