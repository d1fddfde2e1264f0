"""The schema as a document of plain dicts: local ``$ref`` resolution, ``allOf`` flattening, and
the questions the compiler asks without building a tree — does a value satisfy a subschema, are
two ``oneOf`` branches provably disjoint.

The document also keeps the path of references being expanded (``ref_path``). Recursion through
``$ref`` is counted on it, both where the compiler follows a reference and where ``allOf``
flattening does, so that both stop after ``max_recursion_depth`` expansions.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from radixrt.fsm.errors import GrammarError
from radixrt.fsm.schema_dicts import (
    TYPES,
    Unsatisfiable,
    enum_values,
    for_jsonschema,
    inferred_types,
    merge,
    normalize,
    type_set,
)
from radixrt.fsm.schema_logic import desugar

# Deepest nesting of required properties searched for a pair of disjoint schemas.
_DISJOINT_DEPTH = 4


class SchemaDocument:
    def __init__(self, root: Any, max_recursion_depth: int):
        self.root = root
        self.max_recursion_depth = max_recursion_depth
        self.ref_path: list[str] = []  # references being expanded, outermost first
        self._validator = None

    # ------------------------------------------------------------ references
    @contextmanager
    def expanding(self, refs: list[str]) -> Iterator[None]:
        """Count ``refs`` as being expanded for the duration of the block."""
        self.ref_path.extend(refs)
        try:
            yield
        finally:
            del self.ref_path[len(self.ref_path) - len(refs):]

    def resolve(self, ref: str, ptr: str) -> Any:
        """The subschema a local reference (``#``, ``#/a/b``) points to."""
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

    # ------------------------------------------------------------ allOf
    def flatten_all_of(self, schema: dict, ptr: str) -> tuple[dict, list[str]]:
        """One schema equivalent to ``schema`` with its ``allOf`` parts and ``$ref`` targets
        merged in, and the references followed to get there (which the caller expands)."""
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
        schema = desugar(normalize(schema, ptr), ptr, self.resolve)
        out: list[tuple[dict, str]] = []
        if "$ref" in schema:
            ref = schema["$ref"]
            if (self.ref_path + refs).count(ref) >= self.max_recursion_depth:
                raise Unsatisfiable(f"recursive $ref {ref!r} at {ptr} exceeds "
                                    f"max_recursion_depth={self.max_recursion_depth}")
            refs.append(ref)
            out += self._flatten(self.resolve(ref, ptr), ref, refs)
        all_of = schema.get("allOf", [])
        if not isinstance(all_of, list) or ("allOf" in schema and not all_of):
            raise GrammarError(f"'allOf' at {ptr} must be a non-empty array")
        for i, sub in enumerate(all_of):
            out += self._flatten(sub, f"{ptr}/allOf/{i}", refs)
        out.append(({k: v for k, v in schema.items() if k not in ("$ref", "allOf")}, ptr))
        return out

    # ------------------------------------------------------------ validity and disjointness
    def is_valid(self, value: Any, schema: dict) -> bool:
        """Whether ``value`` satisfies ``schema`` (references resolve against the root)."""
        if self._validator is None:
            from jsonschema import Draft202012Validator
            from jsonschema.validators import validator_for

            root = self.root if isinstance(self.root, (dict, bool)) else {}
            cls = validator_for(root, default=Draft202012Validator) if isinstance(
                root, dict) else Draft202012Validator
            self._validator = cls(root)
        return self._validator.evolve(schema=for_jsonschema(schema)).is_valid(value)

    def disjoint(self, branches: list, rest: dict | None, ptr: str) -> bool:
        """Whether every two ``oneOf`` branches (each with the sibling keywords ``rest``)
        provably accept no common value: by type, by enum/const values, or by a required
        property whose schemas are disjoint in turn."""
        try:
            self.check_disjoint(branches, rest, ptr)
        except GrammarError:
            return False
        return True

    def check_disjoint(self, branches: list, rest: dict | None, ptr: str) -> None:
        """Raise unless ``disjoint``."""
        plain = []
        for i, b in enumerate(branches):
            try:
                sub = {"allOf": [rest, b]} if rest is not None else {"allOf": [b]}
                plain.append(self.flatten_all_of(sub, f"{ptr}/oneOf/{i}")[0])
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
        """No value generated for ``a`` satisfies ``b`` and vice versa. Generated values have
        the inferred types; keywords only constrain their own type, so a value of a type that
        the other branch does not exclude explicitly may satisfy it."""
        gen_a, gen_b = inferred_types(a), inferred_types(b)
        if not (gen_a & _explicit_types(b)) and not (gen_b & _explicit_types(a)):
            return True
        for x, y in ((a, b), (b, a)):
            values = enum_values(x)
            if values is not None and not any(self.is_valid(v, y) for v in values):
                return True
        if depth > _DISJOINT_DEPTH or not gen_a | gen_b <= {"object"}:
            return False  # "required" only separates objects
        pa, pb = a.get("properties", {}), b.get("properties", {})
        for name in set(a.get("required", [])) & set(b.get("required", [])):
            sa, sb = pa.get(name, a.get("additionalProperties", True)), pb.get(
                name, b.get("additionalProperties", True))
            if sa is False or sb is False:
                return True
            try:
                sa = self.flatten_all_of({"allOf": [sa]}, "#")[0] if isinstance(sa, dict) else None
                sb = self.flatten_all_of({"allOf": [sb]}, "#")[0] if isinstance(sb, dict) else None
            except Unsatisfiable:
                return True
            if sa is not None and sb is not None and self._disjoint(sa, sb, depth + 1):
                return True
        return False


def _explicit_types(schema: dict) -> set[str]:
    """The types ``schema`` accepts at all: its ``type``, else every type."""
    types = type_set(schema)
    if types is None:
        return set(TYPES)
    if "number" in types:
        types.add("integer")
    return types
