"""Random token walks through masks never dead-end, and what they produce matches the grammar.

Every walk samples uniformly among the allowed tokens (then heads for acceptance), with and
without jump-forward (which appends the retokenized forced tokens, possibly rolling back)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from fsm_helpers import token_walk

REGEXES = [
    r"(yes|no|maybe)",
    r"[a-z]{3,8}@[a-z]+\.(com|org)",
    r"-?(0|[1-9][0-9]*)(\.[0-9]{1,3})?",
    r"\d{4}-\d{2}-\d{2}",
    r"[^\n]{0,12}\n",
    r"(日本|中国|한국)語?[αβγ]{1,3}",
    r"\"[\w\d\s]*\"",
    r"(The|A) (cat|dog) (sat|ran)\.",
    r"[😀-🙏]{1,3}!",
    r"\[(\d+, )*\d+\]",
]

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "unicode_enum": {"enum": ["café", "naïve", "日本語", "emoji 😀", "quote \" and \\ slash", 3, None]},
    "nested": {
        "type": "object",
        "properties": {
            "point": {"type": "object", "properties": {"x": {"type": "number"},
                                                     "y": {"type": "number", "minimum": -1,
                                                           "exclusiveMaximum": 2.5}},
                      "required": ["x", "y"], "additionalProperties": False},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
        },
        "required": ["point"],
        "additionalProperties": False,
    },
    "array_bounds": {"type": "array", "prefixItems": [{"type": "boolean"}, {"const": "x"}],
                     "items": {"type": "integer", "minimum": -5, "maximum": 5},
                     "minItems": 1, "maxItems": 5},
    "recursive": {
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["value"], "additionalProperties": False}},
        "$ref": "#/$defs/node",
    },
    "any_of": {"anyOf": [{"type": "string", "pattern": "^[A-Z][a-z]+$"},
                         {"type": "array", "items": {"type": "null"}, "maxItems": 2},
                         {"type": "object", "properties": {"ok": {"type": "boolean"}},
                          "required": ["ok"]}]},
    "open_object": {"type": "object", "properties": {"a": {"type": "integer"}},
                    "required": ["a"]},
    "escapes": {"type": "object", "properties": {
        "k\"ey\\": {"type": "string", "pattern": "^[\"\\\\\\n]{1,3}$"}},
        "required": ["k\"ey\\"], "additionalProperties": False},
    "one_of": {"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"},
                                                          "n": {"type": "integer"}},
                          "required": ["kind"], "additionalProperties": False},
                         {"type": "object", "properties": {"kind": {"const": "b"},
                                                          "s": {"type": "string"}},
                          "required": ["kind"], "additionalProperties": False}]},
}


@pytest.mark.parametrize("jump_forward", [False, True])
@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_walks(compiler, pattern, jump_forward):
    grammar = compiler.compile("regex", pattern)
    for seed in range(4):
        text, _ = token_walk(grammar, seed, jump_forward=jump_forward)
        assert re.fullmatch(pattern, text, re.ASCII), (pattern, text)


@pytest.mark.parametrize("jump_forward", [False, True])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_walks(compiler, name, jump_forward):
    schema = SCHEMAS[name]
    grammar = compiler.compile("json_schema", schema)
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for seed in range(4):
        text, _ = token_walk(grammar, seed, jump_forward=jump_forward)
        checker.validate(json.loads(text))


def test_json_object_walks(compiler):
    grammar = compiler.compile("json_object")
    for seed in range(4):
        text, _ = token_walk(grammar, seed, jump_forward=seed % 2 == 1)
        assert isinstance(json.loads(text), dict)


def test_jump_forward_happens_on_fixed_keys(compiler):
    grammar = compiler.compile("json_schema", SCHEMAS["nested"])
    jumps = sum(token_walk(grammar, seed, jump_forward=True)[1] for seed in range(3))
    assert jumps >= 3
