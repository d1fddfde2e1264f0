"""Context-free grammars (GBNF, the ``ebnf`` sampling field): token masks from llguidance.

``compile_ebnf`` parses the grammar with radixrt's own GBNF front end (``gbnf``: errors with line
and column), turns it into Lark with lexemes only where they cannot change the language
(``cfg_lark``), and hands that to llguidance — a Rust Earley parser over a regex lexer whose
token masks take microseconds (docs/structured.md has the numbers and why it was chosen over a
matcher of radixrt's own). Regex and JSON schema keep radixrt's DFA path.

``CfgMatcher`` has the interface the scheduler uses for ``GrammarMatcher`` (accept, rollback,
fill a bitmask row, jump-forward, canonical checks), so ``GrammarManager`` treats both alike.
Budget closing (``fill_bitmask`` with ``tokens_left``) runs radixrt's own Earley chart of the
text beside llguidance's matcher (``cfg_budget``), built on first use and fed lazily, so
requests without it pay nothing. The matcher's ``state`` is the text the grammar forces from
here (what a jump-forward draft is learned under), not a DFA state number.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from radixrt.fsm.bitmask import bitmask_words
from radixrt.fsm.cfg_budget import CfgCloser, CfgClosing
from radixrt.fsm.cfg_lark import LarkGrammar, gbnf_to_lark
from radixrt.fsm.errors import GrammarError
from radixrt.fsm.gbnf import parse_gbnf
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.jump_forward import JumpForward
from radixrt.fsm.matcher import GrammarMatcher
from radixrt.fsm.token_index import pack_token_ids, unpack_token_ids
from radixrt.fsm.vocabulary import Vocabulary

# llguidance's per-mask work limits, raised from its defaults (50k Earley items, 200k lexer fuel):
# a grammar that must stay one character per lexeme where many tokens can start (``word "s"``
# with ``word ::= [a-z]+``) walks ~20k trie nodes with Earley steps at the first mask. A limit
# hit is an error for that request, so they are set where only a pathological grammar gets
# (about 50 ms per mask).
STEP_MAX_ITEMS = 1_000_000
STEP_LEXER_FUEL = 2_000_000


# Token "slices" (llguidance's mask optimization): the tokens matching a slice's regex are
# allowed in one step, without walking them, wherever the current lexeme provably accepts all of
# that regex's strings. Its default slices cover JSON string bodies; identifier characters are
# added in front, so inside a GBNF identifier (``[a-zA-Z_] [a-zA-Z0-9_]*``, ~30k viable tokens
# of the 49k vocabulary) the lexer no longer walks every letter token: the SQL subset's mask
# p50 went 120 -> 10 us (docs/benchmarks.md). Exactness is llguidance's: a slice only applies
# where it is subsumed.
EXTRA_SLICES = (r"[a-zA-Z0-9_]+",)


def _limits():
    return _llguidance().LLParserLimits(step_max_items=STEP_MAX_ITEMS, step_lexer_fuel=STEP_LEXER_FUEL)


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # a dependency of radixrt; say what is missing
        raise GrammarError(f"ebnf grammars need the llguidance package ({e})") from None
    return llguidance


class _TokenizerView:
    """What ``llguidance.TokenizerWrapper`` reads: every id's bytes (special tokens as
    ``0xFF`` + a name, llguidance's convention, so no grammar can produce them) and an encoder."""

    def __init__(self, vocab: Vocabulary, vocab_size: int, eos_ids: tuple[int, ...],
                 encode: Callable[[str], list[int]]):
        tb = vocab.token_bytes
        self.tokens = [tb[i] if i < len(tb) and tb[i] else b"\xff<special_%d>" % i
                       for i in range(vocab_size)]
        self.special_token_ids = [i for i in range(vocab_size) if i >= len(tb) or not tb[i]]
        self.eos_token_id = eos_ids[0] if eos_ids else None
        self.bos_token_id = None
        self._encode = encode

    def __call__(self, text):
        if not isinstance(text, str):  # llguidance then passes str and handles the rest
            raise TypeError("text only")
        return self._encode(text)


def llguidance_tokenizer(vocab: Vocabulary, vocab_size: int, eos_ids: tuple[int, ...],
                         encode: Callable[[str], list[int]]):
    """llguidance's tokenizer for this vocabulary, built once per (vocabulary, size, EOS ids)."""
    def build():
        llg = _llguidance()
        view = _TokenizerView(vocab, vocab_size, eos_ids, encode)
        return llg.LLTokenizer(llg.TokenizerWrapper(view), n_vocab=vocab_size,
                               eos_token=list(eos_ids) or None,
                               slices=list(EXTRA_SLICES) + llg.LLTokenizer.general_slices())

    return vocab.cached(f"llguidance:{vocab_size}:{','.join(map(str, eos_ids))}", build)


