"""GrammarMatcher: EOS, termination, rollback, copy, and jump-forward planning."""

from __future__ import annotations

import pytest

from radixrt.fsm import GrammarMatcher


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_eos_only_in_accepting_states(compiler, smol_tokenizer):
    g = compiler.compile("regex", r"ab(c)?")
    eos = smol_tokenizer.eos_token_id
    m = GrammarMatcher(g)
    assert eos not in m.allowed_token_ids() and not m.accept_token(eos)
    assert m.accept_tokens(ids_of(smol_tokenizer, "ab"))
    assert m.is_accepting() and not m.is_terminated() and eos in m.allowed_token_ids()
    assert m.accept_token(eos) and m.is_terminated()
    assert m.allowed_token_ids() == [eos] and not m.accept_token(ids_of(smol_tokenizer, "c")[0])


def test_terminated_when_nothing_can_follow(compiler, smol_tokenizer):
    g = compiler.compile("regex", r"abc")
    m = GrammarMatcher(g)
    assert m.accept_tokens(ids_of(smol_tokenizer, "abc"))
    assert m.is_terminated() and m.allowed_token_ids() == [smol_tokenizer.eos_token_id]


def test_rejected_token_changes_nothing_and_rollback(compiler, smol_tokenizer):
    g = compiler.compile("regex", r"hello world")
    m = GrammarMatcher(g)
    first = ids_of(smol_tokenizer, "hello")
    assert m.accept_tokens(first)
    state = m.state
    assert not m.accept_token(ids_of(smol_tokenizer, "x")[0]) and m.state == state
    clone = m.copy()
    m.rollback(len(first))
    assert m.state == g.start_state and clone.state == state
    with pytest.raises(ValueError):
        m.rollback(1)


def test_special_tokens_never_allowed(compiler, smol_tokenizer):
    g = compiler.compile("regex", r"[\s\S]{0,4}")
    allowed = set(GrammarMatcher(g).allowed_token_ids())
    specials = set(g.vocab.special_ids) - set(g.eos_token_ids)
    assert specials and not (allowed & specials)


def test_forced_string_stops_at_branches_and_accepting_states(compiler, smol_tokenizer):
    g = compiler.compile("json_schema", {"type": "object", "properties": {
        "name": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["name", "count"], "additionalProperties": False})
    m = GrammarMatcher(g)
    assert m.find_jump_forward_string() == b'{"name":"'
    g2 = compiler.compile("regex", r"abc(d|e)")
    assert GrammarMatcher(g2).find_jump_forward_string() == b"abc"
    g3 = compiler.compile("regex", r"ab(cd)?")
    assert GrammarMatcher(g3).find_jump_forward_string() == b"ab"  # stops at the accepting state
    g4 = compiler.compile("regex", r"é(x|y)")
    assert GrammarMatcher(g4).find_jump_forward_string() == "é".encode()


def test_jump_forward_retokenizes_and_holds_back(compiler, smol_tokenizer):
    tok = smol_tokenizer
    g = compiler.compile("json_schema", {"type": "object", "properties": {
        "name": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["name", "count"], "additionalProperties": False})
    m = GrammarMatcher(g)
    jf = m.jump_forward()
    assert jf.forced == b'{"name":"' and jf.rollback == 0
    assert jf.token_ids == ids_of(tok, '{"name":"')  # canonical tokenization of the forced text
    m.apply_jump_forward(jf)
    assert m.accept_tokens(ids_of(tok, 'Bob"'))
    jf = m.jump_forward()
    # '"' was sampled alone; the forced ',"count":' merges with it into '","' (rollback 1).
    assert jf.forced == b',"count":' and jf.rollback == 1
    m.apply_jump_forward(jf)
    assert m.accepted_token_ids == ids_of(tok, '{"name":"Bob","count":')


def test_hold_back_when_a_longer_token_could_follow(compiler, smol_tokenizer):
    g = compiler.compile("regex", r"ab(cdefghij|x)")  # forced "ab", then a branch
    jf = GrammarMatcher(g).jump_forward()
    assert jf.forced == b"ab"
    # "ab" is held back if a longer vocabulary token starts with it and continues with 'c'/'x'.
    longer = g.trie.has_longer_token(b"ab", [ord("c"), ord("x")])
    assert longer and jf.token_ids == []


def test_jump_forward_rolls_back_to_merge_tokens(compiler, smol_tokenizer):
    tok = smol_tokenizer
    g = compiler.compile("regex", r"(The|A) quick brown fox( jumps)?")
    m = GrammarMatcher(g)
    # Commit "The" + " qu" token by token, unusually split; the forced rest (" quick brown fox"
    # minus what is written) is retokenized together with the tail.
    pieces = [t for t in ids_of(tok, "The") + ids_of(tok, " qu")]
    assert m.accept_tokens(pieces)
    jf = m.jump_forward(max_rollback_tokens=2)
    written = b"".join(g.vocab.token_bytes[i] for i in m.accepted_token_ids[:len(pieces) - jf.rollback])
    appended = b"".join(g.vocab.token_bytes[i] for i in jf.token_ids)
    assert (written + appended).startswith(b"The quick brown fox") or \
        b"The quick brown fox".startswith(written + appended)
    assert ids_of(tok, (written + appended).decode()) == m.accepted_token_ids[
        :len(pieces) - jf.rollback] + jf.token_ids
    m.apply_jump_forward(jf)
    assert jf.rollback >= 1  # " qu" + "ick" merge into " quick"
