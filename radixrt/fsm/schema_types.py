"""Per-type trees of a JSON schema: the JSON text of a null, boolean, string, integer, number,
array or object that satisfies the schema's type-specific keywords.

``TypeCompiler.compile`` picks the types a schema allows (its ``type``, else the types its
keywords imply) and joins their trees. Subschemas (array items, property values) go back
through the ``subschema`` function it is given — the schema compiler's entry point — so
references and combinators work at any depth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.automaton import compile_regex_ast, register_constant
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.formats import format_node
from radixrt.fsm.json_strings import (
    CANONICAL_CHAR,
    CANONICAL_STRING,
    JSON_CHAR,
    QUOTE,
    string_literal,
)
from radixrt.fsm.json_values import any_value_node, format_body, length_body, separators
from radixrt.fsm.numeric import (
    MAX_MULTIPLE_OF,
    NUMBER,
    PLAIN_NUMBER,
    integer_range,
    multiples_of,
    number_range,
)
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.regex_parser import parse_regex
from radixrt.fsm.schema_dicts import (
    ANNOTATIONS,
    TYPES,
    Unsatisfiable,
    as_list,
    inferred_types,
    pattern_matches,
    pointer_escape,
    read_bounds,
    read_count,
)
from radixrt.fsm.schema_logic import (
    FRACTION,
    NOT_MULTIPLE,
    NOT_PATTERNS,
    NOT_VALUES,
    Negator,
    number_forms,
    reject_excluded_containers,
    split_excluded,
)
from radixrt.fsm.schema_options import JsonSchemaOptions
from radixrt.fsm.schema_patterns import pattern_body


class TypeCompiler:
    def __init__(self, opts: JsonSchemaOptions, subschema: Callable[[Any, str], Node],
                 resolve: Callable[[str, str], Any] | None = None):
        self.opts = opts
        self.subschema = subschema
        self.resolve = resolve  # local $ref → target (negations follow references)
        self.ws, self.colon, self.comma = separators(opts.whitespace_pattern)

    def _optional(self, schema: Any, ptr: str) -> Node:
        """``subschema``, or NOTHING when it accepts nothing we can generate."""
        try:
            return self.subschema(schema, ptr)
        except Unsatisfiable:
            return ra.NOTHING

    def compile(self, schema: dict, ptr: str) -> Node:
        """The alternatives of every type ``schema`` allows (a normalized schema without
        ``$ref`` or combinators); types that accept nothing are left out."""
        t = schema.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else t
            if not isinstance(names, list) or not names or any(n not in TYPES for n in names):
                raise GrammarError(f"invalid 'type' {t!r} at {ptr}")
        types = inferred_types(schema)
        if types == set(TYPES) and len(set(schema) - ANNOTATIONS - {"type", "nullable"}) == 0:
            return self.any_value()
        if "number" in types:
            types.discard("integer")
        nodes, reasons = [], []
        for name in TYPES:
            if name in types:
                try:
                    nodes.append(getattr(self, "_" + name)(schema, ptr))
                except Unsatisfiable as e:
                    reasons.append(str(e))
        if not nodes:
            raise Unsatisfiable("; ".join(reasons) or f"schema at {ptr} accepts no type")
        return ra.alt(*nodes)

    def any_value(self) -> Node:
        """Any JSON value, nesting at most ``any_value_depth`` levels."""
        return any_value_node(self.opts.any_value_depth, self.opts.whitespace_pattern)

    # ------------------------------------------------------------ scalars
    def _null(self, schema: dict, ptr: str) -> Node:
        if None in _excluded(schema, ptr)[2]:
            raise Unsatisfiable(f"null is excluded at {ptr}")
        return ra.lit("null")

    def _boolean(self, schema: dict, ptr: str) -> Node:
        others = _excluded(schema, ptr)[2]
        nodes = [ra.lit(json.dumps(v)) for v in (True, False) if v not in others]
        if not nodes:
            raise Unsatisfiable(f"true and false are excluded at {ptr}")
        return ra.alt(*nodes)

    def _string(self, schema: dict, ptr: str) -> Node:
        lo = read_count(schema, "minLength", ptr, 0, self.opts.max_length_bound)
        hi = read_count(schema, "maxLength", ptr, None, self.opts.max_length_bound)
        if hi is not None and lo > hi:
            raise Unsatisfiable(f"minLength > maxLength at {ptr}")
        if hi is not None and hi > self.opts.max_string_length:
            hi = max(lo, self.opts.max_string_length)
        bodies = []
        if lo or hi is not None:
            bodies.append(length_body(lo, hi))
        for pattern in as_list(schema.get("pattern")):
            bodies.append(pattern_body(pattern, ptr))
        for name in as_list(schema.get("format")):
            if not isinstance(name, str):
                raise GrammarError(f"'format' at {ptr} must be a string")
            format_node(name, ptr)  # raises for unsupported formats
            bodies.append(format_body(name))
        strings = _excluded(schema, ptr)[0]
        not_patterns = as_list(schema.get(NOT_PATTERNS))
        if strings or not_patterns:
            # Differences are taken on canonical text, where each string has one spelling.
            bodies.append(CANONICAL_BODY)
            body = ra.intersect(*bodies)
            out = [string_body(v) for v in strings]
            out += [pattern_body(p, ptr, "not") for p in not_patterns]
            return ra.cat(QUOTE, ra.Difference(body, ra.alt(*out)), QUOTE)
        body = ra.intersect(*bodies) if bodies else ra.star(JSON_CHAR)
        return ra.cat(QUOTE, body, QUOTE)

    def _integer(self, schema: dict, ptr: str) -> Node:
        if schema.get(FRACTION):
            raise Unsatisfiable(f"an integer cannot have a fraction at {ptr}")
        lo, lo_strict, hi, hi_strict = read_bounds(schema, ptr)
        lo_i = None if lo is None else (math.floor(lo) + 1 if lo_strict or lo != math.floor(lo)
                                        else int(lo))
        hi_i = None if hi is None else (math.ceil(hi) - 1 if hi_strict or hi != math.ceil(hi)
                                        else int(hi))
        if lo_i is not None and hi_i is not None and lo_i > hi_i:
            raise Unsatisfiable(f"integer bounds at {ptr} are empty")
        return self._without_numbers(self._multiple(integer_range(lo_i, hi_i), schema, ptr),
                                     schema, ptr)

    def _multiple(self, node: Node, schema: dict, ptr: str) -> Node:
        """``node`` restricted to the multiples of an integral ``multipleOf`` (integers only:
        validators test fractional multiples on doubles, where 0.07 is no multiple of 0.01)."""
        for k in schema.get(NOT_MULTIPLE, []):
            node = ra.Difference(node, multiples_of(k))
        if "multipleOf" not in schema:
            return node
        m = schema["multipleOf"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise GrammarError(f"'multipleOf' at {ptr} must be a positive number")
        if m != int(m) or int(m) > MAX_MULTIPLE_OF:
            raise GrammarError(f"unsupported JSON schema keyword 'multipleOf' at {ptr}: only "
                               f"integers up to {MAX_MULTIPLE_OF} are supported, got {m}")
        return node if int(m) == 1 else ra.intersect(node, multiples_of(int(m)))

    def _number(self, schema: dict, ptr: str) -> Node:
        lo, lo_strict, hi, hi_strict = read_bounds(schema, ptr)
        if "multipleOf" in schema or NOT_MULTIPLE in schema:  # generated as integers
            return self._integer(schema, ptr)
        if lo is None and hi is None:
            return self._without_numbers(NUMBER, schema, ptr)
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_strict or hi_strict))):
            raise Unsatisfiable(f"number bounds at {ptr} are empty")
        node = number_range(lo, lo_strict, hi, hi_strict)
        if lo_strict or hi_strict:
            node = ra.intersect(node, SHORT_NUMBER)
        return self._without_numbers(node, schema, ptr)

    def _without_numbers(self, node: Node, schema: dict, ptr: str) -> Node:
        """``node`` without the spellings of excluded numbers (exponent-free text only, where
        every spelling of a value is ``digits[.digits0*]``), and with a nonzero fraction when
        ``x-fraction`` asks for a number that is not an integer."""
        if schema.get(FRACTION):
            node = ra.intersect(node, FRACTIONAL, SHORT_NUMBER)
        numbers = _excluded(schema, ptr)[1]
        if not numbers:
            return node
        forms = ra.alt(*(parse_regex(number_forms(v)) for v in numbers))
        return ra.Difference(ra.intersect(node, SHORT_NUMBER), forms)

    # ------------------------------------------------------------ containers
    def _array(self, schema: dict, ptr: str) -> Node:
        if schema.get("uniqueItems") is True and not (schema.get("maxItems", 2) <= 1):
            return self._unique_array(schema, ptr)
        reject_excluded_containers(_excluded(schema, ptr)[3], list, ptr)
        if "contains" in schema:
            m = read_count(schema, "minContains", ptr, 1, self.opts.max_length_bound)
            big_m = read_count(schema, "maxContains", ptr, None, self.opts.max_length_bound)
            if m or big_m is not None:
                return self._array_contains(schema, ptr, m, big_m)
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise GrammarError(f"'prefixItems' at {ptr} must be an array")
        lo = read_count(schema, "minItems", ptr, 0, self.opts.max_length_bound)
        hi = read_count(schema, "maxItems", ptr, None, self.opts.max_length_bound)
        nodes: list[Node] = []
        for i, sub in enumerate(prefix):
            if hi is not None and i >= hi:
                break
            try:
                nodes.append(self.subschema(sub, f"{ptr}/prefixItems/{i}"))
            except Unsatisfiable:
                hi = i
                break
        item: Node | None = None
        if hi is None or hi > len(nodes):
            try:
                item = self.subschema(schema.get("items", True), f"{ptr}/items")
            except Unsatisfiable:
                hi = len(nodes)
        if hi is not None and lo > hi:
            raise Unsatisfiable(f"array at {ptr} cannot have minItems={lo} items")
        if hi is not None and hi - max(lo, len(nodes)) > self.opts.max_optional_items:
            hi = max(lo, len(nodes)) + self.opts.max_optional_items

        def rest(i: int) -> Node:  # elements i.. after element i-1 was written
            if hi is not None and i >= hi:
                return ra.EMPTY
            if i >= len(nodes):
                need = max(0, lo - i)
                return ra.rep(ra.cat(self.comma, item), need, None if hi is None else hi - i)
            step = ra.cat(self.comma, nodes[i], rest(i + 1))
            return step if i < lo else ra.opt(step)

        if hi == 0:
            content = ra.EMPTY
        else:
            first = nodes[0] if nodes else item
            content = ra.cat(first, rest(1))
            if lo == 0:
                content = ra.opt(content)
        return ra.cat(ra.lit("["), self.ws, content, self.ws, ra.lit("]"))

    def _unique_array(self, schema: dict, ptr: str) -> Node:
        """``uniqueItems: true`` where every element comes from a small finite set of JSON
        texts (an ``enum``, booleans, a short integer range, in ``items`` and ``prefixItems``):
        the array without ``uniqueItems``, intersected for each distinct value v with "at most
        one element is a spelling of v". Elements are split at the commas between them (a
        JSON value holds no comma outside its own brackets or quotes), and spellings are
        grouped by value as validators compare them (``1`` and ``1.0`` are one value, ``true``
        and ``1`` are not). The intersection tracks which values were used: about
        2^values x spelling bytes states, so the values are capped. Anything else (free
        strings, numbers, objects) is not regular: rejected, naming the keyword."""
        def reject(why: str) -> GrammarError:
            return GrammarError(f"unsupported JSON schema keyword 'uniqueItems' at {ptr}: {why}")

        if "contains" in schema:
            raise reject("not with 'contains'")
        base = self._array({k: v for k, v in schema.items() if k != "uniqueItems"}, ptr)
        parts = [(sub, f"{ptr}/prefixItems/{i}")
                 for i, sub in enumerate(schema.get("prefixItems", []))]
        hi = schema.get("maxItems")
        if hi is None or len(parts) < hi:
            parts.append((schema.get("items", True), f"{ptr}/items"))
        spellings: list[str] = []
        for sub, where in parts:
            try:
                node = self.subschema(sub, where)
            except Unsatisfiable:
                continue
            found = finite_texts(node, MAX_UNIQUE_SPELLINGS)
            if found is None:
                raise reject(f"its elements at {where} may take more than "
                             f"{MAX_UNIQUE_SPELLINGS} values (only small finite sets, such as "
                             "an enum, are enforced exactly)")
            spellings += found
        groups: dict[object, list[str]] = {}
        for text in dict.fromkeys(spellings):
            groups.setdefault(json_value_key(json.loads(text)), []).append(text)
        size = 2 ** len(groups) * (4 + sum(len(t.encode()) for t in dict.fromkeys(spellings)))
        if len(groups) > MAX_UNIQUE_VALUES or size > MAX_UNIQUE_STATES:
            raise reject(f"{len(groups)} distinct values are too many to track "
                         f"(at most {MAX_UNIQUE_VALUES}, and about {MAX_UNIQUE_STATES} states)")
        constraints = []
        for value, texts in groups.items():
            this = ra.alt(*(ra.lit(t) for t in texts))
            other = ra.alt(*(ra.lit(t) for v, ts in groups.items() if v != value for t in ts))
            rest = ra.star(ra.cat(self.comma, other))
            none = ra.opt(ra.cat(other, rest))
            once = ra.cat(ra.star(ra.cat(other, self.comma)), this, rest)
            constraints.append(ra.cat(ra.lit("["), self.ws, ra.alt(none, once), self.ws,
                                      ra.lit("]")))
        return ra.intersect(base, *constraints) if constraints else base

    def _array_contains(self, schema: dict, ptr: str, m: int, big_m: int | None) -> Node:
        """An array in which between ``m`` and ``big_m`` items match ``contains``: every
        position is "item schema and contains" or "item schema and not contains" (disjoint),
        and the count of the first kind is tracked (saturating at ``m`` when unbounded)."""
        if big_m is not None and big_m < m:
            raise Unsatisfiable(f"maxContains < minContains at {ptr}")
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise GrammarError(f"'prefixItems' at {ptr} must be an array")
        lo = read_count(schema, "minItems", ptr, 0, self.opts.max_length_bound)
        hi = read_count(schema, "maxItems", ptr, None, self.opts.max_length_bound)
        if hi is not None and lo > hi:
            raise Unsatisfiable(f"array at {ptr} cannot have minItems={lo} items")
        if hi is not None and hi - max(lo, len(prefix), m) > self.opts.max_optional_items:
            hi = max(lo, len(prefix), m) + self.opts.max_optional_items
        cond = schema["contains"]
        neg = Negator(self.resolve).negate(cond, f"{ptr}/contains")
        items = schema.get("items", True)
        kinds: dict[int, tuple[Node, Node]] = {}

        def kinds_at(i: int) -> tuple[Node, Node]:
            key = min(i, len(prefix))
            if key not in kinds:
                sub = prefix[i] if i < len(prefix) else items
                where = f"{ptr}/prefixItems/{i}" if i < len(prefix) else f"{ptr}/items"
                kinds[key] = (self._optional({"allOf": [sub, cond]}, where),
                              self._optional({"allOf": [sub, neg]}, where))
            return kinds[key]

        top = m if big_m is None else big_m + 1  # counts at or above are the same state
        tail_from = max(len(prefix), lo, 1)
        memo: dict[tuple[int, int], Node] = {}

        def tail(c: int) -> Node:  # position >= tail_from, no maxItems: only the count matters
            key = (-1, c)
            if key not in memo:
                yes, no = kinds_at(tail_from)
                if big_m is None and c >= m:
                    memo[key] = ra.star(ra.cat(self.comma, ra.alt(yes, no)))
                else:
                    more = ra.cat(self.comma, yes, tail(c + 1)) if big_m is None or c < big_m \
                        else ra.NOTHING
                    memo[key] = ra.cat(ra.star(ra.cat(self.comma, no)),
                                       ra.alt(ra.EMPTY, more) if c >= m else more)
            return memo[key]

        def rest(i: int, c: int) -> Node:  # elements i.. with c matches among 0..i-1
            if hi is None and i >= tail_from:
                return tail(c)
            key = (i, c)
            if key not in memo:
                done = i >= lo and c >= m
                if hi is not None and i >= hi:
                    memo[key] = ra.EMPTY if done else ra.NOTHING
                else:
                    sep = ra.EMPTY if i == 0 else self.comma
                    yes, no = kinds_at(i)
                    alts = [ra.EMPTY] if done else []
                    if big_m is None or c < big_m:
                        alts.append(ra.cat(sep, yes, rest(i + 1, min(c + 1, top))))
                    alts.append(ra.cat(sep, no, rest(i + 1, c)))
                    memo[key] = ra.alt(*alts)
            return memo[key]

        content = rest(0, 0)
        if content is ra.NOTHING:
            raise Unsatisfiable(f"no array at {ptr} satisfies 'contains'")
        return ra.cat(ra.lit("["), self.ws, content, self.ws, ra.lit("]"))

    def _object(self, schema: dict, ptr: str) -> Node:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        patterns = schema.get("patternProperties", {})
        if not isinstance(props, dict):
            raise GrammarError(f"'properties' at {ptr} must be an object")
        if not isinstance(patterns, dict):
            raise GrammarError(f"'patternProperties' at {ptr} must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError(f"'required' at {ptr} must be an array of strings")
        reject_excluded_containers(_excluded(schema, ptr)[3], dict, ptr)
        addl = schema.get("additionalProperties", False if self.opts.strict_objects else True)

        def value_schema(name: str) -> tuple[Any, str]:
            """The schema a member's value must satisfy, and where it comes from."""
            matching = [sub for p, sub in patterns.items() if _matches(p, name, ptr)]
            if name in props:
                return ({"allOf": [props[name], *matching]} if matching else props[name],
                        f"{ptr}/properties/{pointer_escape(name)}")
            if matching:
                return {"allOf": matching}, f"{ptr}/patternProperties"
            return addl, f"{ptr}/additionalProperties"

        names = schema.get("propertyNames", True)
        name_node = None  # the keys propertyNames allows (a JSON string tree)
        if names is not True and names != {}:
            name_node = self._optional({"allOf": [names, {"type": "string"}]},
                                       f"{ptr}/propertyNames")
            name_dfa = compile_regex_ast(name_node)
        members: list[tuple[Node, bool]] = []
        for name in dict.fromkeys(list(props) + list(required)):
            is_required = name in required
            if name_node is not None and not name_dfa.matches(
                    json.dumps(name, ensure_ascii=False).encode("utf-8", "surrogatepass")):
                if is_required:
                    raise Unsatisfiable(f"required property {name!r} at {ptr} is not allowed "
                                        "by propertyNames")
                continue
            sub, where = value_schema(name)
            if sub is False and name not in props:
                raise Unsatisfiable(f"required property {name!r} at {ptr} is not allowed "
                                    "(additionalProperties is false)")
            try:
                value = self.subschema(sub, where)
            except Unsatisfiable as e:
                if is_required:
                    raise Unsatisfiable(f"required property {name!r} at {ptr}: {e}") from None
                continue
            members.append((ra.cat(string_literal(name), self.colon, value), is_required))
        declared = [string_literal(n) for n in dict.fromkeys(list(props) + list(required))]
        rest = self._extra_members(patterns, addl, declared, ptr, name_node)
        num_required = sum(1 for _, r in members if r)
        min_props = read_count(schema, "minProperties", ptr, 0, None)
        max_props = read_count(schema, "maxProperties", ptr, None, None)
        if max_props is not None and max_props < num_required:
            raise Unsatisfiable(f"maxProperties < number of required properties at {ptr}")
        if min_props <= num_required:
            min_props = 0  # the required members already satisfy it
        if max_props is not None and rest is None and len(members) <= max_props:
            max_props = None  # cannot be exceeded
        if max(min_props, max_props or 0) > self.opts.max_counted_properties:
            keyword = "minProperties" if min_props > (max_props or 0) else "maxProperties"
            raise GrammarError(f"unsupported JSON schema keyword '{keyword}' at {ptr}: counts "
                               f"above {self.opts.max_counted_properties} are not supported")
        body = ra.Members(tuple(members), self.comma, rest, min_props, max_props)
        return ra.cat(ra.lit("{"), self.ws, body, self.ws, ra.lit("}"))

    def _extra_members(self, patterns: dict, addl: Any, declared: list[Node], ptr: str,
                       name_node: Node | None = None) -> Node | None:
        """Members with undeclared keys: one alternative per set of matching patterns (the
        key matches exactly those), whose value satisfies all of them — or
        ``additionalProperties`` when the key matches none."""
        names = list(patterns)
        if len(names) > MAX_PATTERN_PROPERTIES:
            raise GrammarError(f"unsupported JSON schema keyword 'patternProperties' at {ptr}: "
                               f"more than {MAX_PATTERN_PROPERTIES} patterns")
        bodies = [pattern_body(p, f"{ptr}/patternProperties", "patternProperties")
                  for p in names]
        alternatives = []
        for mask in range(1 << len(names)):
            inside = [i for i in range(len(names)) if mask >> i & 1]
            if inside:
                sub = {"allOf": [patterns[names[i]] for i in inside]}
                where = f"{ptr}/patternProperties/{pointer_escape(names[inside[0]])}"
            else:
                sub, where = addl, f"{ptr}/additionalProperties"
            if sub is False:
                continue
            value = self._optional(sub, where)
            if value is ra.NOTHING:
                continue
            body = ra.intersect(CANONICAL_BODY, *(bodies[i] for i in inside))
            outside = [bodies[i] for i in range(len(names)) if not mask >> i & 1]
            if outside:
                body = ra.Difference(body, ra.alt(*outside))
            key = ra.cat(QUOTE, body, QUOTE) if inside or outside else CANONICAL_STRING
            if name_node is not None:
                key = ra.intersect(key, name_node)
            if declared:
                key = ra.Difference(key, ra.alt(*declared))
            alternatives.append(ra.cat(key, self.colon, value))
        return ra.alt(*alternatives) if alternatives else None


