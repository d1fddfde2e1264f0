"""Paged attention vs a float64 per-request reference: decode through the native CPU kernel and
the torch fallback; extend through its torch implementation (the only one)."""

from __future__ import annotations

import math

import pytest
import torch

from radixrt.model import native

D = 64
HEADS = [(9, 3), (4, 4)]  # (query heads, kv heads): GQA 3:1 and plain MHA


@pytest.fixture(scope="module")
def native_ops():
    ops = native.load_native()
    if ops is None:
        pytest.skip(f"native paged-attention kernels unavailable: {native.native_unavailable_reason()}")
    return ops


@pytest.fixture(params=["native", "torch"])
def impl(request, monkeypatch):
    """``paged_decode_attention`` through the native kernel, or with the fallback forced by env."""
    if request.param == "native":
        request.getfixturevalue("native_ops")
        monkeypatch.delenv("RADIXRT_DISABLE_NATIVE", raising=False)
    else:
        monkeypatch.setenv("RADIXRT_DISABLE_NATIVE", "1")
        assert not native.native_available()
    return request.param


# ---- inputs and reference ---------------------------------------------------------------------

def _pool(num_slots: int, kv: int, gen: torch.Generator, d: int = D):
    k_buf = torch.randn(num_slots, kv, d, generator=gen)
    v_buf = torch.randn(num_slots, kv, d, generator=gen)
    k_buf[0] = 1e4  # padding slot: huge, would dominate any softmax that wrongly reads it
    v_buf[0] = 1e4
    return k_buf, v_buf


def _kv_indices(seq_lens: list[int], num_slots: int, gen: torch.Generator) -> torch.Tensor:
    """Distinct, non-contiguous random slots (never slot 0) per request; rows 0-padded."""
    lmax = max(seq_lens)
    perm = torch.randperm(num_slots - 1, generator=gen) + 1
    rows = torch.zeros(len(seq_lens), lmax, dtype=torch.int64)
    off = 0
    for b, s in enumerate(seq_lens):
        rows[b, :s] = perm[off:off + s]
        off += s
    return rows


def _ref_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                scale: float) -> torch.Tensor:
    """q [n, H, D], k/v [s, KV, D] float64; query i sees keys 0..positions[i]."""
    H, KV = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // KV, dim=1)  # head h uses kv head h // G
    v = v.repeat_interleave(H // KV, dim=1)
    scores = torch.einsum("nhd,shd->hns", q, k) * scale
    keep = torch.arange(k.shape[0]).unsqueeze(0) <= positions.unsqueeze(1)  # [n, s]
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("hns,shd->nhd", torch.softmax(scores, dim=-1), v)


def ref_decode(q, k_buf, v_buf, kv_indices, seq_lens, scale):
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        idx = kv_indices[b, :int(seq_lens[b])]
        out[b] = _ref_attend(q[b:b + 1].double(), k_buf[idx].double(), v_buf[idx].double(),
                             torch.tensor([len(idx) - 1]), scale)[0]
    return out


def ref_extend(q, k_buf, v_buf, kv_indices, seq_lens, extend_lens, q_starts, scale):
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(kv_indices.shape[0]):
        s, e, q0 = int(seq_lens[b]), int(extend_lens[b]), int(q_starts[b])
        idx = kv_indices[b, :s]
        out[q0:q0 + e] = _ref_attend(q[q0:q0 + e].double(), k_buf[idx].double(), v_buf[idx].double(),
                                     torch.arange(s - e, s), scale)
    return out


def _close(out: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5):
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out.double() - ref).abs().max().item()
    assert err <= atol, f"max abs err {err:.3g} > {atol}"


# ---- decode -----------------------------------------------------------------------------------

DECODE_CASES = [
    [1],
    [7],
    [1, 1, 1],
    [1, 5, 33, 130],
    [200] * 8,
    [3, 600, 17, 64, 1, 257],
    [2048],
]


@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("seq_lens", DECODE_CASES, ids=lambda s: "-".join(map(str, s[:4])))
def test_decode(impl, heads, seq_lens):
    H, KV = heads
    gen = torch.Generator().manual_seed(hash((H, KV, tuple(seq_lens))) % 2**31)
    num_slots = sum(seq_lens) + 50
    k_buf, v_buf = _pool(num_slots, KV, gen)
    kv_indices = _kv_indices(seq_lens, num_slots, gen)
    seq = torch.tensor(seq_lens, dtype=torch.int64)
    q = torch.randn(len(seq_lens), H, D, generator=gen)
    scale = 1 / math.sqrt(D)
    out = native.paged_decode_attention(q, k_buf, v_buf, kv_indices, seq, scale)
    _close(out, ref_decode(q, k_buf, v_buf, kv_indices, seq, scale))


