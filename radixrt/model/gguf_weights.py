"""Dense layers on a GGUF file's own quantized blocks (``--quantization gguf``).

A model loaded from a ``.gguf`` file is converted once to float32 safetensors
(``radixrt.model.gguf_convert``): that conversion is exact, so the fp32 model computes with the
file's own weights. In the ``gguf`` mode the linear layers and the LM head instead keep those
weights in the file's blocks and run them with radixrt's own kernel
(``radixrt/csrc/quant_gemm.cpp``): Q4_0, Q4_1 and Q8_0 blocks are repacked at load (the same
values, rows interleaved 16 at a time, scales apart; layout in the kernel's header) and
multiplied with activations quantized per 32-block to int8. A layer whose tensor has another
type (Q4_K, Q6_K, F16, ...) takes Q8_0 blocks made here from its exact float weights instead
(``quantize_q8_0``): a 32-block rounding of 1/254 of the block's largest weight, and counted
in ``GGUFModelWeights.requantized``. Embedding lookup, norms, attention and the KV cache stay
float32.

- ``source_gguf(model_dir)``: the ``.gguf`` a converted model directory came from, or None.
- ``pack_blocks(raw, qtype)`` / ``unpack_blocks(packed)``: file blocks <-> kernel layout.
- ``GGUFLinear(packed, bias, isa)``: ``x @ W.T (+ b)`` on the blocks.
- ``GGUFModelWeights(path, heads, kv_heads)``: a file's tensors by Hugging Face name, as
  packed blocks (``read_gguf_index`` finds them without decoding the tokenizer metadata).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("radixrt.gguf_weights")

ROWS = 16  # rows per interleaved group
BLOCK = 32  # weights per block
# GGML type name -> (bytes per 32-weight block, bits of the stored value)
SUPPORTED_TYPES = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q8_0": (34, 8)}
# The kernel's paths (the op's `isa` argument).
ISA_AUTO, ISA_SCALAR, ISA_AVX2, ISA_VNNI = 0, 1, 2, 3
ISA_NAMES = {ISA_SCALAR: "scalar", ISA_AVX2: "avx2", ISA_VNNI: "avx512-vnni"}


@dataclass
class PackedBlocks:
    """A ``[n, k]`` weight in the kernel's layout (see ``radixrt/csrc/quant_gemm.cpp``)."""
    qs: torch.Tensor  # uint8, [G, nb, 4|8, 16, 4]
    dm: torch.Tensor  # float16, [G, nb, 2, 16]: d then m of each of 16 rows
    n: int
    k: int
    bits: int  # 4 or 8
    qtype: str  # the file's type ("Q4_1", ...), "Q8_0*" for blocks made here

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + 2 * self.dm.numel()


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per value (the last axis) as float16 values."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0]


