"""The one error type of structured generation: a grammar we cannot compile or enforce."""

from __future__ import annotations


class GrammarError(ValueError):
    """A regex, JSON schema or choice list that radixrt.fsm cannot compile or enforce.

    The message names the offending keyword or field (for JSON schemas, with its JSON pointer).
    """
