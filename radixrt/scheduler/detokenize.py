"""Incremental detokenization that never emits half a UTF-8 character, and stop strings."""

from __future__ import annotations

import re


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces.

    Keeps a short window of tokens before the unread ones so that tokenizers whose decode
    depends on context (SentencePiece leading spaces, byte-level merges) give the same text as
    decoding the whole sequence. A piece ending in U+FFFD (an incomplete UTF-8 sequence) is
    held back until the next token completes it.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.spaces = spaces_between_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip,
                                     spaces_between_special_tokens=self.spaces)

    def add(self, new_ids: list[int]) -> str:
        """Append tokens; return the newly finished text (possibly empty)."""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix_text) and not full.endswith("\ufffd"):
            piece = full[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += piece
            return piece
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (may contain U+FFFD)."""
        rest = self._decode(self.ids[self.prefix_offset:])
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        piece = rest[len(prefix_text):]
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += piece
        return piece


def find_stop(text: str, stops: list[str], start: int) -> int:
    """Index in ``text`` where the earliest stop string begins, searching matches that end at
    or after ``start`` (new text); -1 if none."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


def find_stop_regex(text: str, patterns: list[str], start: int) -> str | None:
    """The earliest non-empty match of any pattern in ``text`` that ends after ``start`` (so it
    was not complete before the newest piece arrived), or None."""
    best: re.Match | None = None
    for pattern in patterns:
        for m in re.finditer(pattern, text):
            if m.end() > start and m.end() > m.start():
                if best is None or m.start() < best.start():
                    best = m
                break
    return None if best is None else best.group(0)


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (not yet safe to
    stream)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
