"""Tensor parallelism (``--tp-size``) on torch.distributed: gloo on CPU, NCCL on GPU.

Layout (the Megatron scheme SGLang and vLLM use), over ``tp`` ranks:

- attention: each rank holds ``num_heads / tp`` query heads and their KV heads (``num_kv_heads
  / tp``; with fewer KV heads than ranks, each rank keeps the one KV head its query heads read,
  so KV heads are replicated ``tp / num_kv_heads`` times). The fused qkv matmul is column-
  parallel (row slices of the weight), o is row-parallel (column slices) followed by one
  all-reduce of the hidden state.
- MLP: gate_up column-parallel (each rank ``intermediate / tp`` gate and up rows), down row-
  parallel plus one all-reduce. So two all-reduces per decoder layer, after attention and after
  the MLP.
- embedding: vocabulary-parallel: each rank holds a contiguous slice of the vocabulary rows;
  a lookup zeroes the rows of tokens outside the slice and all-reduces (the sum has exactly one
  non-zero term, so it is exact).
- LM head: each rank computes the logits of its vocabulary slice; they are gathered on rank 0.
- norms and RoPE tables are replicated; the KV pool of a rank holds its KV heads only.

Control: rank 0 (the scheduler's process, or the in-process Engine) owns the radix tree and
the slot allocator. Before each forward it broadcasts the batch (the ``ForwardBatch`` tensors:
token ids, positions, KV slots) on a gloo group; ranks > 0 (``tp_worker.worker_main``) wait for it, run
the same forward on their shard of the weights and KV pool, and so follow rank 0's slot
decisions. Rank 0 sends ``None`` on exit; a rank exits when it gets that, when rank 0 dies (the
gloo connection closes) or, on rank 0's node, when its parent process is gone.

Processes: node 0 runs rank 0 in the scheduler process and starts ranks 1 .. tp/nnodes - 1
as child processes (``python -m radixrt.model.tp_worker``); node k > 0 (``radixrt serve
--node-rank k``, ``serve_node``) starts its ranks k*tp/nnodes ... and blocks until they end.

LlamaModel is left as it is: sharding rebuilds its linear layers from row/column slices,
wraps the row-parallel ones and the LM head in objects that run the collective after the
matmul, swaps the embedding table for a ``VocabParallelEmbedding`` (LlamaModel looks tokens up
with ``embed.index_select(0, ids)``), and gives the model a per-rank config (local head
counts), which the forward and the KV pool read.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import torch
import torch.distributed as dist

from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.linear import Linear

logger = logging.getLogger("radixrt.parallel")

# A collective inside a forward that takes longer than this means a rank is gone.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
# Ranks > 0 wait for the next batch on the control group as long as the server is idle.
IDLE_TIMEOUT = datetime.timedelta(days=365)
# Flags rank 0 hands to the other ranks (TensorParallel.sync_args).
SHARED_ARGS = ("dtype", "quantization", "context_length", "max_total_tokens", "kv_cache_memory_gb",
               "mem_fraction_static", "page_size", "max_running_requests", "attention_backend")
_worker_rank: int | None = None  # set in a rank > 0 process (tp_worker.worker_main)
_BATCH_TENSORS = ("input_ids", "positions", "out_cache_loc", "kv_indices", "seq_lens", "extend_lens",
                  "q_starts", "logits_indices")


# ---------------------------------------------------------------------------- process groups
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks_per_node(args) -> int:
    return args.tp_size // args.nnodes


class TensorParallel:
    """This process's rank in the tensor-parallel group, and the collectives the model runs."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank = rank
        self.world = world
        self.device = device
        self.group = dist.group.WORLD  # gloo on CPU, NCCL on GPU: the forward's collectives
        # Batches travel as pickled objects on a gloo group (also under NCCL): it has no
        # collective timeout worth the name, so an idle server does not time ranks out.
        self.ctrl = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        self.children: list[subprocess.Popen] = []
        self.closed = False

    def sync_args(self, args) -> None:
        """Make the flags every rank must agree on (model, dtype, context, KV pool sizing) rank
        0's: a node > 0 may have been started with other ones."""
        box = [{k: getattr(args, k) for k in SHARED_ARGS}]
        dist.broadcast_object_list(box, src=0, group=self.ctrl)
        if self.rank != 0:
            for k, v in box[0].items():
                if getattr(args, k) != v:
                    logger.info("tensor-parallel rank %d: %s = %r (rank 0's)", self.rank, k, v)
                    setattr(args, k, v)

    def agree_kv_slots(self, total: int) -> int:
        """The smallest KV pool any rank can hold: every rank's pool must take rank 0's slots."""
        t = torch.tensor([total], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.ctrl)
        return int(t.item())

    # -- collectives of the forward
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, group=self.group)
        return x

    def gather_logits(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor | None:
        """The full-vocabulary logits on rank 0 (None elsewhere) from each rank's slice."""
        pad = max(sizes)
        if local.shape[-1] < pad:
            local = torch.nn.functional.pad(local, (0, pad - local.shape[-1]))
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(local, parts, dst=0, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)

    # -- control
    def broadcast_batch(self, fb: ForwardBatch | None) -> ForwardBatch | None:
        """Rank 0: send ``fb`` (None: stop) to the other ranks. Others: receive it."""
        if self.rank == 0:
            msg = None
            if fb is not None:  # copies: kv_indices may be a view of the whole req_to_token table
                msg = {k: getattr(fb, k).cpu().clone() for k in _BATCH_TENSORS}
                msg.update(is_decode=fb.is_decode, seq_lens_list=fb.seq_lens_list,
                           extend_lens_list=fb.extend_lens_list)
            dist.broadcast_object_list([msg], src=0, group=self.ctrl)
            return fb
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.ctrl)
        return None if box[0] is None else ForwardBatch(**box[0])

    def close(self) -> None:
        """Rank 0: tell the other ranks to exit, wait for the local ones, leave the group."""
        if self.closed:
            return
        self.closed = True
        if self.rank == 0:
            try:
                self.broadcast_batch(None)
            except Exception:  # a rank already gone: the others see the connection close
                pass
            deadline = time.monotonic() + 10
            for p in self.children:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _init_group(args, rank: int, addr: str, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"tcp://{addr}", rank=rank, world_size=args.tp_size,
                            timeout=COLLECTIVE_TIMEOUT)


