"""The JSON-Schema-Test-Suite (draft 2020-12 subset): compile → sound, or GrammarError."""

from __future__ import annotations

import pytest
from schema_suite import keyword_of, run_suite, suite_files

FILES = suite_files()

# Keywords we compile: most of their valid instances must be accepted. (The misses are
# deliberate: type inference — "ignores non-strings" — and formats' sound subsets.)
MIN_VALID_RATE = {"const": 1.0, "enum": 1.0, "type": 1.0, "allOf": 1.0, "anyOf": 1.0,
                  "items": 0.85, "ref": 0.85, "additionalProperties": 0.7, "prefixItems": 0.85,
                  "format:date": 0.6, "format:ipv4": 0.25, "not": 1.0, "if-then-else": 1.0,
                  "oneOf": 1.0, "contains": 0.85, "minContains": 1.0, "maxContains": 1.0,
                  "patternProperties": 0.75, "dependentRequired": 0.7,
                  "dependentSchemas": 0.7, "format:uri-reference": 0.6,
                  "format:json-pointer": 0.75}
# Keywords that must compile (not be rejected) in at least this many of their schemas.
MIN_COMPILED = {"not": 6, "if-then-else": 10, "oneOf": 8, "contains": 5, "minContains": 7,
                "maxContains": 5, "patternProperties": 5, "dependentRequired": 4,
                "dependentSchemas": 4, "format:hostname": 2, "format:uri-reference": 1,
                "propertyNames": 4, "multipleOf": 1, "format:ipv6": 1, "uniqueItems": 4}


def test_suite_is_present():
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[keyword_of(p) for p in FILES])
def test_suite_file(compiler, smol_tokenizer, path):
    result = run_suite(compiler, smol_tokenizer, [path])[keyword_of(path)]
    assert not result.errors, result.errors
    assert not result.unsound, result.unsound  # an invalid instance was accepted
    assert result.compiled + result.rejected == result.schemas
    assert result.compiled >= MIN_COMPILED.get(keyword_of(path), 0)
    rate = MIN_VALID_RATE.get(keyword_of(path))
    if rate is not None and result.valid_total:
        assert result.valid_accepted / result.valid_total >= rate
