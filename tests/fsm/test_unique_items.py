"""``uniqueItems: true`` over small finite element sets is enforced exactly: every array of a
pool of values up to length 4 is accepted iff it validates (for the canonical spellings the
compiler writes), token walks produce unique arrays, and what cannot be exact is rejected by
keyword and pointer."""

from __future__ import annotations

import itertools
import json

import jsonschema
import pytest
from fsm_helpers import token_walk

from radixrt.fsm import GrammarError
from radixrt.fsm.json_schema import json_schema_to_ast
from radixrt.fsm.schema_types import finite_texts, json_value_key

POOL = [True, False, None, 0, 1, 1.0, 2, 5, 6, "admin", "editor", "viewer", "1", "x",
        [1, 2], {"a": 1, "b": 2}]
SCHEMAS = [
    {"type": "array", "items": {"enum": ["admin", "editor", "viewer"]}, "uniqueItems": True},
    {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5},
     "uniqueItems": True, "minItems": 2, "maxItems": 3},
    # 1 and 1.0 are one value, true and 1 are not, arrays and objects compare by value.
    {"type": "array", "items": {"enum": [1, 1.0, 2, True, "1", None, [1, 2], {"a": 1, "b": 2}]},
     "uniqueItems": True},
    {"prefixItems": [{"type": "boolean"}, {"type": "boolean"}], "uniqueItems": True,
     "items": False},
    {"type": "object", "properties": {"roles": {"type": "array", "uniqueItems": True,
                                                "items": {"enum": ["a", "b", "c", "d"]}}},
     "required": ["roles"], "additionalProperties": False},
]


def _spell(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _accepts(g, text: str) -> bool:
    s = g.walk(g.start_state, text.encode())
    return bool(s) and g.is_accepting(s)


@pytest.mark.parametrize("schema", SCHEMAS[:5], ids=range(5))
def test_arrays_of_the_pool_accepted_iff_valid(compiler, schema):
    g = compiler.compile("json_schema", schema)
    checked = valid = 0
    for n in range(5):
        for combo in itertools.product(POOL, repeat=n):
            text = _spell(list(combo))
            try:
                jsonschema.validate(json.loads(text), schema)
                ok = True
            except jsonschema.ValidationError:
                ok = False
            if _accepts(g, text):
                assert ok, text  # never an array with a repeated value
            elif ok:
                # The only valid arrays missed are spellings the compiler never writes: 1.0
                # for an integer, object keys out of their declared order.
                assert "1.0" in text or '"b":2,"a":1' in text, text
            checked += 1
            valid += ok
    assert valid > 3 and checked > 1000


def test_token_walks_write_unique_arrays(compiler):
    for schema in SCHEMAS:
        g = compiler.compile("json_schema", schema)
        for seed in range(4):
            text, _ = token_walk(g, seed, budget=30)
            jsonschema.validate(json.loads(text), schema)


def test_rejected_by_keyword_and_pointer(compiler):
    cases = [
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True},
         "'uniqueItems' at #: its elements at #/items may take more than"),
        ({"type": "object", "properties": {"t": {"type": "array", "uniqueItems": True}}},
         "'uniqueItems' at #/properties/t"),
        ({"type": "array", "items": {"enum": list("abcdefghijkl")}, "uniqueItems": True},
         "12 distinct values are too many"),
        ({"type": "array", "items": {"enum": [1, 2]}, "contains": {"const": 1},
          "uniqueItems": True}, "not with 'contains'"),
    ]
    for schema, message in cases:
        with pytest.raises(GrammarError, match="unsupported JSON schema keyword"):
            compiler.compile("json_schema", schema)
        try:
            compiler.compile("json_schema", schema)
        except GrammarError as e:
            assert message in str(e), (message, str(e))
    # Still fine: uniqueItems false, and at most one item.
    compiler.compile("json_schema", {"type": "array", "uniqueItems": False})
    compiler.compile("json_schema", {"type": "array", "uniqueItems": True, "maxItems": 1})


def test_more_items_than_values_is_unsatisfiable(compiler):
    with pytest.raises(GrammarError):
        compiler.compile("json_schema", {"type": "array", "items": {"type": "boolean"},
                                         "uniqueItems": True, "minItems": 3})
    g = compiler.compile("json_schema", {"type": "array", "items": {"type": "boolean"},
                                         "uniqueItems": True, "minItems": 2})
    assert {t for t in ("[true,false]", "[false,true]", "[true,true]", "[true]")
            if _accepts(g, t)} == {"[true,false]", "[false,true]"}


def test_finite_texts_and_value_keys():
    assert sorted(finite_texts(json_schema_to_ast({"enum": [1, "a"]}), 8)) == ['"a"', "1", "1.0"]
    assert finite_texts(json_schema_to_ast({"type": "string"}), 8) is None
    assert finite_texts(json_schema_to_ast({"type": "integer", "minimum": 0, "maximum": 99}),
                        8) is None  # finite, but more than the limit
    assert json_value_key(1) == json_value_key(1.0) != json_value_key(True)
    assert json_value_key({"a": 1, "b": [2.0]}) == json_value_key({"b": [2], "a": 1.0})
    assert json_value_key("1") != json_value_key(1) and json_value_key(None) != json_value_key(0)
