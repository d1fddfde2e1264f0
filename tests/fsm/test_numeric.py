"""Bounded integer and decimal regexes are exact (integers) / sound and near-complete (decimals)."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest

from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.numeric import integer_range, number_range


@pytest.mark.parametrize("seed", range(4))
def test_integer_range_is_exact(seed):
    rng = random.Random(seed)
    for _ in range(40):
        lo = rng.choice([None, rng.randint(-1200, 1200), 0, -1, 1, rng.randint(-10**9, 10**9)])
        hi = rng.choice([None, rng.randint(-1200, 1200), 0, -1, 1, rng.randint(-10**9, 10**9)])
        dfa = compile_regex_ast(integer_range(lo, hi))
        probes = list(range(-1500, 1500, 7)) + [10**6, -10**6, 10**12]
        for b in (lo, hi):
            if b is not None:
                probes += [b - 1, b, b + 1]
        for x in probes:
            expected = (lo is None or x >= lo) and (hi is None or x <= hi)
            assert dfa.matches(str(x).encode()) == expected, (lo, hi, x)
        for bad in ["01", "-0", "", "-", "+1", "1.0", "1e3"]:
            assert not dfa.matches(bad.encode())


def _candidates(rng):
    out = {"-0", "-0.0", "0", "0.0", "00", "1.", ".5", "1e5", "-", "0.000", "-0.5"}
    for _ in range(150):
        i = rng.randint(-30, 30)
        f = rng.choice(["", ".5", ".05", ".50", ".0", ".99", ".125", f".{rng.randint(0, 999)}"])
        out.add(f"{i}{f}")
    return out


@pytest.mark.parametrize("seed", range(4))
def test_number_range_is_sound_and_complete_without_negative_zero(seed):
    rng = random.Random(seed)
    plain = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")

    def bound():
        return rng.choice([None, Decimal(rng.randint(-20, 20)) / rng.choice([1, 2, 4, 8, 10, 100]),
                           Decimal(0), Decimal("1.5"), Decimal("-2.25")])

    for _ in range(60):
        lo, hi = bound(), bound()
        lo_strict, hi_strict = rng.random() < 0.5, rng.random() < 0.5
        dfa = compile_regex_ast(number_range(lo, lo_strict, hi, hi_strict))
        for text in _candidates(rng):
            expected = False
            if plain.fullmatch(text):
                x = Decimal(text)
                expected = (lo is None or (x > lo if lo_strict else x >= lo)) and (
                    hi is None or (x < hi if hi_strict else x <= hi))
            got = dfa.matches(text.encode())
            assert not got or expected, ("unsound", lo, lo_strict, hi, hi_strict, text)
            if not text.startswith("-0"):
                assert got or not expected, ("incomplete", lo, lo_strict, hi, hi_strict, text)
