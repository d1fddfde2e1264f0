"""Keywords enforced by rewriting and by automaton products: ``not``, ``if``/``then``/``else``,
overlapping ``oneOf``, ``contains`` (+ ``minContains``/``maxContains``), ``patternProperties``,
``dependentRequired``/``dependentSchemas``/``dependencies``, ``minProperties``/``maxProperties``,
``propertyNames``,
formats ``hostname``/``uri-reference``/``json-pointer``, integral ``multipleOf``; and the
real-schema corpus.

Soundness is checked two ways: every candidate value the DFA accepts (compact JSON) must
validate with ``jsonschema``, and random documents sampled from the DFA must validate too."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from fsm_helpers import sample_bytes

from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.json_schema import json_schema_to_ast

REAL_DIR = Path(__file__).parent / "data" / "real_schemas"

# Values tried against every schema below (besides each case's own examples).
POOL = [None, True, False, 0, 1, -1, 2.5, 7, 12, 1.0, "", "a", "ab", "abc", "x-1", "_x",
        [], [1], [1, 2], [5, 6, 7], ["a", 1], {}, {"a": 1}, {"a": "x"}, {"a": 1, "b": 2},
        {"b": 1}, {"k": "a", "x": 1}, {"k": "b", "y": 1}, {"k": "a"}, {"x-a": 1, "ab": "q"}]

CASES = [
    # (schema, must accept, must reject)
    ({"not": {"type": "string", "minLength": 2}}, ["a", 1, None, {}], ["ab", "abc"]),
    ({"type": "string", "not": {"enum": ["a", "b"]}}, ["c", "ab", ""], ["a", "b"]),
    ({"type": "string", "not": {"pattern": "^x"}}, ["a", "yx"], ["x", "xa"]),
    ({"type": "number", "not": {"const": 1}}, [2, 1.5, 0], [1, 1.0]),
    ({"not": {"type": "integer"}}, [1.5, "a", None], [1, 2.0]),
    ({"type": "object", "not": {"required": ["a"]}}, [{}, {"b": 1}], [{"a": 1}]),
    ({"not": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, [1, [], {}], ["a", None]),
    ({"type": "array", "not": {"items": {"type": "integer"}}}, [["a"], [1, "a"]], [[], [1]]),
    ({"type": "object", "properties": {"k": {"enum": ["a", "b"]}},
      "if": {"properties": {"k": {"const": "a"}}}, "then": {"required": ["x"]},
      "else": {"required": ["y"]}},
     [{"k": "a", "x": 1}, {"k": "b", "y": 1}], [{"k": "a", "y": 1}, {"k": "b"}, {"y": 1}]),
    ({"type": "integer", "if": {"minimum": 10}, "then": {"maximum": 20}}, [5, 10, 20], [21]),
    ({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 5}]}, [1, 5.5], [6, 2.5]),
    ({"oneOf": [{"minLength": 1}, {"type": "integer"}]}, ["a"], [5, ""]),  # 5 matches both
    ({"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
     [{"a": 1}, {"b": 1}], [{"a": 1, "b": 2}, {}]),
    ({"type": "array", "contains": {"type": "string"}}, [["a"], [1, "a"]], [[], [1, 2]]),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 5},
      "minContains": 2, "maxContains": 3}, [[5, 6], [1, 5, 2, 6], [5, 6, 7]],
     [[5], [5, 6, 7, 8], [1, 2]]),
    ({"type": "array", "prefixItems": [{"type": "string"}], "contains": {"type": "integer"},
      "maxItems": 3}, [["a", 1], ["a", "b", 2]], [["a"], ["a", "b", "c"], [1, 2, 3, 4]]),
    ({"type": "object", "patternProperties": {"^x-": {}, "^[a-z]+$": {"type": "string"}},
      "additionalProperties": False}, [{}, {"ab": "q"}, {"x-a": 1, "ab": "q"}],
     [{"A": 1}, {"ab": 1}]),
    ({"type": "object", "properties": {"ab": {"maxLength": 1}},
      "patternProperties": {"b$": {"type": "string"}}}, [{"ab": "q"}, {"cb": "z"}],
     [{"ab": "qq"}, {"ab": 1}, {"cb": 2}]),
    ({"type": "object", "properties": {"a": {}}, "dependentRequired": {"a": ["b"]}},
     [{}, {"b": 1}, {"a": 1, "b": 2}], [{"a": 1}]),
    ({"type": "object", "dependentSchemas": {"a": {"properties": {"b": {"type": "string"}}}}},
     [{"b": "x", "a": 1}, {"b": 1}], [{"a": 1, "b": 1}]),  # declared names first
    ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
      "dependencies": {"a": ["b"]}}, [{"a": 1, "b": 2}], [{"a": 1}]),
    ({"type": "object", "minProperties": 2, "maxProperties": 3},
     [{"a": 1, "b": 2}], [{}, {"a": 1}, {"a": 1, "b": 2, "c": 3, "d": 4}]),
    ({"allOf": [{"enum": [{"k": "a"}, {"k": "b"}]},  # enum filtered through a nested negation
                {"not": {"properties": {"k": {"const": "a"}}}}]}, [{"k": "b"}], [{"k": "a"}]),
    ({"type": "integer", "multipleOf": 3, "minimum": -10, "maximum": 20}, [0, 3, -9, 18],
     [1, 21, -12]),
    ({"type": "number", "multipleOf": 5, "not": {"const": 10}}, [15, -5, 0], [3, 2.5, 10]),
    ({"allOf": [{"multipleOf": 4}, {"multipleOf": 6}], "type": "integer"}, [12, 24],
     [4, 6, 18]),
    ({"type": "number", "not": {"multipleOf": 2}}, [1, 1.5, -3], [2, 4.0, 0]),
    ({"type": "object", "properties": {"long_name": {}, "ok": {}},
      "propertyNames": {"pattern": "^[a-z]{1,3}$"}}, [{"ok": 1}, {"zz": 2}],
     [{"long_name": 1}, {"ZZ": 2}]),
    ({"type": "string", "format": "hostname"}, ["example.com", "a-b.c", "h0st"],
     ["-a.com", "a_b", "xn--abc", "a.", ""]),
    ({"type": "string", "format": "uri-reference"}, ["/a/b?c#d", "../x", "http://h/p", ""],
     ["a b", "1:b", "//h:x"]),
    ({"type": "string", "format": "ipv6"}, ["::1", "fe80::1:2", "1:2:3:4:5:6:7:8", "::"],
     ["1:2:3:4:5:6:7:8:9", ":1", "12345::", "1::2::3"]),
    ({"type": "string", "format": "json-pointer"}, ["", "/a/0", "/~0~1"], ["a", "/~2"]),
]


def dfa_of(schema):
    return compile_regex_ast(json_schema_to_ast(schema))


def text_of(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def validator_for(schema):
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def checks_format(validator, schema) -> bool:
    """Does this jsonschema install check the schema's format (some need extra packages)?"""
    return "format" not in schema or schema["format"] in validator.format_checker.checkers


