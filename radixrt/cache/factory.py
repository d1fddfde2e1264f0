"""Builds the prefix cache a server's flags ask for: none (``--disable-radix-cache``), the
radix cache (``--disable-hierarchical-cache``), or by default the hierarchical radix cache with
a host-memory tier and, unless ``--hicache-storage-backend none``, a disk tier."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from radixrt.cache.base import BasePrefixCache
from radixrt.cache.memory_pool import KVAllocator, TokenToKVPool

logger = logging.getLogger("radixrt.hicache")

# Tokens per disk block (rounded up to a whole number of pages). A prefix is reused from disk up
# to its last whole block, and the rest is computed again: 16 tokens lose 7.5 on average (64
# lost 31.5, e.g. 16 of a 2,000-token prefix and 40 of a 1,000-token one). Each block costs a
# file open and a header (~0.1 ms with the read into the pool on the 2-core EPYC: reading 2,048
# tokens of SmolLM2-135M KV took 46-62 ms in 128 files, 39-52 ms in 32), less than computing
# the tokens a larger block loses.
BLOCK_TOKENS = 16


def hicache_root(args) -> Path:
    """``--hicache-dir``, else ``$RADIXRT_HICACHE_DIR``, else ``<cache dir>/hicache``."""
    if args.hicache_dir:
        return Path(args.hicache_dir)
    env = os.environ.get("RADIXRT_HICACHE_DIR")
    if env:
        return Path(env)
    from radixrt.model.loader import default_cache_dir

    return default_cache_dir() / "hicache"


def available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def host_pool_tokens(args, device_tokens: int, bytes_per_token: int) -> int:
    """``--hicache-size`` GiB, else ``--hicache-ratio`` x the KV pool; never more than half
    the memory the system has available (a warning says so)."""
    if args.hicache_size > 0:
        n = int(args.hicache_size * 2**30 // bytes_per_token)
    else:
        n = int(args.hicache_ratio * device_tokens)
    avail = available_memory()
    if avail is not None and n * bytes_per_token > avail // 2:
        cap = avail // 2 // bytes_per_token
        logger.warning("hierarchical cache: host tier of %d tokens (%.1f GiB) capped to %d "
                       "(half the available memory)", n, n * bytes_per_token / 2**30, cap)
        n = cap
    ps = args.page_size
    return max(ps, n // ps * ps)


def make_prefix_cache(args, runner) -> BasePrefixCache:
    if args.disable_radix_cache:
        from radixrt.cache.no_cache import NoPrefixCache

        return NoPrefixCache(runner.allocator)
    if args.disable_hierarchical_cache:
        from radixrt.cache.radix_cache import RadixCache

        return RadixCache(runner.allocator, args.page_size)
    from radixrt.cache.disk_store import DiskKVStore, model_fingerprint
    from radixrt.cache.hiradix_cache import HiRadixCache
    from radixrt.version import __version__

    c, pool = runner.config, runner.kv_pool
    per_tok = TokenToKVPool.bytes_per_token(c.num_layers, c.num_kv_heads, c.head_dim, runner.dtype)
    n_host = host_pool_tokens(args, runner.max_total_tokens, per_tok)
    host_pool = TokenToKVPool(n_host, c.num_layers, c.num_kv_heads, c.head_dim, runner.dtype,
                              "cpu", args.page_size, pin_memory=runner.device.type == "cuda")
    host_alloc = KVAllocator(n_host, args.page_size)
    disk = None
    if args.hicache_storage_backend == "file":
        block = -(-BLOCK_TOKENS // args.page_size) * args.page_size
        root = hicache_root(args)
        fp = model_fingerprint(
            runner.model_dir, root / "file-digests.json", dtype=str(runner.dtype), quantization=runner.quantization,
            quantization_plan=runner.quantization_plan.describe(), page_size=args.page_size,
            block_tokens=block, config=dataclasses.asdict(c),
            attention=runner.attn_backend.name, device=runner.device.type, radixrt=__version__)
        disk = DiskKVStore(root, fp, block, c.num_layers, c.num_kv_heads,
                           c.head_dim, runner.dtype, int(args.hicache_disk_size_gb * 2**30))
    logger.info("hierarchical cache: host tier %d tokens (%.1f MiB)%s", n_host,
                n_host * per_tok / 2**20,
                f", disk tier {disk.dir} ({args.hicache_disk_size_gb:g} GiB)" if disk else "")
    cache = HiRadixCache(runner.allocator, pool, host_pool, host_alloc, disk, args.page_size)
    cache.warm_start(int(args.hicache_warm_start_ratio * runner.max_total_tokens))
    return cache
