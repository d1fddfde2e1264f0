"""Shared fixtures for the whole test suite (append new session-wide fixtures below)."""

from __future__ import annotations

import os
import pathlib

import pytest

# Without a GPU, Triton kernels run under Triton's interpreter (NumPy on the CPU), so CI tests
# them against their torch references. Set before anything imports triton.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


@pytest.fixture(scope="session")
def default_model_dir() -> pathlib.Path:
    """The embedded default model (SmolLM2-135M-Instruct), converted once into the user cache.

    Uses the real cache ($RADIXRT_CACHE_DIR or ~/.cache/radixrt) so later sessions reuse it.
    """
    from radixrt.model.loader import prepare_model_dir

    return prepare_model_dir(None, progress=False)
