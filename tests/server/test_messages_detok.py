"""In-process pieces of the result pipeline (server and Engine alike): message encoding, the
detokenizer core, progress reports, and SGLang-shaped results and stream chunks."""

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
    ReqMeta,
    ServerInfoOut,
    StrOut,
    TokenIDOut,
    TokenizedGenerateReq,
    decode,
    encode,
)
from radixrt.managers.progress import ProgressTracker
from radixrt.managers.results import ReqState, StreamChunks, result
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.req import FinishReason, Req

pytestmark = pytest.mark.timeout(120)


def _out(rid: str, ids: list[int], finish: FinishReason | None = None, stop=(), n=0,
         stream: bool = True) -> TokenIDOut:
    return TokenIDOut(rid=rid, new_ids=ids, stop=list(stop), stream=stream,
                      meta=ReqMeta(prompt_tokens=3, completion_tokens=n, finish_reason=finish))


@pytest.mark.parametrize("msg", [
    TokenizedGenerateReq(rid="a", input_ids=[1, 2],
                         sampling_params=SamplingParams.from_dict({"max_new_tokens": 3, "stop": "x",
                                                                   "temperature": 0.5, "seed": 3}),
                         return_logprob=True, logprob_start_len=0, top_logprobs_num=2, stream=True),
    AbortReq(rid="a"), FlushCacheReq(call_id=1), GetServerInfoReq(call_id=2),
    BatchTokenIDOut(outputs=[TokenIDOut(
        rid="a", new_ids=[5], meta=ReqMeta(2, 1, 1, FinishReason("stop", matched=5)),
        input_token_logprobs=[(None, 1), (-0.5, 2)], output_top_logprobs=[[(-0.1, 5), (-2.0, 6)]])]),
    BatchStrOut(outputs=[StrOut(rid="a", text="hi", new_ids=[5], meta=ReqMeta(2, 1, 0)),
                         StrOut(rid="b", text="", new_ids=[], error="bad", error_code=400,
                                meta=ReqMeta(finish_reason=FinishReason("abort", message="bad")))]),
    FlushCacheOut(call_id=1, success=True), ServerInfoOut(call_id=2, info={"memory": {"kv_total_slots": 4}}),
    ProcessReady(name="scheduler", info={"context_len": 8}),
])
def test_messages_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_typed_fields_survive_the_wire():
    msg = decode(encode(TokenizedGenerateReq(rid="a", input_ids=[1], sampling_params=SamplingParams(
        stop=["x"], stop_regex=["y+"], json_schema='{"type": "object"}'))))
    assert isinstance(msg.sampling_params, SamplingParams)
    assert msg.sampling_params.stop == ["x"] and msg.sampling_params.max_new_tokens == 128
    out = decode(encode(BatchTokenIDOut(outputs=[_out("r", [1], FinishReason("stop", matched="\n"))])))
    reason = out.outputs[0].meta.finish_reason
    assert isinstance(reason, FinishReason) and reason.matched == "\n" and out.outputs[0].finished
    assert reason.to_dict() == {"type": "stop", "matched": "\n"}
    # (logprob, token id) on the wire: a pair the other way round does not decode.
    bad = encode(BatchTokenIDOut(outputs=[TokenIDOut(rid="r", new_ids=[], meta=ReqMeta(),
                                                     output_top_logprobs=[[(5, -0.1)]])]))
    with pytest.raises(Exception, match="int"):
        decode(bad)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from radixrt.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir)


def _stream(detok: Detokenizer, ids: list[int], stop: list[str], final: FinishReason) -> list[str]:
    pieces = []
    for i, tok in enumerate(ids):
        last = i == len(ids) - 1
        pieces.append(detok.process(_out("r", [tok], final if last else None, stop, i + 1)).text)
    return pieces


def test_detokenizer_matches_full_decode(tokenizer):
    text = "Héllo wörld, naïve café 🙂 done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = _stream(Detokenizer(tokenizer), ids, [], FinishReason("length"))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_never_emitted(tokenizer):
    text = "one two three STOP four"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The scheduler finishes on the token that completes "STOP"; emulate it.
    cut = next(i for i in range(1, len(ids) + 1) if "STOP" in tokenizer.decode(ids[:i]))
    pieces = _stream(Detokenizer(tokenizer), ids[:cut], ["STOP"], FinishReason("stop", matched="STOP"))
    assert "".join(pieces) == "one two three "
    partial = "".join(pieces[:-1])
    assert "ST" not in partial  # the possible start of the stop string was held back