def test_decode_large_scores_stable(impl):
    """Scores in the thousands: a naive exp would overflow; online/two-pass softmax must not."""
    gen = torch.Generator().manual_seed(1)
    k_buf, v_buf = _pool(500, 3, gen)
    k_buf.mul_(30)
    kv_indices = _kv_indices([150, 300], 500, gen)
    seq = torch.tensor([150, 300])
    q = torch.randn(2, 9, D, generator=gen) * 30
    out = native.paged_decode_attention(q, k_buf, v_buf, kv_indices, seq, 0.125)
    assert torch.isfinite(out).all()
    _close(out, ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.125), atol=1e-4)


def test_decode_noncontiguous_q_and_strided_pool(impl):
    """q a transposed view; k/v slices of one fused [slots, 2, KV, D] buffer (slot stride 2*KV*D)."""
    gen = torch.Generator().manual_seed(2)
    kv = torch.randn(300, 2, 3, D, generator=gen)
    k_buf, v_buf = kv[:, 0], kv[:, 1]
    kv_indices = _kv_indices([40, 99, 1], 300, gen)
    seq = torch.tensor([40, 99, 1])
    q = torch.randn(9, 3, D, generator=gen).transpose(0, 1)
    out = native.paged_decode_attention(q, k_buf, v_buf, kv_indices, seq, 0.1)
    _close(out, ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.1))


# ---- extend (torch) ---------------------------------------------------------------------------

EXTEND_CASES = [  # (seq_lens, extend_lens)
    ([1], [1]),
    ([5], [5]),
    ([300], [300]),
    ([300], [1]),
    ([257], [100]),
    ([40, 1, 130, 77], [40, 1, 3, 77]),
    ([64, 200, 33], [10, 64, 1]),
    ([128 + 256] * 2, [128] * 2),
]


@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("case", EXTEND_CASES, ids=lambda c: "s" + "-".join(map(str, c[0])) + "_e" + "-".join(map(str, c[1])))
def test_extend(heads, case):
    seq_lens, extend_lens = case
    H, KV = heads
    gen = torch.Generator().manual_seed(hash((H, KV, tuple(seq_lens), tuple(extend_lens))) % 2**31)
    num_slots = sum(seq_lens) + 50
    k_buf, v_buf = _pool(num_slots, KV, gen)
    kv_indices = _kv_indices(seq_lens, num_slots, gen)
    q_starts = torch.tensor([sum(extend_lens[:b]) for b in range(len(extend_lens))], dtype=torch.int64)
    T = sum(extend_lens)
    q = torch.randn(T, H, D, generator=gen)
    seq, ext = torch.tensor(seq_lens), torch.tensor(extend_lens)
    scale = 1 / math.sqrt(D)
    out = native.torch_paged_extend_attention(q, k_buf, v_buf, kv_indices, seq, ext, q_starts, scale)
    _close(out, ref_extend(q, k_buf, v_buf, kv_indices, seq, ext, q_starts, scale))


def test_extend_out_of_order_q_starts_and_zero_extend():
    """Requests' tokens need not be laid out in request order; a request may have no new tokens."""
    gen = torch.Generator().manual_seed(3)
    k_buf, v_buf = _pool(500, 3, gen)
    seq_lens, extend_lens = [50, 90, 20], [30, 0, 20]
    kv_indices = _kv_indices(seq_lens, 500, gen)
    q_starts = torch.tensor([20, 50, 0])
    q = torch.randn(50, 9, D, generator=gen)
    seq, ext = torch.tensor(seq_lens), torch.tensor(extend_lens)
    out = native.torch_paged_extend_attention(q, k_buf, v_buf, kv_indices, seq, ext, q_starts, 0.125)
    _close(out, ref_extend(q, k_buf, v_buf, kv_indices, seq, ext, q_starts, 0.125))


