"""Programs on the in-process Engine backend (no server): the same frontend, reading the same
stream chunks as from a server, with the Engine's errors as exceptions."""

from __future__ import annotations

import pytest

import radixrt as sgl
from radixrt.lang import BackendError, EngineBackend

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def engine(default_model_dir):
    # fp32: the test reads the model's greedy answer, and the 135M model's top tokens are near
    # ties that the quantized modes' rounding may flip (docs/benchmarks.md, accuracy tables).
    eng = sgl.Engine(max_total_tokens=8192, quantization="none")
    yield eng
    sgl.set_default_backend(None)
    eng.shutdown()


@sgl.function
def qa(s, question):
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, return_logprob=True))
    s += sgl.user("Is that right? Answer yes or no.")
    s += sgl.assistant(sgl.select("verdict", ["yes", "no"]))


def test_engine_is_accepted_as_default_backend(engine):
    sgl.set_default_backend(engine)  # a radixrt.Engine is wrapped in an EngineBackend
    st = qa.run(question="What is the capital of France?", temperature=0)
    assert "Paris" in st["answer"]
    assert st["verdict"] in ("yes", "no")
    assert len(st.messages()) == 5
    assert sgl.get_server_info()["cache_hit_rate"] > 0
    assert sgl.flush_cache() is True


def test_engine_streaming_chunks_add_up(engine):
    backend = EngineBackend(engine)
    st = qa.run(question="Name a fruit.", stream=True, temperature=0, backend=backend)
    items = list(st.text_iter("answer", return_meta_data=True))
    meta = st.get_meta_info("answer")
    assert "".join(t for t, _ in items) == st["answer"]
    assert sum(len(m["output_token_logprobs"]) for _, m in items) == meta["completion_tokens"]


def test_engine_run_batch_and_errors(engine):
    backend = EngineBackend(engine)

    @sgl.function
    def complete(s, start):
        s += start + sgl.gen("rest", max_tokens=4)

    states = complete.run_batch([("Once upon",), ("The sky is",)], temperature=0, backend=backend)
    assert all(isinstance(st["rest"], str) and st["rest"] for st in states)
    with pytest.raises(BackendError, match="top_k"):
        complete.run(start="x", top_k=0, backend=backend)
