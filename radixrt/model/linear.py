"""Dense layers tuned for where they run.

``Linear``: on CPU (fp32), a weight is kept in two layouts: transposed ``[in, out]`` for
one-row inputs (``x @ W`` is the fastest GEMV measured here) and oneDNN's prepacked blocked
layout for batches (measured 1.4-2.5x faster than MKL's ``F.linear`` at 2-32 rows on a 2-core
AVX2 CPU, e.g. the 49152x576 LM head at 32 rows: 32 ms vs 82 ms). Elsewhere, plain ``F.linear``.

``Int8Linear``: the same product as an int8 GEMM on torch's fbgemm engine (``--quantization``;
see ``radixrt.model.quantization`` for when it is chosen).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_PACK_BATCH_HINT = 32


def _mkldnn_linear_ok() -> bool:
    try:
        w = torch.randn(8, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 4)
        x = torch.randn(3, 4)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return torch.allclose(y, x @ w.t(), atol=1e-5)
    except Exception:  # not built with oneDNN, or the private op changed
        return False


_MKLDNN_OK: bool | None = None


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """``weight`` is ``[out, in]`` (the checkpoint layout)."""
        global _MKLDNN_OK
        self.bias = bias
        self.out_features = weight.shape[0]
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32:
            if _MKLDNN_OK is None:
                _MKLDNN_OK = _mkldnn_linear_ok()
            self.weight_t = weight.t().contiguous()
            self.weight = None
            if _MKLDNN_OK:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_BATCH_HINT)
        else:
            self.weight = weight.contiguous()
            self.weight_t = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        if self.packed is not None and x.shape[0] > 1:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


# Smallest scale: keeps an all-zero weight row or activation row from dividing by zero.
_TINY = 1e-12


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Make ``name`` torch's quantized engine for the block (weights are packed for it)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``weight ~= q * scale[:, None]``, q in [-127, 127]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(_TINY) / 127
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear:
    """``x @ W.T (+ b)`` with int8 weights and int8 activations, on fbgemm.

    Weights: symmetric int8 per output channel (``quantize_weight``), packed once. Activations:
    int8 per row. Each row is divided by its own max |x|, so that every row spans [-1, 1] and one
    fixed step (1/127 around zero point 128) quantizes it as symmetric per-row int8. A row's
    result then never depends on the other rows of the batch (fbgemm accumulates in int32,
    exactly): a row gives the same bits alone, in a decode batch or in a prefill. The per-tensor
    scale of ``quantized::linear_dynamic`` would couple the rows instead (and a lone row
    quantized with its own scale passed as a number would differ in rounding, which flips the
    rare input sitting on a rounding boundary by a whole step). The kernel rescales its int32 sums to float; the row scale and the
    bias are applied after.

    ``reduce_range`` keeps activations to 7 bits (step 1/63 around 64): fbgemm's kernels for
    CPUs without VNNI sum pairs of u8*s8 products in int16, which full-range inputs overflow.

    ``residual_pass`` runs the GEMM a second time on what the first pass's rounding of the
    input left out (itself quantized per row), so the input's error shrinks ~100-fold for twice
    the GEMM time; the weights' rounding stays. Used for the LM head, where activation rounding
    alone cost +0.9% perplexity on SmolLM2-135M.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, engine: str = "fbgemm",
                 reduce_range: bool = False, residual_pass: bool = False):
        """``weight`` is ``[out, in]`` (the checkpoint layout); it is copied, not kept."""
        if _QLINEAR_FP32 is None:
            raise RuntimeError("this torch build has no quantized::linear_with_input_q_dq_qweight_dq_output_fp32")
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_weight(weight)
        with warnings.catch_warnings():
            # torch marks its quantized tensor types deprecated; if they go, the engine check in
            # radixrt.model.quantization fails and the mode falls back to fp32.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            with quantized_engine(engine):
                self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.x_step, self.x_zero_point = (1 / 63, 64) if reduce_range else (1 / 127, 128)
        self.residual_pass = residual_pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # a reshape costs ~2 us
        y = self._gemm(rows)
        if self.residual_pass:
            levels = 1 / self.x_step
            row_max = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY)
            rounded = torch.round(rows * (levels / row_max)).mul_(row_max / levels)
            y += self._gemm(rows - rounded)
        if self.bias is not None:
            y.add_(self.bias)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def _gemm(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, in] -> [M, out], without the bias."""
        if rows.shape[0] == 1:  # batch-1 decode: one op and a number instead of three ops
            lo, hi = torch.aminmax(rows)
            row_max = max(-lo.item(), hi.item(), _TINY)
        else:  # abs + amax: measured 2-20x faster here than vector_norm(inf) for 2-512 rows
            row_max = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY)
        # The same divisions and products for one row and for many: a row gives the same bits
        # alone and in any batch.
        return _QLINEAR_FP32(rows / row_max, self.x_step, self.x_zero_point, self.packed).mul_(row_max)


_QLINEAR_FP32 = getattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32", None)
