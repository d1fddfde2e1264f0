"""Convert a llama.cpp GGUF checkpoint into a Hugging Face-style model directory.

The output directory holds ``config.json``, float32 ``*.safetensors`` with Hugging Face Llama
parameter names, and tokenizer files that ``transformers.AutoTokenizer`` loads. Callers
(``radixrt.model.loader``) write into a temporary directory and move it into the cache.

Two llama.cpp conventions are undone here:

* Quantized tensors are dequantized to float32 with ``gguf.quants.dequantize`` (the same
  numpy code transformers uses, so the values are bit-identical).
* For the ``llama`` family, llama.cpp's converter reorders the rows of ``q_proj`` and
  ``k_proj`` inside every head so that the rotary pairs are interleaved
  (``(d0, d_half), (d1, d_half+1), ...`` become adjacent rows) as its "normal" rope kernel
  expects. Hugging Face rotates the two halves of each head instead, so we put the rows
  back: inside a head, GGUF row ``2*j + s`` goes to HF row ``s*head_dim/2 + j``.
  Qwen2 GGUF files use the "neox" rope layout, which is already the HF layout.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radixrt.model.errors import ModelLoadError

logger = logging.getLogger("radixrt.loader")

# Keep shards small enough that peak memory during conversion stays bounded.
MAX_SHARD_BYTES = 2 * 2**30


@dataclass(frozen=True)
class ArchSpec:
    hf_architecture: str
    model_type: str
    permute_qk: bool  # llama.cpp interleaved the rotary rows of q/k: undo it


GGUF_ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("LlamaForCausalLM", "llama", permute_qk=True),
    # Mistral checkpoints are stored by llama.cpp with the llama layout (and usually as "llama").
    "mistral": ArchSpec("LlamaForCausalLM", "llama", permute_qk=True),
    "qwen2": ArchSpec("Qwen2ForCausalLM", "qwen2", permute_qk=False),
}

_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")
# Tensors llama.cpp adds that have no HF parameter (handled through the config instead).
_CONFIG_ONLY_TENSORS = {"rope_freqs.weight"}


# --------------------------------------------------------------------------- metadata


def read_field(reader: Any, key: str, default: Any = None) -> Any:
    """A GGUF metadata value as a plain Python value (str, int, float, bool or list)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value


def gguf_architecture(reader: Any) -> str:
    return str(read_field(reader, "general.architecture", "<missing>"))


def arch_spec(reader: Any, path: Path) -> ArchSpec:
    arch = gguf_architecture(reader)
    spec = GGUF_ARCHITECTURES.get(arch)
    if spec is None:
        raise ModelLoadError(
            f"{path}: unsupported GGUF architecture {arch!r} (general.architecture); radixrt "
            f"converts only {sorted(GGUF_ARCHITECTURES)}")
    split_count = read_field(reader, "split.count", 1)
    if split_count and split_count > 1:
        raise ModelLoadError(
            f"{path} is one part of a {split_count}-way split GGUF; merge the parts first "
            "(llama-gguf-split --merge) and pass the merged file")
    return spec


