"""Fused per-layer element-wise ops in Triton for the GPU decoder, each with its torch reference.

Same signatures and semantics as the native CPU ops (``radixrt/csrc/fused_ops.cpp``), so
``LlamaModel`` runs one layer the same way on either:

- ``rms_norm(x [T, N], w [N], eps) -> [T, N]``
- ``add_rms_norm_(h [T, N], delta [T, N], w [N], eps) -> [T, N]``: ``h += delta`` in place
  (the residual stream), returns ``rms_norm(h)``.
- ``silu_mul(gate_up [T, 2I]) -> [T, I]``: ``silu(gate) * up``.
- ``rope_store(qkv [T, (H+2KV)*D], positions [T], cos [P, D], sin [P, D], k_buf, v_buf, loc [T],
  H, KV) -> q [T, H, D]``: rotate-half RoPE on q and k; k and v written to KV slots ``loc``.

Every kernel computes in float32 and rounds once on store (the torch references round after
each op in the tensor dtype, so bf16 results differ by a rounding step; float32 agrees to
float32 rounding). One program per token row on a GPU (``rows_per_program``; RoPE handles all
heads of a token in one program): at decode sizes these ops are launch-bound, and one launch
replaces 3-8 torch kernels. On CPU the kernels run
only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def rows_per_program(num_rows: int, device: torch.device) -> int:
    """Token rows per program: one on a GPU (thousands of programs in flight hide the rest);
    up to 16 under the interpreter, where every program costs ~0.4 ms of Python."""
    if device.type == "cuda":
        return 1
    return min(16, triton.next_power_of_2(max(1, num_rows)))


@triton.jit
def _rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, T, n, x_stride, d_stride, out_stride, eps,
                     HAS_DELTA: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, BLOCK)
    m = (rows < T)[:, None] & (offs < n)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + r64 * x_stride + offs[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x += tl.load(d_ptr + r64 * d_stride + offs[None, :], mask=m, other=0.0).to(tl.float32)
        xr = x.to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + r64 * x_stride + offs[None, :], xr, mask=m)
        x = xr.to(tl.float32)  # normalise what the residual stream holds (its rounding), as torch
    var = tl.reduce(x * x, 1, tl.standard._sum_combine) / n  # = tl.sum (see triton_attention)
    w = tl.load(w_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(var + eps)[:, None] * w[None, :]
    tl.store(out_ptr + r64 * out_stride + offs[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


def _check_rows(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name} expects a row-major 2-D tensor, got shape {tuple(x.shape)}")


def _norm(x: torch.Tensor, delta: torch.Tensor | None, w: torch.Tensor, eps: float,
          rows: int | None) -> torch.Tensor:
    T, N = x.shape
    out = torch.empty_like(x)
    if T:
        rows = rows or rows_per_program(T, x.device)
        _rms_norm_kernel[(triton.cdiv(T, rows),)](
            x, x if delta is None else delta, w, out, T, N, x.stride(0),
            0 if delta is None else delta.stride(0), out.stride(0), eps,
            HAS_DELTA=delta is not None, ROWS=rows, BLOCK=triton.next_power_of_2(N))
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, rows: int | None = None) -> torch.Tensor:
    _check_rows("rms_norm", x)
    return _norm(x, None, w, eps, rows)


def add_rms_norm_(h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, eps: float,
                  rows: int | None = None) -> torch.Tensor:
    _check_rows("add_rms_norm_", h)
    _check_rows("add_rms_norm_", delta)
    if delta.shape != h.shape:
        raise ValueError(f"add_rms_norm_: delta {tuple(delta.shape)} != h {tuple(h.shape)}")
    return _norm(h, delta, w, eps, rows)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, T, inter, gu_stride, out_stride, ROWS: tl.constexpr,
                     BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = (rows < T)[:, None] & (offs < inter)[None, :]
    src = gu_ptr + rows.to(tl.int64)[:, None] * gu_stride + offs[None, :]
    g = tl.load(src, mask=m, other=0.0).to(tl.float32)
    u = tl.load(src + inter, mask=m, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * out_stride + offs[None, :],
             y.to(out_ptr.dtype.element_ty), mask=m)


def silu_mul(gate_up: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    _check_rows("silu_mul", gate_up)
    T, two_i = gate_up.shape
    if two_i % 2:
        raise ValueError(f"silu_mul expects an even last dimension, got {two_i}")
    inter = two_i // 2
    out = torch.empty((T, inter), dtype=gate_up.dtype, device=gate_up.device)
    if T:
        rows = rows or rows_per_program(T, gate_up.device)
        block = triton.next_power_of_2(inter)
        if gate_up.device.type == "cuda":
            block = min(1024, block)
        _silu_mul_kernel[(triton.cdiv(T, rows), triton.cdiv(inter, block))](
            gate_up, out, T, inter, gate_up.stride(0), out.stride(0), ROWS=rows, BLOCK=block)
    return out


@triton.jit
def _rotate(src_ptr, dst_ptr, t_src, t_dst, head_src, head_dst, nh, mrow, c1, c2, s1, s2,
            half, HEADS: tl.constexpr, HALF: tl.constexpr):
    # rows of [ROWS, HEADS, HALF]: token t, head h, first/second half of the head dim
    offs_h = tl.arange(0, HEADS)
    offs_d = tl.arange(0, HALF)
    m = mrow[:, None, None] & (offs_h < nh)[None, :, None] & (offs_d < half)[None, None, :]
    src = src_ptr + t_src[:, None, None] + (offs_h * head_src)[None, :, None] + offs_d[None, None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=m, other=0.0).to(tl.float32)
    dst = dst_ptr + t_dst[:, None, None] + (offs_h * head_dst)[None, :, None] + offs_d[None, None, :]
    tl.store(dst, (x1 * c1 - x2 * s1).to(dst_ptr.dtype.element_ty), mask=m)
    tl.store(dst + half, (x2 * c2 + x1 * s2).to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_store_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_out_ptr, k_buf_ptr, v_buf_ptr, loc_ptr,
                       T, qkv_stride, cs_stride, q_stride_t, q_stride_h, kb_stride_s, kb_stride_h,
                       vb_stride_s, vb_stride_h, H: tl.constexpr, KV: tl.constexpr,
                       D: tl.constexpr, ROWS: tl.constexpr, HP: tl.constexpr, KVP: tl.constexpr,
                       HALF: tl.constexpr):
    half = D // 2
    t = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    mt = t < T
    t64 = t.to(tl.int64)
    offs_d = tl.arange(0, HALF)
    mc = mt[:, None] & (offs_d < half)[None, :]
    pos = tl.load(pos_ptr + t, mask=mt, other=0).to(tl.int64)
    cs = pos[:, None] * cs_stride + offs_d[None, :]
    c1 = tl.load(cos_ptr + cs, mask=mc, other=0.0).to(tl.float32)[:, None, :]
    c2 = tl.load(cos_ptr + cs + half, mask=mc, other=0.0).to(tl.float32)[:, None, :]
    s1 = tl.load(sin_ptr + cs, mask=mc, other=0.0).to(tl.float32)[:, None, :]
    s2 = tl.load(sin_ptr + cs + half, mask=mc, other=0.0).to(tl.float32)[:, None, :]
    row = t64 * qkv_stride
    _rotate(qkv_ptr, q_out_ptr, row, t64 * q_stride_t, D, q_stride_h, H, mt, c1, c2, s1, s2, half,
            HP, HALF)
    slot = tl.load(loc_ptr + t, mask=mt, other=0).to(tl.int64)
    _rotate(qkv_ptr + H * D, k_buf_ptr, row, slot * kb_stride_s, D, kb_stride_h, KV, mt, c1, c2,
            s1, s2, half, KVP, HALF)
    # v: copied to its slot unrotated
    offs_h = tl.arange(0, KVP)
    offs_full = tl.arange(0, 2 * HALF)
    mv = mt[:, None, None] & (offs_h < KV)[None, :, None] & (offs_full < D)[None, None, :]
    v = tl.load(qkv_ptr + (H + KV) * D + row[:, None, None] + (offs_h * D)[None, :, None]
                + offs_full[None, None, :], mask=mv, other=0.0)
    tl.store(v_buf_ptr + (slot * vb_stride_s)[:, None, None] + (offs_h * vb_stride_h)[None, :, None]
             + offs_full[None, None, :], v.to(v_buf_ptr.dtype.element_ty), mask=mv)


def rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor, num_heads: int,
               num_kv_heads: int, rows: int | None = None) -> torch.Tensor:
    _check_rows("rope_store", qkv)
    T = qkv.shape[0]
    D = k_buf.shape[2]
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * D or D % 2:
        raise ValueError(f"rope_store: qkv width {qkv.shape[1]} does not match "
                         f"({num_heads} + 2*{num_kv_heads}) heads of dim {D}")
    if k_buf.stride(2) != 1 or v_buf.stride(2) != 1 or cos.stride(1) != 1 or sin.stride() != cos.stride():
        raise ValueError("rope_store expects contiguous head rows and matching cos/sin tables")
    q = torch.empty((T, num_heads, D), dtype=qkv.dtype, device=qkv.device)
    if T:
        rows = rows or rows_per_program(T, qkv.device)
        _rope_store_kernel[(triton.cdiv(T, rows),)](
            qkv, positions, cos, sin, q, k_buf, v_buf, loc, T, qkv.stride(0), cos.stride(0),
            q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0),
            v_buf.stride(1), H=num_heads, KV=num_kv_heads, D=D, ROWS=rows,
            HP=triton.next_power_of_2(num_heads), KVP=triton.next_power_of_2(num_kv_heads),
            HALF=triton.next_power_of_2(D // 2))
    return q


# ---- torch references -------------------------------------------------------------------------

def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def add_rms_norm_ref_(h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h += delta
    return F.rms_norm(h, (h.shape[-1],), w, eps)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_store_ref(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor, num_heads: int,
                   num_kv_heads: int) -> torch.Tensor:
    T = qkv.shape[0]
    D = k_buf.shape[2]
    half = D // 2
    q, k, v = qkv.split([num_heads * D, num_kv_heads * D, num_kv_heads * D], dim=-1)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        return x * c + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * s

    k_buf[loc] = rot(k.reshape(T, num_kv_heads, D)).to(k_buf.dtype)
    v_buf[loc] = v.reshape(T, num_kv_heads, D).to(v_buf.dtype)
    return rot(q.reshape(T, num_heads, D))


__all__ = ["add_rms_norm_", "add_rms_norm_ref_", "rms_norm", "rms_norm_ref", "rope_store",
           "rope_store_ref", "silu_mul", "silu_mul_ref"]