def _spawn_rank(args, rank: int, addr: str) -> subprocess.Popen:
    a = dataclasses.asdict(args)
    a["dist_init_addr"] = addr
    a["api_key"] = None  # the command line is visible to every user of the machine; ranks need no key
    return subprocess.Popen([sys.executable, "-m", "radixrt.model.tp_worker", "--rank", str(rank),
                             "--parent-pid", str(os.getpid()), "--args-json", json.dumps(a)])


def setup(args, device: torch.device) -> TensorParallel:
    """Join the tensor-parallel group from a ModelRunner. In a rank > 0 process (``tp_worker.worker_main``
    made the group) that is all; on rank 0 this starts node 0's other ranks first."""
    if _worker_rank is not None:
        tp = TensorParallel(_worker_rank, args.tp_size, device)
        tp.sync_args(args)
        return tp
    if dist.is_initialized():
        raise RuntimeError("this process is already in a torch.distributed group (one tensor-parallel "
                           "model runner per process)")
    if args.node_rank != 0:
        raise ValueError("a --node-rank > 0 node runs its ranks with `radixrt serve` (serve_node), "
                         "not a model runner")
    addr = args.dist_init_addr or f"127.0.0.1:{free_port()}"
    children = [_spawn_rank(args, r, addr) for r in range(1, ranks_per_node(args))]
    # Join on a thread, so that a rank that dies while starting fails this at once.
    box: dict = {}

    def join() -> None:
        try:
            _init_group(args, 0, addr, device)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=join, name="radixrt-tp-init", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
        dead = [p for p in children if p.poll() is not None]
        if dead and t.is_alive():
            box["error"] = RuntimeError(f"tensor-parallel rank process {dead[0].pid} exited with "
                                        f"status {dead[0].returncode} before joining")
            break
    if "error" in box:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise box["error"]
    tp = TensorParallel(0, args.tp_size, device)
    tp.children = children
    tp.sync_args(args)
    atexit.register(tp.close)
    return tp


# ---------------------------------------------------------------------------- sharding
def _weight(lin: Linear) -> torch.Tensor:
    """[out, in] weight of a float Linear."""
    if not isinstance(lin, Linear):
        raise ValueError(f"tensor parallelism shards float Linear layers only, not {type(lin).__name__}")
    return lin.weight if lin.weight is not None else lin.weight_t.t()


class RowParallelLinear:
    """This rank's input-column slice of a linear layer; the all-reduce sums the ranks' parts.
    The bias (if any) is added once, after the sum."""

    def __init__(self, lin: Linear, cols: slice, tp: TensorParallel):
        self.inner = Linear(_weight(lin)[:, cols].contiguous())
        self.bias = lin.bias
        self.out_features = lin.out_features
        self.tp = tp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(self.inner(x))
        return y if self.bias is None else y + self.bias


class ParallelLMHead:
    """This rank's vocabulary rows of the LM head; the logits are gathered on rank 0 (on the
    other ranks the forward returns an empty tensor)."""

    def __init__(self, lin: Linear, rows: slice, sizes: list[int], tp: TensorParallel):
        self.inner = Linear(_weight(lin)[rows].contiguous(), None if lin.bias is None else lin.bias[rows])
        self.bias = self.inner.bias
        self.out_features = sum(sizes)
        self.sizes = sizes
        self.tp = tp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tp.gather_logits(self.inner(x), self.sizes)
        return out if out is not None else x.new_empty((x.shape[0], 0))


