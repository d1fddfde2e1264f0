"""The GGUF-block kernel (radixrt/csrc/quant_gemm.cpp) and the ``gguf`` quantization mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixrt.config import ServerArgs
from radixrt.model import gguf_weights as gw
from radixrt.model import native
from radixrt.model.cpu_features import detect_cpu_features
from radixrt.model.quantization import plan_quantization

ops = native.quant_gemm_ops()
needs_kernel = pytest.mark.skipif(ops is None, reason="native kernels unavailable")
PATHS = [gw.ISA_SCALAR, gw.ISA_AVX2, gw.ISA_VNNI]
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def random_blocks(n: int, k: int, qtype: str, seed: int) -> np.ndarray:
    """Random file blocks of ``qtype``: uint8 [n, k/32 * block bytes]."""
    rng = np.random.default_rng(seed)
    nb, bs = k // 32, BLOCK_BYTES[qtype]
    raw = rng.integers(0, 256, size=(n, nb, bs), dtype=np.uint8)
    d = (rng.uniform(0.002, 0.05, size=(n, nb)) * rng.choice([-1, 1], size=(n, nb))).astype(np.float16)
    raw[:, :, 0:2] = d[:, :, None].view(np.uint8)
    if qtype == "Q4_1":
        m = rng.uniform(-0.4, 0.1, size=(n, nb)).astype(np.float16)
        raw[:, :, 2:4] = m[:, :, None].view(np.uint8)
    return raw.reshape(n, nb * bs)


def quantized_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's activation rounding: per 32-block, q = round(x * 127 / max|x|)."""
    xb = x.view(x.shape[0], -1, 32)
    amax = xb.abs().amax(-1)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv[..., None]).clamp(-127, 127)
    return q, amax / 127


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T with x rounded as the kernel rounds it, in float64."""
    q, sx = quantized_activations(x)
    wb = w.double().view(w.shape[0], -1, 32)
    return torch.einsum("mbi,nbi,mb->mn", q.double(), wb, sx.double())


def check_gemm(x: torch.Tensor, packed: gw.PackedBlocks, isa: int) -> None:
    w = gw.unpack_blocks(packed)
    y = gw.GGUFLinear(packed, None, isa)(x)
    assert y.shape == (x.shape[0], packed.n)
    scale = x.abs().double() @ w.abs().double().t()
    # Same integers as the reference; only float rounding of the per-block sums differs.
    assert ((y.double() - reference(x, w)).abs() <= 2e-6 * scale + 1e-6).all()
    # And against the float product: within the activations' rounding (half a step per element).
    _, sx = quantized_activations(x)
    bound = torch.einsum("mb,nb->mn", sx.double() / 2, w.abs().double().view(w.shape[0], -1, 32).sum(-1))
    assert ((y.double() - x.double() @ w.double().t()).abs() <= bound + 2e-6 * scale + 1e-6).all()


@needs_kernel
@pytest.mark.parametrize("isa", PATHS, ids=lambda i: gw.ISA_NAMES[i])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("n,k", [(1, 32), (17, 96), (33, 576), (100, 160)])
def test_kernel_paths_match_the_reference(isa, qtype, n, k):
    if not ops.supported(isa):
        pytest.skip(f"this CPU lacks {gw.ISA_NAMES[isa]}")
    packed = gw.pack_blocks(random_blocks(n, k, qtype, seed=n * k), qtype)
    g = torch.Generator().manual_seed(n + k)
    for m in (1, 3, 32, 100):
        x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4
        check_gemm(x, packed, isa)


@needs_kernel
@pytest.mark.parametrize("isa", PATHS, ids=lambda i: gw.ISA_NAMES[i])
def test_kernel_threaded_and_edge_inputs(isa):
    if not ops.supported(isa):
        pytest.skip(f"this CPU lacks {gw.ISA_NAMES[isa]}")
    packed = gw.pack_blocks(random_blocks(1000, 576, "Q4_1", seed=1), "Q4_1")
    x = torch.randn(40, 576, generator=torch.Generator().manual_seed(2))
    x[1] = 0  # an all-zero row (scale 0)
    x[2, :32] = 0  # an all-zero block
    x[3] *= 1e4
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for m in (1, 5, 40):
            check_gemm(x[:m], packed, isa)
        many = gw.GGUFLinear(packed, None, isa)(x)
        torch.set_num_threads(1)
        one = gw.GGUFLinear(packed, None, isa)(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)  # threads split rows, never a sum
    assert torch.equal(many[1], torch.zeros(1000))


@needs_kernel
@pytest.mark.parametrize("isa", PATHS, ids=lambda i: gw.ISA_NAMES[i])
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_kernel_row_tiles_group_chunks_and_threads(isa, qtype):
    """Batches that fill 8-row tiles partly (M = 2, 5, 17, ...) and several L2 chunks of row
    groups per thread (N = 1001 rows: 63 groups, ~45 per chunk at K = 576), 1 and 2 threads."""
    if not ops.supported(isa):
        pytest.skip(f"this CPU lacks {gw.ISA_NAMES[isa]}")
    packed = gw.pack_blocks(random_blocks(1001, 576, qtype, seed=21), qtype)
    x = torch.randn(70, 576, generator=torch.Generator().manual_seed(22)) * 3
    lin = gw.GGUFLinear(packed, None, isa)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for m in (1, 2, 3, 5, 8, 9, 17, 32, 70):
            check_gemm(x[:m], packed, isa)
        two = lin(x)
        torch.set_num_threads(1)
        one = lin(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for i in (0, 7, 8, 16, 69):  # a row alone equals its row in any tile position
        assert torch.equal(lin(x[i:i + 1])[0], two[i])


@needs_kernel
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_avx2_and_vnni_paths_give_the_same_bits(qtype):
    """Both quantize activations to the same int8 values, form the same integer per block and
    take the same float steps per output lane, so their results are identical."""
    if not (ops.supported(gw.ISA_AVX2) and ops.supported(gw.ISA_VNNI)):
        pytest.skip("needs both the AVX2 and the VNNI path")
    packed = gw.pack_blocks(random_blocks(77, 320, qtype, seed=23), qtype)
    x = torch.randn(19, 320, generator=torch.Generator().manual_seed(24)) * 2
    x[3, :32] = 0
    x[5, 40] = 1e3
    a = gw.GGUFLinear(packed, None, gw.ISA_AVX2)(x)
    b = gw.GGUFLinear(packed, None, gw.ISA_VNNI)(x)
    assert torch.equal(a, b)


@needs_kernel
def test_rows_do_not_depend_on_the_batch():
    packed = gw.pack_blocks(random_blocks(50, 192, "Q4_1", seed=4), "Q4_1")
    lin = gw.GGUFLinear(packed)
    x = torch.randn(13, 192, generator=torch.Generator().manual_seed(5))
    full = lin(x)
    for i in (0, 7, 12):
        assert torch.equal(lin(x[i:i + 1])[0], full[i])


@needs_kernel
def test_bias_and_leading_dims():
    packed = gw.pack_blocks(random_blocks(20, 64, "Q8_0", seed=6), "Q8_0")
    bias = torch.randn(20)
    x = torch.randn(2, 3, 64)
    y = gw.GGUFLinear(packed, bias)(x)
    torch.testing.assert_close(y, gw.GGUFLinear(packed)(x.reshape(6, 64)).view(2, 3, 20) + bias)


@needs_kernel
def test_bad_inputs_raise():
    packed = gw.pack_blocks(random_blocks(16, 64, "Q4_0", seed=7), "Q4_0")
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.gemm(torch.randn(1, 63), packed.qs, packed.dm, 16, 4, 0)
    with pytest.raises(RuntimeError, match="expected"):
        ops.gemm(torch.randn(1, 64), packed.qs, packed.dm, 32, 4, 0)
    with pytest.raises(RuntimeError, match="bits"):
        ops.gemm(torch.randn(1, 64), packed.qs, packed.dm, 16, 5, 0)
    with pytest.raises(RuntimeError, match="unsupported|unknown"):
        ops.gemm(torch.randn(1, 64), packed.qs, packed.dm, 16, 4, 9)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_packing_round_trips_gguf_dequantize(qtype):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    t = GGMLQuantizationType[qtype]
    w = np.random.default_rng(8).standard_normal((37, 96)).astype(np.float32)
    raw = quantize(w, t)
    expected = torch.from_numpy(dequantize(raw, t).reshape(37, 96).astype(np.float32))
    assert torch.equal(gw.unpack_blocks(gw.pack_blocks(raw, qtype)), expected)
    # Random bytes too (every nibble, every byte value, negative scales).
    raw = random_blocks(21, 64, qtype, seed=9)
    expected = torch.from_numpy(dequantize(raw, t).reshape(21, 64).astype(np.float32))
    assert torch.equal(gw.unpack_blocks(gw.pack_blocks(raw, qtype)), expected)


def test_q8_0_of_float_weights_matches_gguf():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(10))
    w[3] = 0
    raw = gw.quantize_q8_0(w)
    back = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q8_0).reshape(24, 128).astype(np.float32))
    assert torch.equal(gw.unpack_blocks(gw.pack_blocks(raw, "Q8_0")), back)
    step = w.view(24, 4, 32).abs().amax(-1, keepdim=True) / 127
    assert ((back.view(24, 4, 32) - w.view(24, 4, 32)).abs() <= step * 0.51 + 1e-7).all()


# --------------------------------------------------------------------------- mode choice


@pytest.mark.parametrize("features,isa", [("avx2,avx512,vnni", gw.ISA_VNNI), ("avx2,avx512", gw.ISA_AVX2),
                                          ("avx2", gw.ISA_AVX2), ("none", None)])
@needs_kernel
def test_auto_picks_gguf_with_a_path_the_cpu_has(tmp_path, features, isa):
    f = detect_cpu_features(features)
    src = tmp_path / "model.gguf"
    plan = plan_quantization("auto", "cpu", torch.float32, f, gguf_source=src)
    if isa is None:  # without AVX2 only the scalar path is left: slower than fp32
        assert plan.mode == "none"
        forced = plan_quantization("gguf", "cpu", torch.float32, f, gguf_source=src)
        assert forced.mode == "gguf" and forced.isa == gw.ISA_SCALAR
        return
    assert plan.mode == "gguf" and plan.isa == isa and plan.gguf_path == src
    assert gw.ISA_NAMES[isa] in plan.describe()
    if ops.supported(isa):  # the chosen path runs here
        check_gemm(torch.randn(3, 64), gw.pack_blocks(random_blocks(20, 64, "Q4_1", 11), "Q4_1"), plan.isa)


def test_gguf_needs_a_gguf_model():
    with pytest.raises(ValueError, match="not loaded from a .gguf"):
        plan_quantization("gguf", "cpu", torch.float32, detect_cpu_features("avx2"))
    with pytest.raises(ValueError, match="CPU only"):
        plan_quantization("gguf", "cuda", gguf_source="x.gguf")
    assert plan_quantization("auto", "cpu", torch.float32, detect_cpu_features("avx2")).mode != "gguf"


def test_safetensors_model_refuses_gguf_and_auto_moves_on(tiny_model_dir):
    from radixrt.model.runner import ModelRunner

    args = dict(model_path=str(tiny_model_dir), max_total_tokens=256, max_running_requests=4)
    with pytest.raises(ValueError, match="not loaded from a .gguf"):
        ModelRunner(ServerArgs(quantization="gguf", **args))
    assert ModelRunner(ServerArgs(**args)).quantization in ("int8", "none")


# --------------------------------------------------------------------------- default model


@pytest.fixture(scope="module")
def default_models(default_model_dir):
    from radixrt.model.attention import make_attention_backend
    from radixrt.model.config import ModelConfig
    from radixrt.model.llama import LlamaModel
    from radixrt.model.loader import load_state_dict

    src = gw.source_gguf(default_model_dir)
    assert src is not None and src.suffix == ".gguf"
    cfg = ModelConfig.from_dir(default_model_dir)

    def model():
        backend = make_attention_backend("torch", cfg.head_dim ** -0.5)
        return LlamaModel(cfg, load_state_dict(default_model_dir), torch.float32, "cpu", 1024, backend)

    ref, quant = model(), model()
    embed = quant.embed.clone()
    quant.use_gguf_blocks(gw.GGUFModelWeights(src, cfg.num_heads, cfg.num_kv_heads))
    assert torch.equal(quant.embed, embed)
    return ref, quant


@needs_kernel
def test_default_model_gguf_blocks_are_the_fp32_weights(default_models):
    ref, quant = default_models
    assert quant.num_gguf_linears == len(quant.linears()) == 121 and not quant.gguf_requantized
    for name in ("layers.0.qkv", "layers.29.gate_up", "layers.7.down", "lm_head"):
        r, q = ref.linears()[name], quant.linears()[name]
        assert torch.equal(gw.unpack_blocks(q.packed), r.weight_t.t()), name  # exact, q/k rows un-permuted


@needs_kernel
def test_default_model_gguf_logits_near_fp32(default_models, default_model_dir):
    from radixrt.tokenizer import load_tokenizer
    from tests.model.test_quantization import PROMPTS, _prefill_logits

    ref, quant = default_models
    tok = load_tokenizer(default_model_dir)
    agree = 0
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        r, q = _prefill_logits(ref, ids), _prefill_logits(quant, ids)
        # Documented tolerance (docs/benchmarks.md): only the activations' 8-bit rounding per
        # 32-block differs from fp32, compounded over 30 layers. A position's largest logit
        # change stays within 1.5x the spread (std) of its fp32 logits, and within 0.6x on
        # average over a prompt (measured on these prompts: at most 1.10x and 0.50x; int8 mode
        # 2.72x and 1.40x).
        rel = (q - r).abs().amax(1) / r.std(1)
        assert rel.max() <= 1.5 and rel.mean() <= 0.6, (prompt, rel)
        agree += bool(q[-1].argmax() == r[-1].argmax())
    assert agree >= 13, agree


@needs_kernel
def test_native_decode_layer_matches_the_per_op_path(default_models, default_model_dir):
    """Decode steps through one native call per layer give the bits of the per-op path."""
    from radixrt.cache.memory_pool import TokenToKVPool
    from radixrt.model.attention import make_attention_backend
    from radixrt.model.forward_batch import ForwardBatch

    _, model = default_models
    saved_attn, saved_layers = model.attn, model._decode_layers
    try:
        model.attn = make_attention_backend("native", model.config.head_dim ** -0.5)
        model._decode_layers = model._native_decode_layers()
        assert model._decode_layers is not None and len(model._decode_layers) == 30
        c = model.config
        prompts = [[5, 900, 31, 4000, 77], [12, 640, 3, 8]]
        n = sum(len(p) for p in prompts) + 2
        pool = TokenToKVPool(n + 1, c.num_layers, c.num_kv_heads, c.head_dim, torch.float32)
        table = torch.zeros(2, 8, dtype=torch.int64)
        table[0, :6], table[1, :5] = torch.arange(1, 7), torch.arange(7, 12)
        ids = prompts[0] + prompts[1]
        model.forward(ForwardBatch.build(ids, [5, 4], [5, 4], torch.cat([table[0, :5], table[1, :4]]),
                                         table, [0, 1]), pool)
        step = ForwardBatch.build([100, 200], [6, 5], [1, 1], torch.stack([table[0, 5], table[1, 4]]), table, [0, 1])
        k_before = [k.clone() for k in pool.k_buffers]
        fast = model.forward(step, pool)
        k_fast = [k.clone() for k in pool.k_buffers]
        for k, k0 in zip(pool.k_buffers, k_before, strict=True):
            k.copy_(k0)
        model._decode_layers = None
        slow = model.forward(step, pool)
        assert torch.equal(fast, slow)
        for a, b in zip(k_fast, pool.k_buffers, strict=True):  # unused slots may hold NaN garbage
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    finally:
        model.attn, model._decode_layers = saved_attn, saved_layers


@needs_kernel
def test_engine_auto_mode_serves_the_default_model_on_gguf_blocks():
    """auto on the default model (a .gguf): the gguf mode, reported as such; the radix cache,
    chunked prefill and structured generation give the same tokens as a cold, unchunked run."""
    import re

    from radixrt import Engine

    prompt = ("Here is a long preamble about the weather in many cities, repeated to make the prompt "
              "longer than one prefill chunk. " * 4 + "The capital of France is")
    greedy = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    with Engine(max_total_tokens=2048, chunked_prefill_size=32) as engine:
        stats = engine.get_stats()
        assert stats["quantization"] == "gguf" and engine.runner.quantization_plan.mode == "gguf"
        cold = engine.generate(prompt, greedy)
        warm = engine.generate(prompt, greedy)  # the prefix comes from the radix cache
        assert warm["meta_info"]["cached_tokens"] > 0
        assert warm["output_ids"] == cold["output_ids"]
        out = engine.generate("My phone number is", {"max_new_tokens": 16, "temperature": 0,
                                                     "regex": r"\(\d{3}\) \d{3}-\d{4}"})
        assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", out["text"]), out["text"]
    with Engine(max_total_tokens=2048, disable_radix_cache=True) as engine:
        assert engine.generate(prompt, greedy)["output_ids"] == cold["output_ids"]  # no chunking


def test_mixed_and_unsupported_types_from_a_file(tmp_path):
    """A file mixing types: Q4_0 next to Q4_1 share one layer exactly; a 4-bit tensor next to a
    Q8_0 one, and an F16 tensor, take Q8_0 blocks of their exact values; the index matches
    gguf-py's reader; q/k rows come back un-permuted."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    from radixrt.model.gguf_convert import unpermute_rotary_rows

    rng = np.random.default_rng(12)
    dims = {"attn_q": (64, 64, T.Q4_0), "attn_k": (32, 64, T.Q4_1), "attn_v": (32, 64, T.Q8_0),
            "ffn_gate": (96, 64, T.Q4_0), "ffn_up": (96, 64, T.Q4_1), "ffn_down": (64, 96, T.F16)}
    path = tmp_path / "mixed.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(300)])  # skipped by the index
    floats = {}
    for name, (n, k, t) in dims.items():
        w = rng.standard_normal((n, k)).astype(np.float32)
        raw = w.astype(np.float16) if t == T.F16 else quantize(w, t)
        floats[name] = torch.from_numpy(np.asarray(dequantize(raw, t), np.float32).reshape(n, k))
        writer.add_tensor(f"blk.0.{name}.weight", raw, raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    meta, index = gw.read_gguf_index(path)
    assert meta["general.architecture"] == "llama"
    for t in gguf.GGUFReader(str(path)).tensors:
        assert index[t.name].qtype == t.tensor_type.name
        got = np.memmap(path, np.uint8, "r")[index[t.name].offset:][:index[t.name].nbytes]
        assert np.array_equal(got, np.asarray(t.data).view(np.uint8).reshape(-1))

    weights = gw.GGUFModelWeights(path, num_heads=4, num_kv_heads=2)
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    ref = {k: floats[k] for k in floats}
    ref["attn_q"] = unpermute_rotary_rows(ref["attn_q"], 4)
    ref["attn_k"] = unpermute_rotary_rows(ref["attn_k"], 2)
    name = {k: f"model.layers.0.{v}.weight" for k, v in hf.items()}

    gate_up = weights.packed([name["ffn_gate"], name["ffn_up"]], [None, None])  # Q4_0 + Q4_1: exact
    assert gate_up.bits == 4 and gate_up.n == 192
    assert torch.equal(gw.unpack_blocks(gate_up), torch.cat([ref["ffn_gate"], ref["ffn_up"]]))

    parts = [ref["attn_q"], ref["attn_k"], ref["attn_v"]]
    qkv = weights.packed([name["attn_q"], name["attn_k"], name["attn_v"]], parts)  # 4-bit + Q8_0
    assert qkv.bits == 8 and weights.requantized == [name["attn_q"], name["attn_k"]]
    got = gw.unpack_blocks(qkv)
    assert torch.equal(got[96:], ref["attn_v"])  # the file's own Q8_0 blocks
    exact = torch.cat(parts[:2])
    step = exact.view(96, 2, 32).abs().amax(-1, keepdim=True) / 127
    assert ((got[:96] - exact).view(96, 2, 32).abs() <= 0.51 * step + 1e-7).all()

    down = weights.packed([name["ffn_down"]], [ref["ffn_down"]])  # F16: no kernel type
    assert down.qtype == "Q8_0*" and name["ffn_down"] in weights.requantized
    if ops is not None:
        x = torch.randn(3, 96)
        check_gemm(x, down, gw.ISA_AUTO)