@pytest.mark.parametrize("index", range(len(CASES)))
def test_keyword_accepts_exactly_valid_values(index):
    schema, good, bad = CASES[index]
    dfa = dfa_of(schema)
    validator = validator_for(schema)
    for v in good:
        assert validator.is_valid(v), v  # the case itself is right
        assert dfa.matches(text_of(v)), v
    for v in bad:
        assert not checks_format(validator, schema) or not validator.is_valid(v), v
        assert not dfa.matches(text_of(v)), v
    for v in POOL:  # soundness on everything else
        if dfa.matches(text_of(v)):
            assert validator.is_valid(v), v
    rng = random.Random(index)
    for _ in range(25):
        validator.validate(json.loads(sample_bytes(dfa, rng).decode("utf-8")))


def test_oneof_overlap_is_exclusive_on_objects():
    schema = {"oneOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]}
    dfa = dfa_of(schema)
    assert dfa.matches(b'{"a":1}') and dfa.matches(b'{"b":1}')
    assert not dfa.matches(b'{"a":1,"b":2}')  # both branches hold
    assert dfa.matches(b'{"a":1,"b":"x"}')  # only the first holds


def real_schemas() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(REAL_DIR.glob("*.json")):
        out += [(f"{path.stem}/{name}", s) for name, s in json.loads(path.read_text()).items()]
    return out


REAL = real_schemas()


def test_real_corpus_is_present():
    assert len(REAL) >= 30


@pytest.mark.parametrize("name, schema", REAL, ids=[n for n, _ in REAL])
def test_real_schema_compiles_and_samples_validate(name, schema):
    dfa = dfa_of(schema)
    validator = validator_for(schema)
    rng = random.Random(name)
    for _ in range(8):
        validator.validate(json.loads(sample_bytes(dfa, rng, budget=60).decode("utf-8")))


@pytest.mark.parametrize("schema, pattern", [
    ({"not": {"uniqueItems": True}}, "'not' at #/not: .*'uniqueItems'"),
    ({"not": {"type": "array", "prefixItems": [{}], "items": {"type": "string"}}},
     "'not' at #/not: .*'items' after 'prefixItems'"),
    ({"not": {"contains": {}, "minContains": 2}}, "'not' at #/not: .*'minContains'"),
    ({"allOf": [{"patternProperties": {"^a": {}}}, {"additionalProperties": False}]},
     "'patternProperties'"),
    ({"type": "array", "if": {"minItems": 1}, "then": {"uniqueItems": True}},
     "'uniqueItems' at #/then"),
    ({"properties": {"a": {"if": {"type": "string"}, "else": {"multipleOf": 0.5}}}},
     "'multipleOf' at #/properties/a/else"),
    ({"oneOf": [{"type": "array", "uniqueItems": True}, {"type": "array", "minItems": 1}]},
     "'oneOf' at #: .*'uniqueItems'"),
    ({"$defs": {"r": {"not": {"$ref": "#/$defs/r"}}}, "$ref": "#/$defs/r"},
     "recursive \\$ref|'not' at"),
])
def test_unenforceable_keywords_are_rejected_by_name(schema, pattern):
    with pytest.raises(GrammarError, match=pattern):
        dfa_of(schema)


def test_discriminated_if_then_chain_stays_small():
    kinds = [f"k{i}" for i in range(8)]
    schema = {"type": "object", "properties": {"kind": {"enum": kinds}}, "required": ["kind"],
              "allOf": [{"if": {"properties": {"kind": {"const": k}}},
                         "then": {"required": [f"a{i}"]}} for i, k in enumerate(kinds)]}
    dfa = dfa_of(schema)  # 2^8 combinations, all but 9 contradictory and dropped early
    assert dfa.matches(b'{"kind":"k3","a3":1}') and not dfa.matches(b'{"kind":"k3","a2":1}')
    rng = random.Random(0)
    validator = validator_for(schema)
    for _ in range(10):
        validator.validate(json.loads(sample_bytes(dfa, rng).decode("utf-8")))


def test_independent_conditions_beyond_the_case_limit_are_rejected():
    schema = {"type": "object", "allOf": [
        {"if": {"properties": {f"k{i}": {"const": 1}}, "required": [f"k{i}"]},
         "then": {"required": [f"a{i}"]}} for i in range(10)]}
    with pytest.raises(GrammarError, match="'anyOf' at #/allOf/.*more than 64 cases"):
        dfa_of(schema)
