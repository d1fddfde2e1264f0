"""Packed bitmasks: fill from a matcher, apply to logits."""

from __future__ import annotations

import sys

import numpy as np
import torch

import radixrt.fsm.bitmask as bitmask_mod
from radixrt.fsm import (
    GrammarMatcher,
    allocate_token_bitmask,
    apply_token_bitmask_,
    unpack_bitmask,
)
from radixrt.fsm.token_index import pack_token_ids, unpack_token_ids


def test_pack_unpack_round_trip():
    ids = np.array([0, 1, 31, 32, 33, 100, 4095])
    mask = pack_token_ids(ids, 128)
    assert mask.dtype == np.int32 and mask.shape == (128,)
    assert unpack_token_ids(mask).tolist() == ids.tolist()
    bits = unpack_bitmask(torch.from_numpy(mask)[None], 4100)
    assert torch.nonzero(bits[0]).flatten().tolist() == ids.tolist()


def test_apply_sets_disallowed_to_minus_inf():
    torch.manual_seed(0)
    vocab = 100
    logits = torch.randn(3, vocab)
    original = logits.clone()
    bitmask = allocate_token_bitmask(3, vocab)
    bitmask[1] = torch.from_numpy(pack_token_ids(np.array([3, 64, 99]), bitmask.shape[1]))
    bitmask[2] = 0
    apply_token_bitmask_(logits, bitmask)
    assert torch.equal(logits[0], original[0])  # all ones: untouched
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed == [3, 64, 99] and torch.equal(logits[1, allowed], original[1, allowed])
    assert torch.isinf(logits[2]).all()


def test_apply_with_indices_and_wider_logits():
    logits = torch.zeros(4, 70)  # model vocab 70 > mask width 2 * 32 = 64
    bitmask = torch.from_numpy(np.stack([pack_token_ids(np.array([5]), 2)] * 2))
    apply_token_bitmask_(logits, bitmask, indices=[1, 3])
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()
    for row in (1, 3):
        assert torch.isfinite(logits[row]).nonzero().flatten().tolist() == [5]


def test_cpu_logits_take_the_torch_path(monkeypatch):
    """The Triton kernel is for CUDA logits only: CPU logits never look for it, even when it
    would be available, and get exactly the torch reference's result."""
    looked = []

    def kernel(*args, **kwargs):
        raise AssertionError("triton kernel called for CPU logits")

    def lookup():
        looked.append(True)
        return kernel

    monkeypatch.setattr(bitmask_mod, "_triton_kernel", lookup)
    torch.manual_seed(1)
    masks = torch.from_numpy(np.stack([pack_token_ids(np.array(ids, np.int64), 4)
                                       for ids in ([0, 7, 99], [31, 32], [])]))
    for indices in (None, [2, 0, 1]):
        logits = torch.randn(3, 100)
        expected = logits.clone()
        bitmask_mod.apply_token_bitmask_torch(expected, masks, indices)
        apply_token_bitmask_(logits, masks, indices)
        assert torch.equal(logits, expected)
        assert torch.isinf(logits).any() and torch.isfinite(logits).any()
    assert not looked


def test_triton_lookup_is_cached_and_optional(monkeypatch):
    """Without an importable triton the lookup answers None (torch path), once per process."""
    bitmask_mod._triton_kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    monkeypatch.delitem(sys.modules, "radixrt.fsm.bitmask_triton", raising=False)
    try:
        assert bitmask_mod._triton_kernel() is None
        assert bitmask_mod._triton_kernel.cache_info().hits == 0
        assert bitmask_mod._triton_kernel() is None
        assert bitmask_mod._triton_kernel.cache_info().hits == 1
    finally:
        bitmask_mod._triton_kernel.cache_clear()


def test_matcher_fill_matches_allowed_ids(compiler):
    g = compiler.compile("regex", r"(ab|cd)e")
    m = GrammarMatcher(g)
    bitmask = allocate_token_bitmask(2, g.vocab_size)
    m.fill_bitmask(bitmask, 1)
    bits = unpack_bitmask(bitmask, g.vocab_size)
    assert bits[0].all()
    assert torch.nonzero(bits[1]).flatten().tolist() == m.allowed_token_ids()
    assert all(g.vocab.token_bytes[i] and (b"abe".startswith(g.vocab.token_bytes[i]) or
                                          b"cde".startswith(g.vocab.token_bytes[i]))
               for i in m.allowed_token_ids())
