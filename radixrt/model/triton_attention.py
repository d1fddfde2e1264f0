"""Triton attention kernels over the paged KV pool (the GPU attention backend).

The pool is ``k_buf`` / ``v_buf`` ``[num_slots, kv_heads, head_dim]``; request ``b`` owns the
slots ``kv_indices[b, :seq_lens[b]]`` in sequence order (any page size: the kernels read one
slot index per token, so pages of 1 or 16 slots, or any other, are the same to them). The new
tokens' K/V are already in the pool when attention runs (``rope_store`` wrote them).

Kernels:

- **decode** (one query token per request), GQA grouped: one program handles one KV head's
  group of query heads for one request (K/V rows read once per group, the group padded to 16
  rows for ``tl.dot``), online softmax in base 2. Long contexts are split along the KV length
  into ``num_splits`` chunks (stage 1 writes each chunk's normalised output and log-sum-exp);
  a second kernel merges the chunks. With one split, stage 1 writes the output directly.
- **extend** (new tokens after a cached prefix): one program per (request, KV head, block of
  new tokens), the KV head's query heads stacked as rows (K/V blocks read once per group); keys ``j`` are visible to new token ``i`` iff ``j <= prefix + i`` (the whole
  prefix, causal among the new tokens). Prefix lengths 0 (prefill) to anything.
- **mixed batches** (decode rows next to jump-forward drafts or prefill chunks): a
  ``LaunchPlan`` built once per ``ForwardBatch`` sends every one-token request through the
  decode kernel and the others through the extend kernel, both writing into one output via
  request-id indirection (no per-layer gathers).

``decode_attention`` / ``extend_attention`` match ``native.torch_paged_decode_attention`` /
``native.torch_paged_extend_attention`` (the contract; tests compare them under
``TRITON_INTERPRET=1`` on CPU tensors). ``TritonAttentionBackend`` is
``--attention-backend triton``, chosen by ``auto`` on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from radixrt.model.forward_batch import ForwardBatch

_LOG2E = 1.4426950408889634
DECODE_BLOCK_N = 64  # KV tokens per decode loop step
EXTEND_BLOCK_M = 64  # query rows (new tokens x grouped heads) per extend program
EXTEND_BLOCK_N = 32  # KV tokens per extend loop step
MIN_SPLIT_TOKENS = 256  # fewer KV tokens per split than this are not worth a second kernel
MAX_SPLITS = 16

# tl.max / tl.sum are jit wrappers that call tl.reduce with these combine functions (float32
# inputs: nothing else to promote). Calling tl.reduce directly compiles to the same code on a
# GPU, and Triton's interpreter then runs NumPy's reductions without re-entering a nested jit
# function each time (which re-patches triton.language, ~3 ms a call): 4x faster CPU tests.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


def interpreted() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


@triton.jit
def _decode_stage1_kernel(
        q_ptr, k_ptr, v_ptr, kv_idx_ptr, seq_lens_ptr, req_ids_ptr, q_rows_ptr,
        out_ptr, mid_o_ptr, mid_lse_ptr, sm_scale_log2,
        q_stride_t, q_stride_h, kb_stride_s, kb_stride_h, vb_stride_s, vb_stride_h, kvi_stride,
        o_stride_t, o_stride_h, mo_stride_r, mo_stride_h, mo_stride_s, ml_stride_r, ml_stride_h,
        G: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, HAS_IDX: tl.constexpr,
        PRECISION: tl.constexpr):
    r = tl.program_id(0)  # row of this launch
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if HAS_IDX:
        b = tl.load(req_ids_ptr + r)
        qrow = tl.load(q_rows_ptr + r)
    else:
        b = r
        qrow = r
    seq_len = tl.load(seq_lens_ptr + b)
    if NUM_SPLITS == 1:
        start = 0
        end = seq_len
    else:
        split_len = ((seq_len + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
        start = split * split_len
        end = tl.minimum(start + split_len, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mh = offs_h < G
    md = offs_d < D
    heads = kvh * G + offs_h
    q = tl.load(q_ptr + qrow * q_stride_t + heads[:, None] * q_stride_h + offs_d[None, :],
                mask=mh[:, None] & md[None, :], other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    kv_row = kv_idx_ptr + b.to(tl.int64) * kvi_stride
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < end
        slots = tl.load(kv_row + offs_n, mask=mn, other=0).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * kb_stride_s + kvh * kb_stride_h + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale_log2  # [BLOCK_H, BLOCK_N]
        qk = tl.where(mn[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(qk, 1, _MAX))  # finite: offs_n[0] < end
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + slots[:, None] * vb_stride_s + kvh * vb_stride_h + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        m_i = m_new
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + qrow * o_stride_t + heads[:, None] * o_stride_h + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mh[:, None] & md[None, :])
    else:
        # an empty split (short sequence) leaves lse = -inf: the merge gives it weight 0
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(mid_o_ptr + r * mo_stride_r + heads[:, None] * mo_stride_h + split * mo_stride_s
                 + offs_d[None, :], o, mask=mh[:, None] & md[None, :])
        tl.store(mid_lse_ptr + r * ml_stride_r + heads * ml_stride_h + split, lse, mask=mh)


@triton.jit
def _decode_merge_kernel(
        mid_o_ptr, mid_lse_ptr, out_ptr, q_rows_ptr,
        mo_stride_r, mo_stride_h, mo_stride_s, ml_stride_r, ml_stride_h, o_stride_t, o_stride_h,
        D: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
        HAS_IDX: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)
    if HAS_IDX:
        qrow = tl.load(q_rows_ptr + r)
    else:
        qrow = r
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ms = offs_s < NUM_SPLITS
    md = offs_d < D
    lse = tl.load(mid_lse_ptr + r * ml_stride_r + h * ml_stride_h + offs_s, mask=ms,
                  other=float("-inf"))
    m = tl.reduce(lse, 0, _MAX)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    o = tl.load(mid_o_ptr + r * mo_stride_r + h * mo_stride_h + offs_s[:, None] * mo_stride_s
                + offs_d[None, :], mask=ms[:, None] & md[None, :], other=0.0)
    den = tl.reduce(w, 0, _SUM)
    res = tl.reduce(o * w[:, None], 0, _SUM) / tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + qrow * o_stride_t + h * o_stride_h + offs_d, res.to(out_ptr.dtype.element_ty),
             mask=md)


@triton.jit
def _extend_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, kv_idx_ptr, seq_lens_ptr, ext_lens_ptr, q_starts_ptr,
        req_ids_ptr, sm_scale_log2,
        q_stride_t, q_stride_h, kb_stride_s, kb_stride_h, vb_stride_s, vb_stride_h, kvi_stride,
        o_stride_t, o_stride_h,
        G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_IDX: tl.constexpr,
        PRECISION: tl.constexpr):
    # one program: BLOCK_M new tokens x the G query heads of one KV head (rows m * GP + g), so
    # each K/V block is loaded once for the whole group
    r = tl.program_id(0)
    kvh = tl.program_id(1)
    mblk = tl.program_id(2)
    if HAS_IDX:
        b = tl.load(req_ids_ptr + r)
    else:
        b = r
    ext = tl.load(ext_lens_ptr + b)
    if mblk * BLOCK_M >= ext:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    q0 = tl.load(q_starts_ptr + b)
    prefix = seq_len - ext
    offs_r = tl.arange(0, BLOCK_M * GP)
    m_idx = mblk * BLOCK_M + offs_r // GP
    heads = kvh * G + offs_r % GP
    mr = (m_idx < ext) & (offs_r % GP < G)
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    q_off = (q0 + m_idx)[:, None] * q_stride_t + heads[:, None] * q_stride_h + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=mr[:, None] & md[None, :], other=0.0)
    m_i = tl.full([BLOCK_M * GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M * GP], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M * GP, BLOCK_D], dtype=tl.float32)
    q_pos = prefix + m_idx  # absolute position of each row's token
    end = tl.minimum(seq_len, prefix + (mblk + 1) * BLOCK_M)  # the block's last visible key + 1
    kv_row = kv_idx_ptr + b.to(tl.int64) * kvi_stride
    for n0 in range(0, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < end
        slots = tl.load(kv_row + offs_n, mask=mn, other=0).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * kb_stride_s + kvh * kb_stride_h + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale_log2
        visible = mn[None, :] & (offs_n[None, :] <= q_pos[:, None])
        qk = tl.where(visible, qk, float("-inf"))
        # every row sees key 0 in the first block, so m_new is finite from then on
        m_new = tl.maximum(m_i, tl.reduce(qk, 1, _MAX))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + slots[:, None] * vb_stride_s + kvh * vb_stride_h + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        m_i = m_new
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_off = (q0 + m_idx)[:, None] * o_stride_t + heads[:, None] * o_stride_h + offs_d[None, :]
    tl.store(out_ptr + o_off, o.to(out_ptr.dtype.element_ty), mask=mr[:, None] & md[None, :])


# ---- launchers ----------------------------------------------------------------------------------

def _precision(dtype: torch.dtype):
    # float32 pools: exact fp32 products (tl.dot would use TF32 on GPU otherwise)
    return "ieee" if dtype == torch.float32 else None


def _check(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, kv_indices: torch.Tensor) -> None:
    if q.dim() != 3 or k_buf.dim() != 3 or v_buf.shape != k_buf.shape:
        raise ValueError(f"expects q [T, H, D] and k_buf/v_buf [slots, KV, D], got {tuple(q.shape)}, "
                         f"{tuple(k_buf.shape)}, {tuple(v_buf.shape)}")
    if q.shape[2] != k_buf.shape[2] or q.shape[1] % k_buf.shape[1]:
        raise ValueError(f"q heads {q.shape[1]} x dim {q.shape[2]} do not fit KV heads "
                         f"{k_buf.shape[1]} x dim {k_buf.shape[2]}")
    if q.stride(2) != 1 or k_buf.stride(2) != 1 or v_buf.stride(2) != 1 or kv_indices.stride(1) != 1:
        raise ValueError("expects the head dimension and kv_indices rows contiguous")


def choose_num_splits(max_seq_len: int, rows: int, kv_heads: int, num_sms: int | None = None) -> int:
    """KV-length splits for a decode launch: enough programs to fill the GPU (about two per SM)
    when ``rows * kv_heads`` alone does not, never chunks under ``MIN_SPLIT_TOKENS``, at most
    ``MAX_SPLITS``. Without a device (interpreter) one split unless the context is long."""
    by_len = max(1, min(MAX_SPLITS, max_seq_len // MIN_SPLIT_TOKENS))
    if num_sms is None:
        return by_len
    want = max(1, -(-2 * num_sms // max(1, rows * kv_heads)))
    return max(1, min(by_len, want))


def _num_sms(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, kv_indices: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, num_splits: int | None = None,
                     out: torch.Tensor | None = None, req_ids: torch.Tensor | None = None,
                     q_rows: torch.Tensor | None = None, block_n: int = DECODE_BLOCK_N) -> torch.Tensor:
    """Paged decode attention: q [B, H, D] -> [B, H, D] (with ``req_ids``/``q_rows``: launch rows
    ``r`` read request ``req_ids[r]`` and q/out row ``q_rows[r]``, and ``out`` is written in
    place). ``num_splits`` defaults to ``choose_num_splits`` on the longest sequence."""
    _check(q, k_buf, v_buf, kv_indices)
    H, D = q.shape[1], q.shape[2]
    KV = k_buf.shape[1]
    G = H // KV
    rows = q.shape[0] if req_ids is None else req_ids.numel()
    if out is None:
        out = torch.empty_like(q)
    if rows == 0:
        return out
    if num_splits is None:
        num_splits = choose_num_splits(int(seq_lens.max()), rows, KV, _num_sms(q.device))
    has_idx = req_ids is not None
    idx = req_ids if has_idx else seq_lens  # placeholder pointers when unused
    qr = q_rows if has_idx else seq_lens
    block_d = triton.next_power_of_2(D)
    if num_splits > 1:
        mid_o = torch.empty((rows, H, num_splits, D), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((rows, H, num_splits), dtype=torch.float32, device=q.device)
        mo_strides = (mid_o.stride(0), mid_o.stride(1), mid_o.stride(2))
        ml_strides = (mid_lse.stride(0), mid_lse.stride(1))
    else:
        mid_o = mid_lse = out
        mo_strides, ml_strides = (0, 0, 0), (0, 0)
    _decode_stage1_kernel[(rows, KV, num_splits)](
        q, k_buf, v_buf, kv_indices, seq_lens, idx, qr, out, mid_o, mid_lse, scale * _LOG2E,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0), v_buf.stride(1),
        kv_indices.stride(0), out.stride(0), out.stride(1), *mo_strides, *ml_strides,
        G=G, D=D, BLOCK_H=max(16, triton.next_power_of_2(G)), BLOCK_D=block_d, BLOCK_N=block_n,
        NUM_SPLITS=num_splits, HAS_IDX=has_idx, PRECISION=_precision(q.dtype))
    if num_splits > 1:
        _decode_merge_kernel[(rows, H)](
            mid_o, mid_lse, out, qr, *mo_strides, *ml_strides, out.stride(0), out.stride(1),
            D=D, BLOCK_D=block_d, NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits), HAS_IDX=has_idx)
    return out


def extend_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, kv_indices: torch.Tensor,
                     seq_lens: torch.Tensor, extend_lens: torch.Tensor, q_starts: torch.Tensor, scale: float,
                     max_extend: int | None = None, out: torch.Tensor | None = None,
                     req_ids: torch.Tensor | None = None, block_m: int = EXTEND_BLOCK_M,
                     block_n: int = EXTEND_BLOCK_N) -> torch.Tensor:
    """Paged extend attention: q [T, H, D] -> [T, H, D]; request ``b``'s new tokens are
    ``q[q_starts[b] : q_starts[b] + extend_lens[b]]`` at positions ``seq_lens[b] - extend_lens[b] + i``.
    With ``req_ids``, only those requests run (the other rows of ``out`` are left alone).
    ``block_m``: query rows per program, i.e. new tokens x the GQA group padded to a power of two
    (a power of two, >= 16 on a GPU for ``tl.dot``); ``block_n``: keys per loop step (>= 16 on a GPU)."""
    _check(q, k_buf, v_buf, kv_indices)
    H, D = q.shape[1], q.shape[2]
    KV = k_buf.shape[1]
    rows = seq_lens.numel() if req_ids is None else req_ids.numel()
    if out is None:
        out = torch.zeros_like(q)  # rows of 0-token requests stay 0, as in the torch reference
    if rows == 0:
        return out
    if max_extend is None:
        max_extend = int(extend_lens.max()) if req_ids is None else int(extend_lens[req_ids].max())
    if max_extend <= 0:
        return out
    has_idx = req_ids is not None
    G = H // KV
    GP = triton.next_power_of_2(G)
    block_m = max(1, block_m // GP)  # rows of a program: block_m tokens x heads in all
    _extend_kernel[(rows, KV, triton.cdiv(max_extend, block_m))](
        q, k_buf, v_buf, out, kv_indices, seq_lens, extend_lens, q_starts,
        req_ids if has_idx else seq_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0), v_buf.stride(1),
        kv_indices.stride(0), out.stride(0), out.stride(1),
        G=G, GP=GP, D=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D),
        HAS_IDX=has_idx, PRECISION=_precision(q.dtype))
    return out


# ---- launch plan and backend ---------------------------------------------------------------

@dataclass
class LaunchPlan:
    """How one forward's attention is launched (the same for every layer)."""

    num_splits: int
    decode_rows: int  # requests through the decode kernel
    decode_req_ids: torch.Tensor | None  # None: all requests, row b = request b
    decode_q_rows: torch.Tensor | None
    extend_rows: int  # requests through the extend kernel
    extend_req_ids: torch.Tensor | None  # None: all requests
    max_extend: int

    @classmethod
    def build(cls, fb: ForwardBatch, kv_heads: int, num_sms: int | None = None,
              num_splits: int | None = None) -> LaunchPlan:
        ext = fb.extend_lens_list
        if fb.is_decode:
            one, many = list(range(len(ext))), []
        else:
            one = [b for b, e in enumerate(ext) if e == 1]
            many = [b for b, e in enumerate(ext) if e > 1]
        dec_max = max((fb.seq_lens_list[b] for b in one), default=0)
        if num_splits is None:
            num_splits = choose_num_splits(dec_max, len(one), kv_heads, num_sms) if one else 1
        dev = fb.seq_lens.device
        dec_ids = dec_rows = ext_ids = None
        if one and not fb.is_decode:  # one-token rows among others: q row != request index
            dec_ids = torch.tensor(one, dtype=torch.int64, device=dev)
            dec_rows = fb.q_starts.index_select(0, dec_ids)
        if many and len(many) != len(ext):
            ext_ids = torch.tensor(many, dtype=torch.int64, device=dev)
        return cls(num_splits=num_splits, decode_rows=len(one), decode_req_ids=dec_ids,
                   decode_q_rows=dec_rows, extend_rows=len(many), extend_req_ids=ext_ids,
                   max_extend=max((ext[b] for b in many), default=0))


