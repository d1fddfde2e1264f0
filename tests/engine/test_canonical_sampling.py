"""Canonical free text: a constrained token the tokenizer would never write after the previous
one (``"AD"`` then ``"DR"`` for ``"ADDR"``) is drawn again without such tokens."""

from __future__ import annotations

import pytest
import torch

from radixrt.fsm import GrammarMatcher
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.grammar_manager import GrammarManager
from radixrt.scheduler.postprocess import PostProcessor
from radixrt.scheduler.req import Req
from radixrt.scheduler.stats import SchedulerStats

LETTERS = "[A-Za-z ]{1,40}"


def _one(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def _sampler_half(tok, canonical: bool) -> PostProcessor:
    """The scheduler's post-processing (no model, no processes)."""
    eos = {tok.eos_token_id}
    grammars = GrammarManager(tok, len(tok), eos, canonical_tokens=canonical)
    return PostProcessor(grammars, eos, len(tok), 2048, SchedulerStats())


def _req(s: PostProcessor, after: list[int], **params) -> Req:
    req = Req(rid="r", prompt_ids=[1, 2, 3], params=SamplingParams(**params))
    req.grammar = GrammarMatcher(s.grammars.compiler.compile("regex", LETTERS))
    req.grammar_kind = "regex"
    assert req.grammar.accept_tokens(after)
    if "seed" in params:
        req.generator = torch.Generator().manual_seed(params["seed"])
    return req


@pytest.fixture(scope="module")
def tok(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def halves(tok):
    on, off = _sampler_half(tok, True), _sampler_half(tok, False)
    yield on, off
    on.grammars.close()
    off.grammars.close()


def _logits(tok, prefs: dict[str, float]) -> torch.Tensor:
    lg = torch.full((1, len(tok)), -5.0)
    for text, v in prefs.items():
        lg[0, _one(tok, text)] = v
    return lg


def _draw(s: PostProcessor, req: Req, lg: torch.Tensor) -> int:
    lg = lg.clone()
    s.grammars.apply_masks([req], lg)
    ids, lps, top = s._draw([req], lg, [[]], [0])
    s._redraw_noncanonical([req], lg, [[]], [0], ids, lps, top)
    return ids[0]


def test_greedy_takes_the_best_canonical_token(tok, halves):
    on, off = halves
    ad = _one(tok, "AD")
    lg = _logits(tok, {"DR": 12.0, "D": 11.0, "X": 10.0})
    assert tok.encode("ADD", add_special_tokens=False) != [ad, _one(tok, "D")]
    assert _draw(off, _req(off, [ad], temperature=0), lg) == _one(tok, "DR")
    before = on.stats.num_canonical_redraws
    assert _draw(on, _req(on, [ad], temperature=0), lg) == _one(tok, "X")
    assert on.stats.num_canonical_redraws == before + 1  # "DR" and "D" banned at once
    # No previous token yet: nothing to check.
    assert _draw(on, _req(on, [], temperature=0), lg) == _one(tok, "DR")


def test_sampling_never_yields_a_noncanonical_pair(tok, halves):
    on, off = halves
    ad = _one(tok, "AD")
    prefs = {"DR": 3.0, "D": 3.0, "X": 3.0, "Y": 3.0}
    lg = _logits(tok, prefs)
    got_on = {_draw(on, _req(on, [ad], temperature=1.0, seed=s), lg) for s in range(60)}
    got_off = {_draw(off, _req(off, [ad], temperature=1.0, seed=s), lg) for s in range(60)}
    assert {_one(tok, "DR"), _one(tok, "D")} <= got_off
    assert not got_on & {_one(tok, "DR"), _one(tok, "D")}
    assert {_one(tok, "X"), _one(tok, "Y")} <= got_on
    # Redraws come from the request's own generator: a seeded request gets the same token
    # alone and next to unseeded rows that draw (and redraw) from the shared generator.
    for seed in range(10):
        alone = _draw(on, _req(on, [ad], temperature=1.0, seed=seed), lg)
        reqs = [_req(on, [ad], temperature=1.0), _req(on, [ad], temperature=1.0, seed=seed),
                _req(on, [ad], temperature=1.0)]
        batch = lg.repeat(3, 1)
        on.grammars.apply_masks(reqs, batch)
        ids, lps, top = on._draw(reqs, batch, [[], [], []], [0, 0, 0])
        on._redraw_noncanonical(reqs, batch, [[], [], []], [0, 0, 0], ids, lps, top)
        assert ids[1] == alone
        assert not {ids[0], ids[2]} & {_one(tok, "DR"), _one(tok, "D")}


def test_a_noncanonical_token_stands_when_nothing_else_is_left(tok, halves):
    on, _ = halves
    ad = _one(tok, "AD")
    lg = torch.full((1, len(tok)), float("-inf"))  # the mask would allow more; here only "DR"
    lg[0, _one(tok, "DR")] = 0.0
    req = _req(on, [ad], temperature=1.0, seed=3)
    ids, lps, top = on._draw([req], lg, [[]], [0])
    on._redraw_noncanonical([req], lg, [[]], [0], ids, lps, top)
    assert ids == [_one(tok, "DR")]


def test_stop_ids_outside_the_vocabulary_do_not_disable_the_check(tok, halves):
    on, _ = halves
    ad = _one(tok, "AD")
    lg = _logits(tok, {"DR": 12.0, "D": 11.0, "X": 10.0})
    req = _req(on, [ad], temperature=0, min_new_tokens=5, stop_token_ids=[10**6])
    masked = lg.clone()
    on.grammars.apply_masks([req], masked)
    suppress = [[tok.eos_token_id, 10**6]]
    ids, lps, top = on._draw([req], masked, suppress, [0])
    on._redraw_noncanonical([req], masked, suppress, [0], ids, lps, top)
    assert ids == [_one(tok, "X")]


def test_token_stands_after_the_last_redraw(tok, halves):
    """More non-canonical candidates than three redraws can ban: the fourth draw stands and
    is counted."""
    from radixrt.scheduler.grammar_manager import CANONICAL_CANDIDATES, MAX_CANONICAL_REDRAWS

    on, _ = halves
    space = _one(tok, " ")
    g = on.grammars.compiler.compile("regex", LETTERS)
    tb = g.vocab.token_bytes
    words = [t for t in range(len(tb)) if tb[t].isalpha() and tb[t].isascii()]
    bad = g.noncanonical_after(space, words)
    good = sorted(set(words) - set(bad))
    n = (CANONICAL_CANDIDATES + 1) * (MAX_CANONICAL_REDRAWS + 1)
    lg = torch.full((1, len(tok)), -5.0)
    lg[0, bad[:n]] = torch.linspace(20.0, 10.0, n)
    lg[0, good[0]] = 9.0
    kept = on.stats.num_noncanonical_kept
    token = _draw(on, _req(on, [space], temperature=0), lg)
    assert token in bad[:n] and on.stats.num_noncanonical_kept == kept + 1
    lg[0, good[0]] = 19.0  # among the first 64 candidates: found on the first redraw
    assert _draw(on, _req(on, [space], temperature=0), lg) == good[0]


def test_logprob_is_the_model_logprob_of_the_final_token(tok, halves):
    on, _ = halves
    ad = _one(tok, "AD")
    lg = _logits(tok, {"DR": 12.0, "D": 11.0, "X": 10.0})
    req = _req(on, [ad], temperature=0)
    masked = lg.clone()
    on.grammars.apply_masks([req], masked)
    ids, lps, top = on._draw([req], masked, [[]], [3])
    on._redraw_noncanonical([req], masked, [[]], [3], ids, lps, top)
    expect = torch.log_softmax(masked[0], -1)[_one(tok, "X")].item()
    assert ids == [_one(tok, "X")] and lps[0] == pytest.approx(expect, abs=1e-3)
    assert [t for _, t in top[0]][:3] == [_one(tok, "DR"), _one(tok, "D"), _one(tok, "X")]


def test_engine_outputs_are_canonical(tiny_model_dir):
    """A random model sampling letters (hot, so it wanders) glues words in every way; with
    canonical tokens on, every output's ids are the tokenizer's own encoding of its text."""
    from radixrt import Engine

    prompts = [[101 + i, 202, 303] for i in range(16)]
    results = {}
    for canonical in (True, False):
        with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096,
                    disable_canonical_tokens=not canonical) as eng:
            tok = eng.tokenizer
            params = [{"max_new_tokens": 40, "regex": "[A-Za-z ]{1,160}", "temperature": 3.0,
                       "seed": 7 + i}
                      for i in range(len(prompts))]
            out = eng.generate(input_ids=prompts, sampling_params=params)
            results[canonical] = [
                tok.encode(r["text"], add_special_tokens=False)
                == [t for t in r["output_ids"] if t != tok.eos_token_id] for r in out]
            if canonical:
                assert eng.get_stats()["num_canonical_redraws"] > 0
    assert all(results[True]), results[True]
    assert not all(results[False])  # the check above can fail


def test_redraws_are_the_same_with_and_without_jump_forward(tiny_model_dir):
    from radixrt import Engine

    regex = r'say "[A-Za-z ]{1,60}" and stop'
    prompts = [[111 + i, 222, 333] for i in range(8)]
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096) as eng:
        outs = {}
        for jump in (False, True):
            params = [{"max_new_tokens": 40, "regex": regex, "temperature": 3.0, "seed": 50 + i,
                       "no_jump_forward": not jump} for i in range(len(prompts))]
            before = eng.get_stats()
            outs[jump] = eng.generate(input_ids=prompts, sampling_params=params)
            after = eng.get_stats()
            assert after["num_canonical_redraws"] > before["num_canonical_redraws"]
        assert after["num_accepted_draft_tokens"] > 0
        assert [o["output_ids"] for o in outs[True]] == [o["output_ids"] for o in outs[False]]
