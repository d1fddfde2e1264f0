"""Post-processing after a forward: sampling, logprobs, draft verification, finish checks."""

from __future__ import annotations

import math

import pytest
import torch

from radixrt.scheduler.detokenize import IncrementalDetokenizer
from radixrt.scheduler.grammar_manager import GrammarManager
from radixrt.scheduler.postprocess import PostProcessor
from radixrt.scheduler.stats import SchedulerStats
from tests.scheduler.conftest import EOS, VOCAB, CharTokenizer, make_req


def post(context_len: int = 64) -> PostProcessor:
    tok = CharTokenizer()
    return PostProcessor(GrammarManager(tok, VOCAB, {EOS}), {EOS}, VOCAB, context_len,
                         SchedulerStats())


def peaked(*tokens: int) -> torch.Tensor:
    """One logits row per token, each peaked on it."""
    lg = torch.zeros(len(tokens), VOCAB)
    for i, t in enumerate(tokens):
        lg[i, t] = 10.0
    return lg


def with_stops(req):
    req.stop_detok = IncrementalDetokenizer(CharTokenizer(), True)
    return req


def test_greedy_sample_appends_and_records_logprobs_in_logprob_id_order():
    p = post()
    req = make_req("r", [1, 2], temperature=0, max_new_tokens=8)
    req.return_logprob, req.top_logprobs_num = True, 2
    lg = peaked(3, 7)
    p.sample_and_advance([req], lg, [1])
    assert req.output_ids == [7] and req.finished is None
    (lp, tok), = req.output_token_logprobs
    assert tok == 7 and lp == pytest.approx(torch.log_softmax(lg[1], -1)[7].item(), abs=1e-5)
    (top,) = req.output_top_logprobs
    assert top[0] == (lp, 7) and top[1][1] != 7  # the runner-up: any of the tied tokens
    assert top[1][0] == pytest.approx(torch.log_softmax(lg[1], -1)[0].item(), abs=1e-5)
    assert all(isinstance(t, int) and isinstance(v, float) for v, t in top)
    assert p.stats.num_generated_tokens == 1


def test_rows_select_each_requests_logits():
    p = post()
    a, b = make_req("a", [1], temperature=0), make_req("b", [1], temperature=0)
    p.sample_and_advance([a, b], peaked(4, 5, 6), [2, 0])
    assert a.output_ids == [6] and b.output_ids == [4]


def test_eos_and_stop_token_ids_finish_with_the_token_matched():
    p = post()
    r = make_req("r", [1], temperature=0)
    p.sample_and_advance([r], peaked(EOS), [0])
    assert r.finished.type == "stop" and r.finished.matched == EOS
    r = make_req("r", [1], temperature=0, stop_token_ids=[9])
    p.sample_and_advance([r], peaked(9), [0])
    assert r.finished.type == "stop" and r.finished.matched == 9
    r = make_req("r", [1], temperature=0, ignore_eos=True)
    p.sample_and_advance([r], peaked(EOS), [0])
    assert r.finished is None


def test_min_new_tokens_suppresses_eos_and_stop_ids():
    p = post()
    r = make_req("r", [1], temperature=0, min_new_tokens=2, stop_token_ids=[9])
    lg = peaked(EOS)
    lg[0, 9] = 9.0
    lg[0, 4] = 1.0
    p.sample_and_advance([r], lg, [0])
    assert r.output_ids == [4] and r.finished is None


def test_stop_string_spanning_tokens_and_stop_regex():
    p = post()
    r = with_stops(make_req("r", [1], temperature=0, stop=["cd"]))
    for t in (0, 2, 3):  # "a", "c", "d"
        p.sample_and_advance([r], peaked(t), [0])
    assert r.finished.type == "stop" and r.finished.matched == "cd"
    r = with_stops(make_req("r", [1], temperature=0, stop_regex=[r"b+c"]))
    for t in (0, 1, 1):
        p.sample_and_advance([r], peaked(t), [0])
        assert r.finished is None
    p.sample_and_advance([r], peaked(2), [0])
    assert r.finished.matched == "bbc"


