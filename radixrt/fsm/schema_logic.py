"""Keywords that combine subschemas by logic, rewritten into ``allOf``/``anyOf`` of plain schemas.

- ``not``: pushed down to the keywords (negation normal form). Each keyword only constrains
  its own type, so ``not {"minLength": 3}`` is ``{"type": "string", "maxLength": 2}``; a schema
  with several keywords is violated when one of them is (``anyOf`` of their negations); ``not``
  of ``allOf``/``anyOf``/``oneOf``/``if`` follows De Morgan. What is left at the leaves needs
  an automaton difference, written as two internal keywords the compiler enforces exactly on
  canonical JSON text: ``x-not-values`` (scalars the value must not equal) and
  ``x-not-patterns`` (patterns a string must not match). A keyword whose negation is not
  regular or not exact here (``format``, ``multipleOf``, ``uniqueItems``, ``additionalProperties``
  and ``patternProperties`` with constraints, ...) raises ``GrammarError`` naming it.
- ``if``/``then``/``else``: ``(if ∧ then) ∨ (¬if ∧ else)``.
- ``oneOf`` whose branches are not provably disjoint: branch ``i`` becomes
  ``A_i ∧ ¬A_j`` for every ``j ≠ i`` (exactly one holds).
- ``dependentRequired``/``dependentSchemas``/``dependencies``: "the property is absent, or the
  other properties are present / the schema holds".

Negations may generate a subset of the values that violate a schema (``not {"type":
"integer"}`` leaves out non-integral numbers), never a value that satisfies it: every rewrite
is used in a positive position, so a smaller language stays sound.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from radixrt.fsm.errors import GrammarError
from radixrt.fsm.schema_dicts import ANNOTATIONS, TYPES, finite_number, normalize

NOT_VALUES = "x-not-values"
NOT_PATTERNS = "x-not-patterns"
FRACTION = "x-fraction"  # a number with a nonzero fraction, written without an exponent
NOT_MULTIPLE = "x-not-multiple-of"  # integers that are multiples of none of these
LOGIC_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                  "dependencies")
MAX_ONE_OF_BRANCHES = 8
MAX_NEGATION_DEPTH = 16


def _any_of(alternatives: list[Any]) -> Any:
    alts = [a for a in alternatives if a is not False]
    if any(a is True for a in alts):
        return True
    if not alts:
        return False
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _all_of(parts: list[Any]) -> Any:
    parts = [p for p in parts if p is not True]
    if any(p is False for p in parts):
        return False
    if not parts:
        return True
    return parts[0] if len(parts) == 1 else {"allOf": parts}


POINTER = "x-pointer"  # where a rewritten case comes from, for error messages


def _at(schema: Any, ptr: str) -> Any:
    """``schema`` marked with the pointer of the keyword it was rewritten from."""
    if not isinstance(schema, dict):
        return schema
    return {**schema, POINTER: ptr}


def has_logic(schema: dict) -> bool:
    return any(k in schema for k in LOGIC_KEYWORDS)


def desugar(schema: dict, ptr: str, resolve) -> dict:
    """``schema`` with its logic keywords turned into ``allOf``/``anyOf`` parts.

    ``resolve(ref, ptr)`` returns the target of a local ``$ref`` (negation follows them)."""
    if not has_logic(schema):
        return schema
    rest = {k: v for k, v in schema.items() if k not in LOGIC_KEYWORDS}
    parts: list[Any] = []
    if "not" in schema:
        parts.append(Negator(resolve).negate(schema["not"], f"{ptr}/not"))
    if "if" in schema:
        cond = schema["if"]
        then, other = schema.get("then", True), schema.get("else", True)
        neg = Negator(resolve).negate(cond, f"{ptr}/if")
        parts.append(_any_of([_at(_all_of([cond, then]), f"{ptr}/then"),
                              _at(_all_of([neg, other]), f"{ptr}/else")]))
    deps_required = dict(_mapping(schema, "dependentRequired", ptr))
    deps_schemas = dict(_mapping(schema, "dependentSchemas", ptr))
    for name, dep in _mapping(schema, "dependencies", ptr):
        (deps_required if isinstance(dep, list) else deps_schemas)[name] = dep
    for name, required in deps_required.items():
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError(f"'dependentRequired' at {ptr}: {name!r} must map to an array "
                               "of strings")
        parts.append(_any_of([{"properties": {name: False}},
                              {"required": list(dict.fromkeys([name, *required]))}]))
    for name, sub in deps_schemas.items():
        parts.append(_any_of([{"properties": {name: False}}, _at(
            _all_of([{"required": [name]}, sub]), f"{ptr}/dependentSchemas/{name}")]))
    parts = [p for p in parts if p is not True]
    if any(p is False for p in parts):
        return {"allOf": [rest, False]}
    if not parts:
        return rest
    rest["allOf"] = list(rest.get("allOf", [])) + parts
    return rest


def _mapping(schema: dict, key: str, ptr: str) -> list[tuple[str, Any]]:
    value = schema.get(key, {})
    if not isinstance(value, dict):
        raise GrammarError(f"'{key}' at {ptr} must be an object")
    return list(value.items())


def exactly_one(branches: list[Any], ptr: str, resolve) -> list[Any]:
    """``oneOf`` branches made mutually exclusive: ``A_i ∧ ¬A_j`` for all ``j ≠ i``."""
    if len(branches) > MAX_ONE_OF_BRANCHES:
        raise GrammarError(
            f"unsupported JSON schema keyword 'oneOf' at {ptr}: {len(branches)} branches that "
            f"are not provably exclusive (at most {MAX_ONE_OF_BRANCHES} are made exclusive)")
    negator = Negator(resolve)
    try:
        negated = [negator.negate(b, f"{ptr}/oneOf/{j}") for j, b in enumerate(branches)]
    except GrammarError as e:
        raise GrammarError(f"unsupported JSON schema keyword 'oneOf' at {ptr}: the branches are "
                           f"not provably exclusive, and making them so needs a negation that "
                           f"cannot be exact ({e}); use anyOf, or discriminate the branches by "
                           "type, enum/const, or a required property") from None
    return [_at(_all_of([b] + [negated[j] for j in range(len(branches)) if j != i]),
                f"{ptr}/oneOf/{i}") for i, b in enumerate(branches)]


class Negator:
    def __init__(self, resolve):
        self.resolve = resolve
        self.depth = 0

    def negate(self, schema: Any, ptr: str) -> Any:
        """A schema accepted only by values that ``schema`` rejects."""
        if schema is True:
            return False
        if schema is False:
            return True
        if not isinstance(schema, dict):
            raise GrammarError(f"schema at {ptr} must be an object or a boolean")
        self.depth += 1
        try:
            if self.depth > MAX_NEGATION_DEPTH:
                raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: nested "
                                   f"deeper than {MAX_NEGATION_DEPTH} levels (recursive $ref?)")
            return _any_of(self._violations(normalize(schema, ptr), ptr))
        finally:
            self.depth -= 1

    def _violations(self, s: dict, ptr: str) -> list[Any]:
        """One schema per way ``s`` can be violated (their union is ``not s``)."""
        out: list[Any] = []
        handled = set(ANNOTATIONS) | {"nullable"}
        if "$ref" in s:
            ref = s["$ref"]
            if not isinstance(ref, str):
                raise GrammarError(f"'$ref' at {ptr} must be a string")
            out.append(self.negate(self.resolve(ref, ptr), ref))
            handled.add("$ref")
        if "type" in s:
            t = s["type"]
            names = {t} if isinstance(t, str) else set(t)
            if not names <= set(TYPES):
                raise GrammarError(f"invalid 'type' {t!r} at {ptr}")
            if "number" in names:
                names.add("integer")
            # Non-integral numbers are left out of "not integer" (a sound subset).
            others = [n for n in TYPES if n not in names and not (
                n == "number" and "integer" in names)]
            if others:
                out.append({"type": others})
            if "integer" in names and "number" not in names:
                out.append({"type": "number", FRACTION: True})  # numbers that are not integers
            handled.add("type")
        for key in ("enum", "const"):
            if key in s:
                values = s["enum"] if key == "enum" else [s["const"]]
                if not isinstance(values, list):
                    raise GrammarError(f"'enum' at {ptr} must be an array")
                out.append({NOT_VALUES: list(values)})
                handled.add(key)
        if s.get(FRACTION):
            out.append({"type": "integer"})
            handled.add(FRACTION)
        if NOT_VALUES in s:
            out.append({"enum": list(s[NOT_VALUES])})
            handled.add(NOT_VALUES)
        out += self._scalar_violations(s, ptr, handled)
        out += self._array_violations(s, ptr, handled)
        out += self._object_violations(s, ptr, handled)
        out += self._logic_violations(s, ptr, handled)
        left = [k for k in s if k not in handled]
        if left:
            raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: cannot enforce "
                               f"the negation of '{left[0]}' exactly")
        return out

    # ------------------------------------------------------------ per type
    def _scalar_violations(self, s: dict, ptr: str, handled: set) -> list[Any]:
        out: list[Any] = []
        for key, other, delta in (("minLength", "maxLength", -1), ("maxLength", "minLength", 1)):
            if key in s:
                n = s[key]
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise GrammarError(f"'{key}' at {ptr} must be a non-negative integer")
                if n + delta >= 0:
                    out.append({"type": "string", other: n + delta})
                handled.add(key)
        if "pattern" in s:
            patterns = s["pattern"] if isinstance(s["pattern"], list) else [s["pattern"]]
            out += [{"type": "string", NOT_PATTERNS: [p]} for p in patterns]
            handled.add("pattern")
        if NOT_PATTERNS in s:
            out += [{"type": "string", "pattern": p} for p in s[NOT_PATTERNS]]
            handled.add(NOT_PATTERNS)
        m = s.get("multipleOf")
        if isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 and m == int(m):
            out += [{"type": "number", FRACTION: True},
                    {"type": "integer", NOT_MULTIPLE: [int(m)]}]
            handled.add("multipleOf")
        for k in s.get(NOT_MULTIPLE, []):
            out.append({"type": "number", "multipleOf": k})
            handled.add(NOT_MULTIPLE)
        flips = {"minimum": "exclusiveMaximum", "exclusiveMinimum": "maximum",
                 "maximum": "exclusiveMinimum", "exclusiveMaximum": "minimum"}
        for key, other in flips.items():
            if key in s:
                if not finite_number(s[key]):
                    raise GrammarError(f"'{key}' at {ptr} must be a number")
                out.append({"type": "number", other: s[key]})
                handled.add(key)
        return out

    def _array_violations(self, s: dict, ptr: str, handled: set) -> list[Any]:
        out: list[Any] = []
        if "minItems" in s:
            if s["minItems"] > 0:
                out.append({"type": "array", "maxItems": s["minItems"] - 1})
            handled.add("minItems")
        if "maxItems" in s:
            out.append({"type": "array", "minItems": s["maxItems"] + 1})
            handled.add("maxItems")
        if s.get("uniqueItems") is False:
            handled.add("uniqueItems")
        prefix = s.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise GrammarError(f"'prefixItems' at {ptr} must be an array")
        for i, sub in enumerate(prefix):
            neg = self.negate(sub, f"{ptr}/prefixItems/{i}")
            if neg is not False:
                out.append({"type": "array", "minItems": i + 1,
                            "prefixItems": [True] * i + [neg]})
        handled.add("prefixItems")
        if "items" in s:
            neg = self.negate(s["items"], f"{ptr}/items")
            if neg is not False:
                if prefix:
                    raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: cannot "
                                       "negate 'items' after 'prefixItems' exactly")
                out.append({"type": "array", "contains": neg})
            handled.add("items")
        if "contains" in s:
            if "minContains" in s or "maxContains" in s:
                raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: cannot "
                                   "negate 'minContains'/'maxContains' exactly")
            out.append({"type": "array", "items": self.negate(s["contains"], f"{ptr}/contains")})
            handled.add("contains")
        return out

    def _object_violations(self, s: dict, ptr: str, handled: set) -> list[Any]:
        out: list[Any] = []
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError(f"'required' at {ptr} must be an array of strings")
        out += [{"type": "object", "properties": {r: False}} for r in dict.fromkeys(required)]
        handled.add("required")
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise GrammarError(f"'properties' at {ptr} must be an object")
        for name, sub in props.items():
            neg = self.negate(sub, f"{ptr}/properties/{name}")
            if neg is not False:
                out.append({"type": "object", "required": [name], "properties": {name: neg}})
        handled.add("properties")
        for key in ("additionalProperties", "patternProperties", "propertyNames"):
            value = s.get(key, True)
            if key == "patternProperties" and isinstance(value, dict):
                value = all(v is True or v == {} for v in value.values())
            if value is True or value == {}:
                handled.add(key)
        for name, req in _mapping(s, "dependentRequired", ptr):
            out += [{"type": "object", "required": [name], "properties": {r: False}}
                    for r in req]
        handled.add("dependentRequired")
        for name, sub in _mapping(s, "dependentSchemas", ptr):
            neg = self.negate(sub, f"{ptr}/dependentSchemas/{name}")
            out.append(_all_of([{"type": "object", "required": [name]}, neg]))
        handled.add("dependentSchemas")
        for name, dep in _mapping(s, "dependencies", ptr):
            if isinstance(dep, list):
                out += [{"type": "object", "required": [name], "properties": {r: False}}
                        for r in dep]
            else:
                neg = self.negate(dep, f"{ptr}/dependencies/{name}")
                out.append(_all_of([{"type": "object", "required": [name]}, neg]))
        handled.add("dependencies")
        for key, other, delta in (("minProperties", "maxProperties", -1),
                                  ("maxProperties", "minProperties", 1)):
            if key in s:
                if s[key] + delta >= 0:
                    out.append({"type": "object", other: s[key] + delta})
                handled.add(key)
        return out

    def _logic_violations(self, s: dict, ptr: str, handled: set) -> list[Any]:
        out: list[Any] = []
        if "allOf" in s:
            out += [self.negate(sub, f"{ptr}/allOf/{i}") for i, sub in enumerate(s["allOf"])]
            handled.add("allOf")
        if "anyOf" in s:
            out.append(_all_of([self.negate(sub, f"{ptr}/anyOf/{i}")
                                for i, sub in enumerate(s["anyOf"])]))
            handled.add("anyOf")
        if "oneOf" in s:
            branches = s["oneOf"]
            if len(branches) > MAX_ONE_OF_BRANCHES:
                raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: 'oneOf' "
                                   f"with more than {MAX_ONE_OF_BRANCHES} branches")
            negs = [self.negate(sub, f"{ptr}/oneOf/{i}") for i, sub in enumerate(branches)]
            out.append(_all_of(negs))  # none holds
            out += [_all_of([branches[i], branches[j]])  # two hold
                    for i in range(len(branches)) for j in range(i + 1, len(branches))]
            handled.add("oneOf")
        if "not" in s:
            out.append(s["not"])
            handled.add("not")
        if "if" in s:
            cond = s["if"]
            neg_then = self.negate(s.get("then", True), f"{ptr}/then")
            neg_else = self.negate(s.get("else", True), f"{ptr}/else")
            out.append(_all_of([cond, neg_then]))
            out.append(_all_of([self.negate(cond, f"{ptr}/if"), neg_else]))
        handled.update(("if", "then", "else"))
        return out


# ---------------------------------------------------------------- excluded values


def number_forms(value: Any) -> str | None:
    """A regex of the exponent-free JSON spellings of a number (None for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    d = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    if d == 0:
        return r"-?0(?:\.0+)?"
    text = format(d.normalize(), "f")
    sign = "-" if text.startswith("-") else ""
    text = text.lstrip("-")
    if "." in text:
        return sign + text.replace(".", r"\.") + "0*"
    return sign + text + r"(?:\.0+)?"


def split_excluded(values: list[Any], ptr: str) -> tuple[list[str], list[Any], set, list]:
    """Excluded values → (strings, numbers, {True, False, None} members, arrays and objects)."""
    strings, numbers, others, containers = [], [], set(), []
    for v in values:
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, bool) or v is None:
            others.add(v)
        elif finite_number(v):
            numbers.append(v)
        elif isinstance(v, (list, dict)):
            containers.append(v)
    return strings, numbers, others, containers


def reject_excluded_containers(containers: list, kind: type, ptr: str) -> None:
    for v in containers:
        if isinstance(v, kind):
            raise GrammarError(f"unsupported JSON schema keyword 'not' at {ptr}: excluding the "
                               f"{'array' if kind is list else 'object'} value "
                               f"{json.dumps(v)[:40]} is not supported")
