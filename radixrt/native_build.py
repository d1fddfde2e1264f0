"""Building radixrt's native code: the cache directory, a cross-process build lock, and plain
C-ABI libraries loaded with ``ctypes``.

Everything native is compiled on first use into ``$RADIXRT_CACHE_DIR/ext/<hash>`` (default
``~/.cache/radixrt/ext/<hash>``; the hash covers the source, the flags and the toolchain), once
per machine, and loaded once per process. ``RADIXRT_DISABLE_NATIVE=1`` turns all of it off;
every caller then takes its Python/torch path.

- ``build_c_library(source, name)``: a C or C++ source with a C ABI and no torch headers (about a
  second to build): the token-trie walk (``radixrt.fsm.trie_native``) and the CPU token bitmask
  (``radixrt.fsm.bitmask``).
- ``load_c_library(source, name, what)``: that library loaded with ``ctypes`` once per process,
  or None (one warning) when it cannot be built.

The torch extension of the model's kernels (``radixrt.model.native``) uses the same directory
and lock. This module is on the lowest floor (no torch, no radixrt imports), so ``fsm`` and
``model`` may both use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

logger = logging.getLogger("radixrt.native")

_c_lock = threading.Lock()
_c_libraries: dict[str, object] = {}  # name -> ctypes.CDLL, or None when it failed


def _disabled_by_env() -> bool:
    return os.environ.get("RADIXRT_DISABLE_NATIVE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_root() -> Path:
    env = os.environ.get("RADIXRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radixrt"


def build_dir_for(content: bytes, *parts: str) -> Path:
    """``$RADIXRT_CACHE_DIR/ext/<hash>``: the hash over ``content`` (the sources), ``parts``
    (compiler, flags, versions) and the platform and machine, so a change to any of them
    builds anew."""
    h = hashlib.sha256(content)
    for part in (*parts, sys.platform, os.uname().machine if hasattr(os, "uname") else ""):
        h.update(b"\0" + part.encode())
    return _cache_root() / "ext" / h.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Serialise builds of one build dir across processes with an flock, which the kernel drops
    when its holder dies. cpp_extension's own "lock" file stays behind when a build is killed
    mid-way, and every later load would wait on it forever; under the flock nobody else is
    building here, so such a file is stale and removed."""
    import fcntl

    with open(build_dir / "build.flock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            baton = build_dir / "lock"
            if baton.exists():
                logger.warning("removing the build lock a killed native-kernel build left: %s", baton)
                baton.unlink()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_c_library(source: Path, name: str, flags: tuple[str, ...] = ("-O3",)) -> Path:
    """Compile ``source`` (C or C++ with a C ABI, no torch headers) into a shared library for
    ``ctypes`` and return its path: ``$RADIXRT_CACHE_DIR/ext/<hash>/lib<name>.so``, the hash over
    the source, the flags and the compiler's name, built once under the same cross-process lock
    as the torch extension. Takes about a second. Raises ``RuntimeError`` when disabled by
    ``RADIXRT_DISABLE_NATIVE``, without a compiler, or when the build fails."""
    import subprocess

    if _disabled_by_env():
        raise RuntimeError("disabled by RADIXRT_DISABLE_NATIVE")
    if sys.platform == "win32":
        raise RuntimeError("native kernels are only built on Linux/macOS")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"C++ compiler {cxx!r} not found")
    build_dir = build_dir_for(source.read_bytes(), cxx, " ".join(flags))
    lib = build_dir / f"lib{name}.so"
    if lib.is_file():
        return lib
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        if not lib.is_file():
            tmp = lib.with_name(f".{lib.name}.{os.getpid()}")
            cmd = [cxx, *flags, "-shared", "-fPIC", "-o", str(tmp), str(source)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-1500:]}")
            os.replace(tmp, lib)  # whole or absent, for processes that do not take the lock
    return lib


def load_c_library(source: Path, name: str, what: str):
    """``build_c_library(source, name)`` loaded with ``ctypes``, once per process; None when it
    cannot be built or loaded (a warning naming ``what`` is logged once)."""
    if name in _c_libraries:
        return _c_libraries[name]
    with _c_lock:
        if name not in _c_libraries:
            import ctypes

            try:
                _c_libraries[name] = ctypes.CDLL(str(build_c_library(source, name)))
            except Exception as e:  # noqa: BLE001 - any failure means the fallback
                logger.warning("native %s unavailable, using the fallback: %s", what, e)
                _c_libraries[name] = None
    return _c_libraries[name]
