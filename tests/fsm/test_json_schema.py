"""JSON schema → DFA: what is accepted, what is rejected, and the error messages."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from fsm_helpers import sample_bytes

from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.json_schema import JsonSchemaOptions, json_schema_to_ast, json_schema_to_regex


def dfa_of(schema, **opts):
    return compile_regex_ast(json_schema_to_ast(schema, JsonSchemaOptions(**opts)))


def accepts(dfa, value) -> bool:
    """Is the compact JSON of ``value`` accepted?"""
    return dfa.matches(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def accepts_text(dfa, text: str) -> bool:
    return dfa.matches(text.encode())


SAMPLED_SCHEMAS = [
    {"type": "object", "properties": {"id": {"type": "integer", "exclusiveMinimum": 0},
                                      "name": {"type": "string", "pattern": "^[A-Z]\\w{0,8}$"},
                                      "score": {"type": "number", "minimum": -2.5, "maximum": 1e3},
                                      "kind": {"enum": ["a", "b", None]}},
     "required": ["id", "kind"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "format": "ipv4"}, "minItems": 2, "maxItems": 4},
    {"type": ["string", "null"], "minLength": 2, "maxLength": 5},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uri"},
    {"type": "string", "format": "email"},
    {"type": "string", "pattern": "ab+c", "maxLength": 8},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
               {"properties": {"a": {"minimum": 3, "maximum": 7}, "b": {"type": "boolean"}},
                "additionalProperties": False}]},
    {"$defs": {"list": {"type": "object", "properties": {
        "head": {"type": "integer"}, "tail": {"$ref": "#/$defs/list"}},
        "required": ["head"], "additionalProperties": False}}, "$ref": "#/$defs/list"},
    {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "string", "const": "none"}]},
    {"oneOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
    {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x", "y"]},
    {},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": False,
     "maxProperties": 1, "minProperties": 0},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    {"type": "integer", "minimum": -1234, "maximum": 56789},
    {"type": "number", "exclusiveMinimum": -0.5, "exclusiveMaximum": 0.25},
]


@pytest.mark.parametrize("index", range(len(SAMPLED_SCHEMAS)))
def test_sampled_documents_validate(index):
    schema = SAMPLED_SCHEMAS[index]
    dfa = dfa_of(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    rng = random.Random(index)
    for _ in range(40):
        text = sample_bytes(dfa, rng).decode("utf-8")
        validator.validate(json.loads(text))


def test_compact_form_and_key_order():
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
              "required": ["a"], "additionalProperties": False}
    dfa = dfa_of(schema)
    assert accepts_text(dfa, '{"b":1,"a":"x"}') and accepts_text(dfa, '{"a":"x"}')
    assert not accepts_text(dfa, '{"a":"x","b":1}')  # schema order only
    assert not accepts_text(dfa, '{"b":1}') and not accepts_text(dfa, '{"b": 1,"a":"x"}')
    regex = json_schema_to_regex(schema)  # closed schemas have a plain regex form
    assert re.fullmatch(regex, '{"b":-12,"a":"x\\n"}') and not re.fullmatch(regex, '{"b":1}')
    with pytest.raises(GrammarError, match="no plain regex form"):
        json_schema_to_regex({"type": "object", "properties": {"a": {}}})


def test_whitespace_pattern():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
              "required": ["a"], "additionalProperties": False}
    dfa = dfa_of(schema, whitespace_pattern=r"[ ]?")
    assert accepts_text(dfa, '{"a":[1,2]}') and accepts_text(dfa, '{ "a": [1, 2] }')
    assert not accepts_text(dfa, '{"a":  [1]}')
    with pytest.raises(GrammarError, match="unbounded"):
        dfa_of(schema, whitespace_pattern=r"\s*")
    with pytest.raises(GrammarError, match="non-whitespace"):
        dfa_of(schema, whitespace_pattern=r"x?")


def test_open_objects_never_repeat_a_declared_key():
    dfa = dfa_of({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert accepts_text(dfa, '{"a":1,"b":"x"}') and accepts_text(dfa, '{"zz":[1,{"q":null}]}')
    assert not accepts_text(dfa, '{"a":1,"a":"x"}') and not accepts_text(dfa, '{"b":1,"a":"x"}')
    assert not accepts_text(dfa, '{"\\u0061":"x"}')  # a non-canonical spelling of "a"
    closed = dfa_of({"type": "object", "properties": {"a": {"type": "integer"}}},
                    strict_objects=True)
    assert not accepts_text(closed, '{"a":1,"b":2}')


def test_pattern_is_unanchored_unless_anchored():
    assert accepts(dfa_of({"type": "string", "pattern": "b"}), "xbx")
    dfa = dfa_of({"type": "string", "pattern": "^b"})
    assert accepts(dfa, "bx") and not accepts(dfa, "xb")
    dfa = dfa_of({"type": "string", "pattern": "^[äö]+$", "minLength": 2})
    assert accepts(dfa, "äö") and not accepts(dfa, "ä") and not accepts(dfa, "äx")
    quoted = dfa_of({"type": "string", "pattern": '^"\\\\$'})  # a quote then a backslash
    assert accepts(quoted, '"\\') and accepts_text(quoted, '"\\"\\\\"')


def test_string_lengths_count_code_points():
    dfa = dfa_of({"type": "string", "minLength": 2, "maxLength": 2})
    for ok in ["ab", "日本", "😀😀", "\\n\\u0041", "a\\\""]:
        assert dfa.matches(f'"{ok}"'.encode()), ok
    for bad in ["a", "abc", "😀", "\\ud83d\\ude00"]:
        assert not dfa.matches(f'"{bad}"'.encode()), bad


def test_enum_values_filtered_by_siblings():
    dfa = dfa_of({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1})
    assert accepts(dfa, "a") and not accepts(dfa, 1) and not accepts(dfa, "bb")
    assert accepts(dfa_of({"enum": [1.0]}), 1)


def test_recursion_is_cut_where_optional():
    schema = {"$defs": {"t": {"type": "object", "properties": {"k": {"$ref": "#/$defs/t"}},
                              "additionalProperties": False}}, "$ref": "#/$defs/t"}
    dfa = dfa_of(schema, max_recursion_depth=2)
    # the root expansion counts: depth 2 = the root object and one nested level
    assert accepts(dfa, {}) and accepts(dfa, {"k": {}}) and not accepts(dfa, {"k": {"k": {}}})
    required = {"$defs": {"t": {"type": "object", "properties": {"k": {"$ref": "#/$defs/t"}},
                                "required": ["k"]}}, "$ref": "#/$defs/t"}
    with pytest.raises(GrammarError, match="max_recursion_depth"):
        dfa_of(required)


@pytest.mark.parametrize("schema, pattern", [
    ({"type": "array", "uniqueItems": True}, "'uniqueItems' at #"),
    ({"type": "number", "multipleOf": 0.01}, "'multipleOf' at #: only integers"),
    ({"properties": {"a": {"not": {"format": "email"}}}},
     "'not' at #/properties/a/not: .*'format'"),
    ({"not": {"type": "number", "multipleOf": 0.5}}, "'not' at #/not: .*'multipleOf'"),
    ({"not": {"properties": {"a": {}}, "additionalProperties": False}},
     "'not' at #/not: .*'additionalProperties'"),
    ({"not": {"const": {"a": 1}}}, "'not' at #.*object value"),
    ({"patternProperties": {f"^{c}": {} for c in "abcde"}}, "'patternProperties' at #"),
    ({"patternProperties": {"\\p{L}": {}}}, "'patternProperties' at #/patternProperties"),
    ({"type": "object", "minProperties": 20}, "'minProperties' at #"),
    ({"dependentRequired": {"a": "b"}}, "'dependentRequired' at #"),
    ({"$ref": "http://example.com/schema.json"}, "'\\$ref' at #"),
    ({"items": {"$ref": "#/$defs/missing"}}, "does not resolve"),
    ({"type": "string", "format": "idn-hostname"}, "'format' value 'idn-hostname'"),
    ({"type": "string", "pattern": "(?=x)"}, "'pattern' at #"),
    ({"oneOf": [{"minimum": i} for i in range(9)]}, "'oneOf' at #: 9 branches"),
    ({"type": "object", "unevaluatedProperties": False}, "'unevaluatedProperties' at #"),
    ({"type": "strin"}, "invalid 'type'"),
    (False, "accepts no value"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "conflicting 'type'"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "required property 'a'"),
])
def test_errors_name_the_keyword(schema, pattern):
    with pytest.raises(GrammarError, match=pattern):
        dfa_of(schema)


def test_one_of_with_discriminator_is_accepted():
    schema = {"oneOf": [
        {"type": "object", "properties": {"t": {"const": "a"}, "x": {"type": "integer"}},
         "required": ["t"]},
        {"type": "object", "properties": {"t": {"const": "b"}}, "required": ["t"]}]}
    dfa = dfa_of(schema)
    assert accepts(dfa, {"t": "a", "x": 1}) and accepts(dfa, {"t": "b"})


def test_annotations_are_ignored():
    dfa = dfa_of({"title": "T", "description": "d", "examples": [1], "default": 2,
                  "$comment": "c", "deprecated": True, "type": "integer"})
    assert accepts(dfa, 5) and not accepts(dfa, "5")
