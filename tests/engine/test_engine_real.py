"""The real default model against Hugging Face transformers on the same weights."""

from __future__ import annotations

import pytest
import torch

from radixrt import Engine
from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool, TokenToKVPool
from radixrt.model.attention import make_attention_backend
from radixrt.model.config import ModelConfig
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.llama import LlamaModel
from radixrt.model.loader import load_state_dict
from tests.engine.conftest import assert_no_leak

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "Translate to French: I like apples. ->",
    "import numpy as np\nx = np.",
    "Q: What is 12 * 12?\nA:",
    "The mitochondria is",
    "List of planets: Mercury, Venus,",
    "<|im_start|>user\nWhat is the tallest mountain?<|im_end|>\n<|im_start|>assistant\n",
    "Dear Sir or Madam,",
    "SELECT name FROM users WHERE",
    "Water boils at",
    "The best way to learn programming is",
    "Émile Zola était un écrivain",
    "In 1492, Columbus",
    "{\"name\": \"Alice\", \"age\":",
]


# fp32 logits of two implementations agree only up to summation order, which differs between
# CPU kernels (AVX2 vs AVX-512 GEMMs, SDPA vs the native decode kernel): measured max |diff|
# 1.2e-4 on logits up to ~30, i.e. <= 6e-6 of each row's largest logit. The bound is
# relative to that scale with ~5x margin; the smallest real errors tried are 7x-10000x above
# it (rms_norm_eps 1e-6 instead of 1e-5: 2.2e-4; rope_theta 10000 instead of 100000: 0.08;
# positions after a cached prefix off by one: 0.1).
LOGITS_RTOL = 3e-5


def assert_logits_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = LOGITS_RTOL, k: int = 5):
    """Row by row: max |out - ref| <= rtol * max |ref|, and the same argmax and top-k set."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out, ref = out.float(), ref.float()
    rel = (out - ref).abs().amax(-1) / ref.abs().amax(-1)
    row = int(rel.argmax())
    assert rel[row] <= rtol, f"row {row}: max |diff| / max |ref| = {rel[row].item():.3g} > {rtol:g}"
    # These prompts' rows keep >= 8.8e-3 between the 5th and 6th reference logits, far above
    # what the bound allows, so the ranking checks hold wherever the bound does.
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    for o, r in zip(out.topk(k).indices.tolist(), ref.topk(k).indices.tolist(), strict=True):
        assert set(o) == set(r), (o, r)


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32)
    m.eval()
    return m


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from radixrt.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.mark.parametrize("attention,fused", [("torch", False), ("native", True)])
def test_logits_match_transformers(default_model_dir, hf_model, tokenizer, attention, fused):
    cfg = ModelConfig.from_dir(default_model_dir)
    backend = make_attention_backend(attention, cfg.head_dim ** -0.5)
    model = LlamaModel(cfg, load_state_dict(default_model_dir), torch.float32, "cpu", 2048, backend)
    if fused:
        assert model.fused is not None, "native fused ops did not build"
    else:
        model.fused = None  # the torch expressions
    pool = TokenToKVPool(512, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    alloc = KVAllocator(512)
    table = ReqToTokenPool(4, 2048)
    a = tokenizer.encode("The quick brown fox jumps over the lazy dog because it wanted to see")
    b = tokenizer.encode("Rust and Python are two programming languages; the first is")
    with torch.no_grad():
        ref_a = hf_model(torch.tensor([a])).logits[0]
        ref_b = hf_model(torch.tensor([b])).logits[0]
    ra, rb = table.alloc(), table.alloc()
    sa, sb = alloc.alloc(len(a)), alloc.alloc(len(b))
    table.req_to_token[ra, :len(a)] = sa
    table.req_to_token[rb, :len(b)] = sb
    # Prefill of a's first 6 tokens together with b's first 9 (a mixed extend batch).
    fb = ForwardBatch.build(a[:6] + b[:9], [6, 9], [6, 9], torch.cat([sa[:6], sb[:9]]), table.req_to_token,
                            [ra, rb], logits_rows=list(range(15)))
    out = model.forward(fb, pool)
    assert_logits_close(out[:6], ref_a[:6])
    assert_logits_close(out[6:], ref_b[:9])
    # Extend after the cached prefix: a up to its second-to-last token, b fully.
    na = len(a) - 1
    fb = ForwardBatch.build(a[6:na] + b[9:], [na, len(b)], [na - 6, len(b) - 9],
                            torch.cat([sa[6:na], sb[9:]]), table.req_to_token, [ra, rb],
                            logits_rows=list(range(na - 6 + len(b) - 9)))
    out = model.forward(fb, pool)
    assert_logits_close(out[:na - 6], ref_a[6:na])
    assert_logits_close(out[na - 6:], ref_b[9:])
    # Decode step for a (one token over its cached slots).
    fb = ForwardBatch.build(a[na:], [len(a)], [1], sa[na:], table.req_to_token, [ra])
    out = model.forward(fb, pool)
    assert_logits_close(out[:1], ref_a[-1:])


@pytest.fixture(scope="module")
def engine():
    eng = Engine(max_total_tokens=8192, quantization="none")  # compared with transformers' fp32
    yield eng
    eng.shutdown()


def test_greedy_matches_transformers_generate(engine, hf_model, tokenizer):
    # Exact token equality across implementations: over these 18 x 24 greedy steps the
    # smallest gap between transformers' top two logits is 4.9e-3, ~40x the float noise
    # between the two (see LOGITS_RTOL), so no step is a near-tie on any CPU.
    n_new = 24
    ours = engine.generate(PROMPTS, {"max_new_tokens": n_new, "temperature": 0, "ignore_eos": True})
    mismatches = []
    for prompt, res in zip(PROMPTS, ours):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                    min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        if ref[0, ids.shape[1]:].tolist() != res["output_ids"]:
            mismatches.append(prompt)
    assert not mismatches
    assert_no_leak(engine)


def test_real_model_batch_equals_alone_and_cache_on_off(engine, default_model_dir):
    # Batched, alone and uncached runs take different GEMM shapes (float noise ~1e-4 on the
    # logits); these prompts' greedy steps are no closer than 4.9e-3 to a tie (see above).
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    prompts = PROMPTS[:8]
    together = [r["output_ids"] for r in engine.generate(prompts, params)]
    alone = [engine.generate(p, params)["output_ids"] for p in prompts]
    assert together == alone
    with Engine(disable_radix_cache=True, max_total_tokens=4096, quantization="none") as nocache:
        assert [r["output_ids"] for r in nocache.generate(prompts, params)] == together
    assert_no_leak(engine)
