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
float32 rounding). One program per token row (per (token, head) for RoPE): at decode sizes
these ops are launch-bound, and one launch replaces 3-8 torch kernels. On CPU the kernels run
only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, n, x_stride, d_stride, out_stride, eps,
                     HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + row * x_stride + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x += tl.load(d_ptr + row * d_stride + offs, mask=m, other=0.0).to(tl.float32)
        xr = x.to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * x_stride + offs, xr, mask=m)
        x = xr.to(tl.float32)  # normalise what the residual stream holds (its rounding), as torch
    var = tl.sum(x * x, axis=0) / n
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(var + eps) * w
    tl.store(out_ptr + row * out_stride + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def _check_rows(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name} expects a row-major 2-D tensor, got shape {tuple(x.shape)}")


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    _check_rows("rms_norm", x)
    T, N = x.shape
    out = torch.empty_like(x)
    if T:
        _rms_norm_kernel[(T,)](x, x, w, out, N, x.stride(0), 0, out.stride(0), eps,
                               HAS_DELTA=False, BLOCK=triton.next_power_of_2(N))
    return out


def add_rms_norm_(h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    _check_rows("add_rms_norm_", h)
    _check_rows("add_rms_norm_", delta)
    if delta.shape != h.shape:
        raise ValueError(f"add_rms_norm_: delta {tuple(delta.shape)} != h {tuple(h.shape)}")
    T, N = h.shape
    out = torch.empty_like(h)
    if T:
        _rms_norm_kernel[(T,)](h, delta, w, out, N, h.stride(0), delta.stride(0), out.stride(0), eps,
                               HAS_DELTA=True, BLOCK=triton.next_power_of_2(N))
    return out


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inter, gu_stride, out_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < inter
    g = tl.load(gu_ptr + row * gu_stride + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * gu_stride + inter + offs, mask=m, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + row * out_stride + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    _check_rows("silu_mul", gate_up)
    T, two_i = gate_up.shape
    if two_i % 2:
        raise ValueError(f"silu_mul expects an even last dimension, got {two_i}")
    inter = two_i // 2
    out = torch.empty((T, inter), dtype=gate_up.dtype, device=gate_up.device)
    if T:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_mul_kernel[(T, triton.cdiv(inter, block))](gate_up, out, inter, gate_up.stride(0),
                                                         out.stride(0), BLOCK=block)
    return out


@triton.jit
def _rope_store_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_out_ptr, k_buf_ptr, v_buf_ptr, loc_ptr,
                       qkv_stride, cs_stride, q_stride_t, q_stride_h, kb_stride_s, kb_stride_h,
                       vb_stride_s, vb_stride_h, H: tl.constexpr, KV: tl.constexpr,
                       D: tl.constexpr, HALF_BLOCK: tl.constexpr):
    t = tl.program_id(0)
    head = tl.program_id(1)  # 0..H-1: q heads; H..H+KV-1: k heads (each also copies its v head)
    half = D // 2
    offs = tl.arange(0, HALF_BLOCK)
    m = offs < half
    pos = tl.load(pos_ptr + t)
    c1 = tl.load(cos_ptr + pos * cs_stride + offs, mask=m, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * cs_stride + half + offs, mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * cs_stride + offs, mask=m, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * cs_stride + half + offs, mask=m, other=0.0).to(tl.float32)
    src = qkv_ptr + t * qkv_stride + head * D
    x1 = tl.load(src + offs, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + half + offs, mask=m, other=0.0).to(tl.float32)
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    if head < H:
        dst = q_out_ptr + t * q_stride_t + head * q_stride_h
        tl.store(dst + offs, y1.to(q_out_ptr.dtype.element_ty), mask=m)
        tl.store(dst + half + offs, y2.to(q_out_ptr.dtype.element_ty), mask=m)
    else:
        kh = head - H
        slot = tl.load(loc_ptr + t).to(tl.int64)
        kdst = k_buf_ptr + slot * kb_stride_s + kh * kb_stride_h
        tl.store(kdst + offs, y1.to(k_buf_ptr.dtype.element_ty), mask=m)
        tl.store(kdst + half + offs, y2.to(k_buf_ptr.dtype.element_ty), mask=m)
        vsrc = qkv_ptr + t * qkv_stride + (H + KV + kh) * D
        vdst = v_buf_ptr + slot * vb_stride_s + kh * vb_stride_h
        v1 = tl.load(vsrc + offs, mask=m, other=0.0)
        v2 = tl.load(vsrc + half + offs, mask=m, other=0.0)
        tl.store(vdst + offs, v1.to(v_buf_ptr.dtype.element_ty), mask=m)
        tl.store(vdst + half + offs, v2.to(v_buf_ptr.dtype.element_ty), mask=m)


def rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor, num_heads: int,
               num_kv_heads: int) -> torch.Tensor:
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
        _rope_store_kernel[(T, num_heads + num_kv_heads)](
            qkv, positions, cos, sin, q, k_buf, v_buf, loc, qkv.stride(0), cos.stride(0),
            q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0),
            v_buf.stride(1), H=num_heads, KV=num_kv_heads, D=D,
            HALF_BLOCK=triton.next_power_of_2(D // 2))
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
