"""Fixtures for structured-generation tests: the default model's tokenizer and a compiler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOL_TOKENIZER_DIR = Path("/tmp/smol/hf")


@pytest.fixture(scope="session")
def smol_tokenizer():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    if (SMOL_TOKENIZER_DIR / "tokenizer.json").exists():
        path = SMOL_TOKENIZER_DIR
    else:
        from radixrt.model.loader import prepare_model_dir

        path = prepare_model_dir(None)
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session")
def compiler(smol_tokenizer):
    from radixrt.fsm import GrammarCompiler

    gc = GrammarCompiler(smol_tokenizer)
    yield gc
    gc.close()