MAX_PATTERN_PROPERTIES = 4  # 2^n key classes


def _matches(pattern: Any, name: str, ptr: str) -> bool:
    pattern_body(pattern, f"{ptr}/patternProperties", "patternProperties")  # validates it
    return pattern_matches(pattern, name)


CANONICAL_BODY = register_constant(ra.star(CANONICAL_CHAR))
# Exponent-free numbers of at most 15 digits: validators read JSON numbers as doubles, which
# keep 15 significant digits apart, so "differs from" and "is below" survive the reading.
SHORT_NUMBER = register_constant(ra.intersect(PLAIN_NUMBER, parse_regex(r"-?[0-9.]{1,16}")))
FRACTIONAL = register_constant(parse_regex(r"-?(?:0|[1-9][0-9]*)\.[0-9]*[1-9][0-9]*"))


def string_body(value: str) -> Node:
    """The canonical JSON text of ``value`` between its quotes."""
    return ra.lit(json.dumps(value, ensure_ascii=False)[1:-1])


def _excluded(schema: dict, ptr: str) -> tuple[list[str], list[Any], set]:
    values = schema.get(NOT_VALUES, [])
    if not isinstance(values, list):
        raise GrammarError(f"'not' at {ptr}: excluded values must be an array")
    return split_excluded(values, ptr)