def test_decode_matches_extend_of_one_token(impl):
    """A mixed batch sends one-token requests to the decode path: it must agree with extend."""
    gen = torch.Generator().manual_seed(4)
    k_buf, v_buf = _pool(400, 3, gen)
    seq_lens = [17, 250, 1]
    kv_indices = _kv_indices(seq_lens, 400, gen)
    q = torch.randn(3, 9, D, generator=gen)
    seq = torch.tensor(seq_lens)
    ones = torch.ones(3, dtype=torch.int64)
    dec = native.paged_decode_attention(q, k_buf, v_buf, kv_indices, seq, 0.125)
    ext = native.torch_paged_extend_attention(q, k_buf, v_buf, kv_indices, seq, ones, torch.arange(3), 0.125)
    torch.testing.assert_close(dec, ext, atol=1e-5, rtol=1e-5)


# ---- native specifics -------------------------------------------------------------------------

def test_native_rejects_bad_slot(native_ops):
    k_buf = torch.randn(10, 1, D)
    kv_indices = torch.tensor([[1, 2, 10]])
    with pytest.raises(RuntimeError, match="slot outside"):
        native_ops.decode(torch.randn(1, 1, D), k_buf, k_buf.clone(), kv_indices, torch.tensor([3]), 1.0)
    # padding beyond seq_lens is never read, so any value there is fine
    native_ops.decode(torch.randn(1, 1, D), k_buf, k_buf.clone(), kv_indices, torch.tensor([2]), 1.0)


def test_non_float32_falls_back(native_ops):
    gen = torch.Generator().manual_seed(5)
    k_buf, v_buf = _pool(100, 3, gen)
    kv_indices = _kv_indices([20, 30], 100, gen)
    q = torch.randn(2, 9, D, generator=gen)
    seq = torch.tensor([20, 30])
    out = native.paged_decode_attention(q.double(), k_buf.double(), v_buf.double(), kv_indices, seq, 0.125)
    assert out.dtype == torch.float64
    _close(out.float(), ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.125))


def test_native_nan_propagates_and_inf_keys_masked(native_ops):
    """No -ffast-math: a NaN query gives NaN; a padded (unread) slot full of inf changes nothing."""
    gen = torch.Generator().manual_seed(6)
    k_buf, v_buf = _pool(100, 3, gen)
    k_buf[0] = float("inf")
    v_buf[0] = float("nan")
    kv_indices = _kv_indices([10, 40], 100, gen)
    q = torch.randn(2, 9, D, generator=gen)
    q[0, 4, 7] = float("nan")
    seq = torch.tensor([10, 40])
    out = native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.125)
    assert torch.isnan(out[0, 4]).all()
    others = torch.cat([out[0, :4], out[0, 5:]])  # incl. heads 3 and 5, which share head 4's K/V
    assert torch.isfinite(others).all() and torch.isfinite(out[1]).all()
    _close(out[1:], ref_decode(q[1:], k_buf, v_buf, kv_indices[1:], seq[1:], 0.125))


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_native_decode_split_keys(native_ops, threads):
    """Few requests x kv heads per thread: the kernel splits keys into chunks and merges them;
    also requests shorter than a chunk (empty chunks)."""
    gen = torch.Generator().manual_seed(8)
    seq_lens = [1500, 3]
    k_buf, v_buf = _pool(1600, 3, gen)
    kv_indices = _kv_indices(seq_lens, 1600, gen)
    q = torch.randn(2, 9, D, generator=gen)
    seq = torch.tensor(seq_lens)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.125)
        one = native_ops.decode(q[:1], k_buf, v_buf, kv_indices[:1], seq[:1], 0.125)
    finally:
        torch.set_num_threads(n)
    _close(out, ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.125))
    _close(one, ref_decode(q[:1], k_buf, v_buf, kv_indices[:1], seq[:1], 0.125))


@pytest.mark.parametrize("d", [20, 128])
def test_native_other_head_dims(native_ops, d):
    """head_dim not a multiple of the vector width, and a large one."""
    gen = torch.Generator().manual_seed(9)
    seq_lens = [70, 13, 40]
    k_buf, v_buf = _pool(200, 2, gen, d)
    kv_indices = _kv_indices(seq_lens, 200, gen)
    seq = torch.tensor(seq_lens)
    q = torch.randn(3, 6, d, generator=gen)
    _close(native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.2),
           ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.2))