def pack_blocks(raw: np.ndarray | torch.Tensor, qtype: str) -> PackedBlocks:
    """The file's blocks ``raw`` (uint8 ``[n, nb * block_bytes]``, rows in the weight's order)
    in the kernel's layout. Exact: every weight keeps its value."""
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF type {qtype} has no kernel (supported: {', '.join(SUPPORTED_TYPES)})")
    raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    bs, bits = SUPPORTED_TYPES[qtype]
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] % bs:
        raise ValueError(f"{qtype} blocks must be uint8 [rows, blocks * {bs}], got {raw.dtype} {raw.shape}")
    n, nb = raw.shape[0], raw.shape[1] // bs
    blocks = raw.reshape(n, nb, bs)
    d = _f16(blocks[:, :, 0:2]).astype(np.float32)
    if qtype == "Q4_1":
        m = _f16(blocks[:, :, 2:4]).astype(np.float32)
        qs = blocks[:, :, 4:]
    elif qtype == "Q4_0":
        m, qs = -8.0 * d, blocks[:, :, 2:]
    else:  # Q8_0: u = q + 128 (flip the top bit)
        m, qs = -128.0 * d, blocks[:, :, 2:] ^ np.uint8(0x80)
    dm16 = np.stack([d, m], axis=2).astype(np.float16)  # [n, nb, 2]
    if not np.array_equal(dm16.astype(np.float32), np.stack([d, m], axis=2)):
        raise ValueError(f"{qtype} block scales out of float16 range")  # m = -128 d overflowed
    groups = -(-n // ROWS)
    pad = groups * ROWS - n
    if pad:
        qs = np.concatenate([qs, np.zeros((pad, *qs.shape[1:]), np.uint8)])
        dm16 = np.concatenate([dm16, np.zeros((pad, *dm16.shape[1:]), np.float16)])
    steps = 4 if bits == 4 else 8
    qs = qs.reshape(groups, ROWS, nb, steps, 4).transpose(0, 2, 3, 1, 4)
    dm16 = dm16.reshape(groups, ROWS, nb, 2).transpose(0, 2, 3, 1)
    return PackedBlocks(torch.from_numpy(np.ascontiguousarray(qs)),
                        torch.from_numpy(np.ascontiguousarray(dm16)), n, nb * BLOCK, bits, qtype)


def unpack_blocks(p: PackedBlocks) -> torch.Tensor:
    """The float32 ``[n, k]`` weight the blocks hold (the reference the kernel is tested on)."""
    groups, nb = p.qs.shape[0], p.qs.shape[1]
    qs = p.qs.permute(0, 3, 1, 2, 4).reshape(groups * ROWS, nb, -1)  # [rows, nb, 16|32] bytes
    if p.bits == 4:
        u = torch.cat([qs & 0x0F, qs >> 4], dim=2)
    else:
        u = qs
    dm = p.dm.permute(0, 3, 1, 2).reshape(groups * ROWS, nb, 2).float()
    w = u.float() * dm[:, :, :1] + dm[:, :, 1:]
    return w.reshape(groups * ROWS, nb * BLOCK)[:p.n].contiguous()


def quantize_q8_0(weight: torch.Tensor) -> np.ndarray:
    """GGML Q8_0 blocks of a float ``[n, k]`` weight (k a multiple of 32): per 32-block
    d = max|w| / 127 (float16), q = round(w / d)."""
    w = weight.detach().float().cpu().numpy()
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"Q8_0 needs rows of a multiple of {BLOCK} weights, got {k}")
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(blocks).max(axis=2) / 127).astype(np.float16)
    df = d.astype(np.float32)
    inv = np.divide(1.0, df, out=np.zeros_like(df), where=df > 0)
    q = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8)
    out = np.empty((n, k // BLOCK, 34), np.uint8)
    out[:, :, 0:2] = d[:, :, None].view(np.uint8)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(n, -1)


class GGUFLinear:
    """``x @ W.T (+ b)`` on packed GGUF blocks, with the kernel path ``isa`` (0: the op's own
    choice for this CPU)."""

    def __init__(self, packed: PackedBlocks, bias: torch.Tensor | None = None, isa: int = ISA_AUTO):
        from radixrt.model.native import quant_gemm_ops

        ops = quant_gemm_ops()
        if ops is None:
            raise RuntimeError("the native GGUF-block kernel is not available")
        self.gemm = ops.gemm
        self.packed = packed
        self.qs, self.dm = packed.qs, packed.dm
        self.out_features, self.in_features = packed.n, packed.k
        self.bits = packed.bits
        self.isa = isa
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = self.gemm(rows, self.qs, self.dm, self.out_features, self.bits, self.isa)
        if self.bias is not None:
            y.add_(self.bias)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)


def source_gguf(model_dir: Path | str) -> Path | None:
    """The ``.gguf`` file ``model_dir`` was converted from, if it is still there unchanged."""
    from radixrt.model.loader import MARKER_FILE

    marker = Path(model_dir) / MARKER_FILE
    try:
        info = json.loads(marker.read_text())
        src = Path(info["source"])
        st = src.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if st.st_size != info.get("size") or st.st_mtime_ns != info.get("mtime_ns"):
        return None
    return src


_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                   11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    qtype: str  # GGML type name
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_gguf_index(path: Path | str) -> tuple[dict[str, object], dict[str, TensorInfo]]:
    """A GGUF file's scalar and string metadata, and where each tensor's bytes are. Arrays in
    the metadata (the tokenizer's vocabulary) are skipped, not decoded: a few milliseconds
    instead of seconds for a full ``gguf.GGUFReader``."""
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    data = Path(path).read_bytes() if Path(path).stat().st_size < 1 << 16 else None
    with open(path, "rb") as f:
        import mmap

        buf = data if data is not None else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        v = bytes(buf[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return v

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype == _STRING:
            n = take("<Q")
            pos += n
        elif vtype == _ARRAY:
            itype, count = take("<I"), take("<Q")
            if itype in _SCALAR_FORMATS:
                pos += count * struct.calcsize(_SCALAR_FORMATS[itype])
            else:
                for _ in range(count):
                    skip(itype)
        elif vtype in _SCALAR_FORMATS:
            pos += struct.calcsize(_SCALAR_FORMATS[vtype])
        else:
            raise ValueError(f"{path}: unknown GGUF value type {vtype}")

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key, vtype = string(), take("<I")
        if vtype == _STRING:
            meta[key] = string()
        elif vtype in _SCALAR_FORMATS:
            meta[key] = take(_SCALAR_FORMATS[vtype])
        else:
            skip(vtype)
    raw_infos = []
    for _ in range(n_tensors):
        name, ndim = string(), take("<I")
        shape = tuple(take("<Q") for _ in range(ndim))
        raw_infos.append((name, shape, take("<I"), take("<Q")))
    align = int(meta.get("general.alignment", 32))
    start = -(-pos // align) * align
    tensors = {}
    for name, shape, tcode, offset in raw_infos:
        qtype = GGMLQuantizationType(tcode)
        block, size = GGML_QUANT_SIZES[qtype]
        count = int(np.prod(shape, dtype=np.int64))
        tensors[name] = TensorInfo(qtype.name, shape, start + offset, count // block * size)
    if not isinstance(buf, bytes):
        buf.close()
    return meta, tensors


class GGUFModelWeights:
    """A GGUF file's linear-layer tensors by Hugging Face name, packed for the kernel.
    ``num_heads``/``num_kv_heads`` (the model's config) un-permute llama.cpp's q/k rows."""

    def __init__(self, path: Path | str, num_heads: int, num_kv_heads: int):
        from radixrt.model import gguf_convert

        self.path = Path(path)
        meta, infos = read_gguf_index(self.path)
        arch = str(meta.get("general.architecture", "<missing>"))
        spec = gguf_convert.GGUF_ARCHITECTURES.get(arch)
        if spec is None:
            raise ValueError(f"{self.path}: unsupported GGUF architecture {arch!r}")
        self.permute_qk = spec.permute_qk
        self.heads = {"q": num_heads, "k": num_kv_heads}
        self.tensors: dict[str, TensorInfo] = {}
        for name, info in infos.items():
            try:
                self.tensors[gguf_convert.hf_tensor_name(name)] = info
            except Exception:  # noqa: BLE001 - tensors the model does not use (rope_freqs, ...)
                continue
        self.file = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.requantized: list[str] = []  # layers given Q8_0 blocks made here

    def types(self) -> dict[str, str]:
        return {name: t.qtype for name, t in self.tensors.items()}

    def _raw_rows(self, name: str, fallback: torch.Tensor | None, force_q8: bool = False
                  ) -> tuple[np.ndarray, str]:
        """uint8 blocks [rows, bytes] in Hugging Face row order, and their type (Q8_0 blocks
        made from ``fallback`` where the file's type has no kernel, or ``force_q8``)."""
        t = self.tensors.get(name)
        if t is None or t.qtype not in SUPPORTED_TYPES or len(t.shape) != 2 or (force_q8 and t.qtype != "Q8_0"):
            if fallback is None:
                raise ValueError(f"{self.path}: no tensor {name!r} of a supported type")
            self.requantized.append(name)
            return quantize_q8_0(fallback), "Q8_0*"
        rows = int(t.shape[1])
        raw = self.file[t.offset:t.offset + t.nbytes].reshape(rows, -1)
        if self.permute_qk and (".q_proj." in name or ".k_proj." in name):
            # gguf_convert.unpermute_rotary_rows on whole rows of blocks (numpy: a byte copy)
            heads = self.heads["q" if ".q_proj." in name else "k"]
            if rows % (2 * heads):
                raise ValueError(f"{name}: cannot un-permute {rows} rows over {heads} heads")
            raw = raw.reshape(heads, rows // heads // 2, 2, -1).transpose(0, 2, 1, 3).reshape(rows, -1)
        return raw, t.qtype

    def packed(self, names: list[str], fallbacks: list[torch.Tensor | None]) -> PackedBlocks:
        """The tensors ``names`` stacked along the output dimension, packed. A tensor of a type
        the kernel lacks, or a mix of 4- and 8-bit types, takes Q8_0 blocks of its ``fallbacks``
        entry (the exact float weight)."""
        parts = [self._raw_rows(n, f) for n, f in zip(names, fallbacks, strict=True)]
        if len({SUPPORTED_TYPES[q.rstrip("*")][1] for _, q in parts}) > 1:  # one kernel call, one width
            parts = [self._raw_rows(n, f, force_q8=True) for n, f in zip(names, fallbacks, strict=True)]
        qtypes = [q.rstrip("*") for _, q in parts]
        label = "+".join(sorted({q for _, q in parts}))
        if len(set(qtypes)) == 1:  # one type: join the file's rows, pack once
            raw = parts[0][0] if len(parts) == 1 else np.concatenate([r for r, _ in parts])
            p = pack_blocks(raw, qtypes[0])
            p.qtype = label
            return p
        # Q4_0 next to Q4_1: the same layout once packed (m = -8 d); pack each, then join.
        packed = [pack_blocks(raw, q) for (raw, _), q in zip(parts, qtypes, strict=True)]
        k = packed[0].k
        if any(p.k != k for p in packed):
            raise ValueError(f"{names}: different input sizes cannot share one layer")
        qs = torch.cat([unpad_rows(p, p.qs) for p in packed])
        dm = torch.cat([unpad_rows(p, p.dm) for p in packed])
        return _regroup(qs, dm, sum(p.n for p in packed), k, packed[0].bits, label)


def unpad_rows(p: PackedBlocks, t: torch.Tensor) -> torch.Tensor:
    """Packed ``qs`` or ``dm`` back to one entry per row: [n, nb, ...] (row-major, unpadded)."""
    if t.dtype == torch.uint8:
        return t.permute(0, 3, 1, 2, 4).reshape(-1, *t.shape[1:3], 4)[:p.n]  # [n, nb, steps, 4]
    return t.permute(0, 3, 1, 2).reshape(-1, t.shape[1], 2)[:p.n]  # [n, nb, 2]


def _regroup(qs: torch.Tensor, dm: torch.Tensor, n: int, k: int, bits: int, qtype: str) -> PackedBlocks:
    groups = -(-n // ROWS)
    pad = groups * ROWS - n
    if pad:
        qs = torch.cat([qs, qs.new_zeros(pad, *qs.shape[1:])])
        dm = torch.cat([dm, dm.new_zeros(pad, *dm.shape[1:])])
    nb = k // BLOCK
    qs = qs.reshape(groups, ROWS, nb, -1, 4).permute(0, 2, 3, 1, 4).contiguous()
    dm = dm.reshape(groups, ROWS, nb, 2).permute(0, 2, 3, 1).contiguous()
    return PackedBlocks(qs, dm, n, k, bits, qtype)
