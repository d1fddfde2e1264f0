"""Native fused element-wise ops against the torch expressions they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radixrt.model import native
from radixrt.model.rope import RotaryEmbedding

ops = native.fused_ops()
pytestmark = pytest.mark.skipif(ops is None, reason="native kernels unavailable: "
                                + (native.native_unavailable_reason() if ops is None else ""))


@pytest.mark.parametrize("T", [1, 7, 300])  # 300 rows: the threaded path
def test_rms_norm_and_residual_add(T):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 576, generator=g) * 3
    w = torch.randn(576, generator=g)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-5)
    h, delta = x.clone(), torch.randn(T, 576, generator=g)
    out = ops.add_rms_norm_(h, delta, w, 1e-6)
    torch.testing.assert_close(h, x + delta)  # in place
    torch.testing.assert_close(out, F.rms_norm(x + delta, (576,), w, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 40])
def test_silu_mul(T):
    g = torch.Generator().manual_seed(T)
    gu = torch.randn(T, 2 * 1536, generator=g) * 4
    gu[0, :6] = torch.tensor([0.0, 100.0, -100.0, 1e30, -1e30, float("nan")])
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(ops.silu_mul(gu), F.silu(gate) * up, rtol=1e-5, atol=1e-6, equal_nan=True)
    with pytest.raises(RuntimeError, match="even"):
        ops.silu_mul(torch.randn(2, 5))


@pytest.mark.parametrize("T", [1, 9, 400])
def test_rope_store(T):
    H, KV, D, S = 9, 3, 64, 1024
    g = torch.Generator().manual_seed(T)
    rope = RotaryEmbedding(D, 10000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
                           2048, torch.float32, "cpu")
    qkv = torch.randn(T, (H + 2 * KV) * D, generator=g)
    positions = torch.randint(0, 2048, (T,), generator=g)
    loc = torch.randperm(S, generator=g)[:T]
    k_buf, v_buf = torch.zeros(S, KV, D), torch.zeros(S, KV, D)
    q = ops.rope_store(qkv, positions, rope.cos, rope.sin, k_buf, v_buf, loc, H, KV)
    rq, rk, rv = qkv.split([H * D, KV * D, KV * D], dim=-1)
    cos, sin = rope.cos_sin(positions)
    torch.testing.assert_close(q, rope.apply(rq.view(T, H, D), cos, sin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_buf[loc], rope.apply(rk.view(T, KV, D), cos, sin), rtol=1e-5, atol=1e-5)
    assert torch.equal(v_buf[loc], rv.reshape(T, KV, D))
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[loc] = False
    assert not k_buf[untouched].any() and not v_buf[untouched].any()


def test_rope_store_rejects_bad_indices():
    H, KV, D = 2, 1, 8
    rope = RotaryEmbedding(D, 10000.0, None, 16, torch.float32, "cpu")
    qkv = torch.randn(1, (H + 2 * KV) * D)
    k_buf, v_buf = torch.zeros(4, KV, D), torch.zeros(4, KV, D)
    with pytest.raises(RuntimeError, match="position"):
        ops.rope_store(qkv, torch.tensor([16]), rope.cos, rope.sin, k_buf, v_buf, torch.tensor([0]), H, KV)
    with pytest.raises(RuntimeError, match="slot"):
        ops.rope_store(qkv, torch.tensor([3]), rope.cos, rope.sin, k_buf, v_buf, torch.tensor([4]), H, KV)
    with pytest.raises(RuntimeError, match="width"):
        ops.rope_store(qkv, torch.tensor([3]), rope.cos, rope.sin, k_buf, v_buf, torch.tensor([0]), H + 1, KV)
