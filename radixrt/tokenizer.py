"""Tokenizer loading (transformers' AutoTokenizer from the prepared model directory)."""

from __future__ import annotations

import os
from pathlib import Path


def load_tokenizer(path: str | Path):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