class CfgGrammar:
    """A compiled GBNF grammar: the llguidance grammar and a fresh matcher to copy from."""

    kind = "ebnf"

    def __init__(self, spec: str, lark: LarkGrammar, ll_grammar: str, ll_tokenizer,
                 vocab: Vocabulary, vocab_size: int, eos_token_ids: tuple[int, ...],
                 encode: Callable[[str], list[int]] | None = None,
                 encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
                 canonical: bool = True):
        self.spec = spec
        self.lark = lark
        self.vocab = vocab
        self.vocab_size = vocab_size
        self.num_words = bitmask_words(vocab_size)
        self.eos_token_ids = tuple(e for e in eos_token_ids if 0 <= e < vocab_size)
        self.encode = encode
        self.encode_batch = encode_batch
        self.canonical = canonical and encode_batch is not None
        self._token_bytes = vocab.token_bytes
        llg = _llguidance()
        self._fresh = llg.LLMatcher(ll_tokenizer, ll_grammar, log_level=0, limits=_limits())
        if self._fresh.is_error():
            raise GrammarError(f"ebnf grammar rejected: {self._fresh.get_error()}")
        self._eos_only = pack_token_ids(np.asarray(self.eos_token_ids, np.int64), self.num_words)
        self._closing: CfgClosing | None = None
        self._closing_lock = threading.Lock()

    @property
    def closing(self) -> CfgClosing:
        """The grammar's budget-closing tables (``cfg_budget``), built on first use."""
        if self._closing is None:
            with self._closing_lock:
                if self._closing is None:
                    self._closing = CfgClosing(parse_gbnf(self.spec), self.vocab, self.vocab_size,
                                               self.eos_token_ids, self.num_words)
        return self._closing

    # The canonical-split check (is token b what the tokenizer writes after token a?) depends
    # only on the vocabulary, so it is CompiledGrammar's, reused as is.
    noncanonical_after = CompiledGrammar.noncanonical_after
    _tokenizer_verdicts = CompiledGrammar._tokenizer_verdicts

    def new_matcher(self):
        return self._fresh.deep_copy()

    def forced_bytes(self, state: bytes, limit: int = 4096) -> bytes:
        """A ``CfgMatcher`` state is the text forced from there (see the module docstring)."""
        return state[:limit]

    def eos_only_mask(self) -> np.ndarray:
        return self._eos_only


def compile_ebnf(text: str, vocab: Vocabulary, vocab_size: int, eos_token_ids: tuple[int, ...],
                 encode: Callable[[str], list[int]],
                 encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
                 canonical: bool = True) -> CfgGrammar:
    """GBNF text → CfgGrammar; every problem is a GrammarError (a GbnfError names the line)."""
    try:
        lark = gbnf_to_lark(parse_gbnf(text))
    except RecursionError:
        raise GrammarError("ebnf grammar is nested too deeply to compile") from None
    llg = _llguidance()
    tok = llguidance_tokenizer(vocab, vocab_size, tuple(eos_token_ids), encode)
    ll_grammar = llg.LLMatcher.grammar_from_lark(lark.text)
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(ll_grammar, tok, limits=_limits())
    if is_error:
        raise GrammarError(f"ebnf grammar rejected: {messages[0] if messages else 'invalid'}")
    grammar = CfgGrammar(text, lark, ll_grammar, tok, vocab, vocab_size, tuple(eos_token_ids),
                         encode=encode, encode_batch=encode_batch, canonical=canonical)
    m = CfgMatcher(grammar)  # the first mask is part of compiling
    if not m.allowed_token_ids():
        raise GrammarError("ebnf grammar allows no token of this vocabulary at the start")
    return grammar


