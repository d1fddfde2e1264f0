"""Budget closing for GBNF grammars (``radixrt.fsm.cfg_budget``): the Earley chart's shortest
completion against a brute-force search with the reference recognizer, the completion text
against the reference, and random walks under the budget mask at every budget from the minimum
upward (always a complete document), on recursive grammars (nested parentheses, arithmetic,
JSON as GBNF, a SQL subset) with the default model's tokenizer."""

from __future__ import annotations

import heapq
import random

import numpy as np
import pytest
import torch

from radixrt.fsm import new_matcher
from radixrt.fsm.cfg_budget import CLOSING_MARGIN, CfgIndex
from radixrt.fsm.gbnf import Chars, parse_gbnf
from radixrt.fsm.token_index import unpack_token_ids
from tests.fsm.test_gbnf_reference import ARITH, GRAMMARS, JSON, PARENS, SQL, Earley, Generator

pytestmark = pytest.mark.timeout(300)

# Small grammars with nullable rules, bounded repeats, multi-byte classes and left and right
# recursion, for the brute-force comparison.
SMALL = {
    "parens": PARENS,
    "arith": ARITH,
    "lists": r"""
root ::= "[" ws (item ("," ws item)*)? "]"
item ::= [a-c]{1,3} | root | "<" [^\x00-\x7F] ">"
ws   ::= " "?
""",
    "counts": r"""
root ::= "x" root "y" | "ab"* "c" | tail
tail ::= "é"{2} ("z" | "")
""",
}


def _pick(ranges) -> str:
    for lo, hi in ranges:
        if hi >= 0x20 and lo <= 0x7E:
            return chr(max(lo, 0x20))
    return chr(ranges[0][0])


def _alphabet(text: str) -> list[str]:
    """One character per character class of the grammar: enough for a shortest completion
    (any derivation keeps working when each character becomes its class's representative)."""
    out = set()

    def walk(node):
        if isinstance(node, Chars):
            out.add(_pick(node.ranges))
        for child in getattr(node, "items", ()) or ():
            walk(child)
        if hasattr(node, "item"):
            walk(node.item)

    for body in parse_gbnf(text).rules.values():
        walk(body)
    return sorted(out)


def _brute_distance(ref: Earley, prefix: str, alphabet: list[str], limit: int) -> int | None:
    """Fewest UTF-8 bytes after ``prefix`` to a complete text, searched up to ``limit``
    bytes with the reference recognizer (None: more than ``limit``)."""
    chart = ref.start()
    assert ref.feed(chart, prefix)
    heap = [(0, 0, "", chart)]
    n = 0
    while heap:
        cost, _, text, chart = heapq.heappop(heap)
        if ref.complete(chart):
            return cost
        for ch in alphabet:
            c = cost + len(ch.encode())
            if c > limit:
                continue
            nxt = list(chart)
            if ref.step(nxt, ch):
                n += 1
                heapq.heappush(heap, (c, n, text + ch, nxt))
    return None


def _chart(index: CfgIndex, data: bytes):
    chart = [index.start_set()]
    for b in data:
        s = index.advance(chart, b)
        if s is None:
            return None
        chart.append(s)
    return chart


@pytest.mark.parametrize("name", sorted(SMALL))
def test_distance_equals_a_brute_force_search(name):
    text = SMALL[name]
    index, ref = CfgIndex(parse_gbnf(text)), Earley(text)
    gen = Generator(text, seed=7)
    alphabet = _alphabet(text)
    rng = random.Random(3)
    checked = 0
    for _ in range(40):
        s = gen.gen(budget=4)
        cut = s[:rng.randint(0, len(s))]
        chart = _chart(index, cut.encode())
        assert chart is not None, cut
        d = chart[-1].dist
        w = index.completion(chart)
        assert len(w) == d
        assert ref.accepts(cut + w.decode()), (cut, w)  # the completion itself is valid
        if d <= 5:
            assert _brute_distance(ref, cut, alphabet, d) == d, (cut, d)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_completions_of_random_prefixes_are_accepted(name):
    """Prefixes of random derivations (and byte cuts inside characters) of every test grammar:
    the shortest completion found completes them for the reference."""
    text = GRAMMARS[name]
    index, ref = CfgIndex(parse_gbnf(text)), Earley(text)
    gen = Generator(text, seed=11)
    rng = random.Random(5)
    for _ in range(25):
        data = gen.gen(budget=6).encode()
        cut = data[:rng.randint(0, len(data))]
        chart = _chart(index, cut)
        assert chart is not None, cut
        w = index.completion(chart)
        assert len(w) == chart[-1].dist
        assert ref.accepts((cut + w).decode()), (cut, w)
        # One byte less is never enough: no shorter completion starts with w's first byte.
        if w:
            nxt = index.advance(chart, w[0])
            assert nxt is not None and nxt.dist == len(w) - 1


def test_the_chart_rejects_what_the_grammar_rejects():
    index = CfgIndex(parse_gbnf(ARITH))
    assert _chart(index, b"1+(2*3") is not None
    assert _chart(index, b"1+)") is None
    assert _chart(index, b"(" * 60 + b"1")[-1].dist == 60


@pytest.fixture(scope="module")
def grammars(compiler):
    return {name: compiler.compile("ebnf", text) for name, text in GRAMMARS.items()}


