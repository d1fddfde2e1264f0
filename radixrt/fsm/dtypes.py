"""Regex helpers for the frontend DSL (SGLang-compatible constants)."""

from __future__ import annotations

import re

REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""  # \w, \d and \s are ASCII in radixrt regexes


def choices_regex(choices: list[str]) -> str:
    """A regex matching exactly one of ``choices`` (escaped alternation)."""
    if not choices:
        raise ValueError("choices_regex needs at least one choice")
    return "(" + "|".join(re.escape(c) for c in choices) + ")"
