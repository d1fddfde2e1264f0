"""Attention backends over the paged KV pool.

Every backend has ``forward(q [T, H, D], k_buf, v_buf, fb) -> [T, H, D]``, called after the new
tokens' K/V were written to the pool. Decode batches (one new token per request) and extend
batches (new tokens after a cached prefix, causal) take different kernels.

- ``native``: radixrt's C++ decode kernel (`radixrt/csrc/paged_attention.cpp`), reading K/V
  slots in place, GQA grouped; measured 2.5-4.7x faster than ``torch`` for decode on this CPU.
- ``torch``: gather each request's K/V by slot index and run SDPA (GQA kept grouped, never
  expanded in memory). Always available; the reference the native kernel is tested against.
  Extend batches take this path under both backends.
- ``triton``: paged Triton kernels (``radixrt/model/triton_attention.py``): split-KV decode,
  causal extend, mixed batches in one launch plan; the GPU backend (``auto`` on CUDA). On CPU it
  runs only under Triton's interpreter (``TRITON_INTERPRET=1``, tests).
"""

from __future__ import annotations

import logging

import torch

from radixrt.model import native
from radixrt.model.forward_batch import ForwardBatch

logger = logging.getLogger("radixrt.attention")


class TorchAttentionBackend:
    name = "torch"
    decode_fn = staticmethod(native.torch_paged_decode_attention)
    extend_fn = staticmethod(native.torch_paged_extend_attention)

    def __init__(self, scale: float):
        self.scale = scale

    def forward(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                fb: ForwardBatch) -> torch.Tensor:
        if fb.is_decode:
            return self.decode_fn(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, self.scale)
        split = fb.decode_split()
        if split is None:
            return self.extend_fn(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, fb.extend_lens,
                                  fb.q_starts, self.scale)
        # Mixed batch (e.g. decode steps next to jump-forward drafts): one-token requests go
        # through the batched decode kernel, the others through the extend path.
        dec_b, dec_q, ext_b = split
        out = self.extend_fn(q, k_buf, v_buf, fb.kv_indices.index_select(0, ext_b),
                             fb.seq_lens.index_select(0, ext_b), fb.extend_lens.index_select(0, ext_b),
                             fb.q_starts.index_select(0, ext_b), self.scale)
        out[dec_q] = self.decode_fn(q.index_select(0, dec_q).contiguous(), k_buf, v_buf,
                                    fb.kv_indices.index_select(0, dec_b).contiguous(),
                                    fb.seq_lens.index_select(0, dec_b), self.scale)
        return out


class NativeAttentionBackend(TorchAttentionBackend):
    """Native decode; extend stays on SDPA. (A native extend kernel was tried and removed: it
    gained only 1.2-1.7x on attention, a small share of prefill time, which matmuls dominate,
    and its summation order moved prefill logits ~1e-4 away from transformers'.)"""

    name = "native"
    decode_fn = staticmethod(native.paged_decode_attention)


def make_attention_backend(name: str, scale: float, device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float32):
    """``auto``: triton on CUDA (when triton imports), native on CPU with float32 when the
    kernels build, else torch."""
    if name == "auto" and torch.device(device).type == "cuda":
        try:
            import triton  # noqa: F401
            name = "triton"
        except ImportError:
            logger.warning("triton is not installed; CUDA attention uses the torch backend")
            name = "torch"
    if name == "auto":
        usable = torch.device(device).type == "cpu" and dtype == torch.float32
        if usable and native.native_available():
            name = "native"
        else:
            if usable:
                logger.warning("native attention kernels unavailable (%s); using torch",
                               native.native_unavailable_reason())
            name = "torch"
    if name == "native":
        return NativeAttentionBackend(scale)
    if name == "torch":
        return TorchAttentionBackend(scale)
    if name == "triton":
        from radixrt.model.triton_attention import TritonAttentionBackend

        return TritonAttentionBackend(scale, device)
    raise ValueError(f"unknown attention backend {name!r} (choose auto, native, torch, triton)")
