"""Engine fixtures: a tiny random-weight Llama (fast) and the real default model."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    """A 2-layer random Llama with the default model's tokenizer (so text round-trips)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits: sharper, less tie-prone argmax
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(d, safe_serialization=True)
    for f in default_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, d / f.name)
    return d


def assert_no_leak(engine) -> None:
    """Every KV slot is accounted for, and after a flush all are free."""
    kv = engine.kv_accounting()
    assert kv["free"] + kv["running"] + kv["cached"] == kv["total"], kv
    assert kv["running"] == 0, kv
    assert engine.flush_cache()
    kv = engine.kv_accounting()
    assert kv["free"] == kv["total"], kv
