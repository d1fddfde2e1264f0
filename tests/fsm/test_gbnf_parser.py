"""The GBNF front end: what each construct parses to, errors with line and column, and which
pieces the Lark conversion turns into lexemes (only where greedy lexing cannot matter)."""

from __future__ import annotations

import pytest

from radixrt.fsm.cfg_lark import gbnf_to_lark
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.gbnf import ALL_CHARS, Alt, Chars, GbnfError, Ref, Repeat, Seq, literal, parse_gbnf
from tests.fsm.test_gbnf_reference import GRAMMARS, JSON, Earley


def ch(c: str) -> Chars:
    return Chars(((ord(c), ord(c)),))


def body(text: str, rule: str = "root"):
    return parse_gbnf(text).rules[rule]


def test_rules_alternation_grouping_and_references():
    g = parse_gbnf('root ::= a | "x" (b | "yz")\na ::= "a"\nb ::= [b]')
    assert list(g.rules) == ["root", "a", "b"]
    assert g.rules["root"] == Alt((Ref("a", 1, 10), Seq((ch("x"), Alt((Ref("b", 1, 19), literal("yz")))))))
    assert g.lines == {"root": 1, "a": 2, "b": 3}


@pytest.mark.parametrize("text, node", [
    ('root ::= "a"*', Repeat(ch("a"), 0, None)),
    ('root ::= "a"+', Repeat(ch("a"), 1, None)),
    ('root ::= "a"?', Repeat(ch("a"), 0, 1)),
    ('root ::= "a"{3}', Repeat(ch("a"), 3, 3)),
    ('root ::= "a"{2,}', Repeat(ch("a"), 2, None)),
    ('root ::= "a"{2,5}', Repeat(ch("a"), 2, 5)),
    ('root ::= "a"{ 1 , 4 }', Repeat(ch("a"), 1, 4)),
    ('root ::= "a"{,4}', Repeat(ch("a"), 0, 4)),
    ('root ::= "a"{0}', Seq(())),
    ('root ::= ("a" "b")+', Repeat(literal("ab"), 1, None)),
])
def test_repetition(text, node):
    assert body(text) == node


@pytest.mark.parametrize("text, ranges", [
    ("root ::= [a-c]", ((97, 99),)),
    ("root ::= [a-cx-z_]", ((95, 95), (97, 99), (120, 122))),
    ("root ::= [-a]", ((45, 45), (97, 97))),
    ("root ::= [a-]", ((45, 45), (97, 97))),
    (r"root ::= [\]\[\\\-]", ((45, 45), (91, 93))),
    (r"root ::= [\x41-\x43\u00e9\U0001F600]", ((65, 67), (0xE9, 0xE9), (0x1F600, 0x1F600))),
    (r"root ::= [\n\t\r]", ((9, 10), (13, 13))),
    ("root ::= [^\x00-\x7f]", ((0x80, 0xD7FF), (0xE000, 0x3FFFF), (0xC0000, 0x10FFFF))),
    ('root ::= [^"\\\\]', ((0, 33), (35, 91), (93, 0xD7FF), (0xE000, 0x3FFFF), (0xC0000, 0x10FFFF))),
    ("root ::= .", ALL_CHARS),
    ("root ::= [é-ë]", ((0xE9, 0xEB),)),
])
def test_character_classes(text, ranges):
    assert body(text) == Chars(ranges)


@pytest.mark.parametrize("text, string", [
    (r'root ::= "a\"b"', 'a"b'),
    (r'root ::= "\n\t\\\x41\u00e9\U0001F600"', "\n\t\\Aé😀"),
    ('root ::= "日本"', "日本"),
    ('root ::= "a#b"', "a#b"),  # no comment inside a literal
])
def test_literals_and_escapes(text, string):
    node = body(text)
    assert node == (literal(string) if len(string) != 1 else ch(string))


def test_comments_blank_lines_and_multi_line_rules():
    text = """
# a comment before the rules

root ::= item   # trailing comment
  | "(" (        # a group spans lines
      item
      | "x"
    ) ")"
item ::=
    "a" |
    "b"
    | "c"     # a continuation line may start with '|'
"""
    g = parse_gbnf(text)
    assert list(g.rules) == ["root", "item"]
    assert g.lines == {"root": 4, "item": 9}
    ref = Earley(text)
    for s, ok in [("a", True), ("(b)", True), ("(x)", True), ("c", True), ("x", False), ("()", False)]:
        assert ref.accepts(s) is ok, s


def test_only_reachable_rules_are_kept_and_crlf_works():
    g = parse_gbnf('root ::= a\r\na ::= "x"\r\nunused ::= "y"\r\n')
    assert list(g.rules) == ["root", "a"]


def test_empty_alternatives_and_names_with_dashes():
    g = parse_gbnf('root ::= opt-part "x"\nopt-part ::= "y" | ')
    assert g.rules["opt-part"] == Alt((ch("y"), Seq(())))


