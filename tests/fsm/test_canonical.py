"""Canonical tokens: in front of forced text a mask keeps only the tokenizer's own choice."""

from __future__ import annotations

import json
import random

import pytest

from radixrt.fsm import GrammarCompiler, GrammarMatcher
from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.grammar import CANONICAL_LOOKAHEAD_BYTES, CompiledGrammar
from radixrt.fsm.regex_parser import parse_regex
from radixrt.fsm.utf8 import whole_chars_prefix
from radixrt.fsm.vocabulary import Vocabulary

SCHEMA = json.dumps({
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False})


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _single(tok, text: str) -> int:
    ids = _ids(tok, text)
    assert len(ids) == 1, (text, ids)
    return ids[0]


@pytest.fixture(scope="module")
def loose_compiler(smol_tokenizer):
    gc = GrammarCompiler(smol_tokenizer, canonical_tokens=False)
    yield gc
    gc.close()


def test_forced_start_is_spelled_like_the_tokenizer(compiler, loose_compiler, smol_tokenizer):
    tok = smol_tokenizer
    assert _ids(tok, '{"name":"')[0] == _single(tok, '{"')
    strict = compiler.compile("json_schema", SCHEMA)
    loose = loose_compiler.compile("json_schema", SCHEMA)
    assert strict.allowed_token_ids(strict.start_state).tolist() == [_single(tok, '{"')]
    assert {_single(tok, "{"), _single(tok, '{"')} <= set(loose.allowed_token_ids(loose.start_state).tolist())


def test_closing_quote_merges_with_the_forced_separator(compiler, loose_compiler, smol_tokenizer):
    tok = smol_tokenizer
    prefix = [_single(tok, p) for p in ('{"', "name", '":"', "Bob")]
    for gc, quote_alone_allowed in ((compiler, False), (loose_compiler, True)):
        m = GrammarMatcher(gc.compile("json_schema", SCHEMA))
        assert m.accept_tokens(prefix)
        allowed = set(m.allowed_token_ids())
        assert (_single(tok, '"') in allowed) == quote_alone_allowed
        assert _single(tok, '","') in allowed
        assert _single(tok, "B") in allowed  # free text inside the string is untouched


def test_filter_only_chooses_between_spellings(compiler, loose_compiler, smol_tokenizer):
    """Every token the filter drops spells text whose own tokenization starts with a token the
    filter keeps, in every state a random walk visits; free states are never filtered."""
    strict = compiler.compile("json_schema", SCHEMA)
    loose = loose_compiler.compile("json_schema", SCHEMA)
    tb = strict.vocab.token_bytes
    rng = random.Random(0)
    checked = 0
    for _walk in range(6):
        m = GrammarMatcher(strict)
        for _ in range(60):
            if m.is_terminated():
                break
            state = m.state
            kept = set(strict.allowed_token_ids(state).tolist())
            every = set(loose.allowed_token_ids(state).tolist())
            assert kept and kept <= every
            for t in every - kept:
                end = strict.next_state(state, t)
                forced = strict.forced_bytes(end, CANONICAL_LOOKAHEAD_BYTES)
                assert forced, "a token without forced text after it was filtered"
                data = tb[t] + forced
                first = _ids(smol_tokenizer, data[:whole_chars_prefix(data)].decode())[0]
                assert first != t and first in kept
                checked += 1
            m.accept_token(rng.choice(sorted(kept)))
    assert checked > 0


def _fake_grammar(token_bytes: list[bytes], vocab_size: int, regex: str, encode_batch) -> CompiledGrammar:
    vocab = Vocabulary(key=f"fake-{id(token_bytes)}", token_bytes=token_bytes,
                       special_ids=frozenset(), kind="plain")
    dfa = compile_regex_ast(parse_regex(regex))
    return CompiledGrammar("regex", regex, dfa, vocab, vocab_size, (), encode_batch=encode_batch)


def test_never_empties_a_mask():
    # Two tokens spell "a"; the "tokenizer" answers with a third one outside the model's
    # vocabulary, so both would be dropped: the mask keeps them instead.
    g = _fake_grammar([b"a", b"a", b"b", b"a"], 3, "ab", lambda texts: [[3, 2] for _ in texts])
    assert g.allowed_token_ids(g.start_state).tolist() == [0, 1]


def test_tokenizer_that_does_not_round_trip_is_ignored():
    # A SentencePiece-style dummy prefix: the ids do not spell the text, so no opinion.
    g = _fake_grammar([b"a", b"b", b" a"], 3, "ab", lambda texts: [[2, 1] for _ in texts])
    assert g.allowed_token_ids(g.start_state).tolist() == [0]
    g = _fake_grammar([b"a", b"b", b"ab"], 3, "abb", lambda texts: [[2, 1] if t == "abb" else [1]
                                                                    for t in texts])
    assert g.allowed_token_ids(g.start_state).tolist() == [2]


def test_off_without_a_batch_encoder():
    g = _fake_grammar([b"a", b"b", b"ab"], 3, "abb", None)
    assert not g.canonical
    assert g.allowed_token_ids(g.start_state).tolist() == [0, 2]


# ---------------------------------------------------------------- free text: token pairs
def test_pair_check_matches_the_tokenizer(compiler, smol_tokenizer):
    tok = smol_tokenizer
    g = compiler.compile("regex", "[A-Za-z ]{1,40}")
    ad, dr, x = _single(tok, "AD"), _single(tok, "DR"), _single(tok, "X")
    assert _ids(tok, "ADDR") != [ad, dr]
    assert dr in g.noncanonical_after(ad, [dr, x]) and x not in g.noncanonical_after(ad, [dr, x])
    # Exactly the pairs whose joined text the tokenizer writes otherwise (random pairs).
    tb = g.vocab.token_bytes
    rng = random.Random(1)
    pool = [t for t in range(len(tb)) if tb[t] and tb[t].isascii()]
    flagged = 0
    for _ in range(300):
        p, cands = rng.choice(pool), rng.sample(pool, 8)
        bad = set(g.noncanonical_after(p, cands))
        for t in cands:
            assert (t in bad) == (_ids(tok, (tb[p] + tb[t]).decode()) != [p, t]), (p, t)
        flagged += len(bad)
    assert flagged > 0
    assert g.noncanonical_after(ad, [dr]) == [dr]  # cached answer is the same


def test_pair_check_has_no_opinion_without_text(compiler, smol_tokenizer):
    g = compiler.compile("regex", "[A-Za-z ]{1,40}")
    tb = g.vocab.token_bytes
    ad = _single(smol_tokenizer, "AD")
    eos = smol_tokenizer.eos_token_id
    partial = next(t for t in range(len(tb)) if tb[t] and tb[t][0] >= 0xC0 and len(tb[t]) == 1)
    assert g.noncanonical_after(ad, [eos, partial, -1, len(tb) + 5]) == []
    assert g.noncanonical_after(eos, [ad]) == []


def test_pair_check_off_with_canonical_tokens_off(loose_compiler, smol_tokenizer):
    g = loose_compiler.compile("regex", "[A-Za-z ]{1,40}")
    tok = smol_tokenizer
    assert g.noncanonical_after(_single(tok, "AD"), [_single(tok, "DR")]) == []
