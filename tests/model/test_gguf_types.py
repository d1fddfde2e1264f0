"""Models other than the default: tiny random Llama GGUF files in every tensor type radixrt
supports (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K) and a tiny bf16 safetensors directory, loaded in
every ``--quantization`` mode; logits against a float reference (transformers' Llama on the
weights gguf-py dequantizes), greedy generation through the Engine.

The files are written the way llama.cpp's converter writes a Llama checkpoint: q/k rows
permuted per head for its interleaved rotary layout, 1-D tensors (norms) in F32, every 2-D
weight in the type under test. gguf-py writes F32/F16/Q8_0/Q4_0/Q4_1 itself; Q4_K blocks it
cannot write are packed here from the format (``q4_k_blocks``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from radixrt.config import ServerArgs
from radixrt.model import loader
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.loader import ModelLoadError, prepare_model_dir
from radixrt.model.quantization import MODES
from tests.model.test_loader import CHAT_TEMPLATE, llama_cpp_permute, tiny_tokens

Q = gguf.GGMLQuantizationType
# Every K (row length) is a multiple of 256, the Q4_K super-block.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 256, 4, 2, 64, 512, 2
ROPE_THETA, EPS = 10000.0, 1e-5
TYPES = {"F32": Q.F32, "F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q4_K": Q.Q4_K}
LAYER_TENSORS = {  # HF suffix -> (GGUF suffix, shape)
    "self_attn.q_proj": ("attn_q", (HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.k_proj": ("attn_k", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.v_proj": ("attn_v", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "self_attn.o_proj": ("attn_output", (HIDDEN, HEADS * HEAD_DIM)),
    "mlp.gate_proj": ("ffn_gate", (INTER, HIDDEN)),
    "mlp.up_proj": ("ffn_up", (INTER, HIDDEN)),
    "mlp.down_proj": ("ffn_down", (HIDDEN, INTER)),
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


# --------------------------------------------------------------------------- Q4_K blocks


def q4_k_blocks(w: np.ndarray) -> np.ndarray:
    """``w`` [rows, K] (K a multiple of 256) as Q4_K blocks, uint8 [rows, K / 256 * 144].

    A block (llama.cpp's ``block_q4_K``) covers 256 weights in 8 sub-blocks of 32:
    ``d`` and ``dmin`` (f16), 12 bytes packing one 6-bit scale and one 6-bit min per
    sub-block, and 128 bytes of 4-bit values; weight = d * scale_j * q - dmin * min_j.
    Scale bytes: byte j (j < 4) = scale_j | (scale_{j+4} >> 4) << 6, byte 4 + j = min_j |
    (min_{j+4} >> 4) << 6, byte 8 + j = (scale_{j+4} & 15) | (min_{j+4} & 15) << 4.
    Value bytes: byte 32 * i + l holds sub-block 2i's l-th value in its low nibble and
    sub-block 2i+1's in its high nibble.
    """
    rows, k = w.shape
    x = w.astype(np.float32).reshape(-1, 8, 32)  # [blocks, sub-block, 32]
    lo = np.minimum(x.min(axis=2), 0.0)  # the offset is a non-positive min, as llama.cpp keeps it
    span = (x.max(axis=2) - lo) / 15
    d = (span.max(axis=1) / 63).astype(np.float16)
    dmin = ((-lo).max(axis=1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.clip(np.rint(span / d32), 0, 63), 0).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.clip(np.rint(-lo / dmin32), 0, 63), 0).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        q = np.where(step > 0, np.rint((x + (dmin32 * mn)[:, :, None]) / step), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    scales = np.empty((x.shape[0], 12), np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs],
                            axis=1)
    return blocks.reshape(rows, k // 256 * 144)


def test_q4_k_blocks_follow_the_format():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 512)).astype(np.float32)
    w[2] = np.abs(w[2])  # all positive: a zero min
    w[3] = 0.0  # an all-zero row: zero steps
    w[4, :256] *= 1e-3  # sub-blocks far apart in scale
    blocks = q4_k_blocks(w)
    assert blocks.shape == (6, 2 * gguf.GGML_QUANT_SIZES[Q.Q4_K][1])
    back = gguf.quants.dequantize(blocks, Q.Q4_K)
    assert back.shape == w.shape and np.all(np.isfinite(back))
    # Each value lands within about half a step of the sub-block's 4-bit grid (the 6-bit
    # scale and min add up to a few percent of a step more).
    sub = w.reshape(6, -1, 32)
    step = ((sub.max(2) - np.minimum(sub.min(2), 0)) / 15)[:, :, None]
    assert np.all(np.abs(back.reshape(sub.shape) - sub) <= 0.75 * step + 1e-6)
    assert np.array_equal(back[3], np.zeros(512, np.float32))


# --------------------------------------------------------------------------- tiny models


def stored(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None, np.ndarray]:
    """(data to write, raw_dtype for GGUFWriter, the float32 values a reader gets back)."""
    if qtype == Q.F32:
        return w, None, w
    if qtype == Q.F16:
        return w.astype(np.float16), None, w.astype(np.float16).astype(np.float32)
    data = q4_k_blocks(w) if qtype == Q.Q4_K else gguf.quants.quantize(w, qtype)
    return data, qtype, gguf.quants.dequantize(data, qtype)


def spm_tokens() -> tuple[list[str], list[int], list[float]]:
    """A SentencePiece vocabulary as Llama 2 / Mistral GGUFs carry it (tokenizer model
    ``llama``): unknown, BOS, EOS, 256 byte fallbacks, scored pieces."""
    pieces = ["\u2581", "\u2581h", "\u2581he", "llo", "\u2581w", "orld", "h", "e", "l", "o", "w", "r", "d"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *pieces]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # unknown, control, byte, normal
    scores = [0.0] * 259 + [-float(i) for i in range(1, len(pieces) + 1)]
    return tokens, types, scores


def write_gguf(path: Path, qtype: Q, tied: bool, seed: int = 0, tokenizer: str = "gpt2") -> dict[str, np.ndarray]:
    """A tiny Llama in llama.cpp's layout, 2-D weights in ``qtype``, a byte-level BPE
    (``gpt2``) or SentencePiece (``llama``) tokenizer; returns the HF state dict of the values
    a reader dequantizes (the float reference)."""
    rng = np.random.default_rng(seed)
    if tokenizer == "gpt2":
        tokens, types, merges = tiny_tokens()
    else:
        tokens, types, scores = spm_tokens()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny {qtype.name}")
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_vocab_size(len(tokens))
    w.add_file_type({Q.F32: 0, Q.F16: 1, Q.Q4_0: 2, Q.Q4_1: 3, Q.Q8_0: 7, Q.Q4_K: 15}[qtype])
    w.add_tokenizer_model(tokenizer)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if tokenizer == "gpt2":
        w.add_token_merges(merges)
    else:
        w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    expected: dict[str, np.ndarray] = {}

    def weight(gguf_name: str, hf_name: str, value: np.ndarray, heads: int = 0) -> None:
        data, raw, seen = stored(value, qtype)
        if heads:  # llama.cpp permutes whole rows, so quantized rows move intact
            data = llama_cpp_permute(data, heads)
        w.add_tensor(gguf_name, data, raw_dtype=raw)
        expected[hf_name] = seen

    def norm(gguf_name: str, hf_name: str) -> None:
        value = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w.add_tensor(gguf_name, value)
        expected[hf_name] = value

    weight("token_embd.weight", "model.embed_tokens.weight",
           rng.standard_normal((len(tokens), HIDDEN)).astype(np.float32))
    for i in range(LAYERS):
        for hf_suffix, (gguf_suffix, shape) in LAYER_TENSORS.items():
            heads = {"self_attn.q_proj": HEADS, "self_attn.k_proj": KV_HEADS}.get(hf_suffix, 0)
            value = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            weight(f"blk.{i}.{gguf_suffix}.weight", f"model.layers.{i}.{hf_suffix}.weight", value, heads)
        for hf_suffix, gguf_suffix in NORMS.items():
            norm(f"blk.{i}.{gguf_suffix}.weight", f"model.layers.{i}.{hf_suffix}.weight")
    norm("output_norm.weight", "model.norm.weight")
    if not tied:
        weight("output.weight", "lm_head.weight",
               (rng.standard_normal((len(tokens), HIDDEN)) / 4).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def reference_model(state: dict[str, np.ndarray], vocab: int):
    """transformers' Llama on the given float32 weights: the float reference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = "lm_head.weight" not in state
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                      rms_norm_eps=EPS, rope_theta=ROPE_THETA, max_position_embeddings=512,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


class Case:
    """One tiny model: its path (a GGUF file or a directory) and its float reference."""

    def __init__(self, name: str, path: Path, state: dict[str, np.ndarray]):
        self.name, self.path, self.state = name, path, state
        self.vocab = state["model.embed_tokens.weight"].shape[0]
        self.ref = reference_model(state, self.vocab)

    @torch.inference_mode()
    def ref_logits(self, ids: list[int]) -> torch.Tensor:
        return self.ref(torch.tensor([ids])).logits[0].float()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private radixrt cache (conversions, calibration) for the module's models; the native
    kernels' builds (``ext/``) stay shared with the user's cache, or every run would compile
    them again."""
    path = tmp_path_factory.mktemp("radixrt-cache")
    ext = loader.default_cache_dir() / "ext"
    ext.mkdir(parents=True, exist_ok=True)
    (path / "ext").symlink_to(ext, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RADIXRT_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def cases(tmp_path_factory, cache) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("gguf-types")
    out: dict[str, Case] = {}
    for i, (name, qtype) in enumerate(TYPES.items()):
        path = root / f"tiny-{name}.gguf"
        out[name] = Case(name, path, write_gguf(path, qtype, tied=i % 2 == 0, seed=i))
    # A safetensors checkpoint as Hugging Face publishes them: bf16, its own lm_head.
    st_dir = root / "tiny-safetensors"
    base = out["F32"]
    model = reference_model({**base.state, "lm_head.weight": base.state["model.embed_tokens.weight"][::-1].copy()},
                            base.vocab)
    model.to(torch.bfloat16).save_pretrained(st_dir, safe_serialization=True)
    for f in prepare_model_dir(str(base.path), progress=False).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, st_dir / f.name)
    bf16 = {k: v.float().numpy() for k, v in model.state_dict().items()}
    out["safetensors"] = Case("safetensors", st_dir, bf16)
    return out


NAMES = [*TYPES, "safetensors"]


def test_every_type_converts_to_the_dequantized_values(cases, cache):
    for name in TYPES:
        case = cases[name]
        state = loader.load_state_dict(prepare_model_dir(str(case.path), progress=False))
        assert set(state) == set(case.state), name
        for key, value in case.state.items():
            assert torch.equal(state[key], torch.from_numpy(value)), (name, key)


# --------------------------------------------------------------------------- every mode


def _runner(case: Case, mode: str):
    from radixrt.model.runner import ModelRunner

    args = ServerArgs(model_path=str(case.path), quantization=mode, max_total_tokens=256,
                      max_running_requests=4, attention_backend="torch")
    try:
        return ModelRunner(args)
    except (ValueError, ModelLoadError) as e:
        # A mode that cannot run on this machine, or does not apply to this checkpoint, says
        # so when the runner starts; anything else is a failure.
        pytest.skip(f"--quantization {mode} does not apply to {case.name} here: {e}")


def _logits(runner, ids: list[int], decode_steps: int = 0) -> torch.Tensor:
    """Logits of every position: one prefill of all but the last ``decode_steps`` tokens,
    then one decode step per remaining token (the batch-1 decode path of the mode)."""
    from radixrt.cache.memory_pool import TokenToKVPool

    c, n = runner.config, len(ids)
    pool = TokenToKVPool(n, c.num_layers, c.num_kv_heads, c.head_dim, torch.float32)
    table = torch.arange(1, n + 1).unsqueeze(0)
    m = n - decode_steps
    with torch.inference_mode():
        rows = [runner.model.forward(ForwardBatch.build(ids[:m], [m], [m], table[0, :m], table, [0],
                                                        logits_rows=list(range(m))), pool)]
        for i in range(m, n):
            rows.append(runner.model.forward(ForwardBatch.build(ids[i:i + 1], [i + 1], [1], table[0, i:i + 1],
                                                                table, [0]), pool))
    return torch.cat(rows).float()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_the_float_reference(cases, cache, name, mode):
    """Prefill (40 tokens) and 8 decode steps in ``mode`` against the float reference."""
    case = cases[name]
    runner = _runner(case, mode)
    ids = np.random.default_rng(7).integers(3, case.vocab, 48).tolist()
    ref, out = case.ref_logits(ids), _logits(runner, ids, decode_steps=8)
    assert out.shape == ref.shape
    err = (out - ref).abs().amax(1) / ref.std(1)
    if runner.quantization == "none":
        # The same fp32 weights: only the order of float operations differs.
        assert err.max() < 1e-4, (name, mode, err.max())
    else:
        # Documented tolerance of the quantized modes (as for the default model's int8 in
        # tests/model/test_quantization.py): each logit within 10% of its row's spread, the
        # most likely token the same almost everywhere.
        assert err.max() < 0.1, (name, mode, runner.quantization, err.max())
        assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_follows_the_reference(cases, cache, name):
    from radixrt import Engine

    case = cases[name]
    prompt = [5, 77, 140, 201, 33, 9]
    with Engine(model_path=str(case.path), max_total_tokens=256, max_running_requests=4) as engine:
        out = engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 12, "temperature": 0,
                                                                 "ignore_eos": True})
        mode = engine.runner.quantization
    tokens = out["output_ids"]
    assert len(tokens) == 12 and out["meta_info"]["finish_reason"]["type"] == "length"
    # Every token is the reference's argmax on the sequence so far, up to near-ties.
    logits = case.ref_logits(prompt + tokens)[len(prompt) - 1:-1]
    tol = 1e-3 if mode == "none" else 0.1
    picked = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert (picked >= logits.amax(1) - tol * logits.std(1)).all(), (name, mode, tokens)


def test_sentencepiece_tokenizer_gguf_serves(tmp_path, cache):
    """Llama 2 / Mistral style GGUFs carry a SentencePiece vocabulary instead of BPE merges."""
    from radixrt import Engine

    path = tmp_path / "tiny-spm.gguf"
    state = write_gguf(path, Q.Q8_0, tied=True, tokenizer="llama")
    tokens = spm_tokens()[0]
    with Engine(model_path=str(path), max_total_tokens=256, max_running_requests=4) as engine:
        ids = engine.tokenizer.encode("hello world")
        assert [tokens[i] for i in ids][:2] == ["\u2581he", "l"] and "<0x" not in "".join(tokens[i] for i in ids)
        assert engine.tokenizer.decode(ids) == "hello world"
        out = engine.generate("hello world", {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True})
    assert len(out["output_ids"]) == 6 and out["meta_info"]["prompt_tokens"] == len(ids)
    ref = Case("spm", path, state)
    logits = ref.ref_logits(ids + out["output_ids"])[len(ids) - 1:-1]
    picked = logits.gather(1, torch.tensor(out["output_ids"])[:, None])[:, 0]
    assert (picked >= logits.amax(1) - 0.1 * logits.std(1)).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("qtype", [Q.Q8_1, Q.Q8_K])
def test_types_gguf_cannot_read_name_the_tensor_and_type(tmp_path, cache, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    path = tmp_path / f"{qtype.name}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(HIDDEN)
    w.add_head_count(HEADS)
    w.add_tensor("token_embd.weight", np.zeros((8, size * HIDDEN // block), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=rf"token_embd\.weight.*{qtype.name}"):
        prepare_model_dir(str(path), progress=False)
