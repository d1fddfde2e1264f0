"""Plain schema dicts: keyword tables, normalization, typed readers, and ``allOf`` merging.

Merging is exact for the keywords we compile: a property's merged schema is the ``allOf`` of what
each part says about it (its ``properties`` entry, else its ``additionalProperties``), the same
for array positions; bounds take the tighter value; ``pattern``/``format`` become lists that the
compiler intersects; ``enum`` values are intersected; ``anyOf``/``oneOf`` groups of both parts
are distributed (a cross product, which keeps oneOf's "exactly one" meaning).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from radixrt.fsm.errors import GrammarError

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
OBJECT_KEYWORDS = {"properties", "required", "additionalProperties", "minProperties",
                   "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
                   "dependentSchemas", "unevaluatedProperties"}
ARRAY_KEYWORDS = {"items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains",
                  "minContains", "maxContains", "unevaluatedItems", "additionalItems"}
STRING_KEYWORDS = {"minLength", "maxLength", "pattern", "format", "x-not-patterns"}
NUMBER_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                   "x-fraction", "x-not-multiple-of"}
ANNOTATIONS = {"title", "description", "examples", "example", "default", "$schema", "$id",
               "$comment", "deprecated", "readOnly", "writeOnly", "contentEncoding",
               "contentMediaType", "contentSchema", "$anchor", "$dynamicAnchor", "$defs",
               "definitions", "$vocabulary", "discriminator", "xml", "externalDocs",
               "x-pointer"}
MAX_DISTRIBUTED_CASES = 64  # anyOf/oneOf alternatives after allOf distributes two groups
_LOWER = {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"}
_UPPER = {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}


class Unsatisfiable(Exception):
    """A (sub)schema that accepts nothing we can generate; callers cut it where optional."""


def json_equal(a: Any, b: Any) -> bool:
    """JSON Schema equality: 1 == 1.0, but true != 1; arrays/objects compare structurally."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def type_set(schema: dict) -> set[str] | None:
    """Explicit ``type`` as a set (None when absent); ``nullable: true`` adds null."""
    t = schema.get("type")
    if t is None:
        return None
    types = {t} if isinstance(t, str) else set(t)
    if schema.get("nullable") is True:
        types.add("null")
    return types


def inferred_types(schema: dict) -> set[str]:
    """The types a schema can produce: explicit, else inferred from type-specific keywords,
    else all of them."""
    explicit = type_set(schema)
    if explicit is not None:
        if "number" in explicit:
            explicit.add("integer")
        return explicit
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        return {_json_type(v) for v in values}
    found = set()
    keys = set(schema)
    if keys & OBJECT_KEYWORDS:
        found.add("object")
    if keys & ARRAY_KEYWORDS:
        found.add("array")
    if keys & STRING_KEYWORDS:
        found.add("string")
    if keys & NUMBER_KEYWORDS:
        found |= {"number", "integer"}
    return found or set(TYPES)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _all_of(parts: list[Any]) -> Any:
    parts = [p for p in parts if p is not True]
    if any(p is False for p in parts):
        return False
    if not parts:
        return True
    return parts[0] if len(parts) == 1 else {"allOf": parts}


