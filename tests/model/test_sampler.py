"""Tests for radixrt.model.sampler: every sampling parameter, seeds, logprobs, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.model.sampler import (
    RequestPenalty,
    Sampler,
    SamplingBatchInfo,
    apply_penalties,
    filter_probs,
    sample_from_probs,
)
from radixrt.sampling_params import SamplingParams

SAMPLER = Sampler()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(logits, params, gens=None, penalties=None, suppress=None, tops=None, default_seed=0):
    info = SamplingBatchInfo.build(params, logits.shape[-1], gens, suppress,
                                   default_generator=gen(default_seed))
    return SAMPLER(logits, info, penalties, tops), info


def sample_many(row_logits, n, default_seed=0, **kw):
    """Sample one row `n` times in a single batched call; returns the [n] token ids."""
    logits = row_logits.unsqueeze(0).expand(n, -1).contiguous()
    out, _ = run(logits, [SamplingParams(**kw)] * n, default_seed=default_seed)
    return out.next_token_ids


def probs_logits(p):
    return torch.tensor(p, dtype=torch.float32).log()


# ------------------------------------------------------------------------------ greedy
def test_greedy_argmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1),
              SamplingParams(temperature=1e-7), SamplingParams(temperature=0.0, top_p=0.1),
              SamplingParams(temperature=0.0, min_p=0.9)]
    out, info = run(logits, params)
    assert info.is_all_greedy
    assert out.next_token_ids.tolist() == logits.argmax(-1).tolist()
    assert out.next_token_ids.dtype == torch.int64


def test_bf16_logits_accepted():
    logits = torch.randn(3, 20).to(torch.bfloat16)
    out, _ = run(logits, [SamplingParams(temperature=0.0)] * 3)
    assert out.next_token_ids.tolist() == logits.float().argmax(-1).tolist()
    assert out.logprobs.dtype == torch.float32


# ------------------------------------------------------------------------------ temperature
CHI2_CRIT_DF5_P001 = 20.515  # chi-square critical value, 5 degrees of freedom, p = 0.001


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_distribution(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.5])
    n = 20000
    toks = sample_many(logits, n, default_seed=1, temperature=temperature)
    counts = torch.bincount(toks, minlength=6).double()
    expected = torch.softmax(logits.double() / temperature, -1) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRIT_DF5_P001, (chi2, counts.tolist(), expected.tolist())
    # and it is not the distribution of a different temperature
    other = torch.softmax(logits.double() / (temperature * 2), -1) * n
    assert float(((counts - other) ** 2 / other).sum()) > 5 * CHI2_CRIT_DF5_P001


# ------------------------------------------------------------------------------ top-k / top-p / min-p
def test_top_k_never_outside():
    torch.manual_seed(1)
    row = torch.randn(40) * 0.3  # flat-ish: without top-k most tokens would appear
    top3 = set(row.topk(3).indices.tolist())
    toks = sample_many(row, 3000, top_k=3, temperature=1.5)
    assert set(toks.tolist()) == top3
    toks = sample_many(row, 3000, temperature=1.5)
    assert len(set(toks.tolist())) > 30


def test_top_k_larger_than_vocab_is_disabled():
    row = torch.zeros(8)
    toks = sample_many(row, 2000, top_k=100)
    assert set(toks.tolist()) == set(range(8))


def test_top_p_nucleus_and_boundary():
    row = probs_logits([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    # 0.5 < 0.7 so token 3 (which crosses 0.7) is kept; 0.8 >= 0.7 so token 2 is cut.
    toks = sample_many(row, 4000, top_p=0.7)
    assert set(toks.tolist()) == {1, 3}
    frac = (toks == 1).double().mean().item()
    assert abs(frac - 0.5 / 0.8) < 0.04  # renormalised within the nucleus
    # tiny top_p: only the top token survives
    assert set(sample_many(row, 500, top_p=1e-4).tolist()) == {1}
    # top_p = 0.95 keeps the first three
    assert set(sample_many(row, 4000, top_p=0.95).tolist()) == {1, 3, 2}


def test_top_p_applies_to_top_k_renormalised():
    row = probs_logits([0.5, 0.3, 0.15, 0.05])
    # top-2 renormalised: [0.625, 0.375]; 0.625 >= 0.6, so top_p cuts token 1 (HF/vLLM order).
    assert set(sample_many(row, 1000, top_k=2, top_p=0.6).tolist()) == {0}
    assert set(sample_many(row, 2000, top_k=2, top_p=0.7).tolist()) == {0, 1}


def test_min_p():
    row = probs_logits([0.5, 0.3, 0.15, 0.05])
    # threshold = 0.2 * 0.5 = 0.1: token 3 (0.05) dropped, token 2 (0.15) kept
    toks = sample_many(row, 4000, min_p=0.2)
    assert set(toks.tolist()) == {0, 1, 2}
    assert set(sample_many(row, 1000, min_p=0.7).tolist()) == {0}
    # min_p is relative to the temperature-scaled distribution: at T=0.5 the probs become
    # [0.25, 0.09, 0.0225, 0.0025]/sum, token 2 is 0.09 of the top and drops at min_p=0.1
    assert set(sample_many(row, 4000, min_p=0.1, temperature=0.5).tolist()) == {0, 1}


# ------------------------------------------------------------------------------ penalties
def _penalized(logits, params, prompts, outputs):
    pens = [RequestPenalty(p, logits.shape[-1], o) for p, o in zip(prompts, outputs, strict=True)]
    info = SamplingBatchInfo.build(params, logits.shape[-1], None)
    return apply_penalties(logits.clone(), info, pens)


def test_repetition_penalty_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0]])
    out = _penalized(logits, [SamplingParams(repetition_penalty=2.0)], [[0, 1]], [[3, 3]])
    # seen = {0, 1} (prompt) + {3} (output): positive / 2, negative * 2
    assert out.tolist() == [[1.0, -2.0, 0.5, -6.0, 1.0, 0.0]]
    # repetition_penalty < 1 encourages repetition
    out = _penalized(logits, [SamplingParams(repetition_penalty=0.5)], [[0, 1]], [[]])
    assert out.tolist() == [[4.0, -0.5, 0.5, -3.0, 1.0, 0.0]]


def test_frequency_and_presence_penalty_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0]] * 2)
    params = [SamplingParams(frequency_penalty=0.5), SamplingParams(presence_penalty=1.5)]
    # prompt tokens do NOT count for frequency/presence (output only)
    prompts = [[4, 5], [4, 5]]
    outputs = [[0, 0, 0, 2], [0, 0, 0, 2]]
    out = _penalized(logits, params, prompts, outputs)
    assert out[0].tolist() == [2.0 - 1.5, -1.0, 0.5 - 0.5, -3.0, 1.0, 0.0]
    assert out[1].tolist() == [2.0 - 1.5, -1.0, 0.5 - 1.5, -3.0, 1.0, 0.0]
    # combined with repetition, in order repetition -> frequency -> presence
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.25, presence_penalty=0.5)
    out = _penalized(logits[:1], [p], [[1]], [[0, 0]])
    assert out[0].tolist() == [2.0 / 2 - 0.5 - 0.5, -2.0, 0.5, -3.0, 1.0, 0.0]


def test_penalty_state_incremental_and_batch_with_none():
    pen = RequestPenalty([1, 2], 6)
    for t in [3, 3, 5]:
        pen.update(t)
    pen.update([5, 0])
    assert pen.counts.tolist() == [1, 0, 0, 2, 0, 2]
    assert pen.seen_mask().tolist() == [True, True, True, True, False, True]
    pen.rollback([5, 0])
    assert pen.counts.tolist() == [0, 0, 0, 2, 0, 1]
    assert pen.num_output == 3
    # only rows with a state are penalised; greedy picks the unpenalised top token
    logits = torch.tensor([[0.0, 0.0, 0.0, 5.0, 4.0, 0.0]] * 2)
    params = [SamplingParams(temperature=0.0, frequency_penalty=2.0)] * 2
    out, _ = run(logits, params, penalties=[pen, None])
    assert out.next_token_ids.tolist() == [4, 3]
    # logprobs stay those of the raw logits
    assert torch.allclose(out.logprobs, torch.log_softmax(logits, -1)[[0, 1], [4, 3]])


# ------------------------------------------------------------------------------ min_new_tokens mask
def test_min_new_tokens_suppression_mask():
    eos = 7
    logits = torch.zeros(4, 10)
    logits[:, eos] = 10.0  # EOS dominates
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0), SamplingParams(temperature=1.0)]
    suppress = [[eos, 3], [], [eos], []]
    out, info = run(logits, params, suppress=suppress)
    assert info.logit_mask is not None and info.logit_mask.shape == (4, 10)
    toks = out.next_token_ids.tolist()
    assert toks[0] not in (eos, 3) and toks[1] == eos and toks[2] != eos
    # sampled row: EOS never drawn across many samples
    n = 2000
    out, _ = run(logits[2:3].expand(n, -1).contiguous(), [params[2]] * n, suppress=[[eos]] * n)
    assert eos not in out.next_token_ids.tolist()
    # a mask forbidding everything is ignored rather than producing NaN
    out, _ = run(torch.tensor([[0.0, 1.0]]), [SamplingParams()], suppress=[[0, 1]])
    assert out.next_token_ids.item() in (0, 1)


def test_no_mask_when_nothing_suppressed():
    info = SamplingBatchInfo.build([SamplingParams()] * 2, 10, None, [[], []])
    assert info.logit_mask is None
    info = SamplingBatchInfo.build([SamplingParams()], 10, None, [[99]])  # out of vocab: ignored
    assert info.logit_mask is None


# ------------------------------------------------------------------------------ seeds
def _seeded_sequence(seed, position, others, steps=6, V=300):
    """Tokens of a seeded request at `position` in a batch with `others` params, over steps."""
    torch.manual_seed(123)
    base = torch.randn(steps, V)
    target = SamplingParams(temperature=0.9, seed=seed)
    g = gen(seed)
    toks = []
    for s in range(steps):
        params = list(others)
        params.insert(position, target)
        gens = [gen(1000 + j) if p.seed is not None else None for j, p in enumerate(params)]
        gens[position] = g
        logits = torch.randn(len(params), V) * 3  # other rows: arbitrary
        logits[position] = base[s]
        out, _ = run(logits, params, gens=gens, default_seed=s * 7 + position)
        toks.append(out.next_token_ids[position].item())
    return toks


def test_seed_determinism_across_batches():
    compositions = [
        (0, []),
        (0, [SamplingParams(temperature=0.0)]),
        (2, [SamplingParams(), SamplingParams(top_p=0.5, seed=5)]),
        (1, [SamplingParams(top_k=5, min_p=0.1), SamplingParams(temperature=0.0),
             SamplingParams(temperature=1.3, frequency_penalty=1.0)]),
    ]
    seqs = [_seeded_sequence(42, pos, others) for pos, others in compositions]
    assert all(s == seqs[0] for s in seqs), seqs
    assert _seeded_sequence(43, 0, []) != seqs[0]
    assert _seeded_sequence(44, 1, [SamplingParams()]) != seqs[0]


def test_unseeded_rows_follow_default_generator():
    logits = torch.zeros(8, 1000)
    params = [SamplingParams()] * 8
    a, _ = run(logits, params, default_seed=3)
    b, _ = run(logits, params, default_seed=3)
    c, _ = run(logits, params, default_seed=4)
    assert a.next_token_ids.tolist() == b.next_token_ids.tolist() != c.next_token_ids.tolist()


# ------------------------------------------------------------------------------ mixed batch
def test_mixed_greedy_and_sampling_batch():
    n = 400
    logits = torch.zeros(n, 20)
    logits[:, 5] = 1.0
    params = [SamplingParams(temperature=0.0) if i % 2 == 0 else SamplingParams(temperature=1.0)
              for i in range(n)]
    out, info = run(logits, params)
    assert not info.is_all_greedy
    toks = out.next_token_ids
    assert (toks[0::2] == 5).all()
    assert len(set(toks[1::2].tolist())) > 10


# ------------------------------------------------------------------------------ logprobs
def test_logprobs_are_raw_log_softmax():
    torch.manual_seed(2)
    logits = torch.randn(4, 30) * 2
    params = [SamplingParams(temperature=0.3), SamplingParams(temperature=2.0, top_k=3),
              SamplingParams(temperature=0.0), SamplingParams(repetition_penalty=1.5)]
    out, _ = run(logits, params, penalties=[None, None, None, RequestPenalty([1, 2, 3], 30)])
    ref = torch.log_softmax(logits, -1).gather(1, out.next_token_ids.unsqueeze(1)).squeeze(1)
    assert torch.allclose(out.logprobs, ref, atol=1e-5)
    assert out.logprobs.dtype == torch.float32
    assert out.top_logprobs is None


def test_top_logprobs_order_and_values():
    torch.manual_seed(3)
    logits = torch.randn(3, 25)
    out, _ = run(logits, [SamplingParams(temperature=0.0)] * 3, tops=[3, 0, 5])
    lsm = torch.log_softmax(logits, -1)
    assert out.top_logprobs[1] == []
    for i, n in [(0, 3), (2, 5)]:
        entries = out.top_logprobs[i]
        assert len(entries) == n
        ids = [t for _, t in entries]
        vals = [v for v, _ in entries]
        assert ids == lsm[i].topk(n).indices.tolist()
        assert vals == sorted(vals, reverse=True)
        assert all(math.isclose(v, lsm[i, t].item(), abs_tol=1e-5) for v, t in entries)
        assert isinstance(ids[0], int) and isinstance(vals[0], float)
    # more than the vocabulary: clamped
    out, _ = run(torch.randn(1, 4), [SamplingParams()], tops=[10])
    assert len(out.top_logprobs[0]) == 4


# ------------------------------------------------------------------------------ property test
def _reference_allowed(logits, p: SamplingParams, prompt, output, suppress):
    """Loose reference (float64): the set of tokens the filtered distribution may produce."""
    V = logits.shape[0]
    x = logits.double().clone()
    if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        seen = set(prompt) | set(output)
        for t in range(V):
            c = output.count(t)
            if t in seen:
                x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
            x[t] -= p.frequency_penalty * c + p.presence_penalty * (c > 0)
    allowed_mask = [t not in suppress for t in range(V)] if len(set(suppress)) < V else [True] * V
    x[[not a for a in allowed_mask]] = float("-inf")
    top_k = V if p.top_k < 0 else min(p.top_k, V)
    if p.temperature < 1e-5 or top_k == 1:
        m = x.max().item()
        return {t for t in range(V) if x[t].item() >= m - 1e-4 * (1 + abs(m))}
    probs = torch.softmax(x / p.temperature, -1)
    kth = probs.sort(descending=True).values[top_k - 1].item()
    keep = [probs[t].item() >= kth * (1 - 1e-5) and probs[t].item() > 0 for t in range(V)]
    kept = probs * torch.tensor(keep, dtype=torch.float64)
    total = kept.sum().item()
    if p.top_p < 1.0:
        for t in range(V):
            above = kept[kept > kept[t] * (1 + 1e-6)].sum().item()  # least mass ranked above t
            if above >= p.top_p * total + 1e-5:
                keep[t] = False
    pmax = probs.max().item()
    return {t for t in range(V) if keep[t] and probs[t].item() >= p.min_p * pmax * (1 - 1e-4)}


@st.composite
def sampling_case(draw):
    V = draw(st.integers(2, 12))
    B = draw(st.integers(1, 4))
    rows = []
    for _ in range(B):
        logits = draw(st.lists(st.one_of(st.integers(-5, 5).map(float),
                                         st.floats(-20, 20, allow_nan=False, width=32)),
                               min_size=V, max_size=V))
        p = SamplingParams(
            temperature=draw(st.one_of(st.just(0.0), st.floats(0.05, 3.0))),
            top_p=draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0))),
            top_k=draw(st.one_of(st.just(-1), st.integers(1, V + 2))),
            min_p=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
            repetition_penalty=draw(st.one_of(st.just(1.0), st.floats(0.5, 2.0))),
            frequency_penalty=draw(st.one_of(st.just(0.0), st.floats(-2.0, 2.0))),
            presence_penalty=draw(st.one_of(st.just(0.0), st.floats(-2.0, 2.0))),
            seed=draw(st.one_of(st.none(), st.integers(0, 2**31))),
        )
        prompt = draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=6))
        output = draw(st.lists(st.integers(0, V - 1), max_size=6))
        suppress = draw(st.lists(st.integers(0, V - 1), max_size=3))
        rows.append((logits, p, prompt, output, suppress))
    return V, rows, draw(st.integers(0, 2**31))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sampling_case())
def test_property_sampled_token_is_allowed(case):
    V, rows, default_seed = case
    logits = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    params = [r[1] for r in rows]
    gens = [gen(p.seed) if p.seed is not None else None for p in params]
    pens = [RequestPenalty(r[2], V, r[3]) if (r[1].repetition_penalty != 1.0 or r[1].frequency_penalty
                                              or r[1].presence_penalty) else None for r in rows]
    suppress = [r[4] for r in rows]
    out, _ = run(logits, params, gens=gens, penalties=pens, suppress=suppress,
                 tops=[2] * len(rows), default_seed=default_seed)
    toks = out.next_token_ids.tolist()
    lsm = torch.log_softmax(logits, -1)
    for i, (_, p, prompt, output, sup) in enumerate(rows):
        assert 0 <= toks[i] < V
        allowed = _reference_allowed(logits[i], p, prompt, output, sup)
        assert toks[i] in allowed, (i, toks[i], allowed)
        assert math.isclose(out.logprobs[i].item(), lsm[i, toks[i]].item(), abs_tol=1e-4)
        assert len(out.top_logprobs[i]) == 2


# ------------------------------------------------------------------------------ internals
def _naive_filter(probs, top_k, top_p, min_p):
    """Full-sort float64 reference of top-k -> top-p (renormalised) -> min-p; ties kept."""
    p = probs.double()
    V = p.shape[0]
    keep = torch.ones(V, dtype=torch.bool)
    if top_k < V:
        keep &= p >= p.sort(descending=True).values[top_k - 1]
    q = torch.where(keep, p, 0.0)
    if top_p < 1:
        s = q.sort(descending=True).values
        before = s.cumsum(0) - s
        crossing = s[(before < top_p * q.sum()) & (s > 0)].min()
        keep &= p >= crossing
    keep &= p >= min_p * p.max()
    return keep


@pytest.mark.parametrize("V", [300, 5000])
def test_staged_top_p_matches_full_sort(V):
    torch.manual_seed(V)
    # rows from peaked to flat, so nuclei range from 1 token to thousands (all stages used)
    scales = [8.0, 4.0, 2.0, 1.0, 0.5, 0.1, 0.02, 0.0]
    logits = torch.stack([torch.randn(V) * s for s in scales] * 3)
    N = logits.shape[0]
    probs = torch.softmax(logits, -1)
    top_ks = torch.tensor(([V, 20, 300, 4000, V, 2, V, 1000] * 3)[:N]).clamp(max=V)
    top_ps = torch.tensor(([0.9, 0.5, 0.99, 1.0, 0.3, 0.95, 0.999, 0.7] * 3)[:N])
    got = filter_probs(probs.clone(), top_ks, top_ps, None) > 0
    for i in range(N):
        ref = _naive_filter(probs[i], int(top_ks[i]), float(top_ps[i]), 0.0)
        assert torch.equal(got[i], ref), (i, int(got[i].sum()), int(ref.sum()))
    # the staged path gives the same thresholds as sorting everything at once
    import radixrt.model.sampler as S
    old = S.TOP_P_STAGES
    try:
        S.TOP_P_STAGES = ()
        full = filter_probs(probs.clone(), top_ks, top_ps, None)
    finally:
        S.TOP_P_STAGES = old
    assert torch.equal(full, filter_probs(probs.clone(), top_ks, top_ps, None))


def test_sample_from_probs_inverse_cdf_exact():
    # deterministic uniforms on a grid: counts match the probabilities exactly (+-1)
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.5, 0.125, 0.125, 0.0]])
    M = 800
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    toks = sample_from_probs(probs.expand(M, -1).contiguous(), u)
    counts = torch.bincount(toks, minlength=7).tolist()
    assert counts == [0, 200, 0, 400, 100, 100, 0]
    # extreme uniforms never pick a zero-probability token, even across empty blocks
    V = 1000  # not a multiple of the block size
    p = torch.zeros(3, V)
    p[0, 0] = 1.0
    p[1, 999] = 1.0
    p[2, [10, 600]] = torch.tensor([1e-30, 1.0])
    for uu in [0.0, 1e-300, 0.5, 1.0 - 2**-53, 1.0]:  # even u == 1 lands on a positive entry
        toks = sample_from_probs(p, torch.full((3,), uu, dtype=torch.float64)).tolist()
        assert toks[0] == 0 and toks[1] == 999 and toks[2] in (10, 600)
    # unnormalised rows work
    assert sample_from_probs(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([0.8])).item() == 2


def test_sample_from_probs_matches_float64_cdf():
    # a dominant token followed by a long tail of tiny probabilities, uniforms in the tail:
    # a float32 CDF (ulp ~6e-8 near 1) picks the wrong tail token for ~20% of these rows
    torch.manual_seed(5)
    V, n = 4097, 256
    probs = torch.full((n, V), 1e-3 / (V - 1)) * torch.exp(torch.randn(n, V) * 0.1)
    probs[:, 0] = 0.999
    u = 0.999 + 0.001 * torch.rand(n, dtype=torch.float64)
    got = sample_from_probs(probs, u)
    cdf = probs.double().cumsum(-1)
    ref = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    assert torch.equal(got, ref)
    # near-flat large vocabulary, padded last block
    V, n = 150_001, 16
    probs = torch.softmax(torch.randn(n, V) * 0.01, -1)
    u = torch.rand(n, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    ref = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    assert torch.equal(sample_from_probs(probs, u), ref)


def test_filters_that_are_off_keep_every_token():
    # rows with top_p == 1 / top_k disabled / min_p == 0 keep even tokens whose mass is lost
    # in float32 rounding, when other rows of the batch do use the filters
    probs = torch.tensor([[1.0, 1e-12, 1e-12, 0.0], [0.5, 0.3, 0.2, 0.0]])
    out = filter_probs(probs.clone(), torch.tensor([4, 1]), torch.tensor([1.0, 0.5]),
                       torch.tensor([0.0, 0.1]))
    assert torch.equal(out[0], probs[0])
    assert out[1].tolist() == [0.5, 0.0, 0.0, 0.0]
    out = filter_probs(probs.clone(), torch.tensor([4, 2]), None, None)
    assert torch.equal(out[0], probs[0]) and torch.equal(out[1], torch.tensor([0.5, 0.3, 0.0, 0.0]))


# ------------------------------------------------------------------------------ fast paths
@pytest.mark.parametrize("V", [1, 7, 300, 49152])
def test_argmax_rows_matches_torch_argmax_with_ties_nan_and_inf(V):
    from radixrt.model.sampler import argmax_rows

    torch.manual_seed(V)
    cases = [torch.randn(5, V), torch.randint(0, 3, (5, V)).float(), torch.full((5, V), float("-inf"))]
    tied = torch.zeros(5, V)
    tied[:, V // 2:] = 1.0  # the first of the tied maxima
    nan = torch.randn(5, V)
    nan[1, V - 1] = float("nan")
    nan[3, :] = float("inf")
    nan[3, V // 3] = float("nan")  # NaN counts as the largest
    cases += [tied, nan, torch.randn(5, 2 * V)[:, ::2], torch.randn(5, V, dtype=torch.float64)]
    for x in cases:
        got = argmax_rows(x)
        assert got.dtype == torch.int64 and torch.equal(got, x.argmax(-1))
    half = torch.randn(3, V).to(torch.bfloat16)  # other dtypes take torch's argmax
    assert torch.equal(argmax_rows(half), half.argmax(-1))


def test_logprobs_only_for_the_rows_that_ask():
    torch.manual_seed(4)
    logits = torch.randn(4, 40) * 2
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7),
              SamplingParams(temperature=0.0), SamplingParams(temperature=1.2, top_p=0.8)]
    info = SamplingBatchInfo.build(params, 40, None, default_generator=gen(9))
    full = SAMPLER(logits, info, None, None)
    info = SamplingBatchInfo.build(params, 40, None, default_generator=gen(9))
    some = SAMPLER(logits, info, None, None, return_logprobs=[False, True, False, True])
    info = SamplingBatchInfo.build(params, 40, None, default_generator=gen(9))
    none = SAMPLER(logits, info, None, None, return_logprobs=False)
    # the tokens never depend on which logprobs are computed
    assert full.next_token_ids.tolist() == some.next_token_ids.tolist() == none.next_token_ids.tolist()
    ref = torch.log_softmax(logits, -1).gather(1, full.next_token_ids.unsqueeze(1)).squeeze(1)
    assert torch.allclose(full.logprobs, ref, atol=1e-5)
    assert torch.allclose(some.logprobs[[1, 3]], ref[[1, 3]], atol=1e-5)
    assert torch.isnan(some.logprobs[[0, 2]]).all() and torch.isnan(none.logprobs).all()
    # top logprobs need every row's normaliser: all logprobs come with them
    info = SamplingBatchInfo.build(params, 40, None, default_generator=gen(9))
    tops = SAMPLER(logits, info, None, [0, 2, 0, 0], return_logprobs=False)
    assert torch.allclose(tops.logprobs, ref, atol=1e-5) and len(tops.top_logprobs[1]) == 2
    with pytest.raises(ValueError, match="return_logprobs"):
        SAMPLER(logits, info, None, None, return_logprobs=[True])


def test_batch_info_parameter_rows():
    params = [SamplingParams(temperature=0.5, top_p=0.9, min_p=0.1, repetition_penalty=1.2,
                             frequency_penalty=0.3, presence_penalty=-0.4),
              SamplingParams(temperature=0.0, top_k=5)]
    info = SamplingBatchInfo.build(params, 100, None)
    assert info.temperatures.tolist() == pytest.approx([0.5, 0.0])
    assert info.top_ps.tolist() == pytest.approx([0.9, 1.0])
    assert info.min_ps.tolist() == pytest.approx([0.1, 0.0])
    assert info.repetition_penalties.tolist() == pytest.approx([1.2, 1.0])
    assert info.frequency_penalties.tolist() == pytest.approx([0.3, 0.0])
    assert info.presence_penalties.tolist() == pytest.approx([-0.4, 0.0])
    assert info.top_ks.tolist() == [100, 5] and info.top_ks.dtype == torch.int64
    assert all(t.dtype == torch.float32 for t in (info.temperatures, info.top_ps, info.min_ps))
