"""The Triton mask kernel agrees with the torch implementation, and ``apply_token_bitmask_``
uses it for CUDA logits (skipped without triton; on a CPU machine the kernel test runs under
TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

import radixrt.fsm.bitmask as bitmask_mod  # noqa: E402
from radixrt.fsm.bitmask import apply_token_bitmask_, apply_token_bitmask_torch  # noqa: E402
from radixrt.fsm.token_index import pack_token_ids  # noqa: E402

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU; set TRITON_INTERPRET=1 to run the kernel on CPU", allow_module_level=True)


@pytest.mark.parametrize("vocab, words", [(100, 4), (2100, 64), (70, 2)])
def test_triton_matches_torch(vocab, words):
    from radixrt.fsm.bitmask_triton import apply_token_bitmask_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(vocab)
    masks = [pack_token_ids(np.sort(rng.choice(words * 32, 17, replace=False)), words)
             for _ in range(3)]
    bitmask = torch.from_numpy(np.stack(masks)).to(device)
    logits = torch.randn(3, vocab, device=device)
    expected = logits.clone()
    apply_token_bitmask_torch(expected, bitmask)
    apply_token_bitmask_triton(logits, bitmask)
    assert torch.equal(torch.isinf(logits), torch.isinf(expected))
    assert torch.equal(logits[torch.isfinite(logits)], expected[torch.isfinite(expected)])
    # subset of rows
    logits = torch.randn(5, vocab, device=device)
    expected = logits.clone()
    apply_token_bitmask_torch(expected, bitmask[:2], indices=[4, 1])
    apply_token_bitmask_triton(logits, bitmask[:2], indices=[4, 1])
    assert torch.equal(torch.isinf(logits), torch.isinf(expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dispatch to the kernel needs CUDA logits")
def test_cuda_logits_dispatch_to_triton(monkeypatch):
    from radixrt.fsm.bitmask_triton import apply_token_bitmask_triton

    calls = []

    def spy(*args):
        calls.append(args)
        apply_token_bitmask_triton(*args)

    monkeypatch.setattr(bitmask_mod, "_triton_kernel", lambda: spy)
    bitmask = torch.from_numpy(np.stack([pack_token_ids(np.array([1, 40]), 2)] * 2)).cuda()
    logits = torch.randn(2, 64, device="cuda")
    expected = logits.clone()
    apply_token_bitmask_torch(expected, bitmask)
    apply_token_bitmask_(logits, bitmask)
    assert len(calls) == 1 and torch.equal(logits, expected)
    apply_token_bitmask_(logits.cpu(), bitmask.cpu())  # CPU: torch path
    assert len(calls) == 1
