"""Decode CUDA graphs and the GPU memory plan.

**Graphs.** A decode step of a small model on a GPU is launch-bound: ~8 kernels per layer,
each a few microseconds of work behind ~5-10 us of Python and launch overhead. A CUDA graph
records one step's kernels once and replays them with one call. ``DecodeGraphRunner`` captures
one graph per batch-size bucket (``batch_size_buckets``: 1, 2, 4, 8, then every 8 up to
``--cuda-graph-max-bs``) over static input buffers; a decode batch of ``bs`` requests is copied
into the buffers of the smallest bucket ``>= bs``, the rows past ``bs`` padded, and that
bucket's graph replayed. Padded rows decode token 0 at position 0 from a one-token context
whose only slot is the reserved padding slot 0 (their K/V writes land there too, finite and
never read by real rows), and their logits are dropped.

What replays and what runs eagerly (``fallback_reason``):

- decode batches (every request one new token) of at most ``max_bs`` requests: graph;
- extend batches, prefill chunks and mixed batches (decode rows next to jump-forward drafts):
  eager (their shapes vary with the token count; a draft step is rare next to decode steps);
- batches larger than ``max_bs``: eager;
- constrained rows: graph. The token bitmask is applied to the logits after the forward,
  outside the model, so a constrained decode step is an ordinary decode step here.

Graphs need the ``triton`` attention backend (the torch backend's gather would run over the
static ``kv_indices`` width, the whole context, every step). Its decode kernel is captured with a
fixed split count per bucket (``choose_num_splits`` for the longest context at that batch size:
many splits for a lone request, one where the batch fills the GPU): a captured grid cannot
follow the lengths of the batch it replays; splits past a short sequence end at once.

**Memory plan** (``plan_kv_pool_tokens``): on CUDA, weights and KV are bf16 by default
(``--dtype auto``); the KV pool is sized after the weights are loaded, SGLang's way: of the
GPU's total memory, the fraction ``--mem-fraction-static`` may hold static allocations (weights,
KV pool); what is already in use (weights, other processes) comes out of it, the rest is the
pool. The other ``1 - fraction`` stays free for activations, graph memory and the sampler.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from radixrt.model.forward_batch import ForwardBatch

logger = logging.getLogger("radixrt.cuda_graph")

DEFAULT_MAX_BS = 256
DEFAULT_MEM_FRACTION_STATIC = 0.85


def batch_size_buckets(max_bs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, ... (every 8 past 8), cut at ``max_bs``, ``max_bs`` included."""
    if max_bs < 1:
        raise ValueError(f"cuda graph max batch size must be >= 1, got {max_bs}")
    out = [b for b in (1, 2, 4) if b < max_bs]
    out += list(range(8, max_bs, 8))
    out.append(max_bs)
    return out


def bucket_for(bs: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds ``bs`` rows, or None when ``bs`` exceeds them all."""
    i = bisect.bisect_left(buckets, bs)
    return buckets[i] if i < len(buckets) and bs >= 1 else None


def fallback_reason(fb: ForwardBatch, max_bs: int, max_context_len: int) -> str | None:
    """Why this batch must run eagerly, or None when a graph replays it."""
    if not fb.is_decode:
        return "extend or mixed batch"
    if fb.batch_size > max_bs:
        return "batch larger than --cuda-graph-max-bs"
    if fb.kv_indices.shape[1] > max_context_len:
        return "context longer than the graphs' kv_indices"
    return None


def plan_kv_pool_tokens(total_bytes: int, free_bytes: int, mem_fraction_static: float,
                        bytes_per_token: int, page_size: int = 1) -> int:
    """KV slots for the pool: ``free - total * (1 - fraction)`` bytes, in whole pages.

    ``free_bytes`` is measured after the weights are loaded, so they (and anything else on the
    device) are already out of it. Raises ValueError when nothing is left for even one page."""
    if not 0 < mem_fraction_static < 1:
        raise ValueError(f"mem_fraction_static must be in (0, 1), got {mem_fraction_static}")
    rest = free_bytes - total_bytes * (1 - mem_fraction_static)
    tokens = int(rest // bytes_per_token) // page_size * page_size
    if tokens < page_size:
        raise ValueError(
            f"no GPU memory left for the KV pool: {free_bytes / 2**30:.2f} GiB free of "
            f"{total_bytes / 2**30:.2f} GiB, {(1 - mem_fraction_static) * 100:.0f}% kept free "
            f"(--mem-fraction-static {mem_fraction_static}); raise --mem-fraction-static or "
            f"give --max-total-tokens")
    return tokens


def gpu_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device."""
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)


@dataclass
class _Static:
    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    seq_lens: torch.Tensor
    kv_indices: torch.Tensor
    logits_indices: torch.Tensor


