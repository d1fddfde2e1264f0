"""GrammarCompiler: request constraints → CompiledGrammar, cached, optionally off-thread.

Kinds: ``"regex"`` (a Python-style regex, full match), ``"json_schema"`` (JSON text or dict),
``"json_object"`` (any JSON object), ``"choices"`` (a JSON list of strings, or a list), and
``"ebnf"`` (a GBNF grammar, compiled by ``radixrt.fsm.cfg`` to a CfgGrammar, not a DFA).
``compile_async`` runs in a small thread pool so the scheduler never blocks on a compile; equal
requests share one in-flight compile and one cache entry (LRU, keyed by kind, spec and the
tokenizer's vocabulary key). Every failure is a ``GrammarError`` naming the keyword or field.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.json_schema import JsonSchemaOptions, any_json_object, json_schema_to_ast
from radixrt.fsm.regex_ast import Node, alt, lit
from radixrt.fsm.regex_parser import parse_regex
from radixrt.fsm.token_index import TokenTrie
from radixrt.fsm.vocabulary import get_vocabulary

KINDS = ("regex", "json_schema", "json_object", "choices", "ebnf", "structural_tag")
# Up to this many texts are encoded one by one (~7 µs each): the fast tokenizer's batch call
# wakes its thread pool, which costs 0.3-1.2 ms after an idle spell on a 2-core machine.
_SERIAL_ENCODE_TEXTS = 16


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int | None = None,
                 eos_token_ids: list[int] | tuple[int, ...] | None = None,
                 whitespace_pattern: str | None = None, max_workers: int = 2,
                 cache_size: int = 256, max_recursion_depth: int = 3,
                 any_value_depth: int = 2, strict_objects: bool = False,
                 canonical_tokens: bool = True):
        self.tokenizer = tokenizer
        self.vocab = get_vocabulary(tokenizer)
        TokenTrie.of(self.vocab)  # build once, up front
        self.vocab_size = vocab_size if vocab_size is not None else self.vocab.size
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else [eos]
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids)
        self.options = JsonSchemaOptions(whitespace_pattern=whitespace_pattern,
                                         max_recursion_depth=max_recursion_depth,
                                         any_value_depth=any_value_depth,
                                         strict_objects=strict_objects)
        # Only tokens the tokenizer itself would choose in front of forced text (see
        # radixrt.fsm.grammar); off: every token that spells allowed text.
        self.canonical_tokens = canonical_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
        self._inflight: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="radixrt-grammar")
        self.stats = {"hits": 0, "misses": 0}

    # ------------------------------------------------------------ public API
    def compile(self, kind: str, spec: Any = None) -> CompiledGrammar:
        return self.compile_async(kind, spec).result()

    def compile_async(self, kind: str, spec: Any = None) -> Future:
        """A Future of the CompiledGrammar (its exception is a GrammarError)."""
        try:
            key = self._key(kind, spec)
        except GrammarError as e:
            f: Future = Future()
            f.set_exception(e)
            return f
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                f = Future()
                f.set_result(hit)
                return f
            f = self._inflight.get(key)
            if f is not None:
                return f
            self.stats["misses"] += 1
            f = self._pool.submit(self._compile_and_store, key)
            self._inflight[key] = f
            return f

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def warm_caches(self) -> dict:
        """Build what the first constrained requests would otherwise pay for: the process-wide
        automata many schemas embed (``json_schema.warm_caches``) and this vocabulary's
        canonical-token tables (``canonical_split``), the token tables of ebnf budget
        closing (``cfg_budget``) and the native CPU bitmask library (built once per machine).
        NumPy, the tokenizer and ``ctypes`` only (no torch ops), so it may run on any thread.
        Returns what was built."""
        from radixrt.fsm.bitmask import native_bitmask
        from radixrt.fsm.canonical_split import SplitVerdicts
        from radixrt.fsm.cfg_budget import warm_vocabulary
        from radixrt.fsm.json_schema import warm_caches

        warm_caches(self.options)
        warm_vocabulary(self.vocab, self.vocab_size)  # ebnf budget closing's token tables
        split = SplitVerdicts.of(self.vocab, self._encode_batch) if self.canonical_tokens else None
        pairs = split.warm() if split is not None else 0
        trie = TokenTrie.of(self.vocab)
        return {"trie_nodes": trie.num_nodes, "split_verdicts": split is not None,
                "punct_pairs": pairs, "native_trie_walk": trie.native is not None,
                "native_cpu_bitmask": native_bitmask() is not None}

    # ------------------------------------------------------------ internals
    def _key(self, kind: str, spec: Any) -> tuple:
        if kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {kind!r} (supported: {', '.join(KINDS)})")
        if kind == "json_object":
            text = ""
        elif kind in ("regex", "ebnf"):
            if not isinstance(spec, str):
                raise GrammarError(f"{kind} must be a string")
            text = spec
        elif isinstance(spec, str):
            text = spec
        else:
            try:
                text = json.dumps(spec, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError) as e:
                raise GrammarError(f"{kind} spec is not JSON-serializable: {e}") from None
        return (kind, text, self.vocab.key, self.vocab_size)

    def _compile_and_store(self, key: tuple) -> CompiledGrammar:
        try:
            grammar = self._build(key[0], key[1])
            with self._lock:
                self._cache[key] = grammar
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return grammar
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _build(self, kind: str, text: str) -> CompiledGrammar:
        if kind == "ebnf":
            from radixrt.fsm.cfg import compile_ebnf

            return compile_ebnf(text, self.vocab, self.vocab_size, self.eos_token_ids,
                                encode=self._encode, encode_batch=self._encode_batch,
                                canonical=self.canonical_tokens)
        try:
            dfa = compile_regex_ast(self._ast(kind, text), minimize=False)  # only visited
        except RecursionError:
            raise GrammarError(f"{kind} is nested too deeply to compile") from None
        if dfa.is_empty():
            raise GrammarError(f"{kind} grammar matches no text")
        grammar = CompiledGrammar(kind, text, dfa, self.vocab, self.vocab_size,
                                  self.eos_token_ids, encode=self._encode,
                                  encode_batch=self._encode_batch, canonical=self.canonical_tokens)
        grammar.mask(grammar.start_state)  # the first mask is part of compiling
        return grammar

    def _ast(self, kind: str, text: str) -> Node:
        if kind == "regex":
            return parse_regex(text)
        if kind == "json_schema":
            return json_schema_to_ast(text, self.options)
        if kind == "json_object":
            return any_json_object(self.options)
        if kind == "structural_tag":
            from radixrt.fsm.structural_tag import structural_tag_ast

            return structural_tag_ast(text, self.options)
        try:
            choices = json.loads(text)
        except json.JSONDecodeError as e:
            raise GrammarError(f"choices must be a JSON list of strings: {e}") from e
        if not isinstance(choices, list) or not choices or not all(
                isinstance(c, str) for c in choices):
            raise GrammarError("choices must be a non-empty list of strings")
        return alt(*(lit(c) for c in choices))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        fast = getattr(self.tokenizer, "_tokenizer", None)  # a transformers fast tokenizer's core
        if fast is not None and hasattr(fast, "encode_batch"):
            if len(texts) <= _SERIAL_ENCODE_TEXTS:
                return [list(fast.encode(t, add_special_tokens=False).ids) for t in texts]
            return [list(e.ids) for e in fast.encode_batch(texts, add_special_tokens=False)]
        return [self._encode(t) for t in texts]
