"""Unicode code point ranges as UTF-8 byte-range sequences (the alphabet of every DFA is bytes).

A range of code points of one encoded length is split until every byte position ranges
independently, the way UTF-8 range compilers usually do it (Russ Cox's utf8 ranges). Surrogates
(U+D800..U+DFFF) are not encodable and are always dropped.
"""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
_LENGTH_LIMITS = ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF))

ByteRange = tuple[int, int]


def utf8_sequences(lo: int, hi: int) -> list[list[ByteRange]]:
    """Byte-range sequences whose union is exactly the UTF-8 encodings of code points lo..hi."""
    out: list[list[ByteRange]] = []
    for a, b in _without_surrogates(lo, hi):
        for llo, lhi in _LENGTH_LIMITS:
            x, y = max(a, llo), min(b, lhi)
            if x <= y:
                _split(x, y, out)
    return out


def _without_surrogates(lo: int, hi: int) -> list[tuple[int, int]]:
    s_lo, s_hi = SURROGATES
    parts = []
    if lo < s_lo:
        parts.append((lo, min(hi, s_lo - 1)))
    if hi > s_hi:
        parts.append((max(lo, s_hi + 1), hi))
    return [(a, b) for a, b in parts if a <= b]


def _split(lo: int, hi: int, out: list[list[ByteRange]]) -> None:
    """lo and hi have the same encoded length."""
    n = len(chr(lo).encode())
    if n == 1:
        out.append([(lo, hi)])
        return
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    a, b = chr(lo).encode(), chr(hi).encode()
    out.append([(a[i], b[i]) for i in range(n)])


def whole_chars_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` made of whole UTF-8 characters (a byte string
    may end inside a character: tokens and forced runs often do)."""
    for cut in range(len(data), max(len(data) - 4, 0) - 1, -1):
        try:
            data[:cut].decode("utf-8")
            return cut
        except UnicodeDecodeError:
            continue
    return 0