# uniqueItems over finite element sets (``TypeCompiler._unique_array``).
MAX_UNIQUE_SPELLINGS = 64  # texts an element may take, per position
MAX_UNIQUE_VALUES = 10  # distinct values across the positions
MAX_UNIQUE_STATES = 60_000  # 2^values x spelling bytes, about the intersection's states


def finite_texts(node: Node, limit: int) -> list[str] | None:
    """Every text ``node`` accepts, when they are at most ``limit`` (a finite language);
    None otherwise."""
    dfa = compile_regex_ast(node)
    if dfa.is_empty():
        return []
    table, accepting = dfa.table, dfa.accepting
    out: list[str] = []
    path = bytearray()
    on_path = {dfa.start}
    # Depth-first over the live states (every one reaches acceptance, so a cycle among them
    # means infinitely many texts); each frame is a state and its live bytes still to take.
    stack = [(dfa.start, iter(np.flatnonzero(table[dfa.start]).tolist()))]
    if accepting[dfa.start]:
        out.append("")
    while stack:
        state, todo = stack[-1]
        b = next(todo, None)
        if b is None:
            stack.pop()
            on_path.discard(state)
            if path:
                path.pop()
            continue
        nxt = int(table[state, b])
        if nxt in on_path:
            return None
        path.append(b)
        if accepting[nxt]:
            out.append(path.decode("utf-8"))
            if len(out) > limit:
                return None
        on_path.add(nxt)
        stack.append((nxt, iter(np.flatnonzero(table[nxt]).tolist())))
    return out


def json_value_key(value: Any) -> object:
    """A key equal for JSON values that validators treat as equal under ``uniqueItems``:
    numbers by value (``1 == 1.0``), booleans apart from numbers, objects regardless of key
    order."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", Fraction(value))
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    if isinstance(value, list):
        return ("array", tuple(json_value_key(v) for v in value))
    return ("object", frozenset((k, json_value_key(v)) for k, v in value.items()))