def _walk(g, budget: int, rng: random.Random, greedy_first: bool = False) -> tuple[bytes, bool, bool]:
    """Random tokens under the budget mask: the text, whether it ended complete, and
    whether the budget ever restricted the mask."""
    m = new_matcher(g)
    bm = torch.zeros((1, g.num_words), dtype=torch.int32)
    tb = g.vocab.token_bytes
    out, closed = b"", False
    for left in range(budget, 0, -1):
        closed |= m.fill_bitmask(bm, 0, left)
        ids = unpack_token_ids(bm[0].numpy())
        assert ids.size
        t = int(ids[0] if greedy_first else rng.choice(ids))
        assert m.accept_token(t)
        if t in g.eos_token_ids:
            break
        out += tb[t]
        if m.is_terminated():
            break
    assert not m.closer().dead  # the chart reads whatever llguidance allowed
    return out, m.is_accepting(), closed


@pytest.mark.parametrize("name", ["parens", "arith", "json", "sql", "keywords", "tricky"])
def test_every_budget_from_the_minimum_closes(grammars, name):
    g = grammars[name]
    ref = Earley(GRAMMARS[name])
    low = new_matcher(g).closer().close_tokens()[0]
    assert 1 <= low < 20
    rng = random.Random(17)
    closed = 0
    for budget in list(range(low, low + 8)) + [low + 15, low + 30]:
        for trial in range(3):
            text, complete, restricted = _walk(g, budget, rng, greedy_first=trial == 0)
            assert complete and ref.accepts(text.decode()), (budget, text)
            closed += restricted
    assert closed


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_the_chart_follows_llguidance(grammars, name):
    """Random allowed tokens (no budget): the chart never rejects what llguidance allows, and
    it is complete exactly when llguidance's matcher is."""
    g = grammars[name]
    rng = random.Random(23)
    bm = torch.zeros((1, g.num_words), dtype=torch.int32)
    for _ in range(4):
        m = new_matcher(g)
        for _ in range(30):
            m.fill_bitmask(bm, 0)
            ids = [t for t in unpack_token_ids(bm[0].numpy()).tolist() if t not in g.eos_token_ids]
            if not ids:
                break
            assert m.accept_token(rng.choice(ids))
            c = m.closer()
            assert not c.dead
            assert (c.byte_distance == 0) == m.is_accepting()


def test_too_small_a_budget_heads_for_the_end(grammars):
    g = grammars["sql"]
    low = new_matcher(g).closer().close_tokens()[0]
    text, complete, _ = _walk(g, low - 1, random.Random(1))
    assert not complete  # impossible, but every token went toward the end
    m = new_matcher(g)
    m.accept_tokens(g.encode(text.decode()))
    assert m.closer().close_tokens()[0] <= 1


def test_budget_closing_applies_to_grammars(grammars):
    m = new_matcher(grammars["arith"])
    plain = torch.zeros((1, m.grammar.num_words), dtype=torch.int32)
    budget = torch.zeros_like(plain)
    assert m.fill_bitmask(plain, 0) is False
    assert m.fill_bitmask(budget, 0, tokens_left=1) is True
    kept = unpack_token_ids(budget[0].numpy())
    assert kept.size and set(kept.tolist()) < set(unpack_token_ids(plain[0].numpy()).tolist())
    ref = Earley(ARITH)
    tb = m.grammar.vocab.token_bytes
    assert all(ref.accepts(tb[t].decode()) for t in kept)  # one token: a whole expression


def test_a_far_budget_changes_nothing(grammars):
    g = grammars["json"]
    gen = Generator(JSON, seed=4)
    for _ in range(3):
        ids = g.encode(gen.gen(budget=5))
        m = new_matcher(g)
        for i, t in enumerate(ids):
            plain = torch.zeros((1, g.num_words), dtype=torch.int32)
            budget = torch.zeros_like(plain)
            m.fill_bitmask(plain, 0)
            left = len(ids) - i + m.closer().close_tokens()[0] + CLOSING_MARGIN + 50
            assert m.fill_bitmask(budget, 0, left) is False
            assert torch.equal(plain, budget)
            assert m.accept_token(t)


def test_rollback_and_copy_keep_the_chart_in_step(grammars):
    g = grammars["parens"]
    ids = g.encode("((()(())")
    m = new_matcher(g)
    m.accept_tokens(ids)
    assert m.closer().byte_distance == 2
    c = m.copy()
    m.rollback(len(ids) - 1)
    assert m.closer().byte_distance == _chart(m.grammar.closing.index, g.vocab.token_bytes[ids[0]])[-1].dist
    assert c.closer().byte_distance == 2
    m.accept_tokens(g.encode(")))"))
    ref = new_matcher(g)
    ref.accept_tokens(m.accepted_token_ids)
    assert m.closer().byte_distance == ref.closer().byte_distance


def test_deep_nesting_closes_within_the_budget(grammars):
    g = grammars["parens"]
    m = new_matcher(g)
    m.accept_tokens(g.encode("(" * 50))
    need = m.closer().close_tokens()[0]
    assert 0 < need <= 50
    bm = torch.zeros((1, g.num_words), dtype=torch.int32)
    text = b""
    for left in range(need, 0, -1):
        assert m.fill_bitmask(bm, 0, left)
        t = int(unpack_token_ids(bm[0].numpy())[-1])
        assert m.accept_token(t)
        text += g.vocab.token_bytes[t]
    assert m.is_accepting() and Earley(PARENS).accepts("(" * 50 + text.decode())


def test_sql_minimum_is_a_statement(grammars):
    m = new_matcher(grammars["sql"])
    c = m.closer()
    w = c.index.completion(c.chart)
    assert Earley(SQL).accepts(w.decode()) and len(w) == c.byte_distance == 16
    assert np.asarray(c.closing.split(w)[0]).min() == 0