# --------------------------------------------------------------------------- tensors


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name (``blk.3.attn_q.weight``) to its HF parameter name."""
    if m := _LAYER_RE.fullmatch(gguf_name):
        layer, kind, suffix = m.groups()
        if kind in _LAYER_TENSORS:
            return f"model.layers.{layer}.{_LAYER_TENSORS[kind]}.{suffix}"
    elif (m := _GLOBAL_RE.fullmatch(gguf_name)) and m.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[m.group(1)]}.{m.group(2)}"
    raise ModelLoadError(f"GGUF tensor {gguf_name!r} has no known Hugging Face counterpart")


def unpermute_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head interleaving of rotary rows (works for weights and biases)."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ModelLoadError(f"cannot un-permute a tensor with {rows} rows over {n_heads} heads")
    half = rows // n_heads // 2
    w = weight.reshape(n_heads, half, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape).contiguous()


def check_quant_types(reader: Any, path: Path) -> None:
    """Fail early, naming the type, if gguf-py cannot dequantize some tensor."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    probed: set[GGMLQuantizationType] = set()
    for tensor in reader.tensors:
        qtype = tensor.tensor_type
        if qtype in probed:
            continue
        probed.add(qtype)
        try:
            dequantize(tensor.data[:1], qtype)
        except NotImplementedError as e:
            raise ModelLoadError(
                f"{path}: tensor {tensor.name} uses quantization type {qtype.name}, which "
                f"gguf {_gguf_version()} cannot dequantize; use a GGUF with another quant type "
                "(Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, F16, ...) or a safetensors checkpoint") from e


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def dequantized_tensor(tensor: Any) -> torch.Tensor:
    """One GGUF tensor as float32 torch, in numpy (row-major, HF) dimension order."""
    from gguf.quants import dequantize

    values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    if not values.flags.writeable:  # F32 tensors come back as views of the read-only mmap
        values = values.copy()
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return torch.from_numpy(values.reshape(shape))


def convert_tensor(tensor: Any, spec: ArchSpec, config: dict[str, Any]) -> tuple[str, torch.Tensor]:
    name = hf_tensor_name(tensor.name)
    weight = dequantized_tensor(tensor)
    if spec.permute_qk and (".q_proj." in name or ".k_proj." in name):
        heads = config["num_attention_heads"] if ".q_proj." in name else config["num_key_value_heads"]
        weight = unpermute_rotary_rows(weight, heads)
    return name, weight


def plan_shards(tensors: list[Any]) -> list[list[Any]]:
    """Group tensors (in file order) into shards of at most MAX_SHARD_BYTES float32 bytes."""
    shards: list[list[Any]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = 4 * int(np.prod(tensor.shape.tolist()))
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def write_weights(reader: Any, spec: ArchSpec, config: dict[str, Any], out_dir: Path,
                  progress: bool) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    tensors = [t for t in reader.tensors if t.name not in _CONFIG_ONLY_TENSORS]
    for t in tensors:
        hf_tensor_name(t.name)  # fail on unknown names before any slow work
    shards = plan_shards(tensors)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map: dict[str, str] = {}
    bar = tqdm(total=len(tensors), desc="dequantizing GGUF tensors", unit="tensor",
               disable=not progress)
    with bar:
        for shard, file_name in zip(shards, names, strict=True):
            state: dict[str, torch.Tensor] = {}
            for tensor in shard:
                name, weight = convert_tensor(tensor, spec, config)
                state[name] = weight
                weight_map[name] = file_name
                bar.update(1)
            save_file(state, str(out_dir / file_name), metadata={"format": "pt"})
            del state
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(4 * int(np.prod(t.shape.tolist())) for t in tensors)},
                 "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# --------------------------------------------------------------------------- config


def _rope_scaling(reader: Any, arch: str, head_dim: int, theta: float) -> dict[str, Any] | None:
    kind = read_field(reader, f"{arch}.rope.scaling.type", "none")
    factor = read_field(reader, f"{arch}.rope.scaling.factor")
    orig_ctx = read_field(reader, f"{arch}.rope.scaling.original_context_length")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        return _llama3_rope_scaling(freqs, head_dim, theta)
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return None if factor in (None, 1.0) else {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor or 1.0)}
        if orig_ctx:
            scaling["original_max_position_embeddings"] = int(orig_ctx)
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                                 ("attn_factor", "attention_factor")):
            value = read_field(reader, f"{arch}.rope.scaling.{gguf_key}")
            if value is not None:
                scaling[hf_key] = float(value)
        return scaling
    raise ModelLoadError(f"unsupported rope scaling type {kind!r} in GGUF metadata")