def test_length_and_context_limits():
    p = post(context_len=4)
    r = make_req("r", [1], temperature=0, max_new_tokens=2)
    p.sample_and_advance([r], peaked(0), [0])
    assert r.finished is None
    p.sample_and_advance([r], peaked(0), [0])
    assert r.finished.type == "length"
    r = make_req("r", [1, 2, 3], temperature=0, max_new_tokens=100)
    p.sample_and_advance([r], peaked(0), [0])
    assert r.finished.type == "length"  # prompt + output reached the context length


@pytest.mark.parametrize("agree", [0, 2, 3])
def test_verify_draft_keeps_the_agreeing_prefix_and_samples_one_more(agree):
    p = post()
    r = make_req("r", [1], temperature=0)
    draft = [5, 6, 7]
    model = draft[:agree] + [9] * (4 - agree)  # what greedy picks at each of the 4 positions
    kept = p.verify_draft(r, draft, peaked(*model), 0)
    assert kept == agree
    assert r.output_ids == model[:agree + 1]
    assert p.stats.num_accepted_draft_tokens == agree


def test_verify_draft_stops_at_a_finished_token():
    p = post()
    r = make_req("r", [1], temperature=0, stop_token_ids=[6])
    kept = p.verify_draft(r, [5, 6, 7], peaked(5, 6, 7, 8), 0)
    assert kept == 2 and r.output_ids == [5, 6] and r.finished.matched == 6


def test_seeded_sampling_is_the_same_alone_and_in_a_batch():
    p = post()
    lg = torch.randn(3, VOCAB)
    alone = make_req("a", [1], temperature=1.0, seed=11)
    alone.generator = torch.Generator().manual_seed(11)
    p.sample_and_advance([alone], lg, [1])
    batch = [make_req(str(i), [1], temperature=1.0, seed=s) for i, s in enumerate((5, 11, 7))]
    for r in batch:
        r.generator = torch.Generator().manual_seed(r.params.seed)
    p.sample_and_advance(batch, lg, [0, 1, 2])
    assert batch[1].output_ids == alone.output_ids


def test_prompt_logprobs_rows():
    req = make_req("r", [3, 4, 5, 6])
    req.return_logprob, req.top_logprobs_num = True, 1
    lg = torch.randn(3, VOCAB)
    PostProcessor.record_prompt_logprobs(lg, [(req, 0, 1, 3)])
    logp = torch.log_softmax(lg, -1)
    assert [t for _, t in req.input_token_logprobs] == [4, 5, 6]
    for i, (v, t) in enumerate(req.input_token_logprobs):
        assert math.isclose(v, logp[i, t].item(), rel_tol=1e-6)
    assert [e[0][1] for e in req.input_top_logprobs] == logp.argmax(-1).tolist()


def test_consecutive_rows_are_sampled_from_a_view_and_logprobs_only_where_asked():
    p = post()
    a, b, c = (make_req(x, [1], temperature=0) for x in "abc")
    b.return_logprob = True
    lg = peaked(2, 4, 6, 8)
    p.sample_and_advance([a, b, c], lg, [1, 2, 3])
    assert [r.output_ids for r in (a, b, c)] == [[4], [6], [8]]
    assert a.output_token_logprobs == [] and c.output_token_logprobs == []
    (lp, tok), = b.output_token_logprobs
    assert tok == 6 and lp == pytest.approx(torch.log_softmax(lg[2], -1)[6].item(), abs=1e-5)


def test_select_rows_views_consecutive_rows_and_copies_others():
    from radixrt.scheduler.postprocess import _select_rows

    with torch.inference_mode():  # as the runner's logits
        lg = torch.arange(12.0).view(4, 3)
    view = _select_rows(lg, [1, 2], writable=False)
    assert view.data_ptr() == lg[1].data_ptr() and view.tolist() == lg[1:3].tolist()
    assert _select_rows(lg, [3], writable=False).data_ptr() == lg[3].data_ptr()
    copy = _select_rows(lg, [2, 0], writable=False)
    assert copy.tolist() == [lg[2].tolist(), lg[0].tolist()] and copy.data_ptr() != lg[2].data_ptr()
    assert _select_rows(lg, [0, 2], writable=False).tolist() == [lg[0].tolist(), lg[2].tolist()]
    masked = _select_rows(lg, [1, 2], writable=True)  # to be masked in place: a normal tensor
    masked.fill_(0.0)
    assert lg[1].tolist() == [3.0, 4.0, 5.0]
