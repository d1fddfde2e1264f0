"""JSON Schema → ``regex_ast`` tree (then a byte DFA like any regex).

Output form: object members in ``properties`` order (required ones always present, optional
ones skippable), then — for open objects — extra members whose keys differ from the declared
names; whitespace only where ``whitespace_pattern`` allows (default: none, compact JSON); a
pattern given for whitespace must be bounded.

Rules that keep every generated document valid:
- a keyword we cannot enforce raises ``GrammarError("unsupported JSON schema keyword 'X' at
  <pointer>")``; annotations are ignored; ``enum``/``const`` are filtered with ``jsonschema``
  against their sibling keywords (so any sibling keyword works there);
- ``oneOf`` is accepted only when its branches are provably disjoint (types, enum/const values,
  or a required property with disjoint schemas), else it is rejected with a hint to use anyOf;
- recursion through ``$ref`` is expanded ``max_recursion_depth`` times per reference; past that,
  the reference is cut where it is optional (optional property, anyOf branch, array item when
  ``minItems`` allows none) and is an error where it is required;
- unconstrained values (``{}``, open-object extras) nest at most ``any_value_depth`` levels;
- integer bounds are exact digit ranges; bounded numbers are written without an exponent;
  ``format`` is asserted (date-time, date, time, email, uuid, uri, ipv4);
- without ``type``, the type is inferred from type-specific keywords (a generation choice: the
  spec would also accept values of every other type).
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
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
from radixrt.fsm.json_values import (
    any_object_node,
    any_value_node,
    format_body,
    length_body,
    literal_forms,
    separators,
)
from radixrt.fsm.numeric import NUMBER, integer_range, number_range
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.regex_parser import parse_alternatives
from radixrt.fsm.schema_dicts import (
    ANNOTATIONS,
    TYPES,
    Unsatisfiable,
    as_list,
    enum_values,
    for_jsonschema,
    inferred_types,
    merge,
    normalize,
    pointer_escape,
    read_bounds,
    read_count,
)

UNSUPPORTED = ("patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
               "dependencies", "unevaluatedProperties", "unevaluatedItems", "contains",
               "minContains", "maxContains", "not", "if", "then", "else", "$dynamicRef",
               "$recursiveRef", "multipleOf")


@dataclass(frozen=True)
class JsonSchemaOptions:
    whitespace_pattern: str | None = None  # regex between JSON tokens; None = compact JSON
    max_recursion_depth: int = 3  # expansions of one $ref on a path before it is cut
    any_value_depth: int = 2  # container nesting allowed in unconstrained values
    strict_objects: bool = False  # True: no additionalProperties keyword = closed object
    max_length_bound: int = 4096  # largest minLength/maxLength/minItems/maxItems we expand


def json_schema_to_ast(schema: Any, options: JsonSchemaOptions | None = None) -> Node:
    """Compile a JSON schema (dict, bool, or its JSON text) to a regex tree."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"json_schema is not valid JSON: {e}") from e
    compiler = _SchemaCompiler(schema, options or JsonSchemaOptions())
    try:
        return compiler.compile(schema, "#")
    except Unsatisfiable as e:
        raise GrammarError(f"JSON schema accepts no value that can be generated: {e}") from None


def json_schema_to_regex(schema: Any, options: JsonSchemaOptions | None = None) -> str:
    """The schema as a Python regex string; raises GrammarError when the tree needs product
    automata (open objects, pattern with length bounds, number bounds) that regex syntax lacks."""
    try:
        return ra.to_pattern(json_schema_to_ast(schema, options))
    except ra.NotRegularSyntax as e:
        raise GrammarError(f"schema has no plain regex form ({e}); compile it instead") from e


def any_json_object(options: JsonSchemaOptions | None = None) -> Node:
    """Any JSON object whose values nest at most ``any_value_depth`` more levels."""
    opts = options or JsonSchemaOptions()
    return any_object_node(opts.any_value_depth + 1, opts.whitespace_pattern)


