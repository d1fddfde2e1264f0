"""The Triton mask kernel agrees with the torch implementation (skipped without triton; on a
CPU machine it runs under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from radixrt.fsm.bitmask import apply_token_bitmask_  # noqa: E402
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
    apply_token_bitmask_(expected, bitmask)
    apply_token_bitmask_triton(logits, bitmask)
    assert torch.equal(torch.isinf(logits), torch.isinf(expected))
    assert torch.equal(logits[torch.isfinite(logits)], expected[torch.isfinite(expected)])
    # subset of rows
    logits = torch.randn(5, vocab, device=device)
    expected = logits.clone()
    apply_token_bitmask_(expected, bitmask[:2], indices=[4, 1])
    apply_token_bitmask_triton(logits, bitmask[:2], indices=[4, 1])
    assert torch.equal(torch.isinf(logits), torch.isinf(expected))
