"""Cache fixtures: the 2-layer random Llama of the engine tests, for Engine- and server-level
hierarchical cache tests."""

from tests.engine.conftest import tiny_model_dir  # noqa: F401
