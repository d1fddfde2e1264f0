"""Optional native CPU kernels (paged decode attention, fused per-layer element-wise ops), with
a pure-torch fallback.

The decode kernel (``radixrt/csrc/paged_attention.cpp``) reads K/V rows in place from the slot
pool ``[num_slots, kv_heads, head_dim]`` instead of gathering ``[B, L, KV, D]`` copies, and keeps
GQA grouped. Extend (prefill) attention has no native kernel: it always runs
``torch_paged_extend_attention`` (SDPA). They are compiled on first use with ``torch.utils.cpp_extension.load`` into
``$RADIXRT_CACHE_DIR/ext/<hash>`` (default ``~/.cache/radixrt/ext/<hash>``; the hash covers the
source, the flags and the torch/Python versions), once per process. If no compiler is found or
the build fails, a warning is logged once and every call uses the torch implementation.
``RADIXRT_DISABLE_NATIVE=1`` forces the torch implementation.

Public API (the native path needs CPU float32 q/k_buf/v_buf, each slot's [KV, D] contiguous,
int64 indices and no autograd; anything else silently takes the torch path):

- ``paged_decode_attention(q [B,H,D], k_buf, v_buf, kv_indices [B,Lmax], seq_lens [B], scale)``
- ``native_available() -> bool``; ``load_native()`` returns the op namespace or ``None``.
- ``fused_ops()``: ``torch.ops.radixrt_ops`` (``radixrt/csrc/fused_ops.cpp``: ``rms_norm``,
  ``add_rms_norm_``, ``silu_mul``, ``rope_store``; built into the same library) or ``None``.
- ``quant_gemm_ops()``: ``torch.ops.radixrt_qg`` (``radixrt/csrc/quant_gemm.cpp``: dense layers
  on a GGUF file's own Q4_0/Q4_1/Q8_0 blocks; see ``radixrt.model.gguf_weights``) or ``None``.
- The cache directory, the build lock and the plain C-ABI libraries (``build_c_library``,
  ``load_c_library``) live in ``radixrt.native_build``, which ``fsm`` uses too.
- ``torch_paged_decode_attention``: the decode fallback, callable directly (tests and benchmarks
  compare it with the kernel).
- ``torch_paged_extend_attention(q [T,H,D], k_buf, v_buf, kv_indices [B,Lmax], seq_lens [B],
  extend_lens [B], q_starts [B], scale)``: extend attention (the only implementation).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from radixrt.native_build import _build_lock, _disabled_by_env, build_dir_for

logger = logging.getLogger("radixrt.native")

_EXT_NAME = "radixrt_paged_attn"
_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "paged_attention.cpp"
_FUSED_SOURCE = _SOURCE.with_name("fused_ops.cpp")
_QGEMM_SOURCE = _SOURCE.with_name("quant_gemm.cpp")
_HEADERS = [_SOURCE.with_name("fast_exp.h"), _SOURCE.with_name("team_size.h")]
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ops": None, "reason": "not loaded yet"}


def _build_dir(source: bytes) -> Path:
    return build_dir_for(source, torch.__version__, f"{sys.version_info[0]}.{sys.version_info[1]}",
                         " ".join(_CFLAGS + _LDFLAGS))


def _build():
    if sys.platform == "win32":
        raise RuntimeError("native kernels are only built on Linux/macOS")
    sources = [_SOURCE, _FUSED_SOURCE, _QGEMM_SOURCE]  # read at call time: tests point _SOURCE elsewhere
    files = [*sources, *_HEADERS]
    for src in files:
        if not src.is_file():
            raise RuntimeError(f"kernel source {src} not found")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"C++ compiler {cxx!r} not found")
    from torch.utils import cpp_extension

    build_dir = _build_dir(b"\0".join(f.read_bytes() for f in files))
    build_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _build_lock(build_dir):
        cpp_extension.load(name=_EXT_NAME, sources=[str(s) for s in sources], extra_cflags=list(_CFLAGS),
                           extra_ldflags=list(_LDFLAGS), build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    ops = torch.ops.radixrt_pa
    isa = ops.isa()
    logger.info("native paged-attention kernels loaded from %s (%s, %.1fs)", build_dir, isa,
                time.perf_counter() - t0)
    return ops


def load_native():
    """The ``torch.ops.radixrt_pa`` namespace (``decode``, ``isa``), or ``None`` when
    disabled by ``RADIXRT_DISABLE_NATIVE`` or the build failed. Builds at most once per process."""
    if _disabled_by_env():
        return None
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["ops"] = _build()
                _state["reason"] = ""
            except Exception as e:  # noqa: BLE001 - any build/load failure means "use torch"
                _state["ops"] = None
                msg = str(e).strip()
                if len(msg) > 2000:  # compiler output: the error is at the end
                    msg = msg[:300] + " ... " + msg[-1700:]
                _state["reason"] = f"{type(e).__name__}: {msg}"
                logger.warning("native paged-attention kernels unavailable, using torch: %s",
                               _state["reason"])
            _state["tried"] = True
    return _state["ops"]


def fused_ops():
    """The ``torch.ops.radixrt_ops`` namespace (fused element-wise ops), or ``None``."""
    return None if load_native() is None else torch.ops.radixrt_ops


def quant_gemm_ops():
    """The ``torch.ops.radixrt_qg`` namespace (GGUF-block GEMM, ``radixrt/csrc/quant_gemm.cpp``:
    ``gemm``, ``isa``, ``supported``), or ``None``."""
    return None if load_native() is None else torch.ops.radixrt_qg


def native_available() -> bool:
    return load_native() is not None


def native_unavailable_reason() -> str:
    """Why ``native_available()`` is False ("" when it is True)."""
    if _disabled_by_env():
        return "disabled by RADIXRT_DISABLE_NATIVE"
    load_native()
    return str(_state["reason"])


def _native_ok(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, *idx: torch.Tensor) -> bool:
    return (q.dtype == torch.float32 and k_buf.dtype == torch.float32 and v_buf.dtype == torch.float32
            and q.device.type == "cpu" and k_buf.device.type == "cpu" and v_buf.device.type == "cpu"
            and all(t.dtype == torch.int64 and t.device.type == "cpu" for t in idx)
            and k_buf.dim() == 3 and k_buf.stride(2) == 1 and k_buf.stride(1) == k_buf.shape[2]
            and v_buf.stride(2) == 1 and v_buf.stride(1) == v_buf.shape[2]
            and k_buf.stride(0) == v_buf.stride(0)
            and not (torch.is_grad_enabled() and (q.requires_grad or k_buf.requires_grad
                                                  or v_buf.requires_grad)))  # no autograd formula


# ---- torch implementations --------------------------------------------------------------------

def torch_paged_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                                 kv_indices: torch.Tensor, seq_lens: torch.Tensor,
                                 scale: float) -> torch.Tensor:
    """Gather + SDPA. q [B, H, D]; request b attends to slots kv_indices[b, :seq_lens[b]].
    GQA stays grouped: q is viewed as [B, KV, G, D] (G queries per kv head), K/V never expanded."""
    B, H, D = q.shape
    L = kv_indices.shape[1]
    KV = k_buf.shape[1]
    flat = kv_indices.reshape(-1)
    k = k_buf.index_select(0, flat).view(B, L, KV, D).transpose(1, 2)  # [B, KV, L, D]
    v = v_buf.index_select(0, flat).view(B, L, KV, D).transpose(1, 2)
    qg = q.reshape(B, KV, H // KV, D)
    mask = (torch.arange(L, device=q.device).unsqueeze(0) < seq_lens.to(q.device).unsqueeze(1)).view(B, 1, 1, L)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(B, H, D)


def torch_paged_extend_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                                 kv_indices: torch.Tensor, seq_lens: torch.Tensor,
                                 extend_lens: torch.Tensor, q_starts: torch.Tensor,
                                 scale: float) -> torch.Tensor:
    """Per-request gather + SDPA. Request b's new tokens q[q_starts[b] : q_starts[b]+e] sit at
    positions prefix+i (prefix = seq_lens[b] - e) and attend causally to kv_indices[b, :prefix+i+1]."""
    T, H, D = q.shape
    KV = k_buf.shape[1]
    out = torch.zeros_like(q)
    for b, (s, e, q0) in enumerate(zip(seq_lens.tolist(), extend_lens.tolist(), q_starts.tolist(), strict=True)):
        if e == 0:
            continue
        prefix = s - e
        idx = kv_indices[b, :s]
        k = k_buf.index_select(0, idx).transpose(0, 1).unsqueeze(0)  # [1, KV, s, D]
        v = v_buf.index_select(0, idx).transpose(0, 1).unsqueeze(0)
        qb = q[q0:q0 + e].transpose(0, 1).unsqueeze(0)  # [1, H, e, D]
        if prefix == 0:
            o = F.scaled_dot_product_attention(qb, k, v, is_causal=True, scale=scale, enable_gqa=KV != H)
        else:
            mask = (torch.arange(s, device=q.device).unsqueeze(0)
                    <= (torch.arange(e, device=q.device) + prefix).unsqueeze(1))
            o = F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale, enable_gqa=KV != H)
        out[q0:q0 + e] = o[0].transpose(0, 1)
    return out


# ---- dispatch ---------------------------------------------------------------------------------

def paged_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                           kv_indices: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention: q [B, H, D] -> [B, H, D]; native kernel when available, else torch."""
    ops = load_native()
    if ops is not None and _native_ok(q, k_buf, v_buf, kv_indices, seq_lens):
        return ops.decode(q, k_buf, v_buf, kv_indices, seq_lens, float(scale))
    return torch_paged_decode_attention(q, k_buf, v_buf, kv_indices, seq_lens, scale)


__all__ = [
    "fused_ops",
    "quant_gemm_ops",
    "load_native",
    "native_available",
    "native_unavailable_reason",
    "paged_decode_attention",
    "torch_paged_decode_attention",
    "torch_paged_extend_attention",
]
