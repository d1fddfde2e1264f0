"""GBNF token masks against the reference recognizer: on generated strings (and mutations of
them) of recursive grammars, a token is allowed exactly when some continuation completes the
text so far plus that token (inside text the grammar forces, only the tokenizer's own split),
EOS exactly when the text is complete; plus CfgMatcher's API (rollback, copy, EOS,
jump-forward, wider bitmasks) and the compiler's cache."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from radixrt.fsm import GrammarCompiler, new_matcher
from radixrt.fsm.cfg import CfgMatcher
from tests.fsm.test_gbnf_reference import GRAMMARS, JSON, PARENS, Earley, Generator, mutate

pytestmark = pytest.mark.timeout(300)

SAMPLED_TOKENS = 24  # per position: random vocabulary tokens and random allowed ones


@pytest.fixture(scope="module")
def grammars(compiler):
    return {name: compiler.compile("ebnf", text) for name, text in GRAMMARS.items()}


def _text_of(tb: list[bytes], prefix: bytes, tok: int) -> str | None:
    try:
        return (prefix + tb[tok]).decode("utf-8")
    except UnicodeDecodeError:  # ends inside a character: the reference reads whole ones
        return None


def _check_position(m: CfgMatcher, ref: Earley, prefix: bytes, rng: random.Random) -> list[int]:
    """Compare the mask at ``prefix`` with the reference on sampled tokens; returns the mask."""
    g = m.grammar
    allowed = m.allowed_token_ids()
    allowed_set = set(allowed)
    tb = g.vocab.token_bytes
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError:  # inside a character: the reference reads whole ones
        return allowed
    complete = ref.accepts(text)
    for eos in g.eos_token_ids:
        assert (eos in allowed_set) is complete, (text, eos)
    forced = m.find_jump_forward_string()
    canonical = _first_token(g, forced)
    if canonical is not None:  # forced text: the tokenizer's own first token is allowed
        assert canonical in allowed_set, (text, forced)
    sample = rng.sample(range(g.vocab_size), SAMPLED_TOKENS // 2)
    sample += rng.sample(allowed, min(len(allowed), SAMPLED_TOKENS // 2))
    for tok in sample:
        if tok in g.eos_token_ids:
            continue
        if not tb[tok]:  # special tokens: never allowed by a grammar
            assert tok not in allowed_set
            continue
        t = _text_of(tb, prefix, tok)
        if t is None:
            continue
        viable = ref.viable(t)
        if tok in allowed_set:
            assert viable, (text, tb[tok])  # never a token that leads nowhere
        elif viable:
            # Exact but for one deliberate exception: inside text the grammar forces, only the
            # tokenizer's own split is offered (as radixrt's canonical DFA masks do).
            assert forced and forced.startswith(tb[tok]) and tok != canonical, (text, tb[tok], forced)
    return allowed


def _first_token(g, forced: bytes) -> int | None:
    try:
        text = forced.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ids = g.encode(text) if text else []
    return ids[0] if ids and g.vocab.token_bytes[ids[0]] and forced.startswith(g.vocab.token_bytes[ids[0]]) else None


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_masks_match_the_reference_on_generated_strings(name, grammars, smol_tokenizer):
    g = grammars[name]
    ref = Earley(GRAMMARS[name])
    gen = Generator(GRAMMARS[name], seed=7)
    rng = random.Random(11)
    tb = g.vocab.token_bytes
    for _ in range(4):
        s = gen.gen(budget=6)
        assert ref.accepts(s)
        ids = smol_tokenizer.encode(s, add_special_tokens=False)
        m = new_matcher(g)
        prefix = b""
        for i, tok in enumerate(ids):
            if i % 3 == 0 or i == len(ids) - 1:
                allowed = _check_position(m, ref, prefix, rng)
                assert tok in allowed, (s, prefix, tb[tok])
            assert m.accept_token(tok), (s, prefix, tb[tok])
            prefix += tb[tok]
        assert prefix.decode() == s
        _check_position(m, ref, prefix, rng)
        assert m.is_accepting()
        assert m.accept_token(g.eos_token_ids[0])
        assert m.is_terminated()


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_mutated_strings_are_judged_like_the_reference(name, grammars, smol_tokenizer):
    g = grammars[name]
    ref = Earley(GRAMMARS[name])
    gen = Generator(GRAMMARS[name], seed=3)
    rng = random.Random(5)
    outcomes = set()
    for i in range(30):
        s = gen.gen(budget=5)
        if i % 3:
            s = mutate(s, rng)
        ids = smol_tokenizer.encode(s, add_special_tokens=False)
        m = new_matcher(g)
        ok = all(m.accept_token(t) for t in ids) and m.is_accepting()
        assert ok is ref.accepts(s), s
        outcomes.add(ok)
    assert outcomes == {True, False}  # both kinds were exercised


def test_nested_parentheses_50_deep(grammars, smol_tokenizer):
    g = grammars["parens"]
    ref = Earley(PARENS)
    text = "(" * 50 + "()" + ")" * 50
    m = new_matcher(g)
    close = smol_tokenizer.encode(")", add_special_tokens=False)[0]
    for i, tok in enumerate(smol_tokenizer.encode(text, add_special_tokens=False)):
        assert m.accept_token(tok), i
    assert m.is_accepting() and ref.accepts(text)
    assert not m.accept_token(close)  # one ')' too many
    unbalanced = new_matcher(g)
    assert unbalanced.accept_tokens(smol_tokenizer.encode("(" * 50 + ")" * 49, add_special_tokens=False))
    assert not unbalanced.is_accepting()
    assert g.eos_token_ids[0] not in unbalanced.allowed_token_ids()


def test_rollback_copy_and_eos(grammars, smol_tokenizer):
    g = grammars["arith"]
    enc = lambda s: smol_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    m = new_matcher(g)
    start = m.allowed_token_ids()
    assert m.accept_tokens(enc("12 + 3"))
    mid = m.allowed_token_ids()
    fork = m.copy()
    assert not m.accept_tokens(enc(" * 4 +)"))  # all or none
    assert m.allowed_token_ids() == mid
    eos = g.eos_token_ids[0]
    assert m.accept_token(eos) and m.is_terminated()
    assert m.allowed_token_ids() == list(g.eos_token_ids)
    assert not m.accept_token(enc("1")[0])
    m.rollback(1)  # the EOS
    assert m.allowed_token_ids() == mid
    m.rollback(len(m.accepted_token_ids))
    assert m.allowed_token_ids() == start
    assert fork.accept_tokens(enc(" * (4)")) and fork.is_accepting()
    assert m.accepted_token_ids == []
    with pytest.raises(ValueError):
        m.rollback(1)


def test_jump_forward_tokens_spell_the_forced_text(compiler, smol_tokenizer):
    enc = lambda s: smol_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    g = compiler.compile("ebnf", 'root ::= "The answer is: " ("yes" | "no") ".\\n"')
    tb = g.vocab.token_bytes
    m = new_matcher(g)
    assert m.find_jump_forward_string() == b"The answer is: "
    jf = m.jump_forward()
    done = b"".join(tb[t] for t in jf.token_ids)
    assert jf.forced == b"The answer is: " and done and jf.forced.startswith(done)
    m.apply_jump_forward(jf)
    assert m.accept_tokens(enc((jf.forced[len(done):] + b"yes").decode()))
    assert m.find_jump_forward_string() == b".\n"
    assert not m.is_accepting()
    assert m.accept_tokens(enc(".\n"))
    assert m.is_terminated() and m.find_jump_forward_string() == b""
    assert not m.jump_forward()


def test_state_key_is_the_forced_text(compiler):
    g = compiler.compile("ebnf", 'root ::= "ab" [0-9] "cd"')
    m = new_matcher(g)
    assert m.state == b"ab" and g.forced_bytes(m.state) == b"ab"


def test_wider_bitmask_rows_and_other_rows_untouched(smol_tokenizer):
    gc = GrammarCompiler(smol_tokenizer, vocab_size=49152 + 100)
    try:
        g = gc.compile("ebnf", 'root ::= [a-z]+')
        m = new_matcher(g)
        bitmask = torch.full((3, (49152 + 100 + 31) // 32), -1, dtype=torch.int32)
        m.fill_bitmask(bitmask, 1)
        assert (bitmask[0] == -1).all() and (bitmask[2] == -1).all()
        assert (bitmask[1, g.num_words:] == 0).all()
        bits = np.unpackbits(bitmask[1].numpy().view(np.uint8), bitorder="little")
        ids = np.flatnonzero(bits)
        assert ids.size and ids.max() < 49152
        assert ids.tolist() == m.allowed_token_ids()
    finally:
        gc.close()


def test_compile_cache_and_json_grammar_mask_count(compiler):
    a = compiler.compile("ebnf", JSON)
    assert compiler.compile("ebnf", JSON) is a
    m = new_matcher(a)
    allowed = m.allowed_token_ids()
    tb = a.vocab.token_bytes
    assert allowed and all(tb[t].startswith(b"{") for t in allowed)
