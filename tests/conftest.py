"""Shared fixtures for the whole test suite (append new session-wide fixtures below)."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

# Without a GPU, Triton kernels run under Triton's interpreter (NumPy on the CPU), so CI tests
# them against their torch references. Set before anything imports triton.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

# The hierarchical cache's disk tier is on by default: KV goes to a temporary folder, never
# into the user's cache. Engines and servers built by session- or module-scoped fixtures use
# this session folder; each test gets its own (autouse fixture below), so no test finds KV
# that another one left.
_HICACHE_SESSION_DIR = tempfile.mkdtemp(prefix="radixrt-hicache-")
os.environ["RADIXRT_HICACHE_DIR"] = _HICACHE_SESSION_DIR
atexit.register(shutil.rmtree, _HICACHE_SESSION_DIR, True)


@pytest.fixture(autouse=True)
def _hicache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RADIXRT_HICACHE_DIR", str(tmp_path_factory.mktemp("hicache")))


@pytest.fixture(scope="session")
def default_model_dir() -> pathlib.Path:
    """The embedded default model (SmolLM2-135M-Instruct), converted once into the user cache.

    Uses the real cache ($RADIXRT_CACHE_DIR or ~/.cache/radixrt) so later sessions reuse it.
    """
    from radixrt.model.loader import prepare_model_dir

    return prepare_model_dir(None, progress=False)
