"""Decode CUDA-graph logic without a device: buckets, padding, fallback decisions, the memory
plan; the padded static-buffer step is run eagerly (``capture=False``) against the plain step."""

from __future__ import annotations

import pytest
import torch

from radixrt.config import ServerArgs
from radixrt.model.cuda_graph import (
    DecodeGraphRunner,
    batch_size_buckets,
    bucket_for,
    fallback_reason,
    plan_kv_pool_tokens,
)
from radixrt.model.forward_batch import ForwardBatch


def test_split_counts_per_bucket():
    from types import SimpleNamespace

    from radixrt.model.triton_attention import MAX_SPLITS

    pool = SimpleNamespace(k_buffers=[torch.empty(1, 3, 8)])
    attn = SimpleNamespace(name="triton", num_sms=132)
    gr = DecodeGraphRunner(None, pool, attn, max_bs=256, max_context_len=8192, device="cpu", capture=False)
    # a lone request splits its context across the GPU; 3 KV heads x 88+ requests fill 2 per SM
    assert gr.num_splits[1] == MAX_SPLITS and gr.num_splits[256] == 1
    assert gr.num_splits[24] == 4  # ceil(264 / 72)
    assert all(a >= b for a, b in zip(list(gr.num_splits.values()), list(gr.num_splits.values())[1:]))


def test_buckets():
    assert batch_size_buckets(1) == [1]
    assert batch_size_buckets(3) == [1, 2, 3]
    assert batch_size_buckets(8) == [1, 2, 4, 8]
    assert batch_size_buckets(20) == [1, 2, 4, 8, 16, 20]
    b = batch_size_buckets(256)
    assert b[:6] == [1, 2, 4, 8, 16, 24] and b[-1] == 256 and len(b) == 35
    assert [bucket_for(n, b) for n in (1, 3, 5, 9, 24, 25, 256)] == [1, 4, 8, 16, 24, 32, 256]
    assert bucket_for(257, b) is None and bucket_for(0, b) is None
    with pytest.raises(ValueError):
        batch_size_buckets(0)


