"""Packed bitmasks: fill from a matcher, apply to logits."""

from __future__ import annotations

import sys

import numpy as np
import pytest
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


def test_cpu_logits_never_look_for_triton(monkeypatch):
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


def _random_masks(rng: np.random.Generator, rows: int, words: int) -> torch.Tensor:
    """Rows of every kind a server sees: all allowed, none, a few ids, most ids, random words
    (and words that are all ones or all zeros inside an otherwise mixed row)."""
    out = np.zeros((rows, words), np.int64)
    for r in range(rows):
        kind = r % 5
        if kind == 0:
            out[r] = -1
        elif kind == 2:
            out[r, rng.integers(0, words, 3)] = 1 << int(rng.integers(0, 31))
        elif kind == 3:
            out[r] = -1
            out[r, rng.integers(0, words, 4)] = rng.integers(0, 1 << 32, 4)
        elif kind == 4:
            out[r] = rng.integers(0, 1 << 32, words)
    return torch.from_numpy(out.astype(np.uint32).view(np.int32))


def test_native_cpu_path_equals_the_torch_reference():
    if bitmask_mod.native_bitmask() is None:
        pytest.skip("no C++ compiler here: the native bitmask is not built")
    rng = np.random.default_rng(0)
    # Vocabularies narrower, wider and exactly as wide as the masks; indices in any order;
    # logits rows further apart than the vocabulary (a slice of a wider tensor).
    for rows, vocab, words, width in [(6, 100, 4, 100), (5, 70, 2, 70), (7, 64, 2, 64),
                                      (5, 33, 3, 40), (9, 49152, 1536, 49152), (3, 1, 1, 8)]:
        masks = _random_masks(rng, rows, words)
        base = torch.randn(rows + 2, width)[:, :vocab]
        for indices in (None, list(range(rows))[::-1], [i + 2 for i in range(rows)]):
            if indices is None:
                logits, expected = base[:rows].clone(), base[:rows].clone()
            else:
                logits, expected = base.clone(), base.clone()
            bitmask_mod.apply_token_bitmask_torch(expected, masks, indices)
            assert bitmask_mod._apply_native(logits, masks, indices)
            assert torch.equal(logits, expected), (rows, vocab, words, indices)
    wide = torch.randn(4, 96)
    view = wide[:, :50]  # rows 96 floats apart: only the first 50 of each are masked
    apply_token_bitmask_(view, torch.zeros(4, 2, dtype=torch.int32))
    assert torch.isinf(wide[:, :50]).all() and torch.isfinite(wide[:, 50:]).all()


def test_native_cpu_path_checks_and_declines():
    if bitmask_mod.native_bitmask() is None:
        pytest.skip("no C++ compiler here: the native bitmask is not built")
    masks = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(IndexError, match="out of range"):
        apply_token_bitmask_(torch.zeros(3, 64), masks, indices=[0, 3])
    with pytest.raises(ValueError, match="rows"):
        apply_token_bitmask_(torch.zeros(3, 64), masks, indices=[0])
    with pytest.raises(ValueError, match="rows"):
        apply_token_bitmask_(torch.zeros(3, 64), masks)
    apply_token_bitmask_(torch.zeros(3, 64), masks[:0], indices=[])  # nothing to mask
    # Other dtypes and column-strided logits take the torch path, with the same result.
    for logits in (torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(64, 2).t()):
        assert not bitmask_mod._apply_native(logits.clone(), masks, None)
        expected = logits.clone()
        bitmask_mod.apply_token_bitmask_torch(expected, masks)
        apply_token_bitmask_(logits, masks)
        assert torch.equal(logits, expected)


def test_without_the_native_library_cpu_logits_use_torch(monkeypatch):
    monkeypatch.setattr(bitmask_mod, "native_bitmask", lambda: None)
    masks = torch.from_numpy(np.stack([pack_token_ids(np.array([1, 40]), 2)] * 2))
    logits = torch.randn(2, 64)
    expected = logits.clone()
    bitmask_mod.apply_token_bitmask_torch(expected, masks)
    apply_token_bitmask_(logits, masks)
    assert torch.equal(logits, expected)


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
