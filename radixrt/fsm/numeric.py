"""Exact regexes for bounded integers and decimal numbers (JSON number syntax).

Integers: the classic digit-range construction (split by digit count, then by the first digit
where the bounds differ). Decimals: a bound ``x >= a`` is "integer part > A, or integer part == A
and fraction >= the fraction of a", where fractions compare as digit strings padded with zeros.
Bounded numbers are generated without an exponent (a sound subset of JSON numbers).
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.automaton import register_constant
from radixrt.fsm.regex_ast import Node

DIGIT = ra.Chars(((0x30, 0x39),))
DIGITS = ra.star(DIGIT)
NONZERO = ra.Chars(((0x31, 0x39),))
FRACTION = ra.cat(ra.lit("."), ra.plus(DIGIT))
UNSIGNED_INT = ra.alt(ra.lit("0"), ra.cat(NONZERO, DIGITS))
INTEGER = ra.cat(ra.opt(ra.lit("-")), UNSIGNED_INT)
NUMBER = register_constant(ra.cat(INTEGER, ra.opt(FRACTION), ra.opt(
    ra.cat(ra.char_set("eE"), ra.opt(ra.char_set("+-")), ra.plus(DIGIT)))))
PLAIN_NUMBER = register_constant(ra.cat(INTEGER, ra.opt(FRACTION)))  # no exponent


def _digit_range(lo: int, hi: int) -> Node:
    return ra.chars([(0x30 + lo, 0x30 + hi)]) if lo <= hi else ra.NOTHING


def _same_length(lo: str, hi: str) -> Node:
    """Digit strings of len(lo) == len(hi) between lo and hi (inclusive, lo <= hi)."""
    if lo == hi:
        return ra.lit(lo)
    k = 0
    while lo[k] == hi[k]:
        k += 1
    prefix = ra.lit(lo[:k]) if k else ra.EMPTY
    rest = len(lo) - k - 1
    a, b = int(lo[k]), int(hi[k])
    if lo[k + 1:] == "0" * rest and hi[k + 1:] == "9" * rest:
        return ra.cat(prefix, _digit_range(a, b), ra.rep(DIGIT, rest, rest))
    parts = [ra.cat(ra.lit(lo[k]), _same_length(lo[k + 1:], "9" * rest))]
    if b - a >= 2:
        parts.append(ra.cat(_digit_range(a + 1, b - 1), ra.rep(DIGIT, rest, rest)))
    parts.append(ra.cat(ra.lit(hi[k]), _same_length("0" * rest, hi[k + 1:])))
    return ra.cat(prefix, ra.alt(*parts))


def unsigned_range(lo: int, hi: int | None) -> Node:
    """Non-negative integers lo..hi written without leading zeros (hi None = unbounded)."""
    lo = max(lo, 0)
    if hi is not None and hi < lo:
        return ra.NOTHING
    lo_s = str(lo)
    if hi is not None and len(str(hi)) == len(lo_s):
        return _same_length(lo_s, str(hi))
    parts = [_same_length(lo_s, "9" * len(lo_s))]  # as many digits as lo
    if hi is None:  # any longer number
        parts.append(ra.cat(NONZERO, ra.rep(DIGIT, len(lo_s), None)))
        return ra.alt(*parts)
    hi_s = str(hi)
    if len(hi_s) - len(lo_s) >= 2:  # every number with a digit count strictly in between
        parts.append(ra.cat(NONZERO, ra.rep(DIGIT, len(lo_s), len(hi_s) - 2)))
    parts.append(_same_length("1" + "0" * (len(hi_s) - 1), hi_s))
    return ra.alt(*parts)


def integer_range(lo: int | None, hi: int | None) -> Node:
    """Integers lo..hi (either side None = unbounded), canonical JSON form (no ``-0``)."""
    if lo is not None and hi is not None and lo > hi:
        return ra.NOTHING
    parts = []
    if lo is None or lo < 0:  # negatives -1 .. lo
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        if neg_hi is None or neg_lo <= neg_hi:
            parts.append(ra.cat(ra.lit("-"), unsigned_range(neg_lo, neg_hi)))
    if hi is None or hi >= 0:
        parts.append(unsigned_range(max(lo or 0, 0), hi))
    return ra.alt(*parts)


# ---------------------------------------------------------------- decimals


def _split(d: Decimal) -> tuple[int, str]:
    """Non-negative decimal → (integer part, fraction digits without trailing zeros)."""
    sign, digits, exp = d.normalize().as_tuple()
    s = "".join(map(str, digits))
    if exp >= 0:
        return int(s + "0" * exp), ""
    point = len(s) + exp
    int_part = int(s[:point]) if point > 0 else 0
    frac = ("0" * max(0, -point) + s[max(point, 0):]).rstrip("0")
    return int_part, frac


def _frac_ge(s: str, strict: bool) -> Node:
    """Fraction digit strings D (possibly empty) with 0.D >= 0.s (or > when strict)."""
    if not s:
        return ra.cat(DIGITS, NONZERO, DIGITS) if strict else DIGITS
    d = int(s[0])
    return ra.alt(ra.cat(_digit_range(d + 1, 9), DIGITS), ra.cat(ra.lit(s[0]), _frac_ge(s[1:], strict)))


def _frac_le(s: str, strict: bool) -> Node:
    """Fraction digit strings D (possibly empty) with 0.D <= 0.s (or < when strict)."""
    if not s:
        return ra.NOTHING if strict else ra.star(ra.lit("0"))
    d = int(s[0])  # s has no trailing zeros, so it is > 0 and D may also end here
    return ra.alt(ra.EMPTY, ra.cat(_digit_range(0, d - 1), DIGITS),
                  ra.cat(ra.lit(s[0]), _frac_le(s[1:], strict)))


def _nonneg_ge(a: Decimal, strict: bool) -> Node:
    """Unsigned decimals x >= a (x > a when strict), a >= 0."""
    int_a, frac_a = _split(a)
    above = ra.cat(unsigned_range(int_a + 1, None), ra.opt(FRACTION))
    if strict or frac_a:  # the fraction must be present and large enough
        same = ra.cat(ra.lit(str(int_a)), ra.lit("."), _frac_ge(frac_a, strict))
    else:
        same = ra.cat(ra.lit(str(int_a)), ra.opt(FRACTION))
    return ra.alt(above, same)


def _nonneg_le(b: Decimal, strict: bool) -> Node:
    """Unsigned decimals x <= b (x < b when strict), b >= 0."""
    int_b, frac_b = _split(b)
    parts = []
    if int_b > 0:
        parts.append(ra.cat(unsigned_range(0, int_b - 1), ra.opt(FRACTION)))
    if frac_b or not strict:
        # 0.D <= 0.frac_b with D possibly absent (absent = .0)
        parts.append(ra.cat(ra.lit(str(int_b)), ra.opt(ra.cat(ra.lit("."), _frac_le(frac_b, strict)))))
    return ra.alt(*parts)


def number_range(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool) -> Node:
    """JSON numbers (without exponent) within the bounds, as the intersection of one regex per
    bound with the plain number syntax."""
    constraints = [PLAIN_NUMBER]
    if lo is not None:
        if lo >= 0:
            constraints.append(_nonneg_ge(lo, lo_strict))
        else:  # all non-negatives, and -y with y <= -lo (y < -lo when strict)
            constraints.append(ra.alt(
                ra.cat(UNSIGNED_INT, ra.opt(FRACTION)),
                ra.cat(ra.lit("-"), _nonneg_le(-lo, lo_strict))))
    if hi is not None:
        if hi >= 0:
            constraints.append(ra.alt(
                ra.cat(ra.lit("-"), _nonneg_ge(Decimal(0), True)), _nonneg_le(hi, hi_strict)))
        else:  # -y with y >= -hi (y > -hi when strict)
            constraints.append(ra.cat(ra.lit("-"), _nonneg_ge(-hi, hi_strict)))
    return ra.intersect(*constraints) if len(constraints) > 1 else constraints[0]


MAX_MULTIPLE_OF = 10_000  # one DFA state per remainder


@lru_cache(maxsize=64)
def multiples_of(k: int) -> Node:
    """Integers divisible by ``k`` (> 0), in JSON integer syntax: a remainder automaton over
    the decimal digits (state = value mod k), built as a table."""
    import numpy as np

    from radixrt.fsm.dfa import finish

    # 0 dead, 1 start, 2 after "-", 3 a lone "0" (after the sign or not), 4 + r: remainder r.
    n = 4 + k
    table = np.zeros((n, 256), np.int32)
    table[1, ord("-")] = 2
    for s in (1, 2):
        table[s, ord("0")] = 3
        for d in range(1, 10):
            table[s, 0x30 + d] = 4 + d % k
    for r in range(k):
        for d in range(10):
            table[4 + r, 0x30 + d] = 4 + (10 * r + d) % k
    accepting = np.zeros(n, bool)
    accepting[3] = accepting[4] = True
    return register_constant(ra.Automaton(finish(table, accepting, 1)))
