"""Which precision the CPU model worker runs its dense layers in (``--quantization``).

- ``none``: fp32 everywhere, the reference.
- ``int8``: every linear layer and the LM head as an int8 GEMM (``Int8Linear``: int8 weights
  per output channel, int8 activations per token; decoder layers' inputs smoothed per channel,
  ``smoothing.py``; the LM head with a residual pass; ``LlamaModel.quantize``). The embedding
  lookup, norms, attention and the KV cache stay fp32; a tied LM head quantizes its own copy
  of the embedding.
- ``gguf`` (the name vLLM gives GGUF weights): for a model loaded from a ``.gguf`` file, every
  linear layer and the LM head run on the file's own Q4_0/Q4_1/Q8_0 blocks with radixrt's kernel
  (``radixrt.model.gguf_weights``, ``radixrt/csrc/quant_gemm.cpp``): the file's exact weights,
  int8 activations per 32-block. Tensors of other types (Q4_K, Q6_K, F16, ...) take Q8_0 blocks
  of their exact values. The kernel path follows the CPU features: AVX-512 VNNI, AVX2, else
  scalar. A model from safetensors cannot run it (an error; ``auto`` moves on).
- ``auto`` (the default): ``gguf`` for a model from a ``.gguf`` file on a CPU with AVX2 when the
  native kernel builds (the fastest mode measured, and within 2% of fp32's perplexity:
  docs/benchmarks.md); else int8 where it is known to pay on this CPU and to stay within 2%
  of fp32's perplexity, fp32 otherwise. Int8 needs the CPU device, float32, AVX2, a quantized
  engine that passes a numeric check here (torch's fbgemm; ``engine_works``) and VNNI (without
  it fbgemm's kernels need 7-bit activations, measured +3.7% perplexity on SmolLM2-135M); then
  layers of at least ``AUTO_MIN_WEIGHTS`` weights take int8 (below that, int8's fixed per-call
  cost loses to the fp32 GEMV) and the rest stay fp32.

The choice is made from CPU features and checks, not from timings at start-up: a timing taken
on a busy machine can flip it, and the same server would then compute different outputs after
a restart. The speed and accuracy behind the rule are measured by ``bench/linear_micro.py``,
``bench/throughput.py --quantization`` and ``bench/accuracy.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from radixrt.model.cpu_features import CpuFeatures, detect_cpu_features
from radixrt.model.linear import Int8Linear, Linear

MODES = ("auto", "none", "int8", "gguf")
# Engines whose packed weights accept a float input with a given step (fbgemm's; "x86" packs
# linear weights with fbgemm too). oneDNN's packed weights lack that entry point.
ENGINES = ("fbgemm", "x86")
# Layers smaller than this stay fp32 under auto. Int8 pays when weights stream from memory: in
# SmolLM2-135M's batch-1 decode step the smallest layer (o, 576x576) ran 2.2x faster in int8
# (bench/decode_profile.py), while a lone layer small enough to stay in cache needs ~1M weights
# to gain at batch 1 and ~300K at batch 32 (bench/linear_micro.py; AMD EPYC Zen 4, 2 threads);
# layers of a 64-wide test model (4K-16K weights) lose 5-10x to int8's fixed per-call cost.
AUTO_MIN_WEIGHTS = 256 * 1024


@dataclass(frozen=True)
class QuantizationPlan:
    mode: str  # "none", "int8" or "gguf" ("auto" is resolved to one of them)
    reason: str  # why, for the start-up log
    engine: str | None = None  # torch quantized engine the int8 weights are packed for
    reduce_range: bool = False  # 7-bit activations (no VNNI: fbgemm's int16 pair sums)
    min_weights: int = 0  # layers with fewer weights stay fp32
    gguf_path: Path | None = None  # gguf: the file whose blocks the layers run on
    isa: int = 0  # gguf: the kernel path (radixrt.model.gguf_weights.ISA_*)

    def covers(self, weight: torch.Tensor) -> bool:
        """Whether a layer with this ``[out, in]`` weight runs in int8."""
        return self.mode == "int8" and weight.numel() >= self.min_weights

    def make_linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    residual_pass: bool = False) -> Linear | Int8Linear:
        if self.covers(weight):
            return Int8Linear(weight, bias, self.engine, self.reduce_range, residual_pass)
        return Linear(weight, bias)

    def describe(self) -> str:
        if self.mode == "none":
            return f"none (fp32: {self.reason})"
        if self.mode == "gguf":
            from radixrt.model.gguf_weights import ISA_NAMES

            return f"gguf ({ISA_NAMES.get(self.isa, 'auto')} kernel on the file's blocks: {self.reason})"
        bits = "7-bit" if self.reduce_range else "8-bit"
        return f"int8 ({self.engine}, {bits} activations: {self.reason})"


NONE = QuantizationPlan("none", "asked for")


def plan_quantization(requested: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      features: CpuFeatures | None = None, engines: tuple[str, ...] | None = None,
                      gguf_source: Path | None = None) -> QuantizationPlan:
    """Resolve ``--quantization`` for this machine.

    ``features`` defaults to the detected (or ``$RADIXRT_CPU_FEATURES``) ones, ``engines`` to
    ``torch.backends.quantized.supported_engines``; ``gguf_source`` is the ``.gguf`` file the
    model was converted from (None for safetensors). ``int8`` or ``gguf`` that cannot run
    raises ValueError; ``auto`` falls back to the next mode.
    """
    if requested not in MODES:
        raise ValueError(f"unknown quantization {requested!r} (choose {', '.join(MODES)})")
    if requested == "none":
        return NONE
    features = features or detect_cpu_features()
    if requested in ("gguf", "auto"):
        isa, problem = gguf_kernel_path(device, dtype, features, gguf_source)
        if problem is None and (requested == "gguf" or isa != _ISA_SCALAR):
            why = "asked for" if requested == "gguf" else "auto: model from a GGUF file"
            return QuantizationPlan("gguf", why, gguf_path=gguf_source, isa=isa)
        if requested == "gguf":
            raise ValueError(f"--quantization gguf cannot run here: {problem}")
    reduce_range = not features.vnni
    problem = None
    if torch.device(device).type != "cpu":
        problem = f"int8 runs on the CPU only, the device is {torch.device(device).type}"
    elif dtype != torch.float32:
        problem = f"int8 replaces float32 layers, the dtype is {str(dtype).replace('torch.', '')}"
    elif not features.avx2:
        problem = "the CPU has no AVX2 (fbgemm needs it)"
    else:
        available = torch.backends.quantized.supported_engines if engines is None else engines
        engine = next((e for e in ENGINES if e in available and engine_works(e, reduce_range)), None)
        if engine is None:
            problem = f"no quantized engine passes the int8 check (torch has {', '.join(available) or 'none'})"
    if problem is not None:
        if requested == "int8":
            raise ValueError(f"--quantization int8 cannot run here: {problem}")
        return QuantizationPlan("none", problem)
    if requested == "int8":
        return QuantizationPlan("int8", "asked for" + ("" if features.vnni else "; no VNNI"), engine,
                                reduce_range)
    if reduce_range:
        return QuantizationPlan("none", "no VNNI: int8 would need 7-bit activations, measured "
                                "+3.7% perplexity over fp32 (the bar is 2%)")
    return QuantizationPlan("int8", f"auto: VNNI, layers of {AUTO_MIN_WEIGHTS} weights or more",
                            engine, reduce_range, AUTO_MIN_WEIGHTS)


_ISA_SCALAR, _ISA_AVX2, _ISA_VNNI = 1, 2, 3  # radixrt.model.gguf_weights.ISA_*


def gguf_kernel_path(device: torch.device | str, dtype: torch.dtype, features: CpuFeatures,
                     gguf_source: Path | None) -> tuple[int, str | None]:
    """The GGUF-block kernel path for these CPU ``features`` (VNNI, AVX2 or scalar), and why
    the ``gguf`` mode cannot run (None when it can). ``auto`` skips the scalar path: without
    AVX2 it is slower than fp32."""
    if torch.device(device).type != "cpu":
        return 0, f"gguf runs on the CPU only, the device is {torch.device(device).type}"
    if dtype != torch.float32:
        return 0, f"gguf replaces float32 layers, the dtype is {str(dtype).replace('torch.', '')}"
    if gguf_source is None:
        return 0, "the model was not loaded from a .gguf file"
    from radixrt.model.native import native_unavailable_reason, quant_gemm_ops

    ops = quant_gemm_ops()
    if ops is None:
        return 0, f"the native kernel is unavailable ({native_unavailable_reason()})"
    if features.avx512 and features.vnni and ops.supported(_ISA_VNNI):
        return _ISA_VNNI, None
    if features.avx2 and ops.supported(_ISA_AVX2):
        return _ISA_AVX2, None
    return _ISA_SCALAR, None


def int8_error_bound(x: torch.Tensor, weight: torch.Tensor, reduce_range: bool = False) -> torch.Tensor:
    """Worst-case |Int8Linear(weight)(x) - x @ weight.T| per output element, from the two steps.

    A weight row j is rounded with step s_j = max|w_j| / 127 (error <= s_j / 2 per weight), an
    input row with step t = max|x| * x_step (error <= t / 2 per element), so
    |error| <= s_j/2 * sum|x| + t/2 * sum|w_j| + K * t/2 * s_j/2, plus float rounding.
    """
    x_step = 1 / 63 if reduce_range else 1 / 127
    xa, wa = x.abs().double(), weight.abs().double()
    s = wa.amax(dim=1) / 127  # [N]
    t = xa.amax(dim=-1, keepdim=True) * x_step  # [M, 1]
    k = x.shape[-1]
    bound = s / 2 * xa.sum(-1, keepdim=True) + t / 2 * wa.sum(1) + k * (t / 2) * (s / 2)
    return (bound + 1e-5 * (xa @ wa.t()) + 1e-6).float()


@functools.cache
def engine_works(engine: str, reduce_range: bool) -> bool:
    """Whether ``Int8Linear`` on ``engine`` computes right here: random shapes within the
    quantization bound, and all-maximal inputs and weights (where a kernel that sums u8*s8
    pairs in int16 overflows unless ``reduce_range``)."""
    try:
        gen = torch.Generator().manual_seed(0)
        cases = [(torch.randn(37, 67, generator=gen), torch.randn(5, 67, generator=gen)),
                 (torch.full((16, 256), 0.5), torch.ones(2, 256))]
        for weight, x in cases:
            y = Int8Linear(weight, None, engine, reduce_range)(x)
            if not bool(((y - x @ weight.t()).abs() <= int8_error_bound(x, weight, reduce_range)).all()):
                return False
        return True
    except Exception:  # no such engine, op or packed-weight type in this torch build
        return False