def test_not_streamed_text_waits_for_the_end(tokenizer):
    # A stop regex matched "11" over two tokens: the first one's text was not sent early.
    ids = tokenizer.encode("1", add_special_tokens=False) * 2
    detok = Detokenizer(tokenizer)
    first = detok.process(_out("r", ids[:1], n=1, stream=False))
    last = detok.process(_out("r", ids[1:], FinishReason("stop", matched="11"), n=2, stream=False))
    assert (first.text, first.new_ids, last.text) == ("", ids[:1], "")


def test_stop_token_is_not_text(tokenizer):
    ids = tokenizer.encode("The end", add_special_tokens=False)
    stop_tok = tokenizer.encode(" again", add_special_tokens=False)[-1]
    pieces = _stream(Detokenizer(tokenizer), ids + [stop_tok], [], FinishReason("stop", matched=stop_tok))
    assert "".join(pieces) == "The end"


def test_no_stop_trim_keeps_the_stop_string_and_token(tokenizer):
    text = "one two three STOP"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    pieces = [detok.process(TokenIDOut(
        rid="r", new_ids=[t], stop=["STOP"], stream=True, no_stop_trim=True,
        meta=ReqMeta(3, i + 1, 0, FinishReason("stop", matched="STOP") if i == len(ids) - 1 else None))).text
        for i, t in enumerate(ids)]
    assert "".join(pieces) == text
    assert "ST" not in "".join(pieces[:-1])  # still held back while it could be a stop string
    stop_tok = tokenizer.encode(" again", add_special_tokens=False)[-1]
    ids = tokenizer.encode("The end", add_special_tokens=False) + [stop_tok]
    last = Detokenizer(tokenizer).process(TokenIDOut(
        rid="t", new_ids=ids, stream=True, no_stop_trim=True,
        meta=ReqMeta(3, len(ids), 0, FinishReason("stop", matched=stop_tok))))
    assert last.text == tokenizer.decode(ids)


def test_error_output_finishes(tokenizer):
    o = ProgressTracker().fail("e", "bad", 400)
    s = Detokenizer(tokenizer).process(o)
    assert s.finished and s.error == "bad" and s.error_code == 400
    assert s.meta.finish_reason == FinishReason("abort", message="bad")


def _req(rid: str, lps: bool = True) -> Req:
    req = Req(rid=rid, prompt_ids=[1, 2, 3], params=SamplingParams(), return_logprob=lps,
              logprob_start_len=0 if lps else -1, top_logprobs_num=2 if lps else 0)
    if lps:
        req.input_token_logprobs = [(None, 1), (-1.0, 2), (-2.0, 3)]
        req.input_top_logprobs = [None, [(-0.5, 7), (-1.0, 2)], [(-0.1, 8), (-2.0, 3)]]
    return req


def _step(req: Req, tok: int, finish: FinishReason | None = None) -> None:
    req.output_ids.append(tok)
    if req.return_logprob:
        req.output_token_logprobs.append((-0.25 * tok, tok))
        req.output_top_logprobs.append([(-0.25 * tok, tok), (-9.0, 0)])
    req.finished = finish


def test_progress_reports_only_what_is_new():
    tracker = ProgressTracker()
    stream, plain = _req("s"), _req("p")
    tracker.track("s", stream=True)
    tracker.track("p", stream=False)
    reports = {"s": [], "p": []}
    for i, tok in enumerate([11, 12, 13]):
        last = FinishReason("length") if i == 2 else None
        for req in (stream, plain):
            _step(req, tok, last)
            out = tracker.report(req)
            if out is not None:
                reports[req.rid].append(out)
    # Streaming: every step. Otherwise: the first token (time to first token), then the end.
    assert [o.new_ids for o in reports["s"]] == [[11], [12], [13]]
    assert [o.new_ids for o in reports["p"]] == [[11], [12, 13]]
    for outs, req in ((reports["s"], stream), (reports["p"], plain)):
        assert [p for o in outs for p in o.output_token_logprobs] == req.output_token_logprobs
        assert [p for o in outs for p in o.output_top_logprobs] == req.output_top_logprobs
        assert [p for o in outs for p in o.input_token_logprobs] == req.input_token_logprobs
        assert outs[-1].finished and outs[-1].meta == ReqMeta(3, 3, 0, FinishReason("length"))
    assert tracker.rids() == [] and tracker.report(stream) is None  # forgotten once finished


