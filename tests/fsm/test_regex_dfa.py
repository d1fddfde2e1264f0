"""Regex → byte DFA: the DFA accepts exactly what ``re.fullmatch(pattern, s, re.ASCII)`` does."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.fsm.automaton import compile_regex_ast, product
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.regex_ast import to_pattern
from radixrt.fsm.regex_parser import parse_alternatives, parse_regex

PATTERNS = [
    r"abc",
    r"a|bc|",
    r"[a-c]+x?",
    r"[^a-c]{2,3}",
    r"[^\"\\]*",
    r"(?:日本|語)+\d",
    r"[α-ω]{1,2}é?",
    r"\w+\s\W",
    r"\S\D*",
    r"[\d\-x]{0,2}",
    r".{3}",
    r"[\u00e9-\u0101\U0001F600-\U0001F64F]+",
    r"(a|b)*abb",
    r"(?P<x>ab){2,}",
    r"x{,2}y",
    r"\x41\u00e9\t\n\.\*",
    r"[]a]+",
    r"[a\]]+",
    r"[-a]|[a-]",
    r"a{2}b{0,}c{1,3}?",
    r"(?:[^\x00-\x7f]|a)*z",
    r"\[[0-9]+(,[0-9]+)*\]",
    r"[😀-🙏]+|[^😀]",
    r"(a+)+b",
    r"a{}",
    r"[^\s\S]|a",
]

ALPHABET = "abcxyz019_ -\t\n\"\\.*[],日本語αβωéāé😀🙏\x00\x7f\x80"


def _matches_re(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.ASCII) is not None


@pytest.fixture(scope="module")
def dfas():
    return {p: compile_regex_ast(parse_regex(p)) for p in PATTERNS}


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dfa_agrees_with_re(dfas, pattern, data):
    dfa = dfas[pattern]
    text = data.draw(st.one_of(
        st.text(alphabet=ALPHABET, max_size=8),
        st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) < 30),
    ))
    assert dfa.matches(text.encode()) == _matches_re(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_printed_pattern_round_trips(dfas, pattern):
    printed = to_pattern(parse_regex(pattern))
    again = compile_regex_ast(parse_regex(printed))
    for text in ["", "abb", "aab", "日本1", "😀", "ab" * 3, "x y", "a]", "-"]:
        assert again.matches(text.encode()) == dfas[pattern].matches(text.encode()), printed


def test_invalid_utf8_never_accepted():
    dfa = compile_regex_ast(parse_regex(r"[^a]*"))
    assert dfa.matches("é😀".encode())
    for bad in [b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]:
        assert not dfa.matches(bad)


@pytest.mark.parametrize("pattern, what", [
    (r"(a)\1", "backreference"), (r"a(?=b)", "lookaround"), (r"(?i)a", "inline flags"),
    (r"\bfoo", "anchor"), (r"a^b", "anchors"), (r"a**", "multiple repeat"), (r"*a", "nothing"),
    (r"[b-a]", "bad character range"), (r"(a", "missing"), (r"a)", "unbalanced"),
    (r"\p{L}", "unicode property"), (r"a{3,1}", "min repeat"),
])
def test_unsupported_syntax_is_rejected(pattern, what):
    with pytest.raises(GrammarError, match=what):
        parse_regex(pattern)


def test_anchors_at_the_ends():
    alts = parse_alternatives(r"^ab|cd$|^x$", flavor="ecma")
    assert [(a.anchored_start, a.anchored_end) for a in alts] == [
        (True, False), (False, True), (True, True)]


def test_ecma_flavor_classes():
    dot = compile_regex_ast(parse_regex(".", flavor="ecma"))
    assert not dot.matches("\u2028".encode()) and not dot.matches(b"\r") and dot.matches(b"a")
    space = compile_regex_ast(parse_regex(r"\s", flavor="ecma"))
    assert space.matches("\u00a0".encode()) and space.matches("\ufeff".encode())


def test_products():
    a = compile_regex_ast(parse_regex(r"[a-z]*"))
    b = compile_regex_ast(parse_regex(r".{2,3}"))
    both = product(a, b, "and")
    diff = product(a, b, "diff")
    for text in ["", "a", "ab", "abc", "abcd", "a1"]:
        assert both.matches(text.encode()) == (a.matches(text.encode()) and 2 <= len(text) <= 3)
        assert diff.matches(text.encode()) == (a.matches(text.encode()) and not 2 <= len(text) <= 3)


def test_finite_language_detection():
    assert compile_regex_ast(parse_regex(r"[ \n]{0,4}")).is_finite()
    assert not compile_regex_ast(parse_regex(r"[ \n]*")).is_finite()
