"""The JSON-Schema-Test-Suite (draft 2020-12 subset): compile → sound, or GrammarError."""

from __future__ import annotations

import pytest
from schema_suite import keyword_of, run_suite, suite_files

FILES = suite_files()

# Keywords we compile: most of their valid instances must be accepted. (The misses are
# deliberate: type inference — "ignores non-strings" — and formats' sound subsets.)
MIN_VALID_RATE = {"const": 1.0, "enum": 1.0, "type": 1.0, "allOf": 1.0, "anyOf": 1.0,
                  "items": 0.85, "ref": 0.85, "additionalProperties": 1.0, "prefixItems": 0.85,
                  "format:date": 0.6, "format:ipv4": 0.25}


def test_suite_is_present():
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[keyword_of(p) for p in FILES])
def test_suite_file(compiler, smol_tokenizer, path):
    result = run_suite(compiler, smol_tokenizer, [path])[keyword_of(path)]
    assert not result.errors, result.errors
    assert not result.unsound, result.unsound  # an invalid instance was accepted
    assert result.compiled + result.rejected == result.schemas
    rate = MIN_VALID_RATE.get(keyword_of(path))
    if rate is not None and result.valid_total:
        assert result.valid_accepted / result.valid_total >= rate
