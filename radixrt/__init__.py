"""radixrt: an LLM serving runtime built around prefix sharing."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Engine", "ServerArgs", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy imports keep `import radixrt` cheap (torch is only loaded when needed).
    if name == "Engine":
        from radixrt.entrypoints.engine import Engine

        return Engine
    if name == "ServerArgs":
        from radixrt.config import ServerArgs

        return ServerArgs
    if name == "SamplingParams":
        from radixrt.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
