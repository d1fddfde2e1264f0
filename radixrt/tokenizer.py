"""Tokenizer loading (transformers' AutoTokenizer from the prepared model directory) and what
its chat template can render."""

from __future__ import annotations

import os
from pathlib import Path


def load_tokenizer(path: str | Path):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def chat_template_renders_tools(tokenizer, call_marker: str) -> bool:
    """Whether the tokenizer's chat template takes ``tools=`` (and assistant ``tool_calls`` /
    ``role: "tool"`` messages) and writes calls in the format that ``call_marker`` opens; if
    not, callers describe tools and write calls and results into the messages themselves."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: transformers takes "tool_use" for tools
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template and call_marker in template
