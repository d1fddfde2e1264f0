"""The vocabulary's byte trie walked in native code (``radixrt/csrc/token_trie.cpp``).

A state's first mask is a walk of the vocabulary's byte trie against the DFA. ``TokenTrie``
does it level by level in NumPy; that costs ~1 ms on a state where ~15k of 49k tokens live
(inside a ``format`` string, an open object's key), the most a mask costs. Here the trie is laid
out in depth-first preorder, each node with its byte, its depth and the index past its subtree,
and a C loop reads the live part front to back, skipping dead subtrees whole: the same answer,
ids ascending with the DFA state after each token (tests/fsm/test_trie_native.py compares them
state by state).

The library is a plain C ABI called through ``ctypes`` (no torch), compiled on first use with
``radixrt.native_build.build_c_library`` (about a second, cached on disk). Without a compiler,
or with ``RADIXRT_DISABLE_NATIVE=1``, ``NativeTrie.build`` returns None and ``TokenTrie`` walks
in NumPy.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from radixrt.fsm.token_index import TokenTrie

_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "token_trie.cpp"


class _Trie(ctypes.Structure):  # RadixrtTrie in token_trie.cpp
    _fields_ = [("parent", ctypes.c_void_p), ("node_byte", ctypes.c_void_p),
                ("level_start", ctypes.c_void_p), ("num_levels", ctypes.c_int64),
                ("child_start", ctypes.c_void_p), ("child_end", ctypes.c_void_p),
                ("node_tok", ctypes.c_void_p), ("dup_primary", ctypes.c_void_p),
                ("dup_extra", ctypes.c_void_p), ("num_dups", ctypes.c_int64)]


class _Scratch(ctypes.Structure):  # RadixrtScratch
    _fields_ = [("node_state", ctypes.c_void_p), ("front", ctypes.c_void_p),
                ("max_level", ctypes.c_int64), ("by_id", ctypes.c_void_p),
                ("vocab", ctypes.c_int64)]


def _library():
    """The library (``radixrt_trie_walk``, ``radixrt_string_walk``), or None (a warning is
    logged once) when it cannot be built."""
    from radixrt.native_build import load_c_library

    lib = load_c_library(_SOURCE, "radixrt_token_trie", "token-trie walk (masks use NumPy)")
    if lib is not None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        trie_p, scratch_p = ctypes.POINTER(_Trie), ctypes.POINTER(_Scratch)
        lib.radixrt_trie_walk.restype = i64
        lib.radixrt_trie_walk.argtypes = [trie_p, p, i64, scratch_p, p, p]
        lib.radixrt_string_walk.restype = i64
        lib.radixrt_string_walk.argtypes = [trie_p, trie_p, p, i64, p, p, p, p, i64, p, p, i64,
                                            scratch_p, p, p]
    return lib


class _Arrays:
    """One ``TokenTrie``'s arrays in the layout the library reads (kept alive here)."""

    def __init__(self, trie: TokenTrie, none: int):
        ls = np.asarray(trie.level_start, np.int64)
        self.num_nodes = trie.num_nodes
        self.max_level = int(np.diff(ls).max())
        # The token ending at each node (``none``: no token); a token spelled like another
        # goes to the duplicate pairs.
        node_tok = np.full(trie.num_nodes, none, np.int32)
        order = trie.token_order
        nodes = trie.token_node[order]
        first = np.ones(len(order), np.bool_)
        first[1:] = nodes[1:] != nodes[:-1]
        node_tok[nodes[first]] = trie.token_ids[order[first]]
        primary = node_tok[nodes[~first]]
        self.arrays = (trie.parent.astype(np.int32), trie.byte.astype(np.uint8),
                       ls.astype(np.int32), trie.child_start.astype(np.int32),
                       trie.child_end.astype(np.int32), node_tok, primary.astype(np.int32),
                       trie.token_ids[order[~first]].astype(np.int32))
        parent, byte_, level_start, child_start, child_end, node_tok, dup_primary, dup_extra = \
            self.arrays
        self.struct = _Trie(parent.ctypes.data, byte_.ctypes.data, level_start.ctypes.data,
                            len(ls) - 1, child_start.ctypes.data, child_end.ctypes.data,
                            node_tok.ctypes.data, dup_primary.ctypes.data, dup_extra.ctypes.data,
                            len(dup_extra))
        # The level-1 node of each first byte (-1: no token starts with it).
        self.root_of = np.full(256, -1, np.int32)
        if len(ls) > 2:
            self.root_of[byte_[ls[1]:ls[2]]] = np.arange(ls[1], ls[2], dtype=np.int32)