def test_memory_plan():
    gib = 2**30
    # 80 GiB card, 70 GiB free after the weights, 0.85 static: 70 - 12 = 58 GiB for the pool
    assert plan_kv_pool_tokens(80 * gib, 70 * gib, 0.85, 46080, page_size=1) == int(58 * gib // 46080)
    assert plan_kv_pool_tokens(80 * gib, 70 * gib, 0.85, 46080, page_size=16) % 16 == 0
    with pytest.raises(ValueError, match="mem-fraction-static"):
        plan_kv_pool_tokens(80 * gib, 10 * gib, 0.85, 46080)  # others hold most of the card
    with pytest.raises(ValueError):
        plan_kv_pool_tokens(80 * gib, 70 * gib, 1.5, 46080)
    with pytest.raises(ValueError, match="mem_fraction_static"):
        ServerArgs(mem_fraction_static=0)


class _Requests:
    """Requests on a runner's pools, stepped by hand (prefill, then decode steps)."""

    def __init__(self, runner, prompt_lens: list[int], seed: int = 0):
        self.r = runner
        g = torch.Generator().manual_seed(seed)
        self.rows = [runner.req_to_token_pool.alloc() for _ in prompt_lens]
        self.lens = [0] * len(prompt_lens)
        ids = torch.randint(100, 1000, (sum(prompt_lens),), generator=g).tolist()
        fb = self._batch(list(range(len(prompt_lens))), prompt_lens, ids)
        self.last = runner.model.forward(fb, runner.kv_pool).argmax(-1)

    def _batch(self, which: list[int], ext: list[int], ids: list[int]) -> ForwardBatch:
        table = self.r.req_to_token_pool.req_to_token
        locs = []
        for b, e in zip(which, ext):
            prev = int(table[self.rows[b], self.lens[b] - 1]) if self.lens[b] else None
            slots = self.r.allocator.alloc(e, prev)
            table[self.rows[b], self.lens[b]:self.lens[b] + e] = slots
            self.lens[b] += e
            locs.append(slots)
        return ForwardBatch.build(ids, [self.lens[b] for b in which], ext, torch.cat(locs), table,
                                  [self.rows[b] for b in which])

    def decode_batch(self, which: list[int]) -> ForwardBatch:
        return self._batch(which, [1] * len(which), [int(self.last[b]) for b in which])


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    from radixrt.model.runner import ModelRunner

    return ModelRunner(ServerArgs(model_path=str(tiny_model_dir), attention_backend="torch", device="cpu",
                                  max_total_tokens=512, page_size=16, quantization="none",
                                  max_running_requests=8, context_length=256))


def _check_padded_step(runner, gr: DecodeGraphRunner, reqs: _Requests, which: list[int]) -> None:
    fb = reqs.decode_batch(which)
    assert gr.can_run(fb)
    k0 = [k.clone() for k in runner.kv_pool.k_buffers]
    eager = runner.model.forward(fb, runner.kv_pool)
    k1 = [k.clone() for k in runner.kv_pool.k_buffers]
    for k in runner.kv_pool.k_buffers:  # undo the eager step's K writes: the replay must redo them
        k[fb.out_cache_loc] = 0
    out = gr.replay(fb)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    bucket = bucket_for(len(which), gr.buckets)
    assert gr.static.seq_lens[len(which):bucket].eq(1).all()  # padding rows
    assert gr.static.out_cache_loc[len(which):bucket].eq(0).all()
    for before, after, now in zip(k0, k1, runner.kv_pool.k_buffers):
        # (slots never written hold uninitialised memory, NaN included: compared as they are)
        torch.testing.assert_close(now[1:], after[1:], equal_nan=True)  # real rows wrote their slots...
        if bucket == len(which):
            torch.testing.assert_close(now[0], before[0], equal_nan=True)  # ...only padding touches slot 0


def test_padded_static_step_equals_eager(runner):
    reqs = _Requests(runner, [5, 9, 2, 17])
    gr = DecodeGraphRunner(runner.model, runner.kv_pool, runner.attn_backend, max_bs=4,
                           max_context_len=runner.req_to_token_pool.max_context_len,
                           device="cpu", capture=False)
    assert gr.buckets == [1, 2, 4] and not gr.graphs
    _check_padded_step(runner, gr, reqs, [0, 1, 2])  # 3 rows padded to 4
    _check_padded_step(runner, gr, reqs, [3])  # 1 row: stale rows of the last step re-padded
    _check_padded_step(runner, gr, reqs, [0, 1, 2, 3])  # a full bucket, no padding
    assert gr.replays == 3

    # fallbacks: an extend step, a batch over max_bs
    ext = reqs._batch([0, 1], [3, 1], [7, 8, 9, 10])
    assert fallback_reason(ext, 4, 1024) == "extend or mixed batch" and not gr.can_run(ext)
    big = ForwardBatch.build([1] * 5, [3] * 5, [1] * 5, torch.zeros(5, dtype=torch.int64),
                             runner.req_to_token_pool.req_to_token, list(range(5)))
    assert not gr.can_run(big)
    assert gr.stats()["fallbacks"] == {"extend or mixed batch": 1,
                                       "batch larger than --cuda-graph-max-bs": 1}
    with pytest.raises(ValueError, match="does not fit"):
        gr.replay(big)
    assert fallback_reason(big, 8, 2) == "context longer than the graphs' kv_indices"


def test_graphs_off_the_gpu(runner):
    from radixrt.model.cuda_graph import make_graph_runner

    assert runner.graph_runner is None  # CPU: no graphs, every step eager
    assert make_graph_runner(runner, runner.args) is None
    with pytest.raises(RuntimeError, match="CUDA"):
        DecodeGraphRunner(runner.model, runner.kv_pool, runner.attn_backend, 2, 64, "cpu", capture=True)


def test_triton_split_count_is_pinned_while_stepping(tiny_model_dir):
    """With the triton backend, the static step runs the decode kernel with the split count
    fixed for the graphs' longest context, then leaves the backend free again."""
    pytest.importorskip("triton")
    from radixrt.model.runner import ModelRunner
    from radixrt.model.triton_attention import interpreted

    if not interpreted():
        pytest.skip("CPU run of Triton needs TRITON_INTERPRET=1")
    r = ModelRunner(ServerArgs(model_path=str(tiny_model_dir), attention_backend="triton", device="cpu",
                               max_total_tokens=256, quantization="none", max_running_requests=4,
                               context_length=600))
    reqs = _Requests(r, [3, 6], seed=1)
    gr = DecodeGraphRunner(r.model, r.kv_pool, r.attn_backend, max_bs=2,
                           max_context_len=r.req_to_token_pool.max_context_len, device="cpu", capture=False)
    assert gr.num_splits == {1: 2, 2: 2}  # 608 slots of context: two 256-token splits at most
    fb = reqs.decode_batch([0, 1])
    eager = r.model.forward(fb, r.kv_pool)
    assert r.attn_backend.plan(fb, 1).num_splits == 1  # eager: split by the batch's own lengths
    out = gr.replay(fb)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    assert r.attn_backend.fixed_num_splits is None


def test_batch_to_device(runner):
    from radixrt.model.cuda_graph import batch_to_device

    reqs = _Requests(runner, [4, 1, 3], seed=2)
    fb = reqs._batch([0, 1, 2], [1, 2, 1], [5, 6, 7, 8])
    assert fb.decode_split() is not None  # cached on the original
    moved = batch_to_device(fb, torch.device("cpu"))
    assert moved._split is None and moved.seq_lens_list == fb.seq_lens_list
    assert torch.equal(moved.kv_indices, fb.kv_indices) and torch.equal(moved.q_starts, fb.q_starts)
