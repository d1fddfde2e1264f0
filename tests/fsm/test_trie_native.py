"""The native trie walk (``radixrt/fsm/trie_native.py``) gives the NumPy walk's answer exactly,
state by state: token ids, their order and the DFA state after each."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from fsm_helpers import walk_states

from radixrt.fsm import trie_native
from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.regex_parser import parse_regex
from radixrt.fsm.token_index import MAX_CHAIN_EXCEPTIONS, STRING_BYTES, TokenTrie
from radixrt.fsm.vocabulary import Vocabulary

SCHEMAS = [
    # An open object: its keys start like the declared ones or not (a string chain with
    # exceptions), and free strings, formats, patterns, numbers, enums.
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "nickname": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "site": {"type": "string", "format": "uri"},
        "when": {"type": "string", "format": "date-time"},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$"},
        "kind": {"enum": ["a", "b", "cé"]}},
     "required": ["name"]},
    {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"},
                                "properties": {"id": {"type": "string", "minLength": 3}}}},
]
REGEXES = [r"[a-z0-9-]{1,20}", r"\"[^\"\\\\]{0,40}\"", r"(日本|中国)語?[αβγ]{1,3}", r"[😀-🙏]{1,3}!",
           r"(\s|\S){0,30}", r"-?(0|[1-9][0-9]*)(\.[0-9]{1,3})?"]


@pytest.fixture(scope="module")
def tries(compiler):
    native = TokenTrie.of(compiler.vocab)
    if native.native is None:
        pytest.skip("no C++ compiler here: the native walk is not built")
    return native, TokenTrie(compiler.vocab, native=False)


def _visited_states(grammar, walks: int = 4, steps: int = 50) -> list[int]:
    """The states of ``walks`` random walks (seeds 0..), each once, the start state first."""
    return list(dict.fromkeys(s for seed in range(walks)
                              for s in walk_states(grammar, random.Random(seed), steps)))


def _grammars(compiler):
    return ([compiler.compile("json_schema", s) for s in SCHEMAS]
            + [compiler.compile("regex", r) for r in REGEXES])


def _same(a, b) -> None:
    assert a[0].dtype == b[0].dtype == np.int64
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_native_walk_equals_numpy_walk(compiler, tries):
    native, numpy_trie = tries
    kinds = {"chain": 0, "chain_with_exceptions": 0, "walk": 0}
    for g in _grammars(compiler):
        t = g._table_flat
        for state in _visited_states(g):
            want = numpy_trie.allowed_tokens(t, state, with_states=True)
            _same(native.allowed_tokens(t, state, with_states=True), want)
            _same(native.native.walk(t, state), want)  # the whole trie, no chain
            np.testing.assert_array_equal(native.allowed_tokens(t, state), want[0])
            got = native._string_chain(t, state, MAX_CHAIN_EXCEPTIONS)
            if got is None:
                kinds["walk"] += 1
            else:
                kinds["chain_with_exceptions" if len(got[1]) else "chain"] += 1
    # Every route was taken.
    assert min(kinds.values()) > 0, kinds


def test_string_walk_with_any_exceptions(compiler, tries):
    # Inside a free string, with 0..8 first bytes sent elsewhere by a hand-made DFA row: the
    # plain tokens starting with them are walked, the others placed from the chain.
    native, numpy_trie = tries
    g = compiler.compile("regex", r"\"[^\"\\\\]*\"")
    inside = g.walk(g.start_state, b'"')
    table = g.dfa.table.copy()
    n = len(table)
    rng = random.Random(0)
    for k in range(MAX_CHAIN_EXCEPTIONS + 1):
        tab = np.vstack([table, table[inside][None, :]])  # state n: a copy of "inside"
        picked = rng.sample(STRING_BYTES.tolist(), k)
        for j, b in enumerate(picked):  # bytes that go back to the start, or die
            tab[n, b] = g.start_state if j % 2 else 0
        flat = tab.reshape(-1).astype(np.int64)
        chain, exceptions = native._string_chain(flat, n, MAX_CHAIN_EXCEPTIONS)
        assert sorted(exceptions.tolist()) == sorted(picked)
        _same(native.native.string_walk(flat, n, chain, exceptions),
              numpy_trie.allowed_tokens(flat, n, with_states=True))


def test_dead_state_and_bad_input(compiler, tries):
    native, _ = tries
    g = compiler.compile("regex", r"[a-z]+")
    empty = native.native.walk(g._table_flat, 0)
    assert len(empty[0]) == len(empty[1]) == 0
    bad = g._table_flat.copy()
    bad[:256] = 1  # a dead state that leads somewhere
    with pytest.raises(ValueError, match="dead state"):
        native.native.walk(bad, g.start_state)
    chain = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="chain"):
        native.native.string_walk(g._table_flat, g.start_state, chain, STRING_BYTES[:0])


def test_duplicate_spellings_and_ids_past_the_model_vocabulary():
    # Tokens spelled alike (ids 0, 2, 5: "a"; 3, 6: "ab"), ids past the grammar's vocab_size,
    # a vocabulary small enough that one walk sorts and another goes through the id table.
    tb = [b"a", b"b", b"a", b"ab", b"c", b"a", b"ab", b"bc", b"abc"] + [b"x%d" % i for i in range(40)]
    vocab = Vocabulary(key="native-dups", token_bytes=tb, special_ids=frozenset(), kind="plain")
    native = TokenTrie(vocab)
    if native.native is None:
        pytest.skip("no C++ compiler here: the native walk is not built")
    reference = TokenTrie(vocab, native=False)
    for regex in ("abc", "a|ab", "(a|b|c)*", "x[0-9]+", "[a-c]{0,3}|x1"):
        dfa = compile_regex_ast(parse_regex(regex))
        flat = dfa.table.reshape(-1).astype(np.int64)
        for state in range(1, len(dfa.table)):
            _same(native.native.walk(flat, state), reference.allowed_tokens(flat, state, True))
        g = CompiledGrammar("regex", regex, dfa, vocab, 7, ())
        ids = g.allowed_token_ids(g.start_state).tolist()
        assert all(i < 7 for i in ids)


def test_walks_on_several_threads_at_once(compiler, tries):
    native, numpy_trie = tries
    cases = []
    for g in _grammars(compiler)[:3]:
        cases += [(g._table_flat, s) for s in _visited_states(g, walks=2, steps=25)]
    want = [numpy_trie.allowed_tokens(t, s, True) for t, s in cases]
    errors = []

    def run(seed: int) -> None:
        order = list(range(len(cases)))
        random.Random(seed).shuffle(order)
        try:
            for i in order:
                _same(native.allowed_tokens(*cases[i], with_states=True), want[i])
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_without_the_library_the_numpy_walk_is_used(compiler, monkeypatch):
    from radixrt import native_build as native

    monkeypatch.setattr(native, "_c_libraries", {})
    monkeypatch.setenv("RADIXRT_DISABLE_NATIVE", "1")
    trie = TokenTrie(compiler.vocab)
    assert trie.native is None
    g = compiler.compile("regex", r"[a-z]{2,4}")
    np.testing.assert_array_equal(
        trie.allowed_tokens(g._table_flat, g.start_state),
        TokenTrie(compiler.vocab, native=False).allowed_tokens(g._table_flat, g.start_state))


def test_a_failed_build_is_reported_once_and_falls_back(monkeypatch, tmp_path, caplog):
    from radixrt import native_build as native

    monkeypatch.setattr(native, "_c_libraries", {})
    monkeypatch.delenv("RADIXRT_DISABLE_NATIVE", raising=False)
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "radixrt-no-such-compiler")
    with caplog.at_level("WARNING", logger="radixrt.native"):
        assert trie_native._library() is None
        assert trie_native._library() is None
    assert sum("token-trie walk" in r.message for r in caplog.records) == 1
    assert "radixrt-no-such-compiler" in caplog.text


def test_the_library_is_built_once_per_source(monkeypatch, tmp_path):
    from radixrt import native_build as native

    monkeypatch.delenv("RADIXRT_DISABLE_NATIVE", raising=False)
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path))
    lib = native.build_c_library(trie_native._SOURCE, "radixrt_token_trie")
    assert lib.is_file() and lib.parent.parent == tmp_path / "ext"
    stamp = lib.stat().st_mtime_ns
    assert native.build_c_library(trie_native._SOURCE, "radixrt_token_trie") == lib
    assert lib.stat().st_mtime_ns == stamp  # reused, not rebuilt
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match="failed"):
        native.build_c_library(broken, "broken")
    assert not list((tmp_path / "ext").glob("*/libbroken.so"))


def test_random_tables_and_vocabularies():
    # Random vocabularies (printable ASCII mostly, some quotes, backslashes, high bytes, long
    # tokens, duplicates) against random tables, some of them string-like (most printable bytes
    # alike): every state, both walks, against the NumPy walk.
    rng = np.random.default_rng(7)
    printable = np.arange(0x20, 0x7F)
    checked = 0
    routes = {"walk": 0, "chain": 0, "chain_with_exceptions": 0}
    for case in range(12):
        tb = []
        for _ in range(int(rng.integers(20, 400))):
            n = int(rng.integers(1, 12 if case % 3 else 40))
            pool = printable if rng.random() < 0.85 else np.arange(256)
            tb.append(bytes(rng.choice(pool, n).astype(np.uint8).tolist()))
        tb += tb[: int(rng.integers(0, 5))]  # spelled alike
        vocab = Vocabulary(key=f"native-random-{case}", token_bytes=tb, special_ids=frozenset(),
                           kind="plain")
        native = TokenTrie(vocab)
        if native.native is None:
            pytest.skip("no C++ compiler here: the native walk is not built")
        reference = TokenTrie(vocab, native=False)
        num_states = int(rng.integers(2, 30))
        table = rng.integers(0, num_states, (num_states, 256)) * (rng.random((num_states, 256)) < 0.6)
        for s in range(1, num_states):
            if rng.random() < 0.5:  # string-like: one target for most bytes (often itself, an
                # unbounded string), a few exceptions
                target = s if rng.random() < 0.6 else int(rng.integers(1, num_states))
                table[s, printable] = target
                k = int(rng.integers(0, MAX_CHAIN_EXCEPTIONS + 3))
                table[s, rng.choice(printable, k)] = rng.integers(0, num_states, k)
        table[0] = 0
        flat = table.reshape(-1).astype(np.int64)
        for state in range(1, num_states):
            want = reference.allowed_tokens(flat, state, with_states=True)
            _same(native.allowed_tokens(flat, state, with_states=True), want)
            _same(native.native.walk(flat, state), want)
            got = native._string_chain(flat, state, MAX_CHAIN_EXCEPTIONS)
            routes["walk" if got is None else "chain_with_exceptions" if len(got[1]) else "chain"] += 1
            checked += 1
    assert checked > 100 and min(routes.values()) > 0, routes  # every route was taken
