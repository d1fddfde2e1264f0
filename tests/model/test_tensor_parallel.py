"""Tensor parallelism (``--tp-size``, radixrt/model/parallel.py) on gloo, on this machine.

Rank 0 is this test process's ModelRunner; the other ranks are the child processes it starts.
Each case compares a sharded model's logits and greedy tokens with the unsharded model's on
the same batches (fp32, quantization none, one thread per rank)."""

from __future__ import annotations

import time

import psutil
import pytest
import torch

from radixrt.config import ServerArgs
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.parallel import check_shardable, vocab_slices

PROMPTS = [[1, 504, 3458, 314, 260, 1345, 30], [1, 23, 4567, 89, 1011, 1213, 1415, 1617, 1819, 2021, 7]]
NEW_TOKENS = 6


def _args(model_dir, tp: int) -> ServerArgs:
    return ServerArgs(model_path=str(model_dir), tp_size=tp, quantization="none", dtype="float32",
                      num_threads=1, max_total_tokens=512, max_running_requests=4, context_length=256,
                      log_level="warning")


def _run(runner) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Prefill both prompts in one batch, then greedy decode steps for both; every step's logits
    and the tokens picked. Slots are laid out by hand: request b owns slots b*128 + [0, len)."""
    rt = torch.arange(256, dtype=torch.int64).view(2, 128)
    seqs = [list(p) for p in PROMPTS]
    ids = [t for p in seqs for t in p]
    lens = [len(p) for p in seqs]
    loc = torch.cat([rt[b, :n] for b, n in enumerate(lens)])
    fb = ForwardBatch.build(ids, lens, lens, loc, rt, [0, 1])
    all_logits = []
    for _ in range(NEW_TOKENS):
        logits = runner.forward(fb)
        all_logits.append(logits)
        nxt = logits.argmax(-1).tolist()
        for s, t in zip(seqs, nxt):
            s.append(t)
        lens = [len(s) for s in seqs]
        loc = torch.stack([rt[b, n - 1] for b, n in enumerate(lens)])
        fb = ForwardBatch.build(nxt, lens, [1, 1], loc, rt, [0, 1])
    return all_logits, [s[len(p):] for s, p in zip(seqs, PROMPTS)]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _check_parity(model_dir, tp: int, rel: bool = False) -> float:
    """Max |logit difference| over all steps (asserted <= 1e-5, or <= 1e-5 of the largest
    |logit| with ``rel``); greedy tokens identical; the ranks gone after close()."""
    from radixrt.model.runner import ModelRunner

    ref_logits, ref_tokens = _run(ModelRunner(_args(model_dir, 1)))
    before = _children()
    runner = ModelRunner(_args(model_dir, tp))
    started = _children() - before
    assert len(started) == tp - 1  # the other ranks, as child processes
    assert runner.model.config.num_heads * tp == runner.config.num_heads
    assert runner.kv_pool.k_buffers[0].shape[1] == runner.model.config.num_kv_heads
    try:
        logits, tokens = _run(runner)
    finally:
        runner.tp.close()
    worst = 0.0
    for a, b in zip(logits, ref_logits):
        assert a.shape == b.shape
        tol = 1e-5 * (b.abs().max().item() if rel else 1.0)
        diff = (a - b).abs().max().item()
        assert diff <= tol, (diff, tol)
        worst = max(worst, diff)
    assert tokens == ref_tokens
    deadline = time.monotonic() + 10  # the ranks exit on rank 0's stop message
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in started):
        assert time.monotonic() < deadline, "tensor-parallel ranks still running after close()"
        time.sleep(0.1)
    return worst


def test_tp2_tiny_model_matches_tp1(tiny_model_dir):
    _check_parity(tiny_model_dir, 2)


def test_tp3_default_model_matches_tp1(default_model_dir):
    """9 query heads and 3 KV heads over 3 ranks: 3 and 1 per rank. 30 layers of fp32 sums in
    another order (each rank sums a third of every o/down product, then the all-reduce adds the
    thirds) move the logits (|logit| up to ~30) by up to ~1e-4: the bound is 1e-5 relative to
    the largest |logit| here (measured ~3e-6 relative); greedy tokens are identical."""
    _check_parity(default_model_dir, 3, rel=True)


def test_tp_rejects_what_it_cannot_run(tiny_model_dir):
    from radixrt.model.config import ModelConfig

    c = ModelConfig.from_dir(tiny_model_dir)  # 4 heads, 2 KV heads, MLP 128
    check_shardable(c, 4)  # 2 ranks share each KV head
    with pytest.raises(ValueError, match="attention heads"):
        check_shardable(c, 3)
    with pytest.raises(ValueError, match="quantization 'int8'"):
        ServerArgs(tp_size=2, quantization="int8")
    a = ServerArgs(tp_size=2)
    assert a.quantization == "none" and a.disable_hierarchical_cache
    with pytest.raises(ValueError, match="dist_init_addr"):
        ServerArgs(tp_size=2, nnodes=2)
    with pytest.raises(ValueError, match="multiple of nnodes"):
        ServerArgs(tp_size=3, nnodes=2, dist_init_addr="127.0.0.1:1")
    assert vocab_slices(10, 3) == [(0, 4), (4, 8), (8, 10)]


def test_engine_tp2_greedy_and_shutdown(tiny_model_dir):
    """Through the scheduler (in-process Engine): the same greedy tokens as tp 1, and shutdown()
    stops the rank processes (so a second tp Engine in this process can start)."""
    from radixrt.entrypoints.engine import Engine

    params = {"max_new_tokens": 6, "temperature": 0}
    kw = dict(model_path=str(tiny_model_dir), num_threads=1, max_total_tokens=512, log_level="warning")
    with Engine(quantization="none", **kw) as eng:
        ref = [eng.generate(input_ids=p, sampling_params=params)["output_ids"] for p in PROMPTS]
    before = _children()
    eng = Engine(tp_size=2, **kw)
    ranks = [psutil.Process(p) for p in _children() - before]
    try:
        assert len(ranks) == 1
        assert [eng.generate(input_ids=p, sampling_params=params)["output_ids"] for p in PROMPTS] == ref
    finally:
        eng.shutdown()
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive
