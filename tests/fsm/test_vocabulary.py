"""Token id → bytes: checked against tokenizer.decode over the whole vocabulary."""

from __future__ import annotations

from radixrt.fsm.vocabulary import get_vocabulary, gpt2_bytes_to_unicode, piece_bytes


def test_gpt2_table_is_a_bijection():
    table = gpt2_bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_piece_bytes_forms():
    assert piece_bytes("Ġhello", "byte_level") == b" hello"
    assert piece_bytes("âĢĻ", "byte_level") == "’".encode()
    assert piece_bytes("<0x0A>", "sentencepiece") == b"\n"
    assert piece_bytes("▁the", "sentencepiece") == b" the"


def test_whole_vocabulary_matches_decode(smol_tokenizer):
    vocab = get_vocabulary(smol_tokenizer)
    assert vocab.kind == "byte_level"
    assert vocab.size == len(smol_tokenizer) == 49152
    ids = list(range(vocab.size))
    decoded = smol_tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
    checked = partial = 0
    for i, data in enumerate(vocab.token_bytes):
        if i in vocab.special_ids:
            assert data == b""
            continue
        assert data, f"token {i} has no bytes"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1  # a piece of a multi-byte character: decode shows U+FFFD
            assert "\ufffd" in decoded[i]
            continue
        assert text == decoded[i], (i, data, decoded[i])
        checked += 1
    assert checked > 48_000 and partial > 100
    eos = smol_tokenizer.eos_token_id
    assert eos in vocab.special_ids


def test_vocabulary_is_cached(smol_tokenizer):
    assert get_vocabulary(smol_tokenizer) is get_vocabulary(smol_tokenizer)


def test_cached_tables_are_built_once_under_concurrent_first_use():
    import threading
    import time

    from radixrt.fsm.vocabulary import Vocabulary

    vocab = Vocabulary(key="cached-test", token_bytes=[b"a"], special_ids=frozenset(), kind="plain")
    builds: list[str] = []
    release = threading.Event()

    def slow():
        builds.append("slow")
        release.wait(5)
        return ["slow table"]

    got = []
    threads = [threading.Thread(target=lambda: got.append(vocab.cached("slow", slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    # Another key is not held up by the slow build.
    assert vocab.cached("quick", lambda: {"quick": 1}) == {"quick": 1}
    release.set()
    for t in threads:
        t.join()
    assert builds == ["slow"] and len(got) == 4 and all(g is got[0] for g in got)
    assert vocab.cached("slow", lambda: 1 / 0) is got[0]  # built already: not called again
