"""Per-type trees of a JSON schema: the JSON text of a null, boolean, string, integer, number,
array or object that satisfies the schema's type-specific keywords.

``TypeCompiler.compile`` picks the types a schema allows (its ``type``, else the types its
keywords imply) and joins their trees. Subschemas (array items, property values) go back
through the ``subschema`` function it is given — the schema compiler's entry point — so
references and combinators work at any depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.formats import format_node
from radixrt.fsm.json_strings import (
    CANONICAL_STRING,
    JSON_CHAR,
    QUOTE,
    json_encode_tree,
    string_literal,
)
from radixrt.fsm.json_values import any_value_node, format_body, length_body, separators
from radixrt.fsm.numeric import NUMBER, integer_range, number_range
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.regex_parser import parse_alternatives
from radixrt.fsm.schema_dicts import (
    ANNOTATIONS,
    TYPES,
    Unsatisfiable,
    as_list,
    inferred_types,
    pointer_escape,
    read_bounds,
    read_count,
)
from radixrt.fsm.schema_options import JsonSchemaOptions


class TypeCompiler:
    def __init__(self, opts: JsonSchemaOptions, subschema: Callable[[Any, str], Node]):
        self.opts = opts
        self.subschema = subschema
        self.ws, self.colon, self.comma = separators(opts.whitespace_pattern)

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
        return ra.lit("null")

    def _boolean(self, schema: dict, ptr: str) -> Node:
        return ra.alt(ra.lit("true"), ra.lit("false"))

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
            bodies.append(self._pattern_body(pattern, ptr))
        for name in as_list(schema.get("format")):
            if not isinstance(name, str):
                raise GrammarError(f"'format' at {ptr} must be a string")
            format_node(name, ptr)  # raises for unsupported formats
            bodies.append(format_body(name))
        body = ra.intersect(*bodies) if bodies else ra.star(JSON_CHAR)
        return ra.cat(QUOTE, body, QUOTE)

    def _pattern_body(self, pattern: Any, ptr: str) -> Node:
        if not isinstance(pattern, str):
            raise GrammarError(f"'pattern' at {ptr} must be a string")
        try:
            alternatives = parse_alternatives(pattern, flavor="ecma")
        except GrammarError as e:
            raise GrammarError(f"unsupported JSON schema keyword 'pattern' at {ptr}: {e}") from None
        anything = ra.star(JSON_CHAR)
        return ra.alt(*(ra.cat(ra.EMPTY if a.anchored_start else anything,
                               json_encode_tree(a.node),
                               ra.EMPTY if a.anchored_end else anything)
                        for a in alternatives))

    def _integer(self, schema: dict, ptr: str) -> Node:
        lo, lo_strict, hi, hi_strict = read_bounds(schema, ptr)
        lo_i = None if lo is None else (math.floor(lo) + 1 if lo_strict or lo != math.floor(lo)
                                        else int(lo))
        hi_i = None if hi is None else (math.ceil(hi) - 1 if hi_strict or hi != math.ceil(hi)
                                        else int(hi))
        if lo_i is not None and hi_i is not None and lo_i > hi_i:
            raise Unsatisfiable(f"integer bounds at {ptr} are empty")
        return integer_range(lo_i, hi_i)

    def _number(self, schema: dict, ptr: str) -> Node:
        lo, lo_strict, hi, hi_strict = read_bounds(schema, ptr)
        if lo is None and hi is None:
            return NUMBER
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_strict or hi_strict))):
            raise Unsatisfiable(f"number bounds at {ptr} are empty")
        return number_range(lo, lo_strict, hi, hi_strict)

    # ------------------------------------------------------------ containers
    def _array(self, schema: dict, ptr: str) -> Node:
        if schema.get("uniqueItems") is True and not (schema.get("maxItems", 2) <= 1):
            raise GrammarError(f"unsupported JSON schema keyword 'uniqueItems' at {ptr}")
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

    def _object(self, schema: dict, ptr: str) -> Node:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(props, dict):
            raise GrammarError(f"'properties' at {ptr} must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError(f"'required' at {ptr} must be an array of strings")
        addl = schema.get("additionalProperties", False if self.opts.strict_objects else True)
        members: list[tuple[Node, bool]] = []
        for name, sub in props.items():
            is_required = name in required
            try:
                value = self.subschema(sub, f"{ptr}/properties/{pointer_escape(name)}")
            except Unsatisfiable as e:
                if is_required:
                    raise Unsatisfiable(f"required property {name!r} at {ptr}: {e}") from None
                continue
            members.append((ra.cat(string_literal(name), self.colon, value), is_required))
        for name in dict.fromkeys(required):
            if name in props:
                continue
            if addl is False:
                raise Unsatisfiable(f"required property {name!r} at {ptr} is not allowed "
                                    "(additionalProperties is false)")
            value = self.subschema(addl, f"{ptr}/additionalProperties")
            members.append((ra.cat(string_literal(name), self.colon, value), True))
        rest = None
        if addl is not False:
            try:
                value = self.subschema(addl, f"{ptr}/additionalProperties")
                declared = [string_literal(n) for n in list(props) + list(required)]
                key = ra.Difference(CANONICAL_STRING, ra.alt(*declared)) if declared \
                    else CANONICAL_STRING
                rest = ra.cat(key, self.colon, value)
            except Unsatisfiable:
                rest = None
        num_required = sum(1 for _, r in members if r)
        min_props = read_count(schema, "minProperties", ptr, 0, None)
        max_props = read_count(schema, "maxProperties", ptr, None, None)
        if min_props > num_required:
            raise GrammarError(f"unsupported JSON schema keyword 'minProperties' at {ptr} "
                               "(only supported when the required properties satisfy it)")
        if max_props is not None and (rest is not None or len(members) > max_props):
            if max_props < num_required:
                raise Unsatisfiable(f"maxProperties < number of required properties at {ptr}")
            raise GrammarError(f"unsupported JSON schema keyword 'maxProperties' at {ptr} "
                               "(only supported for closed objects with few enough properties)")
        body = ra.Members(tuple(members), self.comma, rest)
        return ra.cat(ra.lit("{"), self.ws, body, self.ws, ra.lit("}"))
