"""Budget closing: distances to an accepting end, and masks that keep one within reach."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from radixrt.fsm import GrammarMatcher
from radixrt.fsm.automaton import compile_regex_ast
from radixrt.fsm.budget import UNREACHABLE
from radixrt.fsm.grammar import CompiledGrammar
from radixrt.fsm.regex_parser import parse_regex
from radixrt.fsm.token_index import unpack_token_ids
from radixrt.fsm.vocabulary import Vocabulary
from tests.fsm.fsm_helpers import distance_to_accept

# Everything the small model rambles in: unbounded strings, numbers, arrays, nested objects,
# additionalProperties.
OPEN = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number"},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "object",
                  "properties": {"name": {"type": "string"}, "ids": {"type": "array",
                                                                     "items": {"type": "integer"}}},
                  "required": ["name", "ids"]},
        "extra": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "required": ["title", "score", "tags", "owner"],
}
REGEX = r'call\(tool="(search|calculator)", query="[a-z ]+", n=[0-9]+\)'


@pytest.fixture(scope="module")
def open_grammar(compiler):
    return compiler.compile("json_schema", json.dumps(OPEN))


@pytest.fixture(scope="module")
def regex_grammar(compiler):
    return compiler.compile("regex", REGEX)


def _closing_walk(g: CompiledGrammar, budget: int, rng: random.Random, free: float = 0.6):
    """Draw uniformly among the budget-masked tokens (favouring long free text: with
    probability ``free`` a token that does not end the document) until the budget is spent or
    EOS; returns the matcher, the tokens and how many steps were restricted."""
    m = GrammarMatcher(g)
    out, restricted = [], 0
    eos = set(g.eos_token_ids)
    for left in range(budget, 0, -1):
        mask = g.budget_mask(m.state, left)
        restricted += mask is not None
        ids = unpack_token_ids(mask if mask is not None else g.mask(m.state)).tolist()
        assert ids, "an empty mask"
        body = [t for t in ids if t not in eos]
        tok = rng.choice(body) if body and rng.random() < free else rng.choice(ids)
        assert m.accept_token(tok)
        out.append(tok)
        if m.is_terminated():
            break
    return m, out, restricted


@pytest.mark.parametrize("name", ["open_grammar", "regex_grammar"])
def test_distances(name, request):
    g = request.getfixturevalue(name)
    c = g.closing
    reference = distance_to_accept(g.dfa)
    for s in range(1, g.dfa.num_states):
        assert c.byte_distance[s] == reference[s]
        close = c.close_tokens(s)
        assert (close == 0) == bool(g.is_accepting(s))
        assert close <= c.byte_distance[s]  # every byte of this vocabulary is a token
    assert c.close_tokens(0) == UNREACHABLE


def test_the_shortest_split_is_counted_in_tokens(regex_grammar, smol_tokenizer):
    c = regex_grammar.closing
    start = regex_grammar.start_state
    shortest = 'call(tool="search", query="a", n=0)'
    assert c.byte_distance[start] == len(shortest)
    assert c.close_tokens(start) <= len(smol_tokenizer.encode(shortest))


@pytest.mark.parametrize("name,check", [
    ("open_grammar", lambda text: jsonschema.validate(json.loads(text), OPEN)),
    ("regex_grammar", lambda text: __import__("re").fullmatch(REGEX, text) or pytest.fail(text)),
])
def test_every_budget_from_the_minimum_closes(name, check, request, smol_tokenizer):
    g = request.getfixturevalue(name)
    minimum = g.closing.close_tokens(g.start_state)
    restricted = 0
    for budget in list(range(minimum, minimum + 12)) + [minimum + 40, minimum + 120]:
        for seed in range(4):
            m, out, r = _closing_walk(g, budget, random.Random(seed * 1000 + budget))
            assert m.is_accepting(), (budget, seed, smol_tokenizer.decode(out))
            assert len(out) <= budget
            restricted += r
            body = [t for t in out if t not in g.eos_token_ids]
            check(smol_tokenizer.decode(body))
    assert restricted > 0


def test_too_small_a_budget_heads_for_the_end(open_grammar):
    # Below the minimum nothing can close; the mask keeps the tokens closest to an end.
    g = open_grammar
    c = g.closing
    state = g.walk(g.start_state, b'{"title":"hello')
    mask = g.budget_mask(state, 1)
    _, _, hi, lo = c.token_costs(state)
    kept = set(unpack_token_ids(mask).tolist())
    assert lo < hi
    assert kept and all(c.close_tokens(g.next_state(state, t)) == lo for t in kept)
    assert all(c.close_tokens(g.next_state(state, t)) > lo
               for t in set(unpack_token_ids(g.mask(state)).tolist()) - kept)


def test_a_budget_that_never_binds_changes_nothing(open_grammar, regex_grammar):
    for g in (open_grammar, regex_grammar):
        rng = random.Random(3)
        m = GrammarMatcher(g)
        big = g.closing.max_byte_distance + 1
        for _ in range(200):
            if m.is_terminated():
                break
            assert g.budget_mask(m.state, big) is None
            ids = unpack_token_ids(g.mask(m.state)).tolist()
            assert m.accept_token(rng.choice(ids))
        # A restriction is reported only when it removes a token the grammar allows.
        for s in range(1, min(g.dfa.num_states, 300)):
            for left in (1, 2, 5):
                mask = g.budget_mask(s, left)
                if mask is not None:
                    plain = g.mask(s)
                    assert (mask != plain).any()
                    assert mask.any()


def test_canonical_filter_is_dropped_rather_than_emptying_the_mask():
    # The "tokenizer" spells "abc" starting with "a", so the canonical mask at the start keeps
    # "a" alone; with two tokens left only "ab" (then "c") still closes: the budget keeps it.
    tb = [b"a", b"b", b"c", b"ab"]
    vocab = Vocabulary(key="budget-fake", token_bytes=tb, special_ids=frozenset(), kind="plain")
    g = CompiledGrammar("regex", "abc", compile_regex_ast(parse_regex("abc")), vocab, 4, (),
                        encode_batch=lambda texts: [[0, 1, 2] for _ in texts])
    s = g.start_state
    assert unpack_token_ids(g.mask(s)).tolist() == [0]
    assert g.closing.close_tokens(s) == 2
    assert unpack_token_ids(g.budget_mask(s, 2)).tolist() == [3]
    assert g.budget_mask(s, 3) is None


def test_a_vocabulary_that_cannot_spell_the_end_keeps_the_grammar_mask():
    # No token spells "b": nothing is known to close, the grammar's own mask stands.
    tb = [b"a", b"c"]
    vocab = Vocabulary(key="budget-fake-2", token_bytes=tb, special_ids=frozenset(), kind="plain")
    dfa = compile_regex_ast(parse_regex("a+b"))
    g = CompiledGrammar("regex", "a+b", dfa, vocab, 2, ())
    assert g.closing.close_tokens(g.start_state) == UNREACHABLE
    assert g.budget_mask(g.start_state, 1) is None
