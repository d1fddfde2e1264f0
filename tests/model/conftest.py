"""Fixtures shared with the engine tests."""

from tests.engine.conftest import tiny_model_dir  # noqa: F401  (the 2-layer random Llama)