class _SchemaCompiler:
    def __init__(self, root: Any, opts: JsonSchemaOptions):
        self.root = root
        self.opts = opts
        self.ws, self.colon, self.comma = separators(opts.whitespace_pattern)
        self.ref_stack: list[str] = []
        self.ref_memo: dict[tuple, Node | Unsatisfiable] = {}
        self._validator = None

    # ------------------------------------------------------------ dispatch
    def compile(self, schema: Any, ptr: str) -> Node:
        if schema is True:
            return self.any_value(self.opts.any_value_depth)
        if schema is False:
            raise Unsatisfiable(f"schema at {ptr} is false")
        if not isinstance(schema, dict):
            raise GrammarError(f"schema at {ptr} must be an object or a boolean")
        schema = normalize(schema, ptr)
        constraints = {k for k in schema if k not in ANNOTATIONS}
        if "enum" in constraints or "const" in constraints:
            return self._enum(schema, ptr)
        for k in UNSUPPORTED:
            if k in schema:
                raise GrammarError(f"unsupported JSON schema keyword '{k}' at {ptr}")
        if "$ref" in schema:
            if constraints - {"$ref"}:
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                return self.compile({"allOf": [{"$ref": schema["$ref"]}, rest]}, ptr)
            return self._ref(schema["$ref"], ptr)
        if "allOf" in schema:
            merged, refs = self._flatten_all_of(schema, ptr)
            self.ref_stack.extend(refs)
            try:
                return self.compile(merged, ptr)
            finally:
                del self.ref_stack[len(self.ref_stack) - len(refs):]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._branches(schema, key, ptr)
        return self._typed(schema, ptr)

    # ------------------------------------------------------------ references
    def _ref(self, ref: str, ptr: str) -> Node:
        if not isinstance(ref, str):
            raise GrammarError(f"'$ref' at {ptr} must be a string")
        if self.ref_stack.count(ref) >= self.opts.max_recursion_depth:
            raise Unsatisfiable(f"recursive $ref {ref!r} at {ptr} exceeds max_recursion_depth="
                                f"{self.opts.max_recursion_depth} where it cannot be cut")
        key = (ref, tuple(self.ref_stack))
        got = self.ref_memo.get(key)
        if got is None:
            target = self._resolve(ref, ptr)
            self.ref_stack.append(ref)
            try:
                got = self.compile(target, ref)
            except Unsatisfiable as e:
                got = e
            finally:
                self.ref_stack.pop()
            self.ref_memo[key] = got
        if isinstance(got, Unsatisfiable):
            raise got
        return got

    def _resolve(self, ref: str, ptr: str) -> Any:
        if not ref.startswith("#"):
            raise GrammarError(f"unsupported JSON schema keyword '$ref' at {ptr}: only local "
                               f"references ('#/...') are supported, got {ref!r}")
        node = self.root
        fragment = urllib.parse.unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            raise GrammarError(f"unsupported JSON schema keyword '$ref' at {ptr}: anchor "
                               f"references are not supported, got {ref!r}")
        for part in fragment.split("/")[1:] if fragment else []:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise GrammarError(f"'$ref' at {ptr}: {ref!r} does not resolve") from None
        return node

    def _flatten_all_of(self, schema: dict, ptr: str) -> tuple[dict, list[str]]:
        refs: list[str] = []
        parts = self._flatten(schema, ptr, refs)
        merged: dict = {}
        for part, part_ptr in parts:
            merged = merge(merged, part, part_ptr)
        return merged, refs

    def _flatten(self, schema: Any, ptr: str, refs: list[str]) -> list[tuple[dict, str]]:
        if schema is True:
            return []
        if schema is False:
            raise Unsatisfiable(f"schema at {ptr} is false")
        if not isinstance(schema, dict):
            raise GrammarError(f"schema at {ptr} must be an object or a boolean")
        schema = normalize(schema, ptr)
        out: list[tuple[dict, str]] = []
        if "$ref" in schema:
            ref = schema["$ref"]
            if (self.ref_stack + refs).count(ref) >= self.opts.max_recursion_depth:
                raise Unsatisfiable(f"recursive $ref {ref!r} at {ptr} exceeds "
                                    f"max_recursion_depth={self.opts.max_recursion_depth}")
            refs.append(ref)
            out += self._flatten(self._resolve(ref, ptr), ref, refs)
        all_of = schema.get("allOf", [])
        if not isinstance(all_of, list) or ("allOf" in schema and not all_of):
            raise GrammarError(f"'allOf' at {ptr} must be a non-empty array")
        for i, sub in enumerate(all_of):
            out += self._flatten(sub, f"{ptr}/allOf/{i}", refs)
        out.append(({k: v for k, v in schema.items() if k not in ("$ref", "allOf")}, ptr))
        return out

    # ------------------------------------------------------------ combinators
    def _branches(self, schema: dict, key: str, ptr: str) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise GrammarError(f"'{key}' at {ptr} must be a non-empty array")
        rest = {k: v for k, v in schema.items() if k != key}
        has_rest = any(k not in ANNOTATIONS for k in rest)
        nodes: list[Node] = []
        reasons = []
        for i, branch in enumerate(branches):
            sub = {"allOf": [rest, branch]} if has_rest else branch
            try:
                nodes.append(self.compile(sub, f"{ptr}/{key}/{i}"))
            except Unsatisfiable as e:
                reasons.append(str(e))
        if key == "oneOf":
            self._check_disjoint(branches, rest if has_rest else None, ptr)
        if not nodes:
            raise Unsatisfiable(f"no branch of '{key}' at {ptr} can be generated ({'; '.join(reasons)})")
        return ra.alt(*nodes)

    def _check_disjoint(self, branches: list, rest: dict | None, ptr: str) -> None:
        plain = []
        for i, b in enumerate(branches):
            try:
                sub = {"allOf": [rest, b]} if rest is not None else {"allOf": [b]}
                plain.append(self._flatten_all_of(sub, f"{ptr}/oneOf/{i}")[0])
            except Unsatisfiable:
                plain.append(None)  # accepts nothing: disjoint from everything
        for i in range(len(plain)):
            for j in range(i + 1, len(plain)):
                if plain[i] is not None and plain[j] is not None and not self._disjoint(
                        plain[i], plain[j], 0):
                    raise GrammarError(
                        f"unsupported JSON schema keyword 'oneOf' at {ptr}: branches {i} and {j} "
                        "are not provably mutually exclusive (use anyOf, or discriminate them by "
                        "type, enum/const, or a required property)")

    def _disjoint(self, a: dict, b: dict, depth: int) -> bool:
        if not (inferred_types(a) & inferred_types(b)):
            return True
        for x, y in ((a, b), (b, a)):
            values = enum_values(x)
            if values is not None and not any(self._valid(v, y) for v in values):
                return True
        if depth > 4:
            return False
        pa, pb = a.get("properties", {}), b.get("properties", {})
        for name in set(a.get("required", [])) & set(b.get("required", [])):
            sa, sb = pa.get(name, a.get("additionalProperties", True)), pb.get(
                name, b.get("additionalProperties", True))
            if sa is False or sb is False:
                return True
            try:
                sa = self._flatten_all_of({"allOf": [sa]}, "#")[0] if isinstance(sa, dict) else None
                sb = self._flatten_all_of({"allOf": [sb]}, "#")[0] if isinstance(sb, dict) else None
            except Unsatisfiable:
                return True
            if sa is not None and sb is not None and self._disjoint(sa, sb, depth + 1):
                return True
        return False

    def _valid(self, value: Any, schema: dict) -> bool:
        if self._validator is None:
            from jsonschema import Draft202012Validator
            from jsonschema.validators import validator_for

            root = self.root if isinstance(self.root, (dict, bool)) else {}
            cls = validator_for(root, default=Draft202012Validator) if isinstance(
                root, dict) else Draft202012Validator
            self._validator = cls(root)
        return self._validator.evolve(schema=for_jsonschema(schema)).is_valid(value)

    def _enum(self, schema: dict, ptr: str) -> Node:
        values = enum_values(schema)
        if values is None:
            raise GrammarError(f"'enum' at {ptr} must be an array")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        if any(k not in ANNOTATIONS for k in rest):
            values = [v for v in values if self._valid(v, rest)]
        nodes = [n for v in values for n in literal_forms(v)]
        if not nodes:
            raise Unsatisfiable(f"no 'enum'/'const' value at {ptr} satisfies the schema")
        return ra.alt(*nodes)

    # ------------------------------------------------------------ types
    def _typed(self, schema: dict, ptr: str) -> Node:
        t = schema.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else t
            if not isinstance(names, list) or not names or any(n not in TYPES for n in names):
                raise GrammarError(f"invalid 'type' {t!r} at {ptr}")
        types = inferred_types(schema)
        if types == set(TYPES) and len(set(schema) - ANNOTATIONS - {"type", "nullable"}) == 0:
            return self.any_value(self.opts.any_value_depth)
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

    def _null(self, schema: dict, ptr: str) -> Node:
        return ra.lit("null")

    def _boolean(self, schema: dict, ptr: str) -> Node:
        return ra.alt(ra.lit("true"), ra.lit("false"))

    def _string(self, schema: dict, ptr: str) -> Node:
        lo = read_count(schema, "minLength", ptr, 0, self.opts.max_length_bound)
        hi = read_count(schema, "maxLength", ptr, None, self.opts.max_length_bound)
        if hi is not None and lo > hi:
            raise Unsatisfiable(f"minLength > maxLength at {ptr}")
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
                nodes.append(self.compile(sub, f"{ptr}/prefixItems/{i}"))
            except Unsatisfiable:
                hi = i
                break
        item: Node | None = None
        if hi is None or hi > len(nodes):
            try:
                item = self.compile(schema.get("items", True), f"{ptr}/items")
            except Unsatisfiable:
                hi = len(nodes)
        if hi is not None and lo > hi:
            raise Unsatisfiable(f"array at {ptr} cannot have minItems={lo} items")

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
                value = self.compile(sub, f"{ptr}/properties/{pointer_escape(name)}")
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
            value = self.compile(addl, f"{ptr}/additionalProperties")
            members.append((ra.cat(string_literal(name), self.colon, value), True))
        rest = None
        if addl is not False:
            try:
                value = self.compile(addl, f"{ptr}/additionalProperties")
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

    # ------------------------------------------------------------ unconstrained values
    def any_value(self, depth: int) -> Node:
        return any_value_node(depth, self.opts.whitespace_pattern)

    def any_object(self, depth: int) -> Node:
        return any_object_node(depth, self.opts.whitespace_pattern)
