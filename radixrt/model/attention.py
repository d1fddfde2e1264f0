"""Attention over the paged KV pool.

Backends share one interface: ``forward(q [T, H, D], layer, fb) -> [T, H, D]`` after the new
tokens' K/V were written to the pool. The torch backend gathers each request's K/V by slot
index and runs SDPA (GQA kept grouped, never expanded to full heads in memory); the native
backend (radixrt/csrc) reads slots in place. Both are checked against a float64 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixrt.model.forward_batch import ForwardBatch


def torch_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                           kv_indices: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, D]; each request attends to its slots kv_indices[b, :seq_lens[b]]."""
    B, H, D = q.shape
    L = kv_indices.shape[1]
    KV = k_buf.shape[1]
    flat = kv_indices.reshape(-1)
    k = k_buf.index_select(0, flat).view(B, L, KV, D).transpose(1, 2)
    v = v_buf.index_select(0, flat).view(B, L, KV, D).transpose(1, 2)
    qg = q.view(B, KV, H // KV, D)  # the G query heads of a kv head act as G queries
    mask = None
    if B > 1:
        mask = (torch.arange(L, device=q.device).unsqueeze(0) < seq_lens.unsqueeze(1)).view(B, 1, 1, L)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(B, H, D)


def torch_extend_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                           kv_indices: torch.Tensor, seq_lens: torch.Tensor, extend_lens: torch.Tensor,
                           q_starts: torch.Tensor, scale: float,
                           k_new: torch.Tensor | None = None,
                           v_new: torch.Tensor | None = None) -> torch.Tensor:
    """q [T, H, D]; request b's i-th new token (position prefix+i) attends causally to slots
    kv_indices[b, :prefix+i+1]. ``k_new``/``v_new`` [T, KV, D] (the new tokens' K/V, already
    in the pool) let requests without a cached prefix skip the gather."""
    T, H, D = q.shape
    KV = k_buf.shape[1]
    out = torch.empty_like(q)
    for b in range(kv_indices.shape[0]):
        s, e, q0 = int(seq_lens[b]), int(extend_lens[b]), int(q_starts[b])
        prefix = s - e
        if prefix == 0 and k_new is not None:
            k = k_new[q0:q0 + e].transpose(0, 1).unsqueeze(0)
            v = v_new[q0:q0 + e].transpose(0, 1).unsqueeze(0)
        else:
            idx = kv_indices[b, :s]
            k = k_buf.index_select(0, idx).transpose(0, 1).unsqueeze(0)  # [1, KV, s, D]
            v = v_buf.index_select(0, idx).transpose(0, 1).unsqueeze(0)
        qb = q[q0:q0 + e].transpose(0, 1).unsqueeze(0)  # [1, H, e, D]
        if prefix == 0:
            o = F.scaled_dot_product_attention(qb, k, v, is_causal=True, scale=scale, enable_gqa=KV != H)
        else:
            mask = torch.arange(s).unsqueeze(0) <= (torch.arange(e) + prefix).unsqueeze(1)
            o = F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale, enable_gqa=KV != H)
        out[q0:q0 + e] = o[0].transpose(0, 1)
    return out


class TorchAttentionBackend:
    name = "torch"

    def __init__(self, scale: float):
        self.scale = scale

    def forward(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                k_buf: torch.Tensor, v_buf: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        if fb.is_decode:
            return torch_decode_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, self.scale)
        return torch_extend_attention(q, k_buf, v_buf, fb.kv_indices, fb.seq_lens, fb.extend_lens,
                                      fb.q_starts, self.scale, k_new, v_new)


def make_attention_backend(name: str, scale: float):
    if name == "torch":
        return TorchAttentionBackend(scale)
    raise ValueError(f"unknown attention backend {name!r}")