@pytest.mark.parametrize("text, line, column, words", [
    ("", 1, 1, "empty"),
    ("   # only a comment\n", 2, 1, "empty"),
    ('root ::= "a"\nitem := "b"', 2, 6, "expected '::='"),
    ('root ::= "a" | b\n', 1, 16, "undefined rule 'b'"),
    ('item ::= "a"', 1, 13, "no 'root' rule"),
    ('root ::= "abc', 1, 14, "unterminated string literal"),
    ('root ::= "a"\nx ::= [a-z', 2, 11, "unterminated character class"),
    ('root ::= [z-a]', 1, 10, "reversed"),
    ('root ::= [^\\x00-\\U0010FFFF]', 1, 10, "matches no character"),
    ('root ::= ("a" | "b"', 1, 20, "expected ')'"),
    ('root ::= "a"\nfoo ::= ("b" |\n  "c"\nbar ::= "x"', 4, 1, "inside the '(' opened at line 2, column 9"),
    ('root ::= "a")', 1, 13, "unbalanced ')'"),
    ('root ::= *"a"', 1, 10, "nothing to repeat"),
    ('root ::= "a"{5,2}', 1, 13, "below the minimum"),
    ('root ::= "a"{x}', 1, 14, "expected ',' or '}'"),
    ('root ::= "a"{}', 1, 14, "expected a number"),
    ('root ::= "a"{2,3', 1, 17, "expected '}'"),
    ('root ::= "a"{99999}', 1, 14, "above the limit"),
    ('root ::= "\\q"', 1, 11, "unknown escape"),
    ('root ::= "\\x4"', 1, 11, "needs 2 hex digits"),
    ('root ::= "\\uD800"', 1, 11, "not a supported character"),
    ('root ::= "a"\nroot ::= "b"', 2, 1, "defined twice (first on line 1)"),
    ('root ::= "a" @', 1, 14, "unexpected '@'"),
    ('root ::= <think>', 1, 10, "token references"),
    ('root ::= "a"\nloop ::= "x" loop\nroot2 ::= "y"', None, None, None),  # unreachable: fine
    ('root ::= "a" loop\nloop ::= "x" loop', 2, 1, "rule 'loop' can never finish"),
    ('root ::= "a"\n  "b"', 2, 3, "expected a rule name"),
])
def test_errors_name_line_and_column(text, line, column, words):
    if line is None:
        parse_gbnf(text)
        return
    with pytest.raises(GbnfError) as e:
        parse_gbnf(text)
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert str(e.value).startswith(f"line {line}, column {column}: ")
    assert words in str(e.value)
    assert isinstance(e.value, GrammarError) and isinstance(e.value, ValueError)


def test_nesting_limit_is_an_error_not_a_crash():
    with pytest.raises(GbnfError, match="nested more than"):
        parse_gbnf("root ::= " + "(" * 300 + '"a"' + ")" * 300)
    parse_gbnf("root ::= " + "(" * 150 + '"a"' + ")" * 150)
    with pytest.raises(GrammarError, match="ebnf must be a string"):
        parse_gbnf(5)


# ------------------------------------------------------------------ lexemes
def lexeme_count(text: str) -> tuple[int, int]:
    lg = gbnf_to_lark(parse_gbnf(text))
    return lg.num_lexemes, lg.num_char_lexemes


def test_safe_pieces_become_lexemes():
    # a whole terminal-only rule
    assert lexeme_count('root ::= [a-z]+ "s"') == (1, 0)
    # a run followed by something it cannot extend into
    lg = gbnf_to_lark(parse_gbnf('root ::= "(" [0-9]+ ")" root?'))
    assert "/(?:[0-9])+/" in lg.text
    # literals that start alike but never extend one another
    lg = gbnf_to_lark(parse_gbnf('root ::= x (" AS " x | " FROM " x)\nx ::= [a-z]+ | "(" root ")"'))
    assert "/[\\x{20}]AS[\\x{20}]/" in lg.text and "/[\\x{20}]FROM[\\x{20}]/" in lg.text
    # a keyword an identifier can start with, where what follows tells them apart
    lg = gbnf_to_lark(parse_gbnf('root ::= t ";" root?\nt ::= [a-z]+ " "? "=" | "not " t'))
    assert "/not[\\x{20}]/" in lg.text and lg.num_char_lexemes == 1, lg.text
    # llama.cpp's JSON grammar: strings, numbers and keywords are lexemes
    lg = gbnf_to_lark(parse_gbnf(JSON))
    assert lg.num_lexemes >= 10


@pytest.mark.parametrize("text, kept", [
    # greedy [a-z]+ would swallow the "s"
    ('root ::= word "s" root?\nword ::= [a-z]+', '(/[a-z]/)+ "s"'),
    # "ab" then "c" vs "a" then "bc": literals that extend one another stay characters
    ('root ::= x ";" root?\nx ::= p q\np ::= "a" | "ab"\nq ::= "bc" | "c" | "(" root ")"', '"a"'),
    # an identifier and a keyword that starts like one, where both can go on alike
    ('root ::= t ";" root?\nt ::= [a-z]+ ("=" [0-9] | " " [a-z]+) | "not " t', '"n" "o" "t"'),
])
def test_unsafe_pieces_stay_characters(text, kept):
    lg = gbnf_to_lark(parse_gbnf(text))
    assert kept in lg.text, lg.text


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_conversion_is_deterministic(name):
    assert gbnf_to_lark(parse_gbnf(GRAMMARS[name])).text == gbnf_to_lark(parse_gbnf(GRAMMARS[name])).text


def test_large_grammars_convert():
    import random

    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(400)})
    lg = gbnf_to_lark(parse_gbnf("root ::= " + " | ".join(f'"{w}"' for w in words)))
    assert lg.num_lexemes == 1 and lg.num_char_lexemes == 0  # one lexeme for the whole list
    # a long chain of terminal-only rules: expanded to a depth, shared beyond it
    chain = "\n".join(f'r{i} ::= "k" r{i + 1} | [0-9]+ "x"' for i in range(150)) + '\nr150 ::= "end"'
    lg = gbnf_to_lark(parse_gbnf("root ::= r0\n" + chain))
    assert lg.num_lexemes > 0
    ref = Earley("root ::= r0\n" + chain)
    assert ref.accepts("kkk12x") and not ref.accepts("kkk12")
