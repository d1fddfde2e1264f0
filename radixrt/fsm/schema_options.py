"""Options of JSON schema compilation (shared by the compiler and the modules it delegates to)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JsonSchemaOptions:
    whitespace_pattern: str | None = None  # regex between JSON tokens; None = compact JSON
    max_recursion_depth: int = 3  # expansions of one $ref on a path before it is cut
    any_value_depth: int = 2  # container nesting allowed in unconstrained values
    strict_objects: bool = False  # True: no additionalProperties keyword = closed object
    max_length_bound: int = 4096  # largest minLength/maxLength/minItems/maxItems we expand
    # Generation caps (sound: they only shorten what is generated). A counted string length
    # costs ~14 DFA states per character, an optional array item a copy of the item's DFA.
    max_string_length: int = 256  # maxLength above this is generated as this
    max_optional_items: int = 16  # maxItems - minItems above this is generated as this
    max_counted_properties: int = 8  # largest minProperties/maxProperties that is counted
