"""Structured generation: regex / JSON schema / choices → byte DFA → per-token masks.

Map (one line per module):
- ``vocabulary``: the exact bytes of every token id (byte-level BPE, SentencePiece, specials).
- ``regex_parser`` → ``regex_ast`` → ``automaton`` (+ ``dfa``): regex text → tree → minimal
  byte DFA (``dfa``: the DFA type, pruning, minimization, products).
- ``json_schema`` (+ ``schema_document``, ``schema_types``, ``schema_options``, ``schema_dicts``,
  ``schema_logic``, ``schema_patterns``, ``json_values``, ``json_strings``, ``numeric``,
  ``formats``): schema → tree (dispatch in ``json_schema``, ``$ref``/``allOf``/``oneOf``
  reasoning on dicts in ``schema_document``, ``not``/``if``/dependencies/exclusive ``oneOf``
  rewritten to ``allOf``/``anyOf`` in ``schema_logic``, per-type trees in ``schema_types``).
- ``token_index``: vocabulary byte trie; which tokens a DFA state allows.
- ``grammar``: a DFA bound to a vocabulary, with lazily cached packed masks.
- ``budget``: distances to an accepting end; masks that close the output within a token budget.
- ``matcher``: per-request state (accept, rollback, fill mask rows, jump-forward).
- ``jump_forward``: forced text → tokens consistent with canonical tokenization.
- ``bitmask``: allocate / apply packed bitmasks to logits.
- ``compiler``: GrammarCompiler with cache and async compile.
- ``gbnf`` → ``cfg_lark`` → ``cfg``: GBNF grammars (``ebnf``) → Lark with provably safe lexemes →
  llguidance's Earley matcher (``CfgGrammar``, ``CfgMatcher``); ``new_matcher`` picks the matcher.
- ``dtypes``: regex constants for the frontend DSL.
"""

from __future__ import annotations

from radixrt.fsm.bitmask import allocate_token_bitmask, apply_token_bitmask_, unpack_bitmask
from radixrt.fsm.compiler import GrammarCompiler
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.jump_forward import JumpForward
from radixrt.fsm.matcher import GrammarMatcher


def new_matcher(compiled):
    """A fresh per-request matcher for a compiled grammar (a DFA one, or a CFG one)."""
    if getattr(compiled, "kind", None) == "ebnf":
        from radixrt.fsm.cfg import CfgMatcher

        return CfgMatcher(compiled)
    return GrammarMatcher(compiled)


__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarError",
    "GrammarMatcher",
    "JumpForward",
    "allocate_token_bitmask",
    "apply_token_bitmask_",
    "new_matcher",
    "unpack_bitmask",
]
