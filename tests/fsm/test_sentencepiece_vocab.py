"""A tiny SentencePiece-style tokenizer (▁ for spaces, <0xNN> byte fallback), built offline."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from fsm_helpers import token_walk

from radixrt.fsm import GrammarCompiler
from radixrt.fsm.vocabulary import get_vocabulary

CHARS = list("▁abcdefghijklmnopqrstuvwxyzABC{}[]\":,0123456789.-")
MERGES = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("a", "b"), ("ab", "c"), ("\"", ":"),
          ("{", "\""), ("n", "a"), ("na", "m"), ("nam", "e"), ("\"", ","), ("▁", "a"),
          ("1", "2"), ("e", "s"), ("t", "r"), ("tr", "u"), ("tru", "e")]


@pytest.fixture(scope="module")
def sp_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    model = models.BPE(vocab=vocab, merges=MERGES, byte_fallback=True, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_vocabulary_matches_decode(sp_tokenizer):
    vocab = get_vocabulary(sp_tokenizer)
    assert vocab.kind == "sentencepiece"
    assert vocab.token_bytes[vocab.size - 1]  # merges are normal tokens
    anchor = sp_tokenizer.convert_tokens_to_ids("a")
    for i, data in enumerate(vocab.token_bytes):
        if i in vocab.special_ids:
            assert data == b""
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            assert len(data) == 1 and data[0] >= 0x80  # a lone byte-fallback token
            continue
        # decode strips the first leading space of the whole text, so decode after an anchor
        assert sp_tokenizer.decode([anchor, i]) == "a" + text, (i, data)
    assert vocab.token_bytes[sp_tokenizer.convert_tokens_to_ids("<0xC3>")] == b"\xc3"
    assert vocab.token_bytes[sp_tokenizer.convert_tokens_to_ids("▁the")] == b" the"


@pytest.mark.parametrize("jump_forward", [False, True])
def test_walks_with_byte_fallback(sp_tokenizer, jump_forward):
    gc = GrammarCompiler(sp_tokenizer)
    try:
        for pattern in [r"(the|abc) [éü]{1,3}", r"[a-c]+ 😀?"]:
            g = gc.compile("regex", pattern)
            for seed in range(3):
                text, _ = token_walk(g, seed, jump_forward=jump_forward, budget=12)
                assert re.fullmatch(pattern, text), text
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4},
                                                   "ok": {"type": "boolean"}},
                  "required": ["name", "ok"], "additionalProperties": False}
        g = gc.compile("json_schema", schema)
        for seed in range(3):
            text, _ = token_walk(g, seed, jump_forward=jump_forward, budget=12)
            jsonschema.validate(json.loads(text), schema)
    finally:
        gc.close()
