"""A compiled grammar: its byte DFA bound to a vocabulary, with lazily cached token masks.

Masks are computed on the first visit of a DFA state (``TokenTrie.allowed_tokens``) and cached
as packed int32 rows; later visits are a dict lookup and a copy into the batch bitmask. EOS ids
are allowed exactly in accepting states. All matchers of one grammar share the cache.

Canonical tokens (``canonical=True``, the default when an ``encode_batch`` is given): where a
token would end right before text the grammar forces (a JSON key, ``":"``, a closing ``"}``),
it is allowed only if the tokenizer itself would start ``token + forced text`` with that
token. Masked decoding otherwise lets a model spell forced text in pieces no tokenizer
produces (``{`` then ``"`` where ``{"`` is one token), which pushes it off the distribution it
was trained on and makes its output token ids differ from ``encode(output_text)``. The filter
never empties a mask (the tokenizer's own first token is always among the survivors), so it
only chooses between spellings of the same text and never changes what text is possible.

The same masks cannot see a split the model makes inside free text (``"AD"`` then ``"DR"``
where the tokenizer writes ``"ADDR"``): that depends on the previous token, not on the DFA
state. ``noncanonical_after(prev, candidates)`` answers it pair by pair (the tokenizer's own
encoding of the two tokens' text is not those two tokens), cached per vocabulary; the
scheduler draws again without such tokens (``GrammarManager.canonical_bans``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from radixrt.fsm.bitmask import bitmask_words
from radixrt.fsm.budget import ClosingBudget
from radixrt.fsm.canonical_split import SplitVerdicts
from radixrt.fsm.dfa import ByteDFA
from radixrt.fsm.token_index import TokenTrie, pack_token_ids
from radixrt.fsm.utf8 import whole_chars_prefix
from radixrt.fsm.vocabulary import Vocabulary

# Bytes of forced text considered after a token by the canonical check: enough for the
# tokenizer's first token to be final (longer tokens and pre-tokenizer chunks are shorter).
CANONICAL_LOOKAHEAD_BYTES = 48
# Entries per per-vocabulary cache of tokenizer answers (first tokens, token pairs).
_VERDICT_CACHE_LIMIT = 1 << 18


class CompiledGrammar:
    def __init__(self, kind: str, spec: str, dfa: ByteDFA, vocab: Vocabulary, vocab_size: int,
                 eos_token_ids: tuple[int, ...], encode: Callable[[str], list[int]] | None = None,
                 encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
                 canonical: bool = True):
        self.kind = kind
        self.spec = spec
        self.dfa = dfa
        self.vocab = vocab
        self.trie = TokenTrie.of(vocab)
        self.vocab_size = vocab_size
        self.num_words = bitmask_words(vocab_size)
        self.eos_token_ids = tuple(e for e in eos_token_ids if 0 <= e < vocab_size)
        self.encode = encode
        self.encode_batch = encode_batch
        self.canonical = canonical and encode_batch is not None
        self._table_flat = dfa.table.reshape(-1).astype(np.int64)
        self._token_bytes = vocab.token_bytes
        live = dfa.table != 0
        num_live = live.sum(axis=1)
        self._accepting = dfa.accepting.tolist()
        self._final = (dfa.accepting & (num_live == 0)).tolist()
        forced = np.where((num_live == 1) & ~dfa.accepting, live.argmax(axis=1), -1)
        forced[0] = -1
        self._forced_np = forced
        self._has_forced = forced >= 0  # per state: something is forced after it
        self._forced = forced.tolist()
        self._masks: dict[int, np.ndarray] = {}
        self._mask_tensors: dict[int, torch.Tensor] = {}  # same memory, as torch tensors
        self._lock = threading.Lock()
        self._closing: ClosingBudget | None = None

    @property
    def start_state(self) -> int:
        return self.dfa.start

    # ------------------------------------------------------------ stepping
    def next_state(self, state: int, token_id: int) -> int:
        """The state after ``token_id`` (0 = rejected). EOS and special tokens are not bytes:
        they return 0 here (the matcher handles EOS)."""
        data = self._token_bytes[token_id] if 0 <= token_id < len(self._token_bytes) else b""
        if not data:
            return 0
        return self.walk(state, data)

    def walk(self, state: int, data: bytes) -> int:
        t = self._table_flat
        for b in data:
            state = int(t[state * 256 + b])
            if state == 0:
                return 0
        return state

    def is_accepting(self, state: int) -> bool:
        return self._accepting[state]

    def is_final(self, state: int) -> bool:
        """Accepting with no way to continue: only EOS can follow."""
        return self._final[state]

    def forced_bytes(self, state: int, limit: int = 4096) -> bytes:
        """The bytes the grammar forces from ``state``: follow states that are not accepting
        and have exactly one live outgoing byte."""
        out = bytearray()
        forced = self._forced
        t = self._table_flat
        while len(out) < limit:
            b = forced[state]
            if b < 0:
                break
            out.append(b)
            state = int(t[state * 256 + b])
        return bytes(out)

    def live_bytes(self, state: int) -> list[int]:
        return np.flatnonzero(self.dfa.table[state]).tolist()

    # ------------------------------------------------------------ masks
    def mask(self, state: int) -> np.ndarray:
        """Packed int32 [num_words] mask of the tokens allowed in ``state``."""
        m = self._masks.get(state)
        if m is None:
            m = self._compute_mask(state)
            with self._lock:
                self._masks[state] = m
        return m

    def has_mask(self, state: int) -> bool:
        return state in self._masks

    def mask_tensor(self, state: int) -> torch.Tensor:
        """``mask(state)`` as an int32 CPU tensor (shares memory; do not modify). ``state`` -1
        is the mask after EOS (only EOS)."""
        t = self._mask_tensors.get(state)
        if t is None:
            t = torch.from_numpy(self.eos_only_mask() if state == -1 else self.mask(state))
            self._mask_tensors[state] = t
        return t

    @property
    def closing(self) -> ClosingBudget:
        """Distances to an accepting end and the masks that keep within a token budget
        (``radixrt.fsm.budget``), built on first use."""
        if self._closing is None:
            with self._lock:
                if self._closing is None:
                    self._closing = ClosingBudget(self)
        return self._closing

    def budget_mask(self, state: int, tokens_left: int) -> np.ndarray | None:
        """The mask at ``state`` restricted to tokens after which an accepting end still fits
        in ``tokens_left`` tokens (this one included); None when that restricts nothing."""
        return self.closing.budget_mask(state, tokens_left)

    def eos_only_mask(self) -> np.ndarray:
        """The mask after EOS was accepted: only EOS again."""
        m = self._masks.get(-1)
        if m is None:
            m = self._masks[-1] = pack_token_ids(np.asarray(self.eos_token_ids, np.int64),
                                                 self.num_words)
        return m

    def allowed_token_ids(self, state: int) -> np.ndarray:
        if not state:
            ids = np.zeros(0, np.int64)
        elif self.canonical:
            ids, ends = self.trie.allowed_tokens(self._table_flat, state, with_states=True)
            if len(ids) and ids[-1] >= self.vocab_size:  # ids are sorted
                in_vocab = ids < self.vocab_size
                ids, ends = ids[in_vocab], ends[in_vocab]
            ids = self._canonical_only(ids, ends)
        else:
            ids = self.trie.allowed_tokens(self._table_flat, state)
            ids = ids[ids < self.vocab_size]
        if state and self._accepting[state] and self.eos_token_ids:
            # ids is sorted: insert the EOS ids it lacks (np.union1d re-sorts all of it).
            eos = np.unique(np.asarray(self.eos_token_ids, np.int64))
            pos = np.searchsorted(ids, eos)
            present = np.zeros(len(eos), np.bool_)
            inside = pos < len(ids)
            present[inside] = ids[pos[inside]] == eos[inside]
            ids = np.insert(ids, pos[~present], eos[~present])
        return ids

    def _canonical_only(self, ids: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Drop the tokens that end right before forced text which the tokenizer would not
        start with them (see the module docstring); never all of them."""
        check = np.flatnonzero(np.take(self._has_forced, ends))
        if not check.size:
            return ids
        dropped = np.zeros(0, np.int64)
        split = SplitVerdicts.of(self.vocab, self.encode_batch) if len(check) > 16 else None
        if split is not None:  # the verdicts the tokenizer's chunking settles without a call
            uniq, inv = _unique_states(ends[check], len(self._forced))
            infos = [split.forced_info(self.forced_bytes(e, CANONICAL_LOOKAHEAD_BYTES))
                     for e in uniq.tolist()]
            decided, drop = split.verdicts(ids[check], infos, inv)
            dropped = check[drop]
            check = check[~decided]
        tb = self._token_bytes
        texts: list[tuple[int, str]] = []
        forced: dict[int, bytes] = {}
        for j in check.tolist():
            tok = tb[int(ids[j])]
            end = int(ends[j])
            if end not in forced:
                forced[end] = self.forced_bytes(end, CANONICAL_LOOKAHEAD_BYTES)
            data = tok + forced[end]
            cut = whole_chars_prefix(data)
            if cut > len(tok):  # something forced after the token, in whole characters
                texts.append((j, data[:cut].decode("utf-8")))
        # -1: the tokenizer does not reproduce the text byte for byte (a SentencePiece dummy
        # prefix, say): no opinion, keep every token.
        first = self._tokenizer_verdicts(
            "first_token", {text: text for _, text in texts},
            lambda _, text, enc: int(enc[0]) if enc and self.vocab.spells(enc, text.encode()) else -1)
        slow = [j for j, text in texts if first[text] not in (-1, int(ids[j]))]
        if slow:
            dropped = np.concatenate((dropped, np.asarray(slow, np.int64)))
        if not len(dropped) or len(dropped) == len(ids):
            return ids
        return np.delete(ids, dropped)

    def noncanonical_after(self, prev: int, candidates: list[int]) -> list[int]:
        """The ``candidates`` that the tokenizer would not write right after ``prev``: the
        encoding of their joined text is not ``[prev, candidate]`` (``"AD"`` + ``"DR"`` where
        it writes ``"ADDR"``). No opinion (kept) when a token has no bytes (EOS, specials),
        the joined bytes are not whole UTF-8 characters, or the tokenizer does not reproduce
        them byte for byte. Empty when canonical tokens are off."""
        if not self.canonical:
            return []
        tb = self._token_bytes
        n = len(tb)
        if not 0 <= prev < n or not tb[prev]:
            return []
        texts: dict[int, str] = {}  # key prev * n + t
        for t in candidates:
            if 0 <= t < n and tb[t]:
                try:
                    texts[prev * n + t] = (tb[prev] + tb[t]).decode("utf-8")
                except UnicodeDecodeError:  # part of a character: the pair alone says nothing
                    pass
        ok = self._tokenizer_verdicts(
            "pair_ok", texts,
            lambda key, text, enc: enc == [prev, key - prev * n] or not self.vocab.spells(enc, text.encode()))
        return [t for t in candidates if not ok.get(prev * n + t, True)]

    def _tokenizer_verdicts(self, cache_name: str, texts: dict, judge: Callable) -> dict:
        """``judge(key, text, tokenizer's encoding of text)`` for every ``key: text``, through
        the vocabulary's cache ``cache_name``. That cache is shared by every grammar of the
        vocabulary and their threads: each key is read once and no entry is relied on to stay
        there. Misses are encoded in one batch."""
        cache: dict = self.vocab.cached(cache_name, dict)
        out = {}
        for key in texts:
            hit = cache.get(key)
            if hit is not None:
                out[key] = hit
        missing = [key for key in texts if key not in out]
        if missing:
            encodings = self.encode_batch([texts[key] for key in missing])
            for key, enc in zip(missing, encodings, strict=True):
                out[key] = judge(key, texts[key], enc)
            if len(cache) > _VERDICT_CACHE_LIMIT:
                cache.clear()
            cache.update((key, out[key]) for key in missing)
        return out

    def _compute_mask(self, state: int) -> np.ndarray:
        return pack_token_ids(self.allowed_token_ids(state), self.num_words)


def _unique_states(states: np.ndarray, num_states: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(states, return_inverse=True)`` for DFA states (0 <= s < num_states), by a
    table over the states instead of a sort of the thousands of tokens that share a few."""
    seen = np.zeros(num_states, np.bool_)
    seen[states] = True
    uniq = np.flatnonzero(seen)
    index = np.empty(num_states, np.int64)
    index[uniq] = np.arange(len(uniq))
    return uniq, index[states]
