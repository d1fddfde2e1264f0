"""KV memory pools.

- `KVAllocator` hands out KV slot indices, one page (``page_size`` consecutive slots) at a
  time. Slot 0 is reserved as a padding target and never handed out.
- `ReqToTokenPool` keeps, per running request, the row of KV slot indices of its tokens.
- `TokenToKVPool` holds per-layer K and V tensors ``[num_slots + page_size, kv_heads,
  head_dim]`` (the first page is the reserved padding page).

Accounting invariant (checked by tests after every scenario):
``allocator.available_size() + slots held by running requests + slots held by the prefix
cache == allocator.size``.
"""

from __future__ import annotations

import numpy as np
import torch


class KVAllocator:
    """Free-list allocator of KV slots, page-granular.

    Slots are numbered 1..size (0 is the padding slot). With ``page_size > 1`` a page is the
    aligned run ``[p * page_size, (p + 1) * page_size)`` and slot 0's page is never used, so
    ``size`` must be a multiple of ``page_size``.
    """

    def __init__(self, size: int, page_size: int = 1, device: str | torch.device = "cpu"):
        if size < page_size or size % page_size:
            raise ValueError(f"KV pool size {size} must be a positive multiple of page_size {page_size}")
        self.size = size
        self.page_size = page_size
        self.device = device
        self.num_pages = size // page_size
        self.clear()

    def clear(self) -> None:
        # Page ids 1..num_pages (page 0 would contain the padding slot 0).
        self._free_pages: list[int] = list(range(self.num_pages, 0, -1))
        # Filled by NumPy: a torch fill this size is an OpenMP region, and this may run on a
        # thread other than the forward's (see model.runner.on_fresh_thread).
        self._is_free = torch.from_numpy(np.ones(self.num_pages + 1, dtype=np.bool_))
        self._is_free[0] = False

    def available_size(self) -> int:
        """Number of free slots."""
        return len(self._free_pages) * self.page_size

    def alloc(self, num_tokens: int, last_slot: int | None = None) -> torch.Tensor | None:
        """Slots for ``num_tokens`` new tokens that follow ``last_slot`` in a sequence.

        With paging, the tail of ``last_slot``'s page is used first, then whole new pages.
        Returns an int64 tensor of slot indices, or None if there is not enough room (nothing
        is allocated then).
        """
        ps = self.page_size
        if num_tokens <= 0:
            return torch.empty(0, dtype=torch.int64)
        if ps == 1:
            if num_tokens > len(self._free_pages):
                return None
            pages = self._free_pages[-num_tokens:]
            del self._free_pages[-num_tokens:]
            self._is_free[pages] = False
            return torch.tensor(pages, dtype=torch.int64)
        head: list[int] = []
        if last_slot is not None and (last_slot + 1) % ps:
            # The rest of last_slot's page belongs to the caller only if that page is allocated
            # (page 0 is the padding page and never is).
            if not 0 < last_slot // ps <= self.num_pages or self._is_free[last_slot // ps]:
                raise ValueError(f"last_slot {last_slot} is not in an allocated page")
            head = list(range(last_slot + 1, min((last_slot // ps + 1) * ps, last_slot + 1 + num_tokens)))
        rest = num_tokens - len(head)
        n_pages = -(-rest // ps)
        if n_pages > len(self._free_pages):
            return None
        pages = self._free_pages[len(self._free_pages) - n_pages:]
        del self._free_pages[len(self._free_pages) - n_pages:]
        if pages:
            self._is_free[pages] = False
        slots = head + [p * ps + i for p in pages for i in range(ps)][:rest]
        return torch.tensor(slots, dtype=torch.int64)

    def free(self, slots: torch.Tensor | list[int]) -> None:
        """Return slots to the pool; with paging, every page touched is freed whole."""
        if isinstance(slots, torch.Tensor):
            if slots.numel() == 0:
                return
            pages = torch.unique(slots // self.page_size) if self.page_size > 1 else slots
            pages = pages.to("cpu", torch.int64)
        else:
            if not slots:
                return
            pages_l = sorted({s // self.page_size for s in slots}) if self.page_size > 1 else list(slots)
            pages = torch.tensor(pages_l, dtype=torch.int64)
        pages_l = pages.tolist()
        if __debug__:
            # A page twice in one call (ps == 1), an already free page, or the padding page.
            if self._is_free[pages].any() or 0 in pages_l or len(set(pages_l)) != len(pages_l):
                raise RuntimeError("double free of KV slots")
        self._is_free[pages] = True
        self._free_pages.extend(pages_l)


class ReqToTokenPool:
    """Per running request, the KV slot index of each of its tokens (a tensor row)."""

    def __init__(self, max_requests: int, max_context_len: int, device: str | torch.device = "cpu"):
        self.size = max_requests
        self.max_context_len = max_context_len
        self.req_to_token = torch.zeros((max_requests, max_context_len), dtype=torch.int64, device=device)
        self._free_rows = list(range(max_requests - 1, -1, -1))

    def available_size(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        self._free_rows.append(row)

    def clear(self) -> None:
        self._free_rows = list(range(self.size - 1, -1, -1))


class TokenToKVPool:
    """Per-layer K and V buffers indexed by slot: ``[size + page_size, kv_heads, head_dim]``."""

    def __init__(self, size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device = "cpu", page_size: int = 1,
                 pin_memory: bool = False):
        self.size = size
        self.device = torch.device(device)
        rows = size + page_size
        self.num_layers = num_layers
        # Uninitialised memory: every slot is written before it is read, except the padding
        # slot 0, which padded gathers read and which must hold finite values.
        shape = (rows, num_kv_heads, head_dim)
        self.k_buffers = [torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)
                          for _ in range(num_layers)]
        self.v_buffers = [torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)
                          for _ in range(num_layers)]
        for buf in self.k_buffers + self.v_buffers:
            buf[0].zero_()

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()

    def set_kv(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffers[layer][slots] = k
        self.v_buffers[layer][slots] = v


def copy_kv(src: TokenToKVPool, src_slots: torch.Tensor, dst: TokenToKVPool,
            dst_slots: torch.Tensor) -> None:
    """Copy the K and V rows ``src_slots`` of ``src`` into rows ``dst_slots`` of ``dst`` (the
    pools may live on different devices)."""
    s = src_slots.to(src.device, torch.int64)
    d = dst_slots.to(dst.device, torch.int64)
    if src.device.type == "cpu" and dst.device.type == "cpu":
        # NumPy take + fancy assignment: 4-5x faster than index_select + index_copy_ here
        # (1,000 slots of SmolLM2-135M fp32 KV, 2-core EPYC: 12 ms vs 54 ms).
        si, di = s.numpy(), d.numpy()
        for bufs_s, bufs_d in ((src.k_buffers, dst.k_buffers), (src.v_buffers, dst.v_buffers)):
            for bs, bd in zip(bufs_s, bufs_d):
                _byte_rows(bd)[di] = np.take(_byte_rows(bs), si, axis=0)
        return
    # Only a host-to-GPU copy may be asynchronous (ordered before later GPU work); a GPU-to-host
    # copy must be complete before the host reads it.
    non_blocking = src.device.type == "cpu" and dst.device.type == "cuda"
    for bufs_s, bufs_d in ((src.k_buffers, dst.k_buffers), (src.v_buffers, dst.v_buffers)):
        for bs, bd in zip(bufs_s, bufs_d):
            bd.index_copy_(0, d, bs.index_select(0, s).to(dst.device, non_blocking=non_blocking))


def _byte_rows(t: torch.Tensor):
    """A contiguous CPU tensor ``[rows, ...]`` as a NumPy uint8 array ``[rows, row_bytes]``
    (any dtype, bf16 included: NumPy only sees bytes)."""
    return t.view(t.shape[0], -1).view(torch.uint8).numpy()


def gather_kv(pool: TokenToKVPool, slots: torch.Tensor) -> torch.Tensor:
    """Rows ``slots`` of every layer as one CPU tensor ``[layers, 2, len(slots), heads, dim]``.

    On a CPU pool the rows move with NumPy: the cache's I/O threads call this, and a torch op
    there would open an OpenMP team of its own next to the forward's; with more OpenMP threads
    than cores, libgomp stops spinning between regions and every parallel op of the forward
    pays a wake-up (measured: batch-1 decode 2x slower while a writer thread ran)."""
    s = slots.to(pool.device, torch.int64)
    k0 = pool.k_buffers[0]
    out = torch.empty((pool.num_layers, 2, len(s), *k0.shape[1:]), dtype=k0.dtype)
    if pool.device.type == "cpu":
        idx, n = s.numpy(), len(s)
        dst = _byte_rows(out.view(pool.num_layers * 2 * n, -1))
        for layer in range(pool.num_layers):
            for j, bufs in enumerate((pool.k_buffers, pool.v_buffers)):
                row = (layer * 2 + j) * n
                np.take(_byte_rows(bufs[layer]), idx, axis=0, out=dst[row:row + n])
        return out
    for layer in range(pool.num_layers):
        out[layer, 0].copy_(pool.k_buffers[layer].index_select(0, s))
        out[layer, 1].copy_(pool.v_buffers[layer].index_select(0, s))
    return out


def scatter_kv(pool: TokenToKVPool, slots: torch.Tensor, data: torch.Tensor) -> None:
    """Inverse of `gather_kv`: write ``data [layers, 2, len(slots), heads, dim]`` into rows
    ``slots`` (on a CPU pool with NumPy, for the reason given there)."""
    s = slots.to(pool.device, torch.int64)
    if pool.device.type == "cpu":
        idx, n = s.numpy(), len(s)
        src = _byte_rows(data.contiguous().view(pool.num_layers * 2 * n, -1))
        for layer in range(pool.num_layers):
            for j, bufs in enumerate((pool.k_buffers, pool.v_buffers)):
                row = (layer * 2 + j) * n
                _byte_rows(bufs[layer])[idx] = src[row:row + n]
        return
    data = data.to(pool.device)
    for layer in range(pool.num_layers):
        pool.k_buffers[layer].index_copy_(0, s, data[layer, 0])
        pool.v_buffers[layer].index_copy_(0, s, data[layer, 1])
