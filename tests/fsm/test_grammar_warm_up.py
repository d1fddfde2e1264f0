"""The grammar caches are warmed on a background thread at scheduler start."""

from __future__ import annotations

import os
import shutil

from radixrt.fsm.canonical_split import COMMON_HEADS, SplitVerdicts
from radixrt.fsm.cfg_budget import single_byte_tokens, sorted_tokens
from radixrt.fsm.token_index import TokenTrie
from radixrt.scheduler.grammar_manager import GrammarManager


def test_warm_up_builds_the_vocabulary_caches(smol_tokenizer):
    gm = GrammarManager(smol_tokenizer, len(smol_tokenizer), {smol_tokenizer.eos_token_id})
    assert gm.warm_up_status == "not started"
    gm.start_warm_up().join(timeout=120)
    assert gm.warm_up_status == "done"
    vocab = gm.compiler.vocab
    assert vocab._cache.get("trie") is TokenTrie.of(vocab)
    split = vocab._cache.get("split_verdicts")
    assert isinstance(split, SplitVerdicts)
    pair_tokens = split._pair_kind
    assert pair_tokens.sum() > 1000
    for head in COMMON_HEADS:  # every pair verdict in front of the common separators is known
        assert (split._pairs[head][pair_tokens] >= -1).all()
    # The first constrained request finds it all built (no second table, no second compiler).
    assert SplitVerdicts.of(vocab, gm.compiler._encode_batch) is split
    if shutil.which(os.environ.get("CXX", "c++")) and not os.environ.get("RADIXRT_DISABLE_NATIVE"):
        from radixrt.fsm.bitmask import native_bitmask

        assert TokenTrie.of(vocab).native is not None and native_bitmask() is not None
    n = gm.compiler.vocab_size  # and ebnf budget closing's token tables
    built_sorted, built_single = vocab._cache[f"cfg_budget_sorted:{n}"], vocab._cache[f"cfg_budget_single:{n}"]
    assert sorted_tokens(vocab, n) is built_sorted and single_byte_tokens(vocab, n) is built_single


def test_warm_up_failure_only_reports(monkeypatch, smol_tokenizer):
    gm = GrammarManager(smol_tokenizer, len(smol_tokenizer), set())

    def broken(self):
        raise RuntimeError("no tables today")

    from radixrt.fsm.compiler import GrammarCompiler

    monkeypatch.setattr(GrammarCompiler, "warm_caches", broken)
    gm.start_warm_up().join(timeout=120)
    assert gm.warm_up_status == "failed: RuntimeError: no tables today"


def test_warm_up_runs_at_the_lowest_priority(monkeypatch, smol_tokenizer):
    # The forward keeps the cores: the warm-up thread (only it) runs at nice 19 on Linux.
    import os
    import sys
    import threading

    from radixrt.fsm.compiler import GrammarCompiler

    seen = {}

    def record(self):
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return {}

    monkeypatch.setattr(GrammarCompiler, "warm_caches", record)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    gm = GrammarManager(smol_tokenizer, len(smol_tokenizer), set())
    gm.start_warm_up().join(timeout=120)
    assert gm.warm_up_status == "done"
    if sys.platform.startswith("linux"):
        assert seen["nice"] == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
