"""What this CPU can do, read at run time: the SIMD extensions that decide which kernels pay.

Flags come from ``/proc/cpuinfo`` on Linux; elsewhere only torch's own dispatch level
(``torch.backends.cpu.get_cpu_capability()``) is known, which tells AVX2 from AVX-512 but says
nothing about VNNI, BF16 or AMX. ``RADIXRT_CPU_FEATURES`` (or the ``override`` argument)
replaces the detected flags with a pretend set such as ``avx2`` or ``avx2,avx512,vnni`` (or
``none``), so that choices made from them can be tested on any machine.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

ENV_VAR = "RADIXRT_CPU_FEATURES"

_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl"})
_VNNI = frozenset({"avx512_vnni", "avx_vnni"})
_AMX = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
# The cpuinfo flags radixrt looks at, and the short names an override may use for them.
KNOWN_FLAGS = frozenset({"avx2", "avx512_bf16"}) | _AVX512 | _VNNI | _AMX
ALIASES = {"avx512": _AVX512 | {"avx2"}, "vnni": frozenset({"avx512_vnni"}), "bf16": frozenset({"avx512_bf16"}),
           "amx": _AMX}


@dataclass(frozen=True)
class CpuFeatures:
    flags: frozenset[str]  # subset of KNOWN_FLAGS
    model: str  # e.g. "AMD EPYC 9R14", "" when unknown
    torch_capability: str  # torch's CPU dispatch level: "AVX512", "AVX2", "DEFAULT", ...
    source: str  # "cpuinfo", "torch" (capability only) or "override"

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        """AVX-512 F, BW and VL (what int8 and fp32 kernels use)."""
        return _AVX512 <= self.flags

    @property
    def vnni(self) -> bool:
        """An 8-bit dot product that accumulates into int32 (AVX-512 VNNI or AVX-VNNI)."""
        return bool(_VNNI & self.flags)

    @property
    def bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags and bool({"amx_int8", "amx_bf16"} & self.flags)

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "avx2": self.avx2, "avx512": self.avx512, "vnni": self.vnni,
                "bf16": self.bf16, "amx": self.amx, "torch_capability": self.torch_capability,
                "source": self.source}

    def summary(self) -> str:
        """E.g. ``AMD EPYC: avx2 avx512 vnni bf16, no amx; torch AVX512 (cpuinfo)``."""
        names = ("avx2", "avx512", "vnni", "bf16", "amx")
        has = " ".join(n for n in names if getattr(self, n))
        missing = " ".join(n for n in names if not getattr(self, n))
        text = ", ".join(part for part in (has, missing and f"no {missing}") if part)
        model = f"{self.model}: " if self.model else ""
        return f"{model}{text}; torch {self.torch_capability} ({self.source})"


def detect_cpu_features(override: str | None = None) -> CpuFeatures:
    """This CPU's features; ``override`` (else ``$RADIXRT_CPU_FEATURES`` if set) pretends."""
    if override is None:
        override = os.environ.get(ENV_VAR)
    return _detect(override)


@functools.lru_cache(maxsize=16)
def _detect(override: str | None) -> CpuFeatures:
    capability = _torch_capability()
    model, flags = _read_cpuinfo()
    if override is not None:
        return CpuFeatures(parse_features(override), model, capability, "override")
    if flags is not None:
        return CpuFeatures(flags & KNOWN_FLAGS, model, capability, "cpuinfo")
    implied = {"AVX512": {"avx2"} | _AVX512, "AVX2": {"avx2"}}.get(capability, set())
    return CpuFeatures(frozenset(implied), model or platform.processor(), capability, "torch")


def parse_features(text: str) -> frozenset[str]:
    """``"avx2,avx512,vnni"`` -> cpuinfo flag names; ``"none"`` or ``""`` -> no features."""
    out: set[str] = set()
    for name in text.replace(" ", ",").lower().split(","):
        if name in ("", "none"):
            continue
        if name in ALIASES:
            out |= ALIASES[name]
        elif name in KNOWN_FLAGS:
            out.add(name)
        else:
            known = sorted(KNOWN_FLAGS | set(ALIASES))
            raise ValueError(f"{ENV_VAR}: unknown CPU feature {name!r} (known: {', '.join(known)})")
    return frozenset(out)


def _read_cpuinfo() -> tuple[str, frozenset[str] | None]:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "", None
    model, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if model and flags is not None:
            break
    return model, flags


def _torch_capability() -> str:
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # very old torch, or a build without the query
        return "unknown"