class TritonAttentionBackend:
    """``--attention-backend triton``: the kernels above, one ``LaunchPlan`` per forward.

    ``fixed_num_splits`` pins the decode split count (CUDA-graph capture: a captured grid
    cannot depend on the lengths of the batch it replays)."""

    name = "triton"

    def __init__(self, scale: float, device: torch.device | str = "cpu"):
        self.scale = scale
        self.device = torch.device(device)
        if self.device.type != "cuda" and not interpreted():
            raise ValueError("the triton attention backend needs a CUDA device, or TRITON_INTERPRET=1 "
                             "to run its kernels on CPU with Triton's interpreter (slow; for tests)")
        self.num_sms = _num_sms(self.device)
        self.fixed_num_splits: int | None = None
        self._plan_fb: ForwardBatch | None = None
        self._plan: LaunchPlan | None = None

    def plan(self, fb: ForwardBatch, kv_heads: int) -> LaunchPlan:
        if self._plan_fb is not fb:
            self._plan = LaunchPlan.build(fb, kv_heads, self.num_sms, self.fixed_num_splits)
            self._plan_fb = fb
        return self._plan

    def forward(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                fb: ForwardBatch) -> torch.Tensor:
        p = self.plan(fb, k_buf.shape[1])
        if p.extend_rows == 0 and p.decode_req_ids is None:
            return decode_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, self.scale,
                                    num_splits=p.num_splits)
        out = torch.empty_like(q)  # every q row belongs to a request of one kernel or the other
        if p.extend_rows:
            extend_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, fb.extend_lens, fb.q_starts,
                             self.scale, max_extend=p.max_extend, out=out, req_ids=p.extend_req_ids)
        if p.decode_rows:
            decode_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, self.scale,
                             num_splits=p.num_splits, out=out, req_ids=p.decode_req_ids,
                             q_rows=p.decode_q_rows)
        return out


__all__ = ["LaunchPlan", "TritonAttentionBackend", "choose_num_splits", "decode_attention",
           "extend_attention", "interpreted"]
