"""Triton paged attention vs the torch reference (``native.torch_paged_*``): compiled on a CUDA
device when there is one, else interpreted on CPU (``TRITON_INTERPRET=1``, set by
tests/conftest.py when there is no CUDA)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from radixrt.cache.memory_pool import KVAllocator  # noqa: E402
from radixrt.model import triton_attention as ta  # noqa: E402
from radixrt.model.forward_batch import ForwardBatch  # noqa: E402
from radixrt.model.native import torch_paged_decode_attention, torch_paged_extend_attention  # noqa: E402

D = 16  # small head dim: the interpreter's cost grows with block sizes
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _pool(seq_lens: list[int], page_size: int, kv_heads: int, seed: int = 0):
    """K/V buffers and a [B, Lmax] slot table from the real page allocator (sequences
    interleaved, so pages of different requests alternate in the pool)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(-(-s // page_size) * page_size for s in seq_lens) + 4 * page_size
    alloc = KVAllocator(total, page_size)
    slots: list[list[int]] = [[] for _ in seq_lens]
    # grow the requests a chunk at a time, round robin, so their pages interleave
    while any(len(sl) < s for sl, s in zip(slots, seq_lens)):
        for sl, s in zip(slots, seq_lens):
            n = min(5, s - len(sl))
            if n:
                sl.extend(alloc.alloc(n, sl[-1] if sl else None).tolist())
    rows = total + page_size
    k_buf = torch.randn(rows, kv_heads, D, generator=g)
    v_buf = torch.randn(rows, kv_heads, D, generator=g)
    lmax = max(seq_lens)
    kv_indices = torch.zeros(len(seq_lens), lmax, dtype=torch.int64)
    for b, sl in enumerate(slots):
        kv_indices[b, :len(sl)] = torch.tensor(sl)
    return k_buf.to(DEV), v_buf.to(DEV), kv_indices.to(DEV)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 3])
def test_decode_matches_torch(page_size, group):
    kv_heads = 2
    seq_lens = [1, 17, 40]
    k_buf, v_buf, kv_indices = _pool(seq_lens, page_size, kv_heads)
    q = torch.randn(len(seq_lens), kv_heads * group, D, device=DEV)
    sl = torch.tensor(seq_lens, device=DEV)
    ref = torch_paged_decode_attention(q, k_buf, v_buf, kv_indices, sl, 0.3)
    out = ta.decode_attention(q, k_buf, v_buf, kv_indices, sl, 0.3, num_splits=1, block_n=16)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_decode_split_boundaries():
    """Lengths on both sides of the split-chunk boundaries (4 splits of 16-token blocks), and
    lengths shorter than the number of splits (empty splits)."""
    kv_heads, group = 1, 3
    seq_lens = [1, 2, 15, 16, 17, 63, 64, 65, 80]
    k_buf, v_buf, kv_indices = _pool(seq_lens, 16, kv_heads, seed=1)
    q = torch.randn(len(seq_lens), kv_heads * group, D, device=DEV)
    sl = torch.tensor(seq_lens, device=DEV)
    ref = torch_paged_decode_attention(q, k_buf, v_buf, kv_indices, sl, 0.25)
    for splits in (2, 4):
        out = ta.decode_attention(q, k_buf, v_buf, kv_indices, sl, 0.25, num_splits=splits, block_n=16)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 3])
