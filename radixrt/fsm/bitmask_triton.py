"""Triton kernel for ``apply_token_bitmask_`` (GPU; testable on CPU with TRITON_INTERPRET=1).

One program per (row, block of 1024 vocabulary ids): load the block's mask words, test each
id's bit, store -inf where it is 0. Ids past the mask (``num_words * 32``) are disallowed, like
the torch path. Import only when triton is installed: ``bitmask.apply_token_bitmask_`` does so
on its first call with CUDA logits and uses this kernel for them from then on;
``bitmask.apply_token_bitmask_torch`` is the portable implementation and the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _apply_bitmask_kernel(logits_ptr, bitmask_ptr, indices_ptr, vocab_size, num_words,
                          logits_stride, bitmask_stride, HAS_INDICES: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr):
    mask_row = tl.program_id(0)
    block = tl.program_id(1)
    if HAS_INDICES:
        row = tl.load(indices_ptr + mask_row)
    else:
        row = mask_row
    offs = block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_mask = offs < num_words * 32
    words = tl.load(bitmask_ptr + mask_row * bitmask_stride + offs // 32, mask=in_mask, other=0)
    bit = (words >> (offs % 32)) & 1
    # 0 where the id is out of range, so the store mask is a single comparison
    disallowed = tl.where(offs < vocab_size, 1 - bit, 0)
    tl.store(logits_ptr + row * logits_stride + offs, float("-inf"), mask=disallowed == 1)


def apply_token_bitmask_triton(logits: torch.Tensor, bitmask: torch.Tensor,
                               indices: list[int] | torch.Tensor | None = None) -> None:
    """Same contract as ``bitmask.apply_token_bitmask_``."""
    if logits.dim() != 2 or bitmask.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("expects row-major logits [B, V] and bitmask [B, W]")
    bitmask = bitmask.contiguous()
    vocab_size = logits.shape[1]
    if indices is None:
        rows = logits.shape[0]
        idx = bitmask  # unused placeholder pointer
    else:
        idx = torch.as_tensor(indices, dtype=torch.int64, device=logits.device)
        rows = idx.numel()
    if bitmask.shape[0] != rows:
        raise ValueError(f"bitmask has {bitmask.shape[0]} rows, expected {rows}")
    grid = (rows, triton.cdiv(vocab_size, BLOCK))
    _apply_bitmask_kernel[grid](logits, bitmask, idx, vocab_size, bitmask.shape[1],
                                logits.stride(0), bitmask.stride(0),
                                HAS_INDICES=indices is not None, BLOCK_SIZE=BLOCK)
