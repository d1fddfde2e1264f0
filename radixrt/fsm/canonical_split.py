"""Canonical-token verdicts without a tokenizer call per token, where the chunking decides.

The canonical check (``CompiledGrammar._canonical_only``) asks, for a token ``t`` that ends right
before forced text ``F``, whether the tokenizer's first token of ``t + F`` is ``t``. At a string's
length limit that is thousands of tokens at once (every token of exactly the remaining length,
each followed by the closing quote and what the grammar forces after it), one tokenizer call
each. For the most common tokenizer layout the answer follows from a few facts about ``t``
computed once per vocabulary, and about ``F`` once per forced text.

The layout (``Vocabulary.chunking == "gpt2_regex"``): no normalizer, GPT-2's pre-tokenizer
(``ByteLevel`` with its regex, no prefix space) and a BPE model. Added tokens are split out of
the text first; then the regex ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` cuts the rest into chunks, scanning left to right, and
BPE encodes each chunk on its own, so the first token is the first token of the first chunk.
When neither ``t + F`` holds an added token nor a byte that is not a token of its own (then
BPE spells every chunk exactly, so the tokenizer's answer is never "no opinion"):

- ``t`` is more than one chunk on its own (the tokenizer's pre-tokenizer says so): its first
  chunk ends inside ``t``, and the regex's choice there looks at most one character past the
  chunk, so ``t + F`` has the same first chunk, whatever ``F`` is. (Except when ``t`` is a
  proper prefix of a contraction such as ``'r``, which ``F`` could complete: excluded.) The
  first token is ``encode(t)[0]``, which is shorter than ``t``: dropped.
- ``t`` ends with an ASCII letter and ``F`` starts with an ASCII non-letter (or digit and
  non-digit): no alternative matches across the boundary (a letter or digit run stops there, a
  contraction ends with a letter, the others hold no letters or digits), so the chunks of
  ``t + F`` are those of ``t`` then those of ``F``: the first token is ``encode(t)[0]``.
- ``t`` is one chunk of the punctuation alternative and ends with ASCII punctuation: the
  chunk runs on through ``F``'s leading ASCII punctuation ``H`` and stops at the next character
  (which must be an ASCII letter, digit or space, or the end of ``F``), so the first token is
  that of ``t + H``; ``H`` is the same for many forced texts (``","`` before the next key), so
  the verdict is cached per ``(t, H)`` for the vocabulary.
- Any other single-chunk token (ending with a space, a control or a non-ASCII character) when
  ``H`` is not empty: whatever the class of its last character, the chunks up to the end of
  ``H`` are the same in ``t + F`` and ``t + H`` (``H`` is punctuation: it joins a punctuation
  run or starts one, never a letter, digit or whitespace run, and its run ends where ``F``
  goes on with a letter, digit or space), so again the first token is that of ``t + H``.

Anything else (other tokenizers, non-ASCII at the boundary, added tokens nearby) is left to
the tokenizer. These are the tokenizer's own verdicts, not an approximation: the masks are
identical (tests/fsm/test_canonical_split.py compares them token by token).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from radixrt.fsm.utf8 import whole_chars_prefix
from radixrt.fsm.vocabulary import Vocabulary

# Per-token kinds.
_NONE, _LETTER, _DIGIT, _MULTI, _PUNCT, _PAIR = 0, 1, 2, 3, 4, 5
# ASCII character classes (of the regex): anything outside these is not decided here.
_C_LETTER, _C_DIGIT, _C_SPACE, _C_PUNCT, _C_OTHER = 1, 2, 3, 4, 0
_ASCII_CLASS = bytes(
    _C_LETTER if chr(c).isalpha() else _C_DIGIT if chr(c).isdigit() else
    _C_SPACE if c in (9, 10, 11, 12, 13, 32) else _C_PUNCT if 0x21 <= c <= 0x7E else _C_OTHER
    for c in range(128)) + bytes([_C_OTHER]) * 128
# Decided by kind (row) and the forced text's first class + 1 (column; 0: no rule there).
_DECIDES = np.zeros((6, 6), np.bool_)
_DECIDES[_MULTI, 1:] = True
_DECIDES[_LETTER, [1 + _C_DIGIT, 1 + _C_SPACE, 1 + _C_PUNCT]] = True
_DECIDES[_DIGIT, [1 + _C_LETTER, 1 + _C_SPACE, 1 + _C_PUNCT]] = True
_CONTRACTION_PREFIXES = {b"'", b"'r", b"'v", b"'l"}
_UNKNOWN = -3  # pair table: not asked yet
_MAX_HEADS = 256
# Punctuation runs that most often follow a token at a forced boundary in compact JSON (a
# string's closing quote and what comes after it), precomputed by ``warm``.
COMMON_HEADS = (b'"', b'","', b'",', b',"', b'"}', b'"]', b'"},', b'"}]', b'"}}', b'"]}',
                b'"},{"', b'":"', b'":', b':"', b":", b"-", b"}", b"]", b",", b".")


class SplitVerdicts:
    """Per vocabulary (``of``): each token's kind and own first token; per forced text, what
    the rules need to know about it."""

    def __init__(self, vocab: Vocabulary, encode_batch: Callable[[list[str]], list[list[int]]]):
        self.vocab = vocab
        self.encode_batch = encode_batch
        tb = vocab.token_bytes
        self.added = tuple(a for a in vocab.added_texts if a)
        singles = {b[0] for i, b in enumerate(tb)
                   if len(b) == 1 and i not in vocab.special_ids and b not in self.added}
        self.missing = frozenset(set(range(256)) - singles)  # bytes BPE might not spell
        self.kind = np.zeros(len(tb), np.int8)
        self.first = np.full(len(tb), -1, np.int64)
        ids, texts = [], []
        for i, b in enumerate(tb):
            if (not b or i in vocab.special_ids or b in _CONTRACTION_PREFIXES
                    or not self.missing.isdisjoint(b) or any(a in b for a in self.added)):
                continue
            try:
                texts.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                continue
            ids.append(i)
        if not texts:
            return
        for i, text, enc in zip(ids, texts, encode_batch(texts), strict=True):
            b = tb[i]
            self.first[i] = int(enc[0]) if enc and vocab.spells(enc, b) else -1
            cls = _ASCII_CLASS[b[-1]]
            if len(vocab.pre_tokenize(text)) > 1:
                self.kind[i] = _MULTI
            elif cls == _C_LETTER:
                self.kind[i] = _LETTER
            elif cls == _C_DIGIT:
                self.kind[i] = _DIGIT
            elif cls == _C_PUNCT:
                self.kind[i] = _PUNCT
            else:  # ends with a space, a control character or a non-ASCII character
                self.kind[i] = _PAIR
        self._tails: dict[int, list[bytes]] = {}  # added-token tails by their first byte
        for a in self.added:
            for k in range(1, len(a)):
                self._tails.setdefault(a[k], []).append(a[k:])
        self._forced: dict[bytes, tuple[int, bytes] | None] = {}
        # H -> per token id, the first token of t + H (UNKNOWN until asked); bounded number of
        # heads (_MAX_HEADS, then forgotten: only speed is lost).
        self._pairs: dict[bytes, np.ndarray] = {}
        self._pair_kind = (self.kind == _PUNCT) | (self.kind == _PAIR)

    @classmethod
    def of(cls, vocab: Vocabulary, encode_batch: Callable[[list[str]], list[list[int]]]
           ) -> SplitVerdicts | None:
        """The vocabulary's table (built on first use), or None when its tokenizer is not of the
        layout the rules are proven for."""
        if vocab.chunking != "gpt2_regex" or vocab.pre_tokenize is None:
            return None
        return vocab.cached("split_verdicts", lambda: cls(vocab, encode_batch))

    def warm(self, heads: tuple[bytes, ...] = COMMON_HEADS) -> int:
        """Precompute the punctuation tokens' verdicts in front of ``heads``; returns how many
        were computed."""
        done = 0
        for h in heads:
            table = self._pair_table(h)
            done += self._fill(table, np.flatnonzero(self._pair_kind & (table == _UNKNOWN)), h)
        return done

    def _pair_table(self, head: bytes) -> np.ndarray:
        table = self._pairs.get(head)
        if table is None:
            if len(self._pairs) >= _MAX_HEADS:
                self._pairs.clear()
            table = self._pairs[head] = np.full(len(self.first), _UNKNOWN, np.int64)
        return table

    def _fill(self, table: np.ndarray, ids: np.ndarray, head: bytes) -> int:
        """Ask the tokenizer for the first token of ``t + head`` for each of ``ids``."""
        if not len(ids):
            return 0
        tb = self.vocab.token_bytes
        encs = self.encode_batch([(tb[t] + head).decode("utf-8") for t in ids.tolist()])
        table[ids] = [int(enc[0]) for enc in encs]
        return len(ids)

    def forced_info(self, forced: bytes) -> tuple[int, bytes] | None:
        """For the bytes forced after a token (as the canonical check reads them): the ASCII
        class of their first character and their leading ASCII punctuation run ``H`` (all of
        them, or up to an ASCII letter, digit or space; ``b"?"`` when something else follows
        it); None when no rule may be used in front of them."""
        if forced in self._forced:
            return self._forced[forced]
        info = None
        text = forced[:whole_chars_prefix(forced)]
        if text and not self._added_near(text) and self.missing.isdisjoint(text):
            classes = [_ASCII_CLASS[c] for c in text]
            k = 0
            while k < len(classes) and classes[k] == _C_PUNCT:
                k += 1
            ends_run = k == len(classes) or classes[k] in (_C_LETTER, _C_DIGIT, _C_SPACE)
            info = (classes[0], text[:k] if ends_run else b"?")
        if len(self._forced) > 4096:
            self._forced.clear()
        self._forced[forced] = info
        return info

    def _added_near(self, forced: bytes) -> bool:
        """Could an added token occur in ``forced`` or across the boundary in front of it?"""
        if any(a in forced for a in self.added):
            return True
        return any(forced.startswith(t) for t in self._tails.get(forced[0], ()))

    def verdicts(self, ids: np.ndarray, infos: list[tuple[int, bytes] | None],
                 which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``ids``, token ``j`` followed by the forced text described by
        ``infos[which[j]]``: (decided, drop) boolean arrays; ``drop`` is meaningful where
        ``decided``: the tokenizer would start ``t + F`` with another token."""
        column = np.asarray([1 + i[0] if i else 0 for i in infos], np.int64)[which]
        kind = self.kind[ids]
        first = self.first[ids]
        decided = _DECIDES[kind, column]
        punct = (column > 0) & ((kind == _PUNCT) | (kind == _PAIR))
        if punct.any():
            first = first.copy()
            for w, info in enumerate(infos):
                if info is None or info[1] == b"?":
                    continue
                head = info[1]
                sel = punct & (which == w)
                if not head:  # only a token ending in ASCII punctuation ends its chunk there
                    sel &= kind == _PUNCT
                sel = np.flatnonzero(sel)
                if not len(sel):
                    continue
                decided[sel] = True
                if head:
                    table = self._pair_table(head)
                    toks = ids[sel]
                    self._fill(table, np.unique(toks[table[toks] == _UNKNOWN]), head)
                    first[sel] = table[toks]
        drop = decided & (first != -1) & (first != ids)
        return decided, drop