class VocabParallelEmbedding:
    """This rank's rows ``[lo, hi)`` of the embedding table. ``index_select(0, ids)`` (the call
    LlamaModel makes) looks up the ids in the slice, zeroes the others, and all-reduces."""

    def __init__(self, table: torch.Tensor, lo: int, hi: int, tp: TensorParallel):
        self.weight = table[lo:hi].contiguous()
        self.lo, self.hi = lo, hi
        self.tp = tp
        self.shape = table.shape
        self.dtype = table.dtype
        self.device = table.device

    def index_select(self, dim: int, ids: torch.Tensor) -> torch.Tensor:
        assert dim == 0
        mine = (ids >= self.lo) & (ids < self.hi)
        local = torch.where(mine, ids - self.lo, torch.zeros_like(ids))
        h = self.weight.index_select(0, local)
        h.mul_(mine.unsqueeze(-1).to(h.dtype))
        return self.tp.all_reduce(h)


def vocab_slices(vocab: int, world: int) -> list[tuple[int, int]]:
    per = -(-vocab // world)
    return [(min(r * per, vocab), min((r + 1) * per, vocab)) for r in range(world)]


def check_shardable(config, world: int) -> None:
    c = config
    if c.num_heads % world:
        raise ValueError(f"tp_size {world} must divide the model's {c.num_heads} attention heads")
    if c.num_kv_heads % world and world % c.num_kv_heads:
        raise ValueError(f"tp_size {world} and the model's {c.num_kv_heads} KV heads: one must divide the other")
    if c.intermediate_size % world:
        raise ValueError(f"tp_size {world} must divide the MLP size {c.intermediate_size}")


@torch.inference_mode()
def shard_model(model, tp: TensorParallel) -> None:
    """Cut a freshly built (float) LlamaModel down to rank ``tp.rank``'s shard, in place."""
    c, r, world = model.config, tp.rank, tp.world
    check_shardable(c, world)
    if getattr(model, "_decode_layers", None) is not None:
        raise ValueError("tensor parallelism does not run gguf-block layers")
    D, H, KV, inter = c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    h = H // world
    if KV >= world:
        kv = KV // world
        kv0 = r * kv
    else:  # replicated: the KV head this rank's query heads belong to
        kv, kv0 = 1, r * KV // world
    q_rows = torch.arange(r * h * D, (r + 1) * h * D)
    k_rows = H * D + torch.arange(kv0 * D, (kv0 + kv) * D)
    v_rows = (H + KV) * D + torch.arange(kv0 * D, (kv0 + kv) * D)
    qkv_rows = torch.cat([q_rows, k_rows, v_rows]).to(model.embed.device)
    i = inter // world
    gu_rows = torch.cat([torch.arange(r * i, (r + 1) * i), inter + torch.arange(r * i, (r + 1) * i)])
    gu_rows = gu_rows.to(model.embed.device)
    for L in model.layers:
        bias = None if L.qkv.bias is None else L.qkv.bias.index_select(0, qkv_rows).contiguous()
        L.qkv = Linear(_weight(L.qkv).index_select(0, qkv_rows).contiguous(), bias)
        L.o = RowParallelLinear(L.o, slice(r * h * D, (r + 1) * h * D), tp)
        L.gate_up = Linear(_weight(L.gate_up).index_select(0, gu_rows).contiguous(), L.gate_up.bias)
        L.down = RowParallelLinear(L.down, slice(r * i, (r + 1) * i), tp)
    slices = vocab_slices(c.vocab_size, world)
    lo, hi = slices[r]
    model.lm_head = ParallelLMHead(model.lm_head, slice(lo, hi), [b - a for a, b in slices], tp)
    model.embed = VocabParallelEmbedding(model.embed, lo, hi, tp)
    model.config = dataclasses.replace(c, num_heads=h, num_kv_heads=kv, intermediate_size=i)
    model.q_size, model.kv_size = h * D, kv * D
    model.tp = tp


# ---------------------------------------------------------------------------- ranks > 0
def serve_node(args) -> int:
    """``radixrt serve --node-rank k`` (k > 0): run this node's ranks until they exit."""
    n = ranks_per_node(args)
    first = args.node_rank * n
    procs = [_spawn_rank(args, r, args.dist_init_addr) for r in range(first, first + n)]
    logger.info("node %d: tensor-parallel ranks %d..%d, rank 0 at %s", args.node_rank, first,
                first + n - 1, args.dist_init_addr)
    code = 0
    try:
        for p in procs:
            code = p.wait() or code
    except KeyboardInterrupt:
        code = 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return code
