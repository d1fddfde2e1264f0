"""The GPU worker's path (Triton attention + Triton fused ops) end to end through the Engine:
greedy tokens equal the torch backend's. On CPU under Triton's interpreter; on a CUDA machine
compiled, with decode CUDA graphs (float32 there too, so the two backends can agree exactly)."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from radixrt import Engine  # noqa: E402
from radixrt.model.triton_attention import interpreted  # noqa: E402
from tests.engine.conftest import assert_no_leak  # noqa: E402

pytestmark = pytest.mark.skipif(not (interpreted() or torch.cuda.is_available()),
                                reason="CPU run of Triton needs TRITON_INTERPRET=1")


def _outputs(eng: Engine, prompts, params) -> list[list[int]]:
    return [r["output_ids"] for r in eng.generate(input_ids=prompts, sampling_params=params)]


@pytest.mark.parametrize("page_size", [1, 16])
def test_tiny_model_triton_equals_torch(tiny_model_dir, page_size):
    """Prefill, a cached shared prefix (extend after a prefix), concurrent decode, and mixed
    batches (requests arriving while others decode)."""
    rng = random.Random(page_size)
    head = [rng.randrange(100, 40000) for _ in range(21)]
    prompts = [head + [rng.randrange(100, 40000) for _ in range(n)] for n in (3, 9, 1)]
    prompts.append([rng.randrange(100, 40000) for _ in range(7)])
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    results = {}
    for backend in ("torch", "triton"):
        eng = Engine(model_path=str(tiny_model_dir), attention_backend=backend, page_size=page_size,
                     max_total_tokens=1024, max_running_requests=8, quantization="none", dtype="float32")
        try:
            assert eng.runner.attn_backend.name == backend
            first = eng.generate(input_ids=prompts[0], sampling_params=params)["output_ids"]
            results[backend] = [first, _outputs(eng, prompts, params)]
            assert_no_leak(eng)
        finally:
            eng.shutdown()
    assert results["triton"] == results["torch"]


def test_default_model_triton_equals_torch(default_model_dir):
    """One short check on the real default model (SmolLM2-135M: 9 query heads over 3 KV heads)."""
    prompts = ["The capital of France is", "def fibonacci(n):"]
    params = {"temperature": 0, "max_new_tokens": 3, "ignore_eos": True}  # prefill + 2 decode steps
    outs = {}
    for backend in ("torch", "triton"):
        eng = Engine(attention_backend=backend, max_total_tokens=512, max_running_requests=4,
                     quantization="none", dtype="float32")
        try:
            outs[backend] = [r["output_ids"] for r in eng.generate(prompts, params)]
        finally:
            eng.shutdown()
    assert outs["triton"] == outs["torch"]
    assert all(len(o) == 3 for o in outs["torch"])
