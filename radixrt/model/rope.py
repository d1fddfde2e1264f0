"""Rotary position embeddings: inverse frequencies for the rope-scaling variants found in
Llama / Qwen2 / SmolLM configs, and a cos/sin cache indexed by position."""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  context_len: int) -> tuple[torch.Tensor, float]:
    """Returns (inv_freq [head_dim/2], attention_scaling multiplier for cos/sin)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv, 1.0
    kind = scaling["rope_type"]
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "dynamic":
        # NTK-aware: the base grows with the context; fixed at the configured context length
        # so that cached KV stays valid whatever the request length.
        orig = scaling.get("original_max_position_embeddings", context_len)
        if context_len > orig:
            base = theta * ((factor * context_len / orig) - (factor - 1)) ** (head_dim / (head_dim - 2))
            inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        orig = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = orig / low, orig / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        orig = scaling.get("original_max_position_embeddings", context_len)
        beta_fast = float(scaling.get("beta_fast", 32.0))
        beta_slow = float(scaling.get("beta_slow", 1.0))
        mscale = scaling.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

        def dim_for(rot: float) -> float:
            return (head_dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo = max(math.floor(dim_for(beta_fast)), 0)
        hi = min(math.ceil(dim_for(beta_slow)), head_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        return inv, float(mscale)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, dynamic, llama3, yarn)")


class RotaryEmbedding:
    """Applies rotate-half RoPE to q/k of shape [T, heads, head_dim] at given positions."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None,
                 max_positions: int, dtype: torch.dtype, device: torch.device | str):
        inv, mscale = rope_inv_freq(head_dim, theta, scaling, max_positions)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = (emb.cos() * mscale).to(dtype=dtype, device=device)
        self.sin = (emb.sin() * mscale).to(dtype=dtype, device=device)
        self.half = head_dim // 2

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : self.half], x[..., self.half:]
        rotated = torch.cat((-x2, x1), dim=-1)
        return x * cos + rotated * sin