def _llama3_rope_scaling(freqs_tensor: Any, head_dim: int, theta: float) -> dict[str, Any]:
    """Recover HF's ``llama3`` rope parameters from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores the per-frequency divisors instead of the parameters. We assume the
    parameters every Llama 3.x release uses and accept them only if they reproduce the tensor.
    """
    stored = dequantized_tensor(freqs_tensor).double()
    factor = float(stored.max())
    orig_ctx, low, high = 8192, 1.0, 4.0
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
              "high_freq_factor": high, "original_max_position_embeddings": orig_ctx}
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig_ctx / wavelen - low) / (high - low)
    divisor = torch.where(wavelen < orig_ctx / high, torch.ones_like(wavelen),
                          torch.where(wavelen > orig_ctx / low, torch.full_like(wavelen, factor),
                                      1.0 / ((1 - smooth) / factor + smooth)))
    if stored.shape != divisor.shape or not torch.allclose(stored, divisor, rtol=1e-3):
        raise ModelLoadError("GGUF has a rope_freqs tensor that does not match llama3 rope "
                             "scaling with the usual parameters; cannot express it in config.json")
    return params


def build_config(reader: Any, spec: ArchSpec) -> dict[str, Any]:
    """config.json contents from the GGUF metadata (``{arch}.*`` and ``tokenizer.ggml.*``)."""
    arch = gguf_architecture(reader)

    def key(name: str, default: Any = None, required: bool = False) -> Any:
        value = read_field(reader, f"{arch}.{name}", default)
        if value is None and required:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{name}")
        return value

    hidden = int(key("embedding_length", required=True))
    heads = int(key("attention.head_count", required=True))
    kv_heads = int(key("attention.head_count_kv", heads))
    head_dim = int(key("attention.key_length") or key("rope.dimension_count") or hidden // heads)
    theta = float(key("rope.freq_base", 10000.0))
    names = {t.name: t for t in reader.tensors}
    embd = names.get("token_embd.weight")
    if embd is None:
        raise ModelLoadError("GGUF has no token_embd.weight tensor")
    vocab = int(key("vocab_size") or len(read_field(reader, "tokenizer.ggml.tokens", []))
                or embd.shape.tolist()[-1])
    config: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length", required=True)),
        "num_hidden_layers": int(key("block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(key("context_length", 4096)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(reader, arch, head_dim, theta),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    if spec.model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    else:
        config["use_sliding_window"] = False
    config.update(_special_token_ids(reader))
    return config


def _special_token_ids(reader: Any) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    bos = read_field(reader, "tokenizer.ggml.bos_token_id")
    pad = read_field(reader, "tokenizer.ggml.padding_token_id")
    eos = [read_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    eos = list(dict.fromkeys(int(i) for i in eos if i is not None))
    if bos is not None:
        ids["bos_token_id"] = int(bos)
    if eos:
        ids["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if pad is not None:
        ids["pad_token_id"] = int(pad)
    return ids


# --------------------------------------------------------------------------- tokenizer


def write_tokenizer(gguf_path: Path, out_dir: Path, model_max_length: int) -> None:
    """Convert the GGUF's tokenizer with transformers and save it (chat template included)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises several types for unsupported tokenizers
        raise ModelLoadError(f"{gguf_path}: transformers could not convert the GGUF tokenizer: "
                             f"{e}") from e
    tokenizer.model_max_length = model_max_length
    # save_jinja_files=False keeps chat_template inside tokenizer_config.json as well.
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)
    _scrub_tokenizer_config(out_dir / "tokenizer_config.json")


def _scrub_tokenizer_config(path: Path) -> None:
    """Drop loading-time keys transformers writes back that describe the temp source dir."""
    cfg = json.loads(path.read_text())
    for k in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(k, None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- entry point


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write config.json, safetensors and tokenizer files for ``gguf_path`` into ``out_dir``.

    Returns the config dict. Raises ModelLoadError for files radixrt cannot serve.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as e:
        raise ModelLoadError(f"{gguf_path} is not a readable GGUF file: {e}") from e
    spec = arch_spec(reader, gguf_path)
    check_quant_types(reader, gguf_path)
    config = build_config(reader, spec)
    write_weights(reader, spec, config, out_dir, progress)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(gguf_path, out_dir, config["max_position_embeddings"])
    return config
