"""llguidance's token slices (radixrt adds identifier characters to its defaults) change how
fast a GBNF mask is computed, never what it allows: masks equal those computed without any
slice, position by position along documents of the grammars."""

from __future__ import annotations

import pytest
import torch

from radixrt.fsm import cfg
from radixrt.fsm.cfg_lark import gbnf_to_lark
from radixrt.fsm.gbnf import parse_gbnf
from radixrt.fsm.vocabulary import get_vocabulary
from tests.fsm.test_gbnf_reference import JSON, SQL, Generator

EOS = (2,)


@pytest.fixture(scope="module")
def setup(smol_tokenizer):
    vocab = get_vocabulary(smol_tokenizer)

    def encode(s: str) -> list[int]:
        return list(smol_tokenizer.encode(s, add_special_tokens=False))

    sliced = cfg.llguidance_tokenizer(vocab, vocab.size, EOS, encode)
    return vocab, encode, sliced, sliced.with_slices([])


def _grammar(text, tok, vocab, encode):
    lark = gbnf_to_lark(parse_gbnf(text))
    llg = cfg._llguidance()
    return cfg.CfgGrammar(text, lark, llg.LLMatcher.grammar_from_lark(lark.text), tok, vocab,
                          vocab.size, EOS, encode=encode)


@pytest.mark.parametrize("name", ["sql", "json"])
def test_sliced_masks_equal_unsliced(setup, name):
    vocab, encode, sliced, plain = setup
    text = {"sql": SQL, "json": JSON}[name]
    gen = Generator(text, seed=5)
    docs = ["SELECT name, u.age AS a FROM users WHERE age > 30 AND NOT x <> y LIMIT 10;"
            if name == "sql" else '{"key_1": [1, "two words", {"a": null}], "b": true}']
    while len(docs) < 4:
        d = gen.gen(budget=8)
        if len(d) >= 8:
            docs.append(d)
    fast, slow = _grammar(text, sliced, vocab, encode), _grammar(text, plain, vocab, encode)
    masks = torch.zeros((2, fast.num_words), dtype=torch.int32)
    positions = 0
    for doc in docs:
        mf, ms = cfg.CfgMatcher(fast), cfg.CfgMatcher(slow)
        for t in encode(doc):
            mf.fill_bitmask(masks, 0)
            ms.fill_bitmask(masks, 1)
            assert torch.equal(masks[0], masks[1]), (doc, positions)
            assert mf.accept_token(t) and ms.accept_token(t)
            positions += 1
    assert positions > 40