def _apply_all(tokenizer, ids: list[int], stop: list[str], finish: FinishReason,
               stream: bool) -> tuple[ReqState, list[dict]]:
    """Run token ids through the whole pipeline (tracker, detokenizer, state, chunks)."""
    req = _req("r")
    req.params = SamplingParams(stop=stop)
    tracker, detok, chunker = ProgressTracker(), Detokenizer(tokenizer), StreamChunks()
    tracker.track("r", stream)
    st = ReqState(rid="r", prompt_tokens=3, return_logprob=True, top_logprobs_num=2)
    chunks = []
    for i, tok in enumerate(ids):
        _step(req, tok, finish if i == len(ids) - 1 else None)
        out = tracker.report(req)
        if out is not None:
            st.apply(detok.process(out), now=st.created + 0.01 * (i + 1))
            chunk = chunker.next(st)
            if chunk is not None:
                chunks.append(chunk)
    return st, chunks


def test_stream_chunks_carry_new_logprobs_and_cumulative_text(tokenizer):
    ids = tokenizer.encode("one two three STOP four", add_special_tokens=False)
    cut = next(i for i in range(1, len(ids) + 1) if "STOP" in tokenizer.decode(ids[:i]))
    st, chunks = _apply_all(tokenizer, ids[:cut], ["STOP"], FinishReason("stop", matched="STOP"), True)
    full = result(st)
    assert full["text"] == "one two three " and full["output_ids"] == ids[:cut]
    assert len(chunks) == cut
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])) and texts[-1] == full["text"]
    assert all("ST" not in t for t in texts)  # a possible stop string start is held back
    seen = 0
    for c in chunks:
        m = c["meta_info"]
        assert m["output_token_logprobs_length"] == m["completion_tokens"] == len(c["output_ids"])
        assert len(m["output_token_logprobs"]) == m["completion_tokens"] - seen
        assert len(m["output_top_logprobs"]) == len(m["output_token_logprobs"])
        assert m["input_token_logprobs"] == full["meta_info"]["input_token_logprobs"]  # whole, every chunk
        seen = m["completion_tokens"]
    assert [e for c in chunks for e in c["meta_info"]["output_token_logprobs"]] == \
        full["meta_info"]["output_token_logprobs"]
    assert [e for c in chunks for e in c["meta_info"]["output_top_logprobs"]] == \
        full["meta_info"]["output_top_logprobs"]
    last = chunks[-1]["meta_info"]
    assert last["finish_reason"] == {"type": "stop", "matched": "STOP"}
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert last["ttft"] == pytest.approx(0.01) and last["e2e_latency"] == pytest.approx(0.01 * cut)
    per_chunk = ("output_token_logprobs", "output_top_logprobs")
    assert {k: v for k, v in last.items() if k not in per_chunk} == \
        {k: v for k, v in full["meta_info"].items() if k not in per_chunk}


def test_non_streamed_result_has_the_same_fields(tokenizer):
    ids = tokenizer.encode("Hello there, friend", add_special_tokens=False)
    st, chunks = _apply_all(tokenizer, ids, [], FinishReason("length"), False)
    assert len(chunks) == 2  # the first-token report and the end
    full = result(st)
    assert full["text"] == tokenizer.decode(ids)
    m = full["meta_info"]
    assert set(m) == {"id", "prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason",
                      "ttft", "e2e_latency", "input_token_logprobs", "output_token_logprobs",
                      "output_token_logprobs_length", "input_top_logprobs", "output_top_logprobs"}
    assert m["output_token_logprobs_length"] == len(m["output_token_logprobs"]) == len(ids)
    assert [t for _, t, _ in m["output_token_logprobs"]] == ids
    assert m["input_top_logprobs"][0] is None and m["input_top_logprobs"][1][0] == [-0.5, 7, None]
