"""Canonical-token verdicts without a tokenizer call per token, where the chunking decides.

The canonical check (``CompiledGrammar._canonical_only``) asks, for a token ``t`` that ends right
before forced text ``F``, whether the tokenizer's first token of ``t + F`` is ``t``. At a string's
length limit that is thousands of tokens at once (every token of exactly the remaining length,
each followed by the closing quote and what the grammar forces after it), one tokenizer call
each. For the most common tokenizer layout the answer follows from a few facts about ``t``
computed once per vocabulary, and about ``F`` once per forced text.

The GPT-2 layout (``Vocabulary.chunking == "gpt2_regex"``): no normalizer, GPT-2's pre-tokenizer
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

The Llama 3 layouts (``"llama3_regex"``, ``"qwen2_regex"``): no normalizer or NFC; a ``Split``
(isolated) on the regex

    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|
     ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+

(one line; Qwen2: ``\\p{N}`` for ``\\p{N}{1,3}``), then ``ByteLevel`` without its regex or a
prefix space, and a BPE model. Call the alternatives CONTRACTION, LETTERS (one character of
``X = [^\\r\\n\\p{L}\\p{N}]`` may start them), DIGITS, PUNCT (``P = [^\\s\\p{L}\\p{N}]``),
NEWLINES, SPACES and SPACE. Every character starts a match of one of them, so the chunks tile
the text and the first chunk is the match at position 0: the first alternative that matches
there. Whether BPE ignores merges (Llama 3) does not matter: every token the rules use comes
from the tokenizer. What an alternative's outcome at 0 depends on: CONTRACTION, up to 3
characters (matched case-insensitively, with Unicode case folding: ``'\u017f`` is one); LETTERS,
its match and the character after it, and when it fails, characters 0 and 1 (``X`` then a
letter, or a letter); DIGITS and PUNCT, the match and the character after it (PUNCT: ``" "?``,
the ``P`` run, then the CR/LF run: it stops at the first character that is not CR/LF); NEWLINES
and SPACES, the whole whitespace run at 0 (NEWLINES ends after its last CR/LF, SPACES gives the
run less its last character when something follows it, the whole run at the end of the text).
Hence, by the same token conditions (no added token, no missing byte):

- more than one chunk (so two characters or more): the first chunk's outcome is settled inside
  ``t`` unless ``t`` is a proper prefix of a contraction (now also ``'R``, ``'V``, ``'L``:
  excluded) or the whitespace run at 0 runs to the end of ``t``, that is ``t`` is all whitespace
  (then NEWLINES matched, and a whitespace ``F`` with a CR/LF can lengthen it). So
  ``encode(t)[0]``, for any ``F``, except all-whitespace tokens (``str.isspace`` of every
  character, a superset of the regex's ``\\s``): for those only when ``F`` starts with an ASCII
  letter, digit or punctuation, which ends the run at the same place as the end of ``t`` does.
- ``t`` ends with an ASCII letter and ``F`` starts with an ASCII digit, space or punctuation (or
  ``t`` ends with a digit and ``F`` starts with a letter, space or punctuation): a chunk holding
  that last letter is a letter run or a contraction (all its characters after ``'`` are
  letters), so it ends at the boundary (a digit: a digit group, which ``X`` excludes, ends there
  too); a first chunk that ends earlier is settled inside ``t`` (a one-character ``t`` is the
  letter itself, and a whitespace run at 0 stops at the letter). So the first token is
  ``encode(t)[0]``.
- ``t`` is one chunk ending in ASCII punctuation: only PUNCT ends so, with no CR/LF after its
  run (``t = " "?P+``). If ``t`` has two or more characters, character 1 is in ``P``, so
  CONTRACTION and LETTERS fail at 0 whatever follows and PUNCT runs on through ``F``'s leading
  ASCII punctuation ``H`` and then the CR/LF run ``R`` after it; the head ``H + R`` ends where
  ``H`` is followed by an ASCII letter, digit or space (or the end): then the chunk is
  ``t + H + R``, exactly as in ``t + H + R`` alone, and the first token is that of
  ``t + H + R`` (cached per head, as above). A one-character ``t`` is decided the same way,
  except before an ASCII letter (``X`` + letters: a letter chunk across the boundary).
- Any other single-chunk token (ending in whitespace, a control or a non-ASCII character) when
  ``H`` is not empty: in ``t + F`` and ``t + H + R`` the same first chunk. If it ends before the
  end of ``t + H + R``, what settled it lies inside (character 1 is in ``t`` or is ``H[0]``; a
  whitespace run at 0 stops at ``H[0]`` at the latest). If it is all of ``t + H + R``, it holds
  punctuation and ends in punctuation or CR/LF: a PUNCT match, which stops at the same place in
  ``t + F``.

NFC (Qwen2): a token is used only when the tokenizer's normalizer leaves its text as it is,
and a forced text only when it leaves that as it is and it starts with an ASCII character.
ASCII characters have combining class 0 and are never the second character of a canonical
composition, so NFC never changes text across the boundary in front of one: ``t + F`` and
``t + H + R`` are left as they are, and the rules above apply to the text as written.

Anything else (other tokenizers, non-ASCII at the boundary, added tokens nearby) is left to
the tokenizer. These are the tokenizer's own verdicts, not an approximation: the masks are
identical (tests/fsm/test_canonical_split.py compares them token by token for SmolLM2,
tests/fsm/test_canonical_split_llama3.py for Llama 3 and Qwen2 layouts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radixrt.fsm.utf8 import whole_chars_prefix
from radixrt.fsm.vocabulary import Vocabulary

# Per-token kinds (_PUNCT1, _WSMULTI: the Llama 3 layouts only).
_NONE, _LETTER, _DIGIT, _MULTI, _PUNCT, _PAIR, _PUNCT1, _WSMULTI = range(8)
# ASCII character classes (of the regex): anything outside these is not decided here.
_C_LETTER, _C_DIGIT, _C_SPACE, _C_PUNCT, _C_OTHER = 1, 2, 3, 4, 0
_ASCII_CLASS = bytes(
    _C_LETTER if chr(c).isalpha() else _C_DIGIT if chr(c).isdigit() else
    _C_SPACE if c in (9, 10, 11, 12, 13, 32) else _C_PUNCT if 0x21 <= c <= 0x7E else _C_OTHER
    for c in range(128)) + bytes([_C_OTHER]) * 128


@dataclass(frozen=True, eq=False)
class _Rules:
    """What differs between the layouts (see the module docstring)."""
    # Decided by kind (row) and the forced text's first class + 1 (column; 0: no rule there).
    decides: np.ndarray
    contraction_prefixes: frozenset[bytes]
    # The punctuation alternative takes the CR/LF run after it: part of the head.
    newline_heads: bool
    # Kinds _PUNCT1 and _WSMULTI are told apart (else _PUNCT and _MULTI).
    llama_kinds: bool


def _decides(llama: bool) -> np.ndarray:
    table = np.zeros((8, 6), np.bool_)
    table[_MULTI, 1:] = True
    table[_LETTER, [1 + _C_DIGIT, 1 + _C_SPACE, 1 + _C_PUNCT]] = True
    table[_DIGIT, [1 + _C_LETTER, 1 + _C_SPACE, 1 + _C_PUNCT]] = True
    if llama:
        table[_WSMULTI, [1 + _C_LETTER, 1 + _C_DIGIT, 1 + _C_PUNCT]] = True
    return table


_GPT2 = _Rules(_decides(False), frozenset({b"'", b"'r", b"'v", b"'l"}), False, False)
_LLAMA3 = _Rules(_decides(True), frozenset({b"'", b"'r", b"'R", b"'v", b"'V", b"'l", b"'L"}),
                 True, True)
RULES = {"gpt2_regex": _GPT2, "llama3_regex": _LLAMA3, "qwen2_regex": _LLAMA3}
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
        self.rules = rules = RULES[vocab.chunking]
        normalize = vocab.normalize
        tb = vocab.token_bytes
        self.added = tuple(a for a in vocab.added_texts if a)
        singles = {b[0] for i, b in enumerate(tb)
                   if len(b) == 1 and i not in vocab.special_ids and b not in self.added}
        self.missing = frozenset(set(range(256)) - singles)  # bytes BPE might not spell
        self.kind = np.zeros(len(tb), np.int8)
        self.first = np.full(len(tb), -1, np.int64)
        ids, texts = [], []
        for i, b in enumerate(tb):
            if (not b or i in vocab.special_ids or b in rules.contraction_prefixes
                    or not self.missing.isdisjoint(b) or any(a in b for a in self.added)):
                continue
            try:
                text = b.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if normalize is not None and normalize(text) != text:
                continue  # the tokenizer encodes other text than the token's
            texts.append(text)
            ids.append(i)
        if not texts:
            return
        for i, text, enc in zip(ids, texts, encode_batch(texts), strict=True):
            b = tb[i]
            self.first[i] = int(enc[0]) if enc and vocab.spells(enc, b) else -1
            cls = _ASCII_CLASS[b[-1]]
            if len(vocab.pre_tokenize(text)) > 1:
                # (str.isspace holds for every character of the regex's \s, and a few more)
                self.kind[i] = _WSMULTI if rules.llama_kinds and text.isspace() else _MULTI
            elif cls == _C_LETTER:
                self.kind[i] = _LETTER
            elif cls == _C_DIGIT:
                self.kind[i] = _DIGIT
            elif cls == _C_PUNCT:
                self.kind[i] = _PUNCT1 if rules.llama_kinds and len(text) == 1 else _PUNCT
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
        self._pair_kind = (self.kind == _PUNCT) | (self.kind == _PAIR) | (self.kind == _PUNCT1)

    @classmethod
    def of(cls, vocab: Vocabulary, encode_batch: Callable[[list[str]], list[list[int]]]
           ) -> SplitVerdicts | None:
        """The vocabulary's table (built on first use), or None when its tokenizer is not of the
        layout the rules are proven for."""
        if vocab.chunking not in RULES or vocab.pre_tokenize is None:
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
        class of their first character and their head: the leading ASCII punctuation run ``H``
        (all of them, or up to an ASCII letter, digit or space; ``b"?"`` when something else
        follows it), in the Llama 3 layouts with the CR/LF run right after ``H``; None when no
        rule may be used in front of them."""
        if forced in self._forced:
            return self._forced[forced]
        info = None
        text = forced[:whole_chars_prefix(forced)]
        if (text and not self._added_near(text) and self.missing.isdisjoint(text)
                and self._normalized(text)):
            classes = [_ASCII_CLASS[c] for c in text]
            k = 0
            while k < len(classes) and classes[k] == _C_PUNCT:
                k += 1
            ends_run = k == len(classes) or classes[k] in (_C_LETTER, _C_DIGIT, _C_SPACE)
            if ends_run and self.rules.newline_heads:
                while k < len(text) and text[k] in b"\r\n":
                    k += 1
            info = (classes[0], text[:k] if ends_run else b"?")
        if len(self._forced) > 4096:
            self._forced.clear()
        self._forced[forced] = info
        return info

    def _normalized(self, forced: bytes) -> bool:
        """Does the tokenizer's normalizer (if any) leave ``t + forced`` as it is, for every
        token ``t`` it leaves as it is? (Yes when it leaves ``forced`` as it is and that starts
        with an ASCII character: NFC never changes text across such a boundary.)"""
        if self.vocab.normalize is None:
            return True
        if forced[0] >= 0x80:
            return False
        text = forced.decode("utf-8")
        return self.vocab.normalize(text) == text

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
        decided = self.rules.decides[kind, column]
        punct = (column > 0) & ((kind == _PUNCT) | (kind == _PAIR) | (kind == _PUNCT1))
        if punct.any():
            first = first.copy()
            for w, info in enumerate(infos):
                if info is None or info[1] == b"?":
                    continue
                head = info[1]
                sel = punct & (which == w)
                if not head:  # only a token ending in ASCII punctuation ends its chunk there
                    # (one punctuation character and a letter: a letter chunk, Llama 3)
                    sel &= (kind == _PUNCT) | ((kind == _PUNCT1) & (info[0] != _C_LETTER))
                elif info[0] != _C_PUNCT:  # a head of CR/LF only (Llama 3): not after a space
                    sel &= kind != _PAIR
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
