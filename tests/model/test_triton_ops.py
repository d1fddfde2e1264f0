"""Triton fused element-wise ops vs their torch references: compiled on a CUDA device when there
is one, else interpreted on CPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from radixrt.model import triton_ops as to  # noqa: E402
from radixrt.model.rope import RotaryEmbedding  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# rows=1: one token per program (the GPU launch); None: several (the interpreter's default)
ROWS = [1, None]


@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_and_residual_add(rows):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 48, generator=g) * 3).to(DEV)
    w = torch.randn(48, generator=g).to(DEV)
    torch.testing.assert_close(to.rms_norm(x, w, 1e-5, rows=rows), to.rms_norm_ref(x, w, 1e-5))
    h1, h2 = x.clone(), x.clone()
    delta = torch.randn(5, 48, generator=g).to(DEV)
    out = to.add_rms_norm_(h1, delta, w, 1e-6, rows=rows)
    ref = to.add_rms_norm_ref_(h2, delta, w, 1e-6)
    torch.testing.assert_close(h1, h2)  # the residual stream is updated in place
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="delta"):
        to.add_rms_norm_(h1, delta[:, :8].contiguous(), w, 1e-6)


@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul(rows):
    gu = (torch.randn(3, 2 * 40, generator=torch.Generator().manual_seed(1)) * 4).to(DEV)
    torch.testing.assert_close(to.silu_mul(gu, rows=rows), to.silu_mul_ref(gu))
    with pytest.raises(ValueError, match="even"):
        to.silu_mul(torch.randn(2, 7, device=DEV))


@pytest.mark.parametrize(("kv_heads", "rows"), [(1, 1), (3, None)])
def test_rope_store(kv_heads, rows):
    H, D, T = 3, 16, 4
    g = torch.Generator().manual_seed(2)
    rope = RotaryEmbedding(D, 10000.0, None, 64, torch.float32, DEV)
    qkv = torch.randn(T, (H + 2 * kv_heads) * D, generator=g).to(DEV)
    positions = torch.tensor([0, 5, 17, 63], device=DEV)
    loc = torch.tensor([3, 9, 4, 1], device=DEV)
    bufs = [torch.zeros(12, kv_heads, D, device=DEV) for _ in range(4)]
    q = to.rope_store(qkv, positions, rope.cos, rope.sin, bufs[0], bufs[1], loc, H, kv_heads, rows=rows)
    q_ref = to.rope_store_ref(qkv, positions, rope.cos, rope.sin, bufs[2], bufs[3], loc, H, kv_heads)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(bufs[0], bufs[2])
    torch.testing.assert_close(bufs[1], bufs[3])
    # the reference is the model's own torch path
    c, s = rope.cos_sin(positions)
    torch.testing.assert_close(q_ref, rope.apply(qkv[:, :H * D].view(T, H, D), c, s))
    with pytest.raises(ValueError, match="qkv width"):
        to.rope_store(qkv[:, :-D].contiguous(), positions, rope.cos, rope.sin, bufs[0], bufs[1], loc, H,
                      kv_heads)
