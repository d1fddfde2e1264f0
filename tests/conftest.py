"""Shared fixtures for the whole test suite (append new session-wide fixtures below)."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(scope="session")
def default_model_dir() -> pathlib.Path:
    """The embedded default model (SmolLM2-135M-Instruct), converted once into the user cache.

    Uses the real cache ($RADIXRT_CACHE_DIR or ~/.cache/radixrt) so later sessions reuse it.
    """
    from radixrt.model.loader import prepare_model_dir

    return prepare_model_dir(None, progress=False)
