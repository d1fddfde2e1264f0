"""Jump-forward is verified against the model's own samples, so it never changes an output:
greedy and seeded outputs are token-identical with it on and off, under memory pressure and
with paging too, and its KV bookkeeping leaks nothing."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from radixrt import Engine
from tests.engine.conftest import assert_no_leak

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "kind": {"const": "person"},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "items": {"enum": ["alpha", "beta"]}, "maxItems": 2}},
    "required": ["name", "kind", "age", "tags"],
    "additionalProperties": False,
}
CALL_REGEX = r'call\(tool="(search|calculator)", query="[a-z ]{1,12}"\)'

CASES = [
    ({"json_schema": json.dumps(PERSON)}, lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"regex": CALL_REGEX}, lambda t: re.fullmatch(CALL_REGEX, t) or pytest.fail(t)),
]
PROMPTS = [[101, 202, 303, 404], [7, 8, 9], [5000, 6000, 7000, 8000, 9000, 10000]]


def _run(eng, constraint, extra):
    params = {"max_new_tokens": 80, **constraint, **extra}
    return eng.generate(input_ids=PROMPTS, sampling_params=params, return_logprob=True)


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_outputs_identical_with_and_without_jump_forward(tiny_model_dir, page_size, sampling):
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096, page_size=page_size) as eng:
        for constraint, check in CASES:
            off = _run(eng, constraint, {**sampling, "no_jump_forward": True})
            steps_off = eng.get_stats()["num_forward_steps"]
            on = _run(eng, constraint, sampling)
            steps_on = eng.get_stats()["num_forward_steps"] - steps_off
            for a, b in zip(on, off):
                assert a["output_ids"] == b["output_ids"]
                assert a["text"] == b["text"]
                check(a["text"])
                # Every kept draft token carries the model's real logprob, as without drafts.
                lp_on = [lp for lp, _, _ in a["meta_info"]["output_token_logprobs"]]
                lp_off = [lp for lp, _, _ in b["meta_info"]["output_token_logprobs"]]
                assert lp_on == pytest.approx(lp_off, abs=1e-4)
            assert steps_on > 0
        stats = eng.get_stats()
        assert stats["num_draft_tokens"] > 0
        assert 0 < stats["num_accepted_draft_tokens"] <= stats["num_draft_tokens"]
        assert_no_leak(eng)


def test_drafts_under_memory_pressure(tiny_model_dir):
    """Drafts are dropped before anything is evicted or retracted; outputs still match."""
    prompts = [[100 + i, 200 + i, 300 + i] * 10 for i in range(10)]
    # Long outputs (always cut by max_new_tokens) with forced text between short free parts.
    params = {"temperature": 0, "max_new_tokens": 60, "regex": r"(item: [a-z]{1,3}; ){40}"}
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=100000,
                disable_jump_forward=True) as big:
        expected = [r["output_ids"] for r in big.generate(input_ids=prompts, sampling_params=params)]
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=300, page_size=4,
                max_running_requests=10) as small:
        got = [r["output_ids"] for r in small.generate(input_ids=prompts, sampling_params=params)]
        stats = small.get_stats()
        assert stats["num_retractions"] > 0 and stats["num_accepted_draft_tokens"] > 0
        assert_no_leak(small)
    assert got == expected


def test_constraint_failure_fails_only_its_request(tiny_model_dir, monkeypatch):
    """A bug while computing one request's mask fails that request (a 500-class error), not
    the scheduler: the other requests of the batch finish and nothing leaks."""
    from radixrt.fsm.grammar import CompiledGrammar

    real = CompiledGrammar.mask_tensor

    def broken(self, state):
        if "broken" in self.spec:
            raise RuntimeError("mask exploded")
        return real(self, state)

    monkeypatch.setattr(CompiledGrammar, "mask_tensor", broken)
    with Engine(model_path=str(tiny_model_dir), max_total_tokens=4096) as eng:
        params = [{"max_new_tokens": 8, "temperature": 0, "regex": "[a-z]{4}"},
                  {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
                  {"max_new_tokens": 8, "temperature": 0, "regex": "(broken|fine)[a-z]{3}"}]
        # The broken request is awaited last, so the batch's others have finished when it raises.
        with pytest.raises(ValueError, match="internal error in the regex constraint.*mask exploded"):
            eng.generate([[5, 6], [7, 8], [9, 10]], params)
        ok = eng.generate([[5, 6], [7, 8]], params[:2])
        assert re.fullmatch("[a-z]{4}", ok[0]["text"]) and len(ok[1]["output_ids"]) == 8
        assert_no_leak(eng)
