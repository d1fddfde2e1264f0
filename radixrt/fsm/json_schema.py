"""JSON Schema → ``regex_ast`` tree (then a byte DFA like any regex).

Output form: object members in ``properties`` order (required ones always present, optional
ones skippable), then — for open objects — extra members whose keys differ from the declared
names; whitespace only where ``whitespace_pattern`` allows (default: none, compact JSON); a
pattern given for whitespace must be bounded.

Rules that keep every generated document valid:
- a keyword we cannot enforce raises ``GrammarError("unsupported JSON schema keyword 'X' at
  <pointer>")``; annotations are ignored; ``enum``/``const`` are filtered with ``jsonschema``
  against their sibling keywords (so any sibling keyword works there);
- ``oneOf`` branches that are provably disjoint (types, enum/const values, or a required
  property with disjoint schemas) compile as anyOf; others as "this branch and not the others";
- ``not``, ``if``/``then``/``else`` and the dependency keywords are rewritten by
  ``schema_logic`` (negation pushed down to keywords that can be negated exactly);
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
from typing import Any

from radixrt.fsm import regex_ast as ra
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.json_values import any_object_node, any_value_node, literal_forms
from radixrt.fsm.regex_ast import Node
from radixrt.fsm.schema_dicts import ANNOTATIONS, Unsatisfiable, enum_values, normalize
from radixrt.fsm.schema_document import SchemaDocument
from radixrt.fsm.schema_logic import POINTER, desugar, exactly_one, has_logic
from radixrt.fsm.schema_options import JsonSchemaOptions
from radixrt.fsm.schema_types import TypeCompiler

__all__ = ["JsonSchemaOptions", "any_json_object", "json_schema_to_ast", "json_schema_to_regex",
           "warm_caches"]

UNSUPPORTED = ("unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef")


MAX_BRANCHES = 64  # alternatives of one anyOf/oneOf (after allOf distributes them)


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


def warm_caches(options: JsonSchemaOptions | None = None) -> None:
    """Build the process-wide automata that many schemas embed (formats, "any JSON value",
    JSON strings), so that the first requests do not pay for them."""
    from radixrt.fsm.automaton import compile_regex_ast
    from radixrt.fsm.formats import FORMAT_PATTERNS
    from radixrt.fsm.json_strings import CANONICAL_STRING, JSON_STRING
    from radixrt.fsm.json_values import format_body

    opts = options or JsonSchemaOptions()
    nodes = [format_body(name) for name in FORMAT_PATTERNS]
    nodes += [JSON_STRING, CANONICAL_STRING, any_json_object(opts),
              any_value_node(opts.any_value_depth, opts.whitespace_pattern)]
    for node in nodes:
        compile_regex_ast(node)


def any_json_object(options: JsonSchemaOptions | None = None) -> Node:
    """Any JSON object whose values nest at most ``any_value_depth`` more levels."""
    opts = options or JsonSchemaOptions()
    return any_object_node(opts.any_value_depth + 1, opts.whitespace_pattern)


class _SchemaCompiler:
    """The keywords that apply to the whole value (``enum``/``const``, ``$ref``, ``allOf``,
    ``anyOf``/``oneOf``); what is left goes to the per-type trees of ``TypeCompiler``, whose
    subschemas come back here."""

    def __init__(self, root: Any, opts: JsonSchemaOptions):
        self.opts = opts
        self.document = SchemaDocument(root, opts.max_recursion_depth)
        self.types = TypeCompiler(opts, self.compile, self.document.resolve)
        self.ref_memo: dict[tuple, Node | Unsatisfiable] = {}

    def compile(self, schema: Any, ptr: str) -> Node:
        if schema is True:
            return self.types.any_value()
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
        if has_logic(schema):
            schema = desugar(schema, ptr, self.document.resolve)
        if "$ref" in schema:
            if constraints - {"$ref"}:
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                return self.compile({"allOf": [{"$ref": schema["$ref"]}, rest]}, ptr)
            return self._ref(schema["$ref"], ptr)
        if "allOf" in schema:
            merged, refs = self.document.flatten_all_of(schema, ptr)
            with self.document.expanding(refs):
                return self.compile(merged, ptr)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._branches(schema, key, ptr)
        return self.types.compile(schema, ptr)

    def _ref(self, ref: str, ptr: str) -> Node:
        """The target's tree, compiled once per reference and path of references above it."""
        if not isinstance(ref, str):
            raise GrammarError(f"'$ref' at {ptr} must be a string")
        document = self.document
        if document.ref_path.count(ref) >= self.opts.max_recursion_depth:
            raise Unsatisfiable(f"recursive $ref {ref!r} at {ptr} exceeds max_recursion_depth="
                                f"{self.opts.max_recursion_depth} where it cannot be cut")
        key = (ref, tuple(document.ref_path))
        got = self.ref_memo.get(key)
        if got is None:
            target = document.resolve(ref, ptr)
            with document.expanding([ref]):
                try:
                    got = self.compile(target, ref)
                except Unsatisfiable as e:
                    got = e
            self.ref_memo[key] = got
        if isinstance(got, Unsatisfiable):
            raise got
        return got

    def _branches(self, schema: dict, key: str, ptr: str) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise GrammarError(f"'{key}' at {ptr} must be a non-empty array")
        rest = {k: v for k, v in schema.items() if k != key}
        has_rest = any(k not in ANNOTATIONS for k in rest)
        if key == "oneOf" and not self.document.disjoint(branches, rest if has_rest else None,
                                                        ptr):
            branches = exactly_one(branches, ptr, self.document.resolve)
        if len(branches) > MAX_BRANCHES:
            raise GrammarError(f"unsupported JSON schema keyword '{key}' at {ptr}: "
                               f"{len(branches)} cases after combining subschemas (at most "
                               f"{MAX_BRANCHES})")
        nodes: list[Node] = []
        reasons = []
        for i, branch in enumerate(branches):
            sub = {"allOf": [rest, branch]} if has_rest else branch
            where = branch.get(POINTER, f"{ptr}/{key}/{i}") if isinstance(branch, dict) \
                else f"{ptr}/{key}/{i}"
            try:
                nodes.append(self.compile(sub, where))
            except Unsatisfiable as e:
                reasons.append(str(e))
        if not nodes:
            raise Unsatisfiable(f"no branch of '{key}' at {ptr} can be generated ({'; '.join(reasons)})")
        return ra.alt(*nodes)

    def _enum(self, schema: dict, ptr: str) -> Node:
        values = enum_values(schema)
        if values is None:
            raise GrammarError(f"'enum' at {ptr} must be an array")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        if any(k not in ANNOTATIONS for k in rest):
            values = [v for v in values if self.document.is_valid(v, rest)]
        nodes = [n for v in values for n in literal_forms(v)]
        if not nodes:
            raise Unsatisfiable(f"no 'enum'/'const' value at {ptr} satisfies the schema")
        return ra.alt(*nodes)