class CfgMatcher:
    """Per-request state over a CfgGrammar, with GrammarMatcher's interface."""

    def __init__(self, grammar: CfgGrammar):
        self.grammar = grammar
        self._m = grammar.new_matcher()
        self._tokens: list[int] = []
        self._eos_accepted = False
        self._closer: CfgCloser | None = None  # budget closing's chart, from its first use

    @property
    def state(self) -> bytes:
        """The text the grammar forces from here (the key jump-forward drafts are learned
        under: the same forced text gets the same split)."""
        return self.find_jump_forward_string()

    @property
    def accepted_token_ids(self) -> list[int]:
        return list(self._tokens)

    @property
    def last_token(self) -> int | None:
        return None if self._eos_accepted or not self._tokens else self._tokens[-1]

    def noncanonical_next(self, candidates: list[int]) -> list[int]:
        prev = self.last_token
        return [] if prev is None else self.grammar.noncanonical_after(prev, candidates)

    def _check(self) -> None:
        if self._m.is_error():
            raise RuntimeError(f"grammar matcher failed: {self._m.get_error()}")

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; returns False (and changes nothing) if it is not allowed."""
        if self._eos_accepted:
            return False
        g = self.grammar
        if token_id in g.eos_token_ids:
            if not self._m.is_accepting():
                return False
            self._eos_accepted = True
            self._tokens.append(token_id)
            return True
        if not 0 <= token_id < g.vocab_size or self._m.validate_tokens([token_id]) != 1:
            return False
        if not self._m.consume_token(token_id):
            self._check()
            return False
        self._tokens.append(token_id)
        return True

    # All or none, through accept_token and rollback: the DFA matcher's loop serves both.
    accept_tokens = GrammarMatcher.accept_tokens

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > len(self._tokens):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self._tokens)} tokens")
        if not num_tokens:
            return
        k = num_tokens
        if self._eos_accepted:  # EOS was never given to llguidance
            self._eos_accepted = False
            k -= 1
        if k and not self._m.rollback(k):
            self._check()
            raise RuntimeError(f"grammar matcher could not roll back {k} tokens")
        del self._tokens[len(self._tokens) - num_tokens:]
        if self._closer is not None:
            self._closer.truncate(len(self._tokens))

    def is_accepting(self) -> bool:
        return self._eos_accepted or self._m.is_accepting()

    def is_terminated(self) -> bool:
        """EOS was accepted, or the text is complete and nothing but EOS can follow."""
        return self._eos_accepted or (self._m.is_stopped() and self._m.is_accepting())

    def fill_bitmask(self, bitmask: torch.Tensor, row: int = 0, tokens_left: int | None = None) -> bool:
        """Write the allowed tokens into ``bitmask[row]`` (int32 [B, W] on the CPU). With
        ``tokens_left`` (this token included), only tokens after which an accepting end still
        fits (``cfg_budget.CfgCloser.restrict``); returns True when that removed tokens."""
        g = self.grammar
        w = g.num_words
        if bitmask.shape[1] < w:
            raise ValueError(f"bitmask has {bitmask.shape[1]} words, the grammar needs {w}")
        if self._eos_accepted:
            bitmask[row, :w].copy_(torch.from_numpy(g.eos_only_mask()))
        else:
            if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or not bitmask.is_contiguous():
                raise ValueError("bitmask must be a contiguous int32 CPU tensor")
            ptr = bitmask.data_ptr() + row * bitmask.stride(0) * 4
            self._m.unsafe_compute_mask_ptr(ptr, w * 4)
            self._check()
        if bitmask.shape[1] > w:
            bitmask[row, w:] = 0
        if tokens_left is None or self._eos_accepted:
            return False
        return self.closer().restrict(bitmask[row, :w].numpy(), tokens_left)

    def closer(self) -> CfgCloser:
        """The Earley chart of the accepted text (budget closing), fed up to the last token."""
        c = self._closer
        if c is None:
            c = self._closer = CfgCloser(self.grammar.closing)
        tb = self.grammar._token_bytes
        for t in self._tokens[c.num_tokens:]:
            c.feed(tb[t] if t not in self.grammar.eos_token_ids else b"")
        return c

    def allowed_token_ids(self) -> list[int]:
        mask = torch.zeros((1, self.grammar.num_words), dtype=torch.int32)
        self.fill_bitmask(mask, 0)
        return unpack_token_ids(mask[0].numpy()).tolist()

    def copy(self) -> CfgMatcher:
        other = CfgMatcher.__new__(CfgMatcher)
        other.grammar = self.grammar
        other._m = self._m.deep_copy()
        other._tokens = list(self._tokens)
        other._eos_accepted = self._eos_accepted
        other._closer = None if self._closer is None else self._closer.copy()
        return other

    # ------------------------------------------------------------ jump-forward
    def find_jump_forward_string(self) -> bytes:
        """The bytes the grammar forces from here (may end mid-character)."""
        if self._eos_accepted:
            return b""
        return self._m.compute_ff_bytes()

    def jump_forward(self, max_rollback_tokens: int = 2) -> JumpForward:
        """Tokens for the forced text (llguidance's, which stop before a token that a longer
        one could still extend). Never rolls back committed tokens."""
        if self._eos_accepted:
            return JumpForward(0, [], b"")
        forced = self._m.compute_ff_bytes()
        if not forced:
            return JumpForward(0, [], b"")
        ids = self._m.compute_ff_tokens()
        if not all(0 <= t < self.grammar.vocab_size for t in ids):
            return JumpForward(0, [], forced)
        return JumpForward(0, list(ids), forced)

    def apply_jump_forward(self, jf: JumpForward) -> None:
        self.rollback(jf.rollback)
        if not self.accept_tokens(jf.token_ids):
            raise RuntimeError("jump-forward tokens were rejected by the grammar")
