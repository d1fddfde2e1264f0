"""In-process pieces of the server pipeline: message encoding and the detokenizer core."""

from __future__ import annotations

import pytest

from radixrt.managers.detokenizer import Detokenizer
from radixrt.managers.messages import (
    AbortReq,
    BatchStrOut,
    BatchTokenIDOut,
    FlushCacheOut,
    FlushCacheReq,
    GetServerInfoReq,
    ProcessReady,
    ServerInfoOut,
    StrOut,
    TokenIDOut,
    TokenizedGenerateReq,
    decode,
    encode,
)

pytestmark = pytest.mark.timeout(120)


def _out(rid: str, ids: list[int], finish=None, stop=(), n=0) -> TokenIDOut:
    return TokenIDOut(rid=rid, new_ids=ids, finish_reason=finish, prompt_tokens=3,
                      completion_tokens=n, cached_tokens=0, stop=list(stop))


@pytest.mark.parametrize("msg", [
    TokenizedGenerateReq(rid="a", input_ids=[1, 2], sampling_params={"max_new_tokens": 3, "stop": ["x"]},
                         return_logprob=True, logprob_start_len=0, top_logprobs_num=2, stream=True),
    AbortReq(rid="a"), FlushCacheReq(call_id=1), GetServerInfoReq(call_id=2),
    BatchTokenIDOut(outputs=[TokenIDOut(
        rid="a", new_ids=[5], finish_reason={"type": "stop", "matched": 5}, prompt_tokens=2,
        completion_tokens=1, cached_tokens=1, input_token_logprobs=[(None, 1), (-0.5, 2)],
        output_top_logprobs=[[(-0.1, 5), (-2.0, 6)]], error=None)]),
    BatchStrOut(outputs=[StrOut(rid="a", text="hi", new_ids=[5], finished=False, meta={"k": 1})]),
    FlushCacheOut(call_id=1, success=True), ServerInfoOut(call_id=2, info={"memory": {"kv_total_slots": 4}}),
    ProcessReady(name="scheduler", info={"context_len": 8}),
])
def test_messages_round_trip(msg):
    assert decode(encode(msg)) == msg


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from radixrt.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir)


def _stream(detok: Detokenizer, ids: list[int], stop: list[str], final: dict) -> list[str]:
    pieces = []
    for i, tok in enumerate(ids):
        last = i == len(ids) - 1
        pieces.append(detok.process(_out("r", [tok], final if last else None, stop, i + 1)).text)
    return pieces


def test_detokenizer_matches_full_decode(tokenizer):
    text = "Héllo wörld, naïve café 🙂 done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = _stream(Detokenizer(tokenizer), ids, [], {"type": "length"})
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_never_emitted(tokenizer):
    text = "one two three STOP four"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The scheduler finishes on the token that completes "STOP"; emulate it.
    cut = next(i for i in range(1, len(ids) + 1) if "STOP" in tokenizer.decode(ids[:i]))
    pieces = _stream(Detokenizer(tokenizer), ids[:cut], ["STOP"], {"type": "stop", "matched": "STOP"})
    assert "".join(pieces) == "one two three "
    partial = "".join(pieces[:-1])
    assert "ST" not in partial  # the possible start of the stop string was held back


def test_stop_token_is_not_text(tokenizer):
    ids = tokenizer.encode("The end", add_special_tokens=False)
    stop_tok = tokenizer.encode(" again", add_special_tokens=False)[-1]
    pieces = _stream(Detokenizer(tokenizer), ids + [stop_tok], [], {"type": "stop", "matched": stop_tok})
    assert "".join(pieces) == "The end"


def test_error_output_finishes(tokenizer):
    o = _out("e", [], {"type": "abort", "message": "bad"})
    o.error, o.error_code = "bad", 400
    s = Detokenizer(tokenizer).process(o)
    assert s.finished and s.error == "bad" and s.error_code == 400