class NativeTrie:
    """A ``TokenTrie`` for the native walk; when it has the plain tokens apart (its ``rest``
    trie and ``plain_ids``), also the walk of a state inside a string (``string_walk``)."""

    def __init__(self, trie: TokenTrie, lib, token_bytes: list[bytes]):
        self._lib = lib
        self.vocab_size = trie.vocab_size
        ids = trie.token_ids
        # The id-indexed table holds every id in use, and one more slot (``_out_len``) for
        # "no token"; the outputs also have a spare slot.
        self._out_len = max(self.vocab_size, int(ids.max()) + 1 if len(ids) else 1)
        self.full = _Arrays(trie, self._out_len)
        self.rest = _Arrays(trie.rest, self._out_len) if trie.rest is not None else None
        self._num_nodes = max(self.full.num_nodes, self.rest.num_nodes if self.rest else 0)
        self._max_level = max(self.full.max_level, self.rest.max_level if self.rest else 0)
        # The plain tokens (not in ``rest``): ids, lengths and first bytes.
        has_plain = trie.plain_ids is not None
        self.plain_ids = (trie.plain_ids if has_plain else np.zeros(0)).astype(np.int32)
        self.plain_len = (trie.plain_len if has_plain else np.zeros(0)).astype(np.int32)
        self.plain_first = np.asarray([token_bytes[i][0] for i in self.plain_ids.tolist()],
                                      np.uint8)
        self._buffers = threading.local()  # per thread: walks may run on several at once

    @classmethod
    def build(cls, trie: TokenTrie, token_bytes: list[bytes]) -> NativeTrie | None:
        """``trie`` (spelled by ``token_bytes``) for the native walk, or None when the native
        library is unavailable."""
        lib = _library()
        if lib is None or trie.num_nodes >= 1 << 31:
            return None
        return cls(trie, lib, token_bytes)

    def _scratch(self) -> _Scratch:
        got = getattr(self._buffers, "scratch", None)
        if got is None:
            arrays = (np.empty(self._num_nodes, np.int32), np.empty(4 * self._max_level, np.int32),
                      np.empty(self._out_len + 1, np.int32))
            got = (_Scratch(arrays[0].ctypes.data, arrays[1].ctypes.data, self._max_level,
                            arrays[2].ctypes.data, self._out_len), arrays)
            self._buffers.scratch = got
        return got[0]

    @staticmethod
    def _table(table_flat: np.ndarray) -> np.ndarray:
        table = np.ascontiguousarray(table_flat, np.int64)
        if table[:256].any():
            raise ValueError("the DFA's dead state 0 must lead only to itself")
        return table

    def walk(self, table_flat: np.ndarray, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, DFA state after each) of the tokens whose bytes keep the DFA alive
        from ``state``; ``table_flat`` is the DFA's [num_states * 256] int64 table."""
        if not state:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        table = self._table(table_flat)
        ids = np.empty(self._out_len + 1, np.int64)
        states = np.empty(self._out_len + 1, np.int64)
        count = self._lib.radixrt_trie_walk(ctypes.byref(self.full.struct), table.ctypes.data,
                                            int(state), ctypes.byref(self._scratch()),
                                            ids.ctypes.data, states.ctypes.data)
        return ids[:count], states[:count]

    def string_walk(self, table_flat: np.ndarray, state: int, chain: np.ndarray,
                    exceptions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``walk``'s answer when a plain token of n bytes ends in ``chain[n]`` unless its first
        byte is one of ``exceptions`` (``TokenTrie._string_chain``)."""
        if self.rest is None:
            raise ValueError("this trie was built without the plain tokens")
        if not state:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        table = self._table(table_flat)
        chain = np.ascontiguousarray(chain, np.int64)
        if len(self.plain_len) and len(chain) <= int(self.plain_len.max()):
            raise ValueError(f"chain has {len(chain)} states, the plain tokens need "
                             f"{int(self.plain_len.max()) + 1}")
        flags = np.zeros(256, np.uint8)
        flags[exceptions] = 1
        roots = self.full.root_of[exceptions]
        roots = np.ascontiguousarray(roots[roots >= 0], np.int32)
        ids = np.empty(self._out_len + 1, np.int64)
        states = np.empty(self._out_len + 1, np.int64)
        count = self._lib.radixrt_string_walk(
            ctypes.byref(self.full.struct), ctypes.byref(self.rest.struct), table.ctypes.data,
            int(state), chain.ctypes.data, self.plain_ids.ctypes.data, self.plain_len.ctypes.data,
            self.plain_first.ctypes.data, len(self.plain_ids), flags.ctypes.data,
            roots.ctypes.data, len(roots), ctypes.byref(self._scratch()), ids.ctypes.data,
            states.ctypes.data)
        return ids[:count], states[:count]