def test_extend_matches_torch(page_size, group):
    """Prefix lengths 0, 1 and odd; extends shorter and longer than one query block."""
    kv_heads = 2
    prefixes = [0, 1, 13, 0]
    extends = [5, 9, 20, 1]
    seq_lens = [p + e for p, e in zip(prefixes, extends)]
    k_buf, v_buf, kv_indices = _pool(seq_lens, page_size, kv_heads, seed=2)
    q = torch.randn(sum(extends), kv_heads * group, D, device=DEV)
    q_starts = torch.tensor([sum(extends[:b]) for b in range(len(extends))], device=DEV)
    sl, el = torch.tensor(seq_lens, device=DEV), torch.tensor(extends, device=DEV)
    ref = torch_paged_extend_attention(q, k_buf, v_buf, kv_indices, sl, el, q_starts, 0.3)
    # 16 query rows (4 tokens x 4 padded heads at GQA 3; 16 tokens at GQA 1), 16-key blocks: several
    # blocks each way, and the smallest tl.dot tiles a GPU compiles
    out = ta.extend_attention(q, k_buf, v_buf, kv_indices, sl, el, q_starts, 0.3, block_m=16, block_n=16)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def _forward_batch(prefixes: list[int], extends: list[int], page_size: int, kv_heads: int):
    seq_lens = [p + e for p, e in zip(prefixes, extends)]
    k_buf, v_buf, kv_indices = _pool(seq_lens, page_size, kv_heads, seed=3)
    req_to_token = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int64)
    req_to_token[:, :kv_indices.shape[1]] = kv_indices.cpu()
    fb = ForwardBatch.build([0] * sum(extends), seq_lens, extends, torch.zeros(sum(extends), dtype=torch.int64),
                            req_to_token, list(range(len(seq_lens))), device=DEV)
    return fb, k_buf, v_buf


@pytest.mark.parametrize("extends", [[1, 7, 1, 3, 1], [1, 1, 1], [4, 6], [1, 5]])
def test_backend_mixed_batches(extends):
    """Decode rows next to drafts/extends in one forward: the launch plan sends one-token rows
    through the decode kernel and the rest through the extend kernel, one output."""
    kv_heads, group = 1, 3
    prefixes = [30, 2, 0, 11, 70][:len(extends)]
    fb, k_buf, v_buf = _forward_batch(prefixes, extends, 16, kv_heads)
    q = torch.randn(sum(extends), kv_heads * group, D, device=DEV)
    be = ta.TritonAttentionBackend(0.3, DEV)
    plan = be.plan(fb, kv_heads)
    assert plan.decode_rows == sum(e == 1 for e in extends)
    assert plan.extend_rows == sum(e > 1 for e in extends)
    assert (plan.decode_req_ids is None) == (fb.is_decode or plan.decode_rows == 0)
    ref = torch_paged_extend_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, fb.extend_lens,
                                       fb.q_starts, 0.3)
    torch.testing.assert_close(be.forward(q, k_buf, v_buf, fb), ref, atol=2e-5, rtol=1e-4)
    assert be.plan(fb, kv_heads) is plan  # built once per forward, reused by every layer


def test_choose_num_splits():
    assert ta.choose_num_splits(100, 1, 8) == 1  # short context: no split
    assert ta.choose_num_splits(4096, 1, 8) == ta.MAX_SPLITS
    assert ta.choose_num_splits(4096, 1, 8, num_sms=132) == ta.MAX_SPLITS
    assert ta.choose_num_splits(4096, 256, 8, num_sms=132) == 1  # the batch fills the GPU
    assert ta.choose_num_splits(1024, 4, 2, num_sms=132) == 4  # capped by the length


def test_bad_shapes_are_rejected():
    q = torch.randn(2, 3, D)
    k = torch.randn(10, 2, D)  # 3 query heads do not group over 2 KV heads
    with pytest.raises(ValueError, match="heads"):
        ta.decode_attention(q, k, k, torch.zeros(2, 4, dtype=torch.int64), torch.tensor([1, 2]), 1.0)


def test_backend_selection(monkeypatch):
    from radixrt.model.attention import make_attention_backend

    monkeypatch.setattr(ta, "_num_sms", lambda device: 132 if torch.device(device).type == "cuda" else None)
    be = make_attention_backend("auto", 0.125, device="cuda", dtype=torch.bfloat16)
    assert be.name == "triton" and be.num_sms == 132  # auto on CUDA
    assert make_attention_backend("auto", 0.125, device="cpu").name in ("native", "torch")
    with pytest.raises(ValueError, match="triton"):
        make_attention_backend("flash", 0.125)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU without the interpreter: a clear error
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        make_attention_backend("triton", 0.125, device="cpu")
