"""The exact bytes each token id emits — everything in structured generation works in bytes.

- byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): vocabulary pieces are written in the GPT-2
  byte-to-unicode alphabet (``Ġ`` = space, ``Ċ`` = newline); each character maps back to one byte,
  so a token may be a partial UTF-8 sequence.
- SentencePiece-style (Metaspace / ``Replace("▁", " ")`` decoders, optional byte fallback):
  ``▁`` is a space and ``<0xNN>`` is the single byte NN. The decoder's "strip the leading space of
  the whole text" step is deliberately not modelled: mid-generation a ``▁x`` token emits `` x``.
- Special/control tokens (``all_special_ids`` and added tokens marked special) emit no bytes; a
  grammar never allows them, except EOS, which the matcher allows in accepting states.

Vocabularies are cached per tokenizer under ``name_or_path:size:hash-of-pieces`` (plus the
chunking layout, when it is one ``canonical_split`` knows, and ``nfc`` for its normalizer).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from radixrt.fsm.errors import GrammarError

T = TypeVar("T")


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in gpt2_bytes_to_unicode().items()}


@dataclass(eq=False)
class Vocabulary:
    key: str
    token_bytes: list[bytes]  # per id; b"" for special/control tokens
    special_ids: frozenset[int]
    kind: str  # "byte_level" | "sentencepiece" | "plain"
    # How the tokenizer cuts text into chunks that BPE (without dropout) encodes one by one
    # (``radixrt.fsm.canonical_split`` relies on it): "gpt2_regex": no normalizer and GPT-2's
    # ByteLevel pre-tokenizer (its regex, no prefix space); "llama3_regex" / "qwen2_regex": no
    # normalizer or NFC, then a Split on Llama 3's regex (Qwen2's: single digits) and a
    # ByteLevel without regex or prefix space; None: anything else.
    chunking: str | None = None
    added_texts: tuple[bytes, ...] = ()  # contents of added tokens (split out before chunking)
    # The tokenizer's own pre-tokenizer (text -> chunks), where ``chunking`` is set.
    pre_tokenize: Any = field(default=None, repr=False)
    # The tokenizer's own normalizer (text -> text), where ``chunking`` is set and it has one
    # (NFC); None: text is not normalized.
    normalize: Any = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _key_locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """The vocabulary-level table ``key`` (a trie, verdict tables, a library's tokenizer),
        built by ``build()`` on its first use: once, however many threads ask at the same time
        (each key has its own lock, so a long build does not hold up the others)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._locks_lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = build()
        return hit

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def spells(self, ids: list[int], data: bytes) -> bool:
        """Do the bytes of ``ids`` make exactly ``data``? (False for an id outside the
        vocabulary: a tokenizer whose output does not round-trip gets no say.)"""
        tb = self.token_bytes
        return all(0 <= i < len(tb) for i in ids) and b"".join(tb[i] for i in ids) == data


_vocabulary_cache: OrderedDict[str, Vocabulary] = OrderedDict()
_vocabulary_lock = threading.Lock()
_VOCABULARY_CACHE_SIZE = 8


def get_vocabulary(tokenizer) -> Vocabulary:
    """The (cached) byte vocabulary of a Hugging Face tokenizer."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    digest = hashlib.sha1("\x00".join(p if p is not None else "\x01" for p in pieces)
                          .encode("utf-8", "surrogatepass")).hexdigest()[:16]
    chunking = _chunking(tokenizer)
    normalizer = tokenizer.backend_tokenizer.normalizer if chunking else None
    key = f"{getattr(tokenizer, 'name_or_path', '')}:{len(pieces)}:{digest}"
    if chunking:
        key += f":{chunking}" + (":nfc" if normalizer is not None else "")
    with _vocabulary_lock:
        vocab = _vocabulary_cache.get(key)
        if vocab is not None:
            _vocabulary_cache.move_to_end(key)
            return vocab
    vocab = _build_vocabulary(tokenizer, pieces, key)
    vocab.chunking = chunking
    if chunking:
        vocab.pre_tokenize = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
        if normalizer is not None:
            vocab.normalize = normalizer.normalize_str
    with _vocabulary_lock:
        _vocabulary_cache[key] = vocab
        while len(_vocabulary_cache) > _VOCABULARY_CACHE_SIZE:
            _vocabulary_cache.popitem(last=False)
    return vocab


def _decoder_kind(tokenizer) -> tuple[str, bool]:
    """("byte_level" | "sentencepiece" | "plain", has_byte_fallback)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "plain", False
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    types = {d.get("type") for d in parts}
    byte_fallback = "ByteFallback" in types or bool((spec.get("model") or {}).get("byte_fallback"))
    if "ByteLevel" in types:
        return "byte_level", False
    metaspace = "Metaspace" in types or any(
        d.get("type") == "Replace" and (d.get("pattern") or {}).get("String") == "\u2581"
        for d in parts)
    if metaspace or byte_fallback:
        return "sentencepiece", byte_fallback
    if types - {None, "Fuse", "Strip"}:
        raise GrammarError(f"tokenizer decoder {sorted(t for t in types if t)} is not supported "
                           "for structured generation (need byte-level BPE or SentencePiece)")
    return "plain", False


# The Split patterns of the layouts ``canonical_split`` knows besides GPT-2's, exactly as a
# tokenizer.json writes them (Qwen2's takes one digit at a time).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}", 1)
_SPLIT_LAYOUTS = {LLAMA3_PATTERN: "llama3_regex", QWEN2_PATTERN: "qwen2_regex"}


def _chunking(tokenizer) -> str | None:
    """The chunking layout (see ``Vocabulary.chunking``) when the fast tokenizer's spec is
    exactly one of them, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
    except (AttributeError, ValueError):
        return None
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    if (normalizer is None and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) is True and pre.get("add_prefix_space") is False):
        return "gpt2_regex"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if normalizer not in (None, {"type": "NFC"}) or not isinstance(parts, list) or len(parts) != 2:
        return None
    split, byte_level = parts
    pattern = split.get("pattern") or {}
    if (split.get("type") == "Split" and set(pattern) == {"Regex"}
            and split.get("behavior") == "Isolated" and split.get("invert") is False
            and byte_level.get("type") == "ByteLevel" and byte_level.get("use_regex") is False
            and byte_level.get("add_prefix_space") is False):
        return _SPLIT_LAYOUTS.get(pattern["Regex"])
    return None


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _build_vocabulary(tokenizer, pieces: list[str | None], key: str) -> Vocabulary:
    kind, _ = _decoder_kind(tokenizer)
    special = _special_ids(tokenizer)
    added = {int(i): str(getattr(t, "content", t))
             for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            out.append(b"")
        elif i in added:
            out.append(added[i].encode("utf-8"))
        else:
            out.append(piece_bytes(piece, kind))
    return Vocabulary(key=key, token_bytes=out, special_ids=frozenset(special), kind=kind,
                      added_texts=tuple(sorted({t.encode("utf-8") for t in added.values()})))


def piece_bytes(piece: str, kind: str) -> bytes:
    if kind == "byte_level":
        try:
            return bytes(_UNICODE_TO_BYTE[c] for c in piece)
        except KeyError:
            return piece.encode("utf-8")
    if kind == "sentencepiece":
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.replace("\u2581", " ").encode("utf-8")
    return piece.encode("utf-8")
