"""ModelRunner: loads the model, sizes and owns the KV pools, runs one forward per step."""

from __future__ import annotations

import logging
import threading
import time

import torch

from radixrt.cache.memory_pool import KVAllocator, ReqToTokenPool, TokenToKVPool
from radixrt.config import ServerArgs
from radixrt.model.attention import make_attention_backend
from radixrt.model.config import ModelConfig
from radixrt.model.cpu_features import detect_cpu_features
from radixrt.model.cuda_graph import (
    DEFAULT_MEM_FRACTION_STATIC,
    batch_to_device,
    gpu_memory,
    make_graph_runner,
    plan_kv_pool_tokens,
)
from radixrt.model.forward_batch import ForwardBatch
from radixrt.model.llama import LlamaModel
from radixrt.model.loader import ModelLoadError, load_state_dict, prepare_model_dir
from radixrt.model.quantization import plan_quantization
from radixrt.model.smoothing import cached_activation_maxima

logger = logging.getLogger("radixrt.runner")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 matmul on CPUs without AMX is hundreds of times slower than fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def on_fresh_thread(fn, *args):
    """``fn(*args)`` on a thread that ends when it returns; its result, or its exception.

    torch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread that ran a
    parallel region. Once the pools hold more threads than there are cores, libgomp stops
    spinning between regions, and every parallel op then pays a futex wake-up. Loading the
    model (copies, packing, calibration: all parallel) on the thread that constructs the runner
    and stepping it on another one (the Engine and the scheduler process do) had exactly that
    effect on a 2-core CPU: ~45 us more per parallel op, a batch-1 int8 decode step 12 -> 19 ms.
    A thread that exits takes its pool with it.
    """
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # re-raised on the calling thread
            box["error"] = e

    t = threading.Thread(target=run, name="radixrt-model-load")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _release_freed_memory() -> None:
    """Hand the heap pages freed after loading (the checkpoint's float copies, replaced
    layers) back to the OS. glibc keeps freed memory of mid-sized blocks in its heap, where it
    counts as resident for the server's whole life. No-op without glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelRunner:
    def __init__(self, args: ServerArgs):
        self.args = args
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        self.tp = None
        if args.tp_size > 1:  # tensor parallelism: this process's rank (radixrt/model/parallel.py)
            from radixrt.model.parallel import setup

            self.tp = setup(args, resolve_device(args.device))
        on_fresh_thread(self._load, args)

    def _load(self, args: ServerArgs) -> None:
        from radixrt.model.gguf_weights import source_gguf

        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.cpu_features = detect_cpu_features()
        t0 = time.perf_counter()
        self.model_dir = prepare_model_dir(args.model_path)
        self.quantization_plan = plan_quantization(args.quantization, self.device, self.dtype,
                                                   self.cpu_features, gguf_source=source_gguf(self.model_dir))
        self.config = ModelConfig.from_dir(self.model_dir)
        from radixrt.model.loader import SUPPORTED_ARCHITECTURES

        if self.config.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"unsupported architecture {self.config.architecture!r}; supported: "
                f"{sorted(SUPPORTED_ARCHITECTURES)}")
        c = self.config
        self.context_len = args.context_length or c.max_position_embeddings
        state = load_state_dict(self.model_dir, self.dtype)
        self.attn_backend = make_attention_backend(args.attention_backend, c.head_dim ** -0.5,
                                                   self.device, self.dtype)
        gguf = self._gguf_weights() if self.quantization_plan.mode == "gguf" else None
        self.model = LlamaModel(c, state, self.dtype, self.device, self.context_len, self.attn_backend,
                                gguf, self.quantization_plan.isa)
        del state
        if self.tp is not None:  # keep this rank's shard of every layer
            from radixrt.model.parallel import shard_model

            shard_model(self.model, self.tp)
        if self.quantization_plan.mode == "int8":
            self._quantize(args)
        elif gguf is not None:
            logger.info("gguf-block layers: file types %s; requantized to Q8_0: %s",
                        ", ".join(sorted({t for n, t in gguf.types().items() if n.endswith("proj.weight")})),
                        ", ".join(self.model.gguf_requantized) or "none")
        _release_freed_memory()
        m = self.model
        # What actually runs: auto may leave every layer of a small model in fp32.
        self.quantization = "gguf" if m.num_gguf_linears else "int8" if m.num_int8_linears else "none"
        self._init_pools()
        logger.info(
            "loaded %s (%d layers, hidden %d, %s on %s) in %.2fs; KV pool: %d slots (page %d, %.1f MiB), "
            "attention backend: %s",
            self.model_dir, c.num_layers, c.hidden_size, str(self.dtype).replace("torch.", ""),
            self.device, time.perf_counter() - t0, self.max_total_tokens, args.page_size,
            self.kv_bytes / 2**20, self.attn_backend.name)
        logger.info("quantization: %s; int8 linear layers: %d, gguf-block layers: %d, of %d; CPU: %s",
                    self.quantization_plan.describe(), m.num_int8_linears, m.num_gguf_linears,
                    len(m.linears()), self.cpu_features.summary())

    def _gguf_weights(self):
        """The source GGUF's tensors, for a model built on the file's own blocks."""
        from radixrt.model.gguf_weights import GGUFModelWeights

        return GGUFModelWeights(self.quantization_plan.gguf_path, self.config.num_heads, self.config.num_kv_heads)

    def _quantize(self, args: ServerArgs) -> None:
        """Measure (or read from the cache) activation ranges, then swap in int8 layers."""
        from radixrt.model.loader import default_cache_dir
        from radixrt.tokenizer import load_tokenizer

        t0 = time.perf_counter()
        plan, act_max = self.quantization_plan, None
        # Smoothing applies to the decoder layers only (the LM head takes a residual pass).
        if any(plan.covers(lin.weight_t if lin.weight_t is not None else lin.weight)
               for name, lin in self.model.linears().items() if name != "lm_head"):
            tokenizer = load_tokenizer(args.tokenizer_path or self.model_dir)
            act_max = cached_activation_maxima(self.model, self.model_dir, tokenizer, default_cache_dir())
        self.model.quantize(plan, act_max)
        logger.info("int8 layers ready in %.2fs", time.perf_counter() - t0)

    def _init_pools(self) -> None:
        a, c = self.args, self.config
        kv_heads = self.model.config.num_kv_heads  # this rank's, under tensor parallelism
        per_tok = TokenToKVPool.bytes_per_token(c.num_layers, kv_heads, c.head_dim, self.dtype)
        if a.max_total_tokens is not None:
            total = a.max_total_tokens
        elif self.device.type == "cuda":  # GPU memory plan: radixrt/model/cuda_graph.py
            free, gpu_total = gpu_memory(self.device)
            total = plan_kv_pool_tokens(gpu_total, free, a.mem_fraction_static or DEFAULT_MEM_FRACTION_STATIC,
                                        per_tok, a.page_size)
        else:
            total = int(a.kv_cache_memory_gb * 2**30 // per_tok)
        total = max(a.page_size, total // a.page_size * a.page_size)
        if self.tp is not None:  # every rank's pool must hold rank 0's slot numbers
            total = self.tp.agree_kv_slots(total)
        self.max_total_tokens = total
        self.kv_bytes = total * per_tok
        self.allocator = KVAllocator(total, a.page_size, self.device)
        self.req_to_token_pool = ReqToTokenPool(a.max_running_requests + 8, self.context_len + 8)
        self.kv_pool = TokenToKVPool(total, c.num_layers, kv_heads, c.head_dim, self.dtype, self.device,
                                     a.page_size)
        self.graph_runner = make_graph_runner(self, a)  # decode CUDA graphs (None off CUDA)

    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        if self.tp is not None and self.tp.rank == 0:  # the other ranks run the same batch
            self.tp.broadcast_batch(fb)
        if self.device.type == "cpu":
            return self.model.forward(fb, self.kv_pool)
        # GPU: the scheduler builds batches on the CPU and samples on the CPU (its sampling
        # tensors and generators live there), so the batch goes over and the logits come back.
        fb = batch_to_device(fb, self.device)
        if self.graph_runner is not None and self.graph_runner.can_run(fb):
            logits = self.graph_runner.replay(fb)
        else:
            logits = self.model.forward(fb, self.kv_pool)
        return logits.cpu()