def test_native_respects_thread_count(native_ops):
    gen = torch.Generator().manual_seed(7)
    k_buf, v_buf = _pool(2000, 3, gen)
    kv_indices = _kv_indices([300, 500, 700], 2000, gen)
    q = torch.randn(3, 9, D, generator=gen)
    seq = torch.tensor([300, 500, 700])
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.125)
    finally:
        torch.set_num_threads(n)
    many = native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.125)
    # with few requests per thread the keys are split into chunks, which changes the rounding
    torch.testing.assert_close(one, many, atol=1e-6, rtol=1e-5)


def test_build_failure_falls_back_once(tmp_path, monkeypatch, caplog):
    """A source that does not compile: warning logged once, None returned, torch path used."""
    bad = tmp_path / "paged_attention.cpp"
    bad.write_text("#error deliberately broken\n")
    monkeypatch.setattr(native, "_SOURCE", bad)
    monkeypatch.setattr(native, "_state", {"tried": False, "ops": None, "reason": ""})
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RADIXRT_DISABLE_NATIVE", raising=False)
    with caplog.at_level("WARNING", logger="radixrt.native"):
        assert native.load_native() is None
        assert not native.native_available()
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    assert "deliberately broken" in native.native_unavailable_reason()
    gen = torch.Generator().manual_seed(10)
    k_buf, v_buf = _pool(50, 3, gen)
    kv_indices = _kv_indices([5, 9], 50, gen)
    q = torch.randn(2, 9, D, generator=gen)
    seq = torch.tensor([5, 9])
    _close(native.paged_decode_attention(q, k_buf, v_buf, kv_indices, seq, 0.125),
           ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.125))


def test_native_baseline_isa_variant(native_ops):
    """The portable (non-AVX2) build of the kernels, forced in a fresh process."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from radixrt.model import native
        ops = native.load_native()
        assert ops.isa() == "baseline", ops.isa()
        g = torch.Generator().manual_seed(0)
        k, v = torch.randn(900, 3, 64, generator=g), torch.randn(900, 3, 64, generator=g)
        seq = torch.tensor([300, 17, 500])
        idx = torch.zeros(3, 500, dtype=torch.long)
        perm = torch.randperm(899, generator=g) + 1
        idx[0, :300], idx[1, :17], idx[2, :500] = perm[:300], perm[300:317], perm[317:817]
        q = torch.randn(3, 9, 64, generator=g)
        ref = native.torch_paged_decode_attention(q, k, v, idx, seq, 0.125)
        for threads in (1, 8):  # units of whole requests, then of (request, kv head) pairs
            torch.set_num_threads(threads)
            err = (ops.decode(q, k, v, idx, seq, 0.125) - ref).abs().max()
            print(threads, float(err))
            assert err < 1e-5
    """)
    env = dict(os.environ, RADIXRT_NATIVE_ISA="baseline")
    env.pop("RADIXRT_DISABLE_NATIVE", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _paged_indices(seq_lens: list[int], page: int, num_slots: int, gen: torch.Generator) -> torch.Tensor:
    """Each request's tokens in whole pages of `page` contiguous slots, pages in random order."""
    n_pages = (num_slots - 1) // page
    order = (torch.randperm(n_pages, generator=gen) * page + 1).tolist()
    rows = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int64)
    for b, s in enumerate(seq_lens):
        for j in range(s):
            if j % page == 0:
                start = order.pop()
            rows[b, j] = start + j % page
    return rows


@pytest.mark.parametrize("threads", [1, 2, 16])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (6, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_native_decode_unit_shapes(native_ops, heads, page, threads):
    """Batch of mixed, odd lengths: with >= 2 requests per thread a unit is a whole request (all
    kv heads of each slot row), with fewer a (request, kv head) pair, with 16 threads also key
    chunks; GQA 3, 1 (MHA) and a single kv head; slots one by one or in pages of 16."""
    H, KV = heads
    gen = torch.Generator().manual_seed(H * 100 + KV * 10 + page)
    seq_lens = [1, 15, 16, 17, 33, 48, 7, 600, 3, 64]
    num_slots = 16 * (sum(seq_lens) // 16 + len(seq_lens) + 2) + 1
    k_buf, v_buf = _pool(num_slots, KV, gen)
    kv_indices = _paged_indices(seq_lens, page, num_slots, gen)
    seq = torch.tensor(seq_lens)
    q = torch.randn(len(seq_lens), H, D, generator=gen)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = native_ops.decode(q, k_buf, v_buf, kv_indices, seq, 0.125)
    finally:
        torch.set_num_threads(n)
    _close(out, ref_decode(q, k_buf, v_buf, kv_indices, seq, 0.125))
