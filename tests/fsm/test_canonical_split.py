"""Canonical verdicts from the tokenizer's chunking (``canonical_split``) are the tokenizer's own,
and the trie walk finds exactly the tokens a byte-by-byte walk finds."""

from __future__ import annotations

import random

import numpy as np
import pytest
from fsm_helpers import LENGTH_LIMIT_SCHEMAS, assert_split_verdicts_exact, walk_states

from radixrt.fsm.canonical_split import SplitVerdicts
from radixrt.fsm.utf8 import whole_chars_prefix

# Forced texts of every kind the rules tell apart: JSON separators, letters, digits, spaces,
# contractions, non-ASCII, control characters, added-token text, punctuation runs to the end.
FORCED = [b'","age":', b'"}', b'"]', b'",', b'"},{"id":', b"x", b"s", b"re", b"1", b"9a",
          b" ", b"  x", b"\n", b"\n\n}", b"'s", b"'ll", b"\xc3\xa9t", b"\xe2\x80\x9c", b"--",
          b"-->", b".5", b"\x1c", b"<|im_end|>", b"|>", b'":', b'"}]}', b'"\xe2\x80\x9c',
          b"-\x1c", b"_>", b'"start']
SCHEMAS = LENGTH_LIMIT_SCHEMAS


@pytest.fixture(scope="module")
def split(compiler):
    sv = SplitVerdicts.of(compiler.vocab, compiler._encode_batch)
    assert sv is not None, "SmolLM2's tokenizer is the GPT-2 chunking layout"
    return sv


def _tokenizer_first(compiler, text: bytes) -> int:
    enc = compiler._encode_batch([text.decode("utf-8")])[0]
    return int(enc[0]) if enc and compiler.vocab.spells(enc, text) else -1


def test_rules_agree_with_the_tokenizer(compiler, split):
    tb = compiler.vocab.token_bytes
    rng = random.Random(0)
    pool = [t for t in range(len(tb)) if tb[t]]
    # A random sample and every token that only the "t + H" rule can decide (it ends with a
    # space, a control or a non-ASCII character: Unicode letters, punctuation, CJK, ...).
    pair_kind = np.flatnonzero(split.kind == 5).tolist()
    assert len(pair_kind) > 200
    tokens = np.asarray(sorted(set(rng.sample(pool, 1500)) | set(pair_kind)), np.int64)
    decided_total = 0
    for forced in FORCED:
        info = split.forced_info(forced)
        decided, drop = split.verdicts(tokens, [info], np.zeros(len(tokens), np.int64))
        decided_total += int(decided.sum())
        for j in np.flatnonzero(decided).tolist():
            t = int(tokens[j])
            data = tb[t] + forced
            first = _tokenizer_first(compiler, data[:whole_chars_prefix(data)])
            assert bool(drop[j]) == (first not in (-1, t)), (tb[t], forced, first)
    assert decided_total > 0.3 * len(tokens) * len(FORCED)
    assert split.forced_info(b"<|im_end|>") is None and split.forced_info(b"|>") is None


def test_masks_identical_to_tokenizer_verdicts(compiler, monkeypatch):
    """Random walks (including every state of the strings' length limits): the mask with the
    chunking rules equals the mask with every verdict from the tokenizer."""
    rng = random.Random(3)
    checked = 0
    for schema in SCHEMAS:
        g = compiler.compile("json_schema", schema)
        states = {s for _ in range(4) for s in walk_states(g, rng)}
        checked += assert_split_verdicts_exact(g, states, monkeypatch, schema)
    assert checked > 40


def test_trie_walk_matches_byte_walk(compiler):
    g = compiler.compile("json_schema", SCHEMAS[0])
    tb = g.vocab.token_bytes
    rng = random.Random(5)
    # Inside a string every level stays alive (long runs of spaces) and the string-byte chain
    # applies: unbounded, counted (maxLength, dead past the limit); a class that narrows after
    # three characters breaks the chain there and the whole trie is walked.
    g2 = compiler.compile("regex", '"[^"]*"')
    g3 = compiler.compile("regex", '"[ -~]{3}[a-z]*"')
    inside = [g.walk(g.start_state, b'{"name":"' + b"x" * k) for k in (0, 5, 11, 12)]
    assert [g.trie._string_chain(g._table_flat, s) is not None for s in inside] == [
        True, True, True, False]  # at the limit no plain token is alive: walked
    s3 = g3.walk(g3.start_state, b'"')
    assert g3.trie._string_chain(g3._table_flat, s3) is None
    cases = ((g, walk_states(g, rng)[:8] + inside), (g2, [g2.walk(g2.start_state, b'"')]),
             (g3, [s3, g3.walk(s3, b"ab")]))
    for gr, states in cases:
        for state in states:
            ids, ends = gr.trie.allowed_tokens(gr._table_flat, state, with_states=True)
            ref = [(i, gr.walk(state, b)) for i, b in enumerate(tb) if b]
            ref = [(i, e) for i, e in ref if e]
            assert ids.tolist() == [i for i, _ in ref]
            assert ends.tolist() == [e for _, e in ref]
            assert gr.trie.allowed_tokens(gr._table_flat, state).tolist() == ids.tolist()
    assert g2.trie.tail_depth < len(g2.trie.level_start) - 2  # the Python tail was used
