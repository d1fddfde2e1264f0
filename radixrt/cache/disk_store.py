"""The disk tier of the hierarchical cache: KV blocks in files, content-addressed, LRU-bounded.

A *block* is ``block_tokens`` consecutive tokens of a sequence, aligned at absolute positions
that are multiples of ``block_tokens``. Its key chains the key of the block before it with its
own token ids; the first block's parent is a key derived from the model fingerprint (weights,
dtype, quantization, page size, block size, model config, attention backend, radixrt
version). So a key names one prefix computed by one model in one numeric mode, and KV is never
served to another.

One file per block, ``<dir>/<key>.kv``: a magic, a JSON header (fingerprint, key, parent key,
token ids, shape, dtype, CRC-32 of the payload) and the payload, laid out
``[layers, 2 (K, V), block_tokens, kv_heads, head_dim]``. Files are written to a temporary
name and renamed into place, so a reader sees a whole file or none; a file torn by a crash,
truncated, corrupted or written by another model fails validation and is skipped (with a
warning, and deleted when the directory is writable), never served.

The index (key -> parent, tokens, size) is read from the headers at start-up, in the order of
the files' mtimes (a read sets its block's mtime, so that is the order of last use); payloads
are read on demand. All methods may be called from the cache's I/O threads: the index is guarded by
a lock. Every OS error (full disk, read-only directory, a file deleted under the server) is
logged and turns into a miss; the server keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import zlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger("radixrt.hicache")

MAGIC = b"RXKV1\n"
_LEN = struct.Struct("<I")
_MAX_HEADER = 1 << 24
_FP_CACHE: dict[str, str] = {}
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _file_digest(path: Path, memo: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if key not in _FP_CACHE:
        if key in memo:
            _FP_CACHE[key] = memo[key]
        else:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            _FP_CACHE[key] = h.hexdigest()
    memo[key] = _FP_CACHE[key]
    return _FP_CACHE[key]


def model_fingerprint(model_dir: Path, memo_file: Path | None = None, **mode: object) -> str:
    """Hex digest of the model's weight and config files (contents, not names) and of
    ``mode`` (dtype, quantization, page size, ...). File digests are memoised per (path, size,
    mtime): within the process, and across processes in ``memo_file`` when given (hashing the
    embedded model's 540 MB takes a second or two)."""
    memo: dict[str, str] = {}
    if memo_file is not None:
        try:
            memo = json.loads(Path(memo_file).read_text())
        except (OSError, ValueError):
            memo = {}
    before = dict(memo)
    h = hashlib.sha256()
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin", ".gguf")
                                       or p.name == "config.json"))
    if not files:
        raise ValueError(f"no weight files in {model_dir} to fingerprint")
    for p in files:
        h.update(p.name.encode() + b"\0" + _file_digest(p, memo).encode() + b"\0")
    h.update(json.dumps(mode, sort_keys=True, default=str).encode())
    if memo_file is not None and memo != before:
        try:
            memo_file = Path(memo_file)
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f"{memo_file.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, memo_file)
        except OSError as e:
            logger.debug("hicache: cannot save file digests in %s: %s", memo_file, e)
    return h.hexdigest()


def _readv_all(fd: int, views: list[memoryview]) -> int:
    """Fill ``views`` from ``fd`` (few syscalls: ``readv`` takes up to IOV_MAX buffers);
    returns the bytes read, short only at the end of the file."""
    total, i, off = 0, 0, 0
    while i < len(views):
        batch = [views[i][off:]] + views[i + 1:i + 1 + _IOV_MAX - 1]
        got = os.readv(fd, batch)
        if got == 0:
            break
        total += got
        while got and i < len(views):  # advance over what was filled
            left = len(views[i]) - off
            if got >= left:
                got -= left
                i, off = i + 1, 0
            else:
                off += got
                got = 0
    return total


def chain_key(parent: str, tokens: list[int]) -> str:
    return hashlib.sha256(parent.encode() + array("q", tokens).tobytes()).hexdigest()[:40]


@dataclass
class BlockInfo:
    parent: str
    tokens: list[int]
    nbytes: int