class DecodeGraphRunner:
    """Replays captured decode steps (see the module docstring).

    ``capture=False`` builds the same static buffers and padding but runs the forward eagerly on
    them (``replay`` without a graph): how the padding is tested without a GPU.
    """

    def __init__(self, model, kv_pool, attn_backend, max_bs: int, max_context_len: int,
                 device: torch.device | str, capture: bool = True):
        self.model = model
        self.kv_pool = kv_pool
        self.attn = attn_backend
        self.device = torch.device(device)
        self.max_bs = max_bs
        self.buckets = batch_size_buckets(max_bs)
        self.max_context_len = max_context_len
        z = dict(dtype=torch.int64, device=self.device)
        self.static = _Static(
            input_ids=torch.zeros(max_bs, **z), positions=torch.zeros(max_bs, **z),
            out_cache_loc=torch.zeros(max_bs, **z), seq_lens=torch.ones(max_bs, **z),
            kv_indices=torch.zeros((max_bs, max_context_len), **z),
            logits_indices=torch.arange(max_bs, **z))
        # per bucket, the decode kernel's split count for the longest context (None: not triton)
        self.num_splits: dict[int, int] | None = None
        if getattr(attn_backend, "name", "") == "triton":
            from radixrt.model.triton_attention import choose_num_splits

            kv_heads = kv_pool.k_buffers[0].shape[1]
            self.num_splits = {bs: choose_num_splits(max_context_len, bs, kv_heads,
                                                     getattr(attn_backend, "num_sms", None))
                               for bs in self.buckets}
        self.batches = {bs: self._static_batch(bs) for bs in self.buckets}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0
        self.fallbacks: dict[str, int] = {}
        if capture:
            self.capture()

    def _static_batch(self, bs: int) -> ForwardBatch:
        s = self.static
        return ForwardBatch(
            input_ids=s.input_ids[:bs], positions=s.positions[:bs], out_cache_loc=s.out_cache_loc[:bs],
            kv_indices=s.kv_indices[:bs], seq_lens=s.seq_lens[:bs],
            extend_lens=torch.ones(bs, dtype=torch.int64, device=self.device),
            q_starts=torch.arange(bs, dtype=torch.int64, device=self.device),
            logits_indices=s.logits_indices[:bs], is_decode=True,
            seq_lens_list=[self.max_context_len] * bs, extend_lens_list=[1] * bs)

    def _forward(self, bs: int) -> torch.Tensor:
        if self.num_splits is not None:
            self.attn.fixed_num_splits = self.num_splits[bs]
        try:
            return self.model.forward(self.batches[bs], self.kv_pool)
        finally:
            if self.num_splits is not None:
                self.attn.fixed_num_splits = None

    def capture(self) -> None:
        """One graph per bucket, largest first, all in one memory pool."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.pad(0, self.max_bs)
        pool = None
        stream = torch.cuda.Stream(self.device)
        for bs in reversed(self.buckets):
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # compiles the Triton kernels, settles the allocator
                    self._forward(bs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                out = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize(self.device)

    def pad(self, start: int, end: int) -> None:
        """Rows [start, end) become padding: token 0 at position 0, one-token context in slot 0."""
        if end > start:
            s = self.static
            s.input_ids[start:end] = 0
            s.positions[start:end] = 0
            s.out_cache_loc[start:end] = 0
            s.seq_lens[start:end] = 1
            s.kv_indices[start:end, 0] = 0

    def can_run(self, fb: ForwardBatch) -> bool:
        why = fallback_reason(fb, self.max_bs, self.max_context_len)
        if why is not None:
            self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
        return why is None

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        """Logits [bs, vocab] of a decode batch (``can_run(fb)`` must hold): a view of the
        graph's output buffer, overwritten by the next replay (``ModelRunner.forward`` copies it
        to the CPU at once)."""
        bs = fb.batch_size
        bucket = bucket_for(bs, self.buckets)
        if bucket is None or not fb.is_decode:
            raise ValueError(f"batch of {bs} (decode: {fb.is_decode}) does not fit a captured graph")
        width = fb.kv_indices.shape[1]
        if width > self.max_context_len:
            raise ValueError(f"context of {width} tokens exceeds the graphs' {self.max_context_len}")
        s = self.static
        s.input_ids[:bs].copy_(fb.input_ids, non_blocking=True)
        s.positions[:bs].copy_(fb.positions, non_blocking=True)
        s.out_cache_loc[:bs].copy_(fb.out_cache_loc, non_blocking=True)
        s.seq_lens[:bs].copy_(fb.seq_lens, non_blocking=True)
        s.kv_indices[:bs, :width].copy_(fb.kv_indices, non_blocking=True)
        self.pad(bs, bucket)
        self.replays += 1
        if bucket in self.graphs:
            self.graphs[bucket].replay()
            return self.outputs[bucket][:bs]  # the graph's buffer: valid until the next replay
        return self._forward(bucket)[:bs]  # capture=False: the same padded step, eagerly

    def stats(self) -> dict:
        return {"buckets": list(self.buckets), "captured": sorted(self.graphs), "replays": self.replays,
                "fallbacks": dict(self.fallbacks), "num_splits": self.num_splits}


def batch_to_device(fb: ForwardBatch, device: torch.device) -> ForwardBatch:
    """``fb`` with its tensors on ``device`` (the scheduler builds batches on the CPU)."""
    moved = {f.name: getattr(fb, f.name).to(device, non_blocking=True) for f in dataclasses.fields(fb)
             if isinstance(getattr(fb, f.name), torch.Tensor)}
    return dataclasses.replace(fb, **moved, _split=None)


def make_graph_runner(runner, args) -> DecodeGraphRunner | None:
    """The runner's graph runner on CUDA with the triton backend, unless --disable-cuda-graph."""
    if runner.device.type != "cuda" or args.disable_cuda_graph:
        return None
    if runner.attn_backend.name != "triton":
        logger.info("CUDA graphs off: they need the triton attention backend (have %s)",
                    runner.attn_backend.name)
        return None
    max_bs = args.cuda_graph_max_bs or min(args.max_running_requests, DEFAULT_MAX_BS)
    t0 = time.perf_counter()
    gr = DecodeGraphRunner(runner.model, runner.kv_pool, runner.attn_backend, max_bs,
                           runner.req_to_token_pool.max_context_len, runner.device)
    logger.info("captured %d decode CUDA graphs (batch sizes %s) in %.1fs", len(gr.graphs),
                gr.buckets, time.perf_counter() - t0)
    return gr