def merge(a: dict, b: dict, pointer: str) -> dict:
    """The schema equivalent to ``allOf: [a, b]`` (both plain dicts without allOf/$ref)."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(list(a) + list(b)))
    for k in keys:
        if k in ANNOTATIONS or k in ("properties", "additionalProperties", "prefixItems", "items"):
            continue  # members and positions are merged below
        if k not in a or k not in b:
            out[k] = a[k] if k in a else b[k]
            continue
        x, y = a[k], b[k]
        if k == "type":
            continue  # below
        if k in _LOWER:
            out[k] = max(x, y)
        elif k in _UPPER:
            out[k] = min(x, y)
        elif k == "required":
            out[k] = list(dict.fromkeys(list(x) + list(y)))
        elif k in ("pattern", "format"):
            xs = x if isinstance(x, list) else [x]
            ys = y if isinstance(y, list) else [y]
            out[k] = list(dict.fromkeys(xs + ys))
        elif k == "enum":
            out[k] = [v for v in x if any(json_equal(v, w) for w in y)]
        elif k == "const":
            if not json_equal(x, y):
                raise Unsatisfiable(f"allOf at {pointer} has conflicting 'const' values")
            out[k] = x
        elif k == "multipleOf" and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                       for v in (x, y)):
            out[k] = math.lcm(x, y)
        elif k == "x-fraction":
            out[k] = bool(x) or bool(y)
        elif k in ("x-not-values", "x-not-patterns", "x-not-multiple-of"):
            out[k] = list(x) + [v for v in y if v not in x]
        elif k == "patternProperties":
            out[k] = {p: _all_of([x.get(p, True), y.get(p, True)]) for p in
                      dict.fromkeys(list(x) + list(y))}
        elif k in ("anyOf", "oneOf"):
            cases = []
            for p in x:
                for q in y:
                    if not _contradict(p, q):
                        cases.append(_all_of([p, q]))
                        if len(cases) > MAX_DISTRIBUTED_CASES:
                            raise GrammarError(
                                f"unsupported JSON schema keyword '{k}' at {pointer}: allOf "
                                f"parts combine into more than {MAX_DISTRIBUTED_CASES} cases")
            out[k] = cases
        elif k == "uniqueItems":
            out[k] = bool(x) or bool(y)
        elif k == "nullable":
            out[k] = bool(x) and bool(y)
        else:
            out[k] = x if x == y else _conflict(k, pointer)
    ta, tb = type_set(a), type_set(b)
    if ta is not None or tb is not None:
        out.pop("nullable", None)
        if ta is None or tb is None:
            types = ta if tb is None else tb
        else:
            types = (ta & tb) | ({"integer"} if ("integer" in ta and "number" in tb) or (
                "number" in ta and "integer" in tb) else set())
        if not types:
            raise Unsatisfiable(f"allOf at {pointer} has conflicting 'type' values")
        out["type"] = sorted(types)
    _merge_members(a, b, out)
    _merge_positions(a, b, out)
    return out


def _facts(schema: Any, out: dict) -> dict:
    """What ``schema`` says about property values, gathered through ``allOf``: name →
    [allowed values or None, excluded values, forbidden?], plus the required names."""
    if not isinstance(schema, dict):
        return out
    for name in schema.get("required", []) if isinstance(schema.get("required"), list) else []:
        out.setdefault("", set()).add(name)
    props = schema.get("properties")
    for name, sub in (props.items() if isinstance(props, dict) else ()):
        fact = out.setdefault(name, [None, [], False])
        if sub is False:
            fact[2] = True
        elif isinstance(sub, dict):
            values = enum_values(sub)
            if values is not None:
                fact[0] = values if fact[0] is None else [
                    v for v in fact[0] if any(json_equal(v, w) for w in values)]
            fact[1] += list(sub.get("x-not-values", []))
    for sub in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        _facts(sub, out)
    return out


def _contradict(a: Any, b: Any) -> bool:
    """Cheap proof that ``allOf [a, b]`` accepts no object: a property both pin to values
    with none in common (const/enum, excluded values), or one that is required but forbidden.
    Used to drop impossible cases early when anyOf groups are distributed."""
    if a is False or b is False:
        return True
    facts = _facts(b, _facts(a, {}))
    required = facts.pop("", set())
    for name, (allowed, excluded, forbidden) in facts.items():
        if forbidden and name in required:
            return True
        if allowed is not None and all(any(json_equal(v, w) for w in excluded)
                                       for v in allowed):
            return True
    return False


def _conflict(keyword: str, pointer: str):
    raise GrammarError(f"unsupported JSON schema keyword '{keyword}' at {pointer}: allOf parts "
                       "give different values that cannot be merged")


def _merge_members(a: dict, b: dict, out: dict) -> None:
    if not any(k in s for s in (a, b) for k in ("properties", "additionalProperties")):
        return
    pa, pb = a.get("properties", {}), b.get("properties", {})
    for x, y in ((a, b), (b, a)):
        if x.get("patternProperties") and y.get("additionalProperties", True) is not True:
            raise GrammarError("unsupported JSON schema keyword 'patternProperties': allOf parts "
                               "combine it with another part's additionalProperties")

    def about(schema: dict, props: dict, name: str):
        if name in props:
            return props[name]
        if any(pattern_matches(p, name) for p in schema.get("patternProperties", {})):
            return True  # the merged patternProperties apply to it
        return schema.get("additionalProperties", True)

    out["properties"] = {name: _all_of([about(a, pa, name), about(b, pb, name)])
                         for name in dict.fromkeys(list(pa) + list(pb))}
    addl = _all_of([a.get("additionalProperties", True), b.get("additionalProperties", True)])
    if addl is not True:
        out["additionalProperties"] = addl


def _merge_positions(a: dict, b: dict, out: dict) -> None:
    if not any(k in s for s in (a, b) for k in ("prefixItems", "items")):
        return
    pa, pb = a.get("prefixItems", []), b.get("prefixItems", [])

    def at(schema: dict, prefix: list, i: int):
        return prefix[i] if i < len(prefix) else schema.get("items", True)

    n = max(len(pa), len(pb))
    if n:
        out["prefixItems"] = [_all_of([at(a, pa, i), at(b, pb, i)]) for i in range(n)]
    items = _all_of([a.get("items", True), b.get("items", True)])
    if items is not True:
        out["items"] = items


def finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def normalize(schema: dict, ptr: str) -> dict:
    """Older spellings → 2020-12: boolean exclusive bounds, array-form items, nullable."""
    s = schema
    for ex, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(s.get(ex), bool):
            s = dict(s)
            flag = s.pop(ex)
            if flag and bound in s:
                s[ex] = s.pop(bound)
    if isinstance(s.get("items"), list):
        s = dict(s)
        s["prefixItems"] = s.pop("items")
        if "additionalItems" in s:
            s["items"] = s.pop("additionalItems")
    elif "additionalItems" in s:
        s = {k: v for k, v in s.items() if k != "additionalItems"}  # ignored without array items
    if s.get("nullable") is True and "type" in s:
        t = s["type"]
        s = dict(s)
        s["type"] = ([t] if isinstance(t, str) else list(t)) + ["null"]
        del s["nullable"]
    return s


_DATA_KEYWORDS = {"enum", "const", "x-not-values", "x-not-multiple-of", "default", "examples",
                  "example"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def for_jsonschema(schema: Any) -> Any:
    """Undo the merge's internal list forms of ``pattern``/``format`` and the negation leaves
    (``x-not-values``, ``x-not-patterns``, ``x-fraction``) for the validator, at any depth."""
    if isinstance(schema, list):
        return [for_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict = {}
    for k, v in schema.items():
        if k in _DATA_KEYWORDS:
            out[k] = v
        elif k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: for_jsonschema(sub) for name, sub in v.items()}
        else:
            out[k] = for_jsonschema(v)
    extra = [{k: v} for k in ("pattern", "format") if isinstance(out.get(k), list)
             for v in out[k]]
    if "x-not-values" in out:
        extra.append({"not": {"enum": list(out["x-not-values"])}})
    extra += [{"not": {"type": "string", "pattern": p}} for p in out.get("x-not-patterns", [])]
    if out.get("x-fraction"):
        extra.append({"not": {"type": "integer"}})
    extra += [{"not": {"multipleOf": k}} for k in out.get("x-not-multiple-of", [])]
    if not extra:
        return out
    rest = {k: v for k, v in out.items() if k not in (
        "x-not-values", "x-not-patterns", "x-fraction", "x-not-multiple-of") and (
        k not in ("pattern", "format") or not isinstance(v, list))}
    return {"allOf": [rest, *extra]}


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether the ECMA-262 ``pattern`` finds a match in ``name``, as radixrt compiles it."""
    from radixrt.fsm.schema_patterns import pattern_search_dfa

    text = json.dumps(name, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")
    return pattern_search_dfa(pattern).matches(text)


def enum_values(schema: dict) -> list | None:
    if "const" in schema:
        values = [schema["const"]]
        if "enum" in schema:
            enum = schema["enum"]
            if not isinstance(enum, list):
                return None
            values = [v for v in values if any(json_equal(v, w) for w in enum)]
        return values
    if "enum" in schema:
        return schema["enum"] if isinstance(schema["enum"], list) else None
    return None


def as_list(v: Any) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def pointer_escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def read_count(schema: dict, key: str, ptr: str, default: int | None, bound: int | None) -> int | None:
    v = schema.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise GrammarError(f"'{key}' at {ptr} must be a non-negative integer")
    if bound is not None and v > bound:
        if key.startswith("max"):
            return bound  # a tighter upper bound only shortens what can be generated
        raise GrammarError(f"unsupported JSON schema keyword '{key}' at {ptr}: {v} is above the "
                           f"supported bound {bound}")
    return v


def read_bounds(schema: dict, ptr: str) -> tuple[Decimal | None, bool, Decimal | None, bool]:
    def get(key: str) -> Decimal | None:
        v = schema.get(key)
        if v is None:
            return None
        if not finite_number(v):
            raise GrammarError(f"'{key}' at {ptr} must be a number")
        return Decimal(v) if isinstance(v, int) else Decimal(repr(v))

    lo, lo_strict = get("minimum"), False
    ex = get("exclusiveMinimum")
    if ex is not None and (lo is None or ex >= lo):
        lo, lo_strict = ex, True
    hi, hi_strict = get("maximum"), False
    ex = get("exclusiveMaximum")
    if ex is not None and (hi is None or ex <= hi):
        hi, hi_strict = ex, True
    return lo, lo_strict, hi, hi_strict
