"""Errors shared by the model-loading modules (``loader``, ``gguf_convert``, ``runner``)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model path cannot be turned into a servable model; the message says why."""