class DiskKVStore:
    def __init__(self, root: Path, fingerprint: str, block_tokens: int, num_layers: int,
                 num_kv_heads: int, head_dim: int, dtype: torch.dtype, capacity_bytes: int):
        self.dir = Path(root) / fingerprint[:16]
        self.fingerprint = fingerprint
        self.root_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:40]
        self.block_tokens = block_tokens
        self.shape = (num_layers, 2, block_tokens, num_kv_heads, head_dim)
        self.dtype = dtype
        self.block_bytes = torch.empty(self.shape, dtype=dtype, device="meta").numel() * \
            torch.empty(0, dtype=dtype).element_size()
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[str, BlockInfo] = OrderedDict()  # LRU order, oldest first
        self.used_bytes = 0
        self.writable = True
        self._warned: set[str] = set()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.dir, os.W_OK):
                raise PermissionError(f"{self.dir} is not writable")
        except OSError as e:
            self.writable = False
            self._warn("dir", f"hicache disk tier at {self.dir} is read-only or unavailable "
                       f"({e}); KV will not be written to disk")

    # ------------------------------------------------------------------ helpers
    def _warn(self, kind: str, msg: str) -> None:
        """Log ``msg`` at WARNING the first time for each ``kind``, then at DEBUG."""
        if kind in self._warned:
            logger.debug(msg)
        else:
            self._warned.add(kind)
            logger.warning(msg)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.kv"

    def chain_keys(self, tokens: list[int], num_blocks: int, start_key: str | None = None,
                   start_block: int = 0) -> list[str]:
        """Keys of blocks ``start_block .. num_blocks - 1`` of ``tokens`` (``start_key`` is
        the key of the block before ``start_block``; the root key for block 0)."""
        b, key, keys = self.block_tokens, start_key or self.root_key, []
        for i in range(start_block, num_blocks):
            key = chain_key(key, tokens[i * b:(i + 1) * b])
            keys.append(key)
        return keys

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._index

    def num_blocks(self) -> int:
        with self._lock:
            return len(self._index)

    # ------------------------------------------------------------------ index
    def scan(self) -> dict[str, BlockInfo]:
        """Read every block's header (not its payload) into the index. Files that are not
        ours (another fingerprint), torn or unreadable are skipped with a warning."""
        found: list[tuple[float, str, BlockInfo]] = []
        try:
            entries = list(os.scandir(self.dir))
        except OSError as e:
            self._warn("scan", f"hicache: cannot list {self.dir}: {e}")
            return {}
        skipped = 0
        for ent in entries:
            if not ent.name.endswith(".kv"):
                if ".tmp" in ent.name:
                    self._unlink(Path(ent.path))  # a write that never finished
                continue
            key = ent.name[:-3]
            try:
                with open(ent.path, "rb") as f:
                    header = self._read_header(f, key)
                size = ent.stat().st_size
                if size != header["_offset"] + header["nbytes"]:
                    raise ValueError(f"size {size}, header says {header['_offset'] + header['nbytes']}")
                found.append((ent.stat().st_mtime, key,
                              BlockInfo(header["parent"], header["tokens"], size)))
            except (OSError, ValueError) as e:
                skipped += 1
                logger.debug("hicache: skipping %s: %s", ent.path, e)
                self._unlink(Path(ent.path))
        if skipped:
            self._warn("scan-skip", f"hicache: skipped {skipped} invalid or foreign file(s) in "
                       f"{self.dir}")
        found.sort(key=lambda t: t[0])
        with self._lock:
            for _, key, info in found:
                if key not in self._index:
                    self._index[key] = info
                    self.used_bytes += info.nbytes
        return {key: info for _, key, info in found}

    def _read_header(self, f, key: str) -> dict:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("bad magic")
        raw = f.read(_LEN.size)
        if len(raw) != _LEN.size:
            raise ValueError("truncated header")
        (n,) = _LEN.unpack(raw)
        if n > _MAX_HEADER:
            raise ValueError("header too large")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError("truncated header")
        header = json.loads(raw)
        if header.get("fingerprint") != self.fingerprint:
            raise ValueError("written by another model or mode")
        if header.get("key") != key or chain_key(header["parent"], header["tokens"]) != key:
            raise ValueError("key does not match its tokens")
        if (header.get("shape") != list(self.shape) or header.get("dtype") != str(self.dtype)
                or header.get("nbytes") != self.block_bytes):
            raise ValueError("layout differs")
        header["_offset"] = len(MAGIC) + _LEN.size + n
        return header

    # ------------------------------------------------------------------ write
    def write_block(self, key: str, parent: str, tokens: list[int], data: torch.Tensor) -> bool:
        """Write one block (``data`` shaped like ``self.shape``) atomically. False (with a
        warning) when the directory is read-only or full, or the block does not fit at all."""
        if not self.writable:
            return False
        if self.block_bytes > self.capacity_bytes:
            self._warn("quota", f"hicache: a KV block ({self.block_bytes} B) exceeds the disk "
                       f"tier's size ({self.capacity_bytes} B); nothing is written")
            return False
        if self.contains(key):
            return True
        payload = memoryview(data.contiguous().view(-1).view(torch.uint8).numpy())
        header = json.dumps({
            "fingerprint": self.fingerprint, "key": key, "parent": parent, "tokens": tokens,
            "shape": list(self.shape), "dtype": str(self.dtype), "nbytes": self.block_bytes,
            "crc32": zlib.crc32(payload),
        }).encode()
        total = len(MAGIC) + _LEN.size + len(header) + len(payload)
        self._make_room(total)
        path = self._path(key)
        tmp = path.with_name(f"{key}.tmp{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC + _LEN.pack(len(header)) + header)
                f.write(payload)
            os.replace(tmp, path)
        except OSError as e:
            self._unlink(tmp)
            self._warn("write", f"hicache: cannot write KV to {self.dir} ({e}); "
                       "serving continues without it")
            return False
        with self._lock:
            if key not in self._index:
                self._index[key] = BlockInfo(parent, list(tokens), total)
                self.used_bytes += total
        return True

    def _make_room(self, nbytes: int) -> None:
        """Delete least recently used blocks until ``nbytes`` more fit."""
        victims = []
        with self._lock:
            while self._index and self.used_bytes + nbytes > self.capacity_bytes:
                key, info = self._index.popitem(last=False)
                self.used_bytes -= info.nbytes
                victims.append(key)
        for key in victims:
            self._unlink(self._path(key))

    # ------------------------------------------------------------------ read
    def read_block(self, key: str, tokens: list[int],
                   into: list | None = None) -> torch.Tensor | bool | None:
        """The payload of block ``key`` if its file is whole, ours and holds ``tokens``; None
        (with a warning, and the block forgotten) otherwise. With ``into`` (one contiguous
        buffer per ``[layer, K/V]`` of the payload, in order, e.g. pool rows: NumPy arrays,
        tensors or memoryviews), the payload is read straight into them (one ``readv``) and True
        is returned; on failure they hold garbage."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                header = self._read_header(f, key)
                if header["tokens"] != tokens:
                    raise ValueError("holds other tokens")
                if into is None:
                    buf = torch.empty(self.block_bytes, dtype=torch.uint8)  # no zero-fill
                    views = [memoryview(buf.numpy())]
                else:
                    views = [memoryview(p.view(torch.uint8).numpy() if isinstance(p, torch.Tensor)
                                        else p).cast("B") for p in into]
                if _readv_all(f.fileno(), views) != self.block_bytes or f.read(1):
                    raise ValueError("truncated or oversized payload")
                crc = 0
                for view in views:
                    crc = zlib.crc32(view, crc)
            if crc != header["crc32"]:
                raise ValueError("checksum mismatch")
        except FileNotFoundError:
            self._warn("missing", f"hicache: KV block {path.name} disappeared; recomputing")
            self.forget(key)
            return None
        except (OSError, ValueError) as e:
            self._warn("corrupt", f"hicache: KV block {path} is unusable ({e}); recomputing")
            self.forget(key)
            self._unlink(path)
            return None
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
        if self.writable:
            try:  # the file's mtime is its last use: the LRU order the next start-up reads
                os.utime(path)
            except OSError:
                pass
        return True if into is not None else buf.view(self.dtype).view(self.shape)

    def forget(self, key: str) -> None:
        with self._lock:
            info = self._index.pop(key, None)
            if info is not None:
                self.used_bytes -= info.nbytes

    def touch(self, key: str) -> None:
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)

    def clear(self) -> int:
        """Delete every block of this fingerprint. Returns how many files went."""
        with self._lock:
            keys = list(self._index)
            self._index.clear()
            self.used_bytes = 0
        for key in keys:
            self._unlink(self._path(key))
        return len(keys)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.debug("hicache: cannot delete %s: %s", path, e)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"dir": str(self.dir), "writable": self.writable,
                    "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes,
                    "blocks": len(self._index), "block_tokens": self.block_tokens}

