"""SGLang's native `/generate`: text or input_ids, single or batch, optional SSE streaming.

Results are SGLang-shaped: ``{"text", "output_ids", "meta_info"}``, a list for a batch or
n > 1 (prompt-major: all samples of prompt 0, then of prompt 1, ...), built by
`managers.results` exactly as the offline Engine builds them. While streaming, every chunk
carries the text and ids so far and the output logprobs new since the previous chunk (SGLang's
chunks: its `RuntimeEndpoint` reads ``text[len(previous):]``), plus ``index`` when the call has
several samples.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from radixrt.entrypoints.protocol import GenerateRequest
from radixrt.entrypoints.serving import SSE_DONE, sse, sse_response, start_call, stream_samples
from radixrt.managers.inputs import normalize_prompts, per_prompt_params
from radixrt.managers.results import ReqState, StreamChunks, TokenTexts, result
from radixrt.managers.tokenizer_manager import Call, RequestFailed, TokenizerManager


def _per_prompt(value: Any, default: Any, name: str, n: int, is_batch: bool) -> list[Any]:
    if value is None:
        return [default] * n
    if isinstance(value, list):
        if not is_batch or len(value) != n:
            raise RequestFailed(f"{name}: a list must have one entry per prompt of a batch "
                                f"(got {len(value)} for {n} prompt(s))")
        return list(value)
    return [value] * n


async def generate(tm: TokenizerManager, body: GenerateRequest, request: Request):
    try:
        prompts, is_batch = normalize_prompts(body.text, body.input_ids)
        params = per_prompt_params(body.sampling_params, len(prompts))
    except ValueError as e:
        raise RequestFailed(str(e)) from None
    n = len(prompts)
    rids = None
    if body.rid is not None:
        if isinstance(body.rid, list) != is_batch or (is_batch and len(body.rid) != n):
            raise RequestFailed("rid: give a string for a single prompt and a list with one rid "
                                "per prompt for a batch")
        rids = body.rid if is_batch else [body.rid]
    prompt_ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            prompt_ids.append(await tm.tokenize(p, f"text[{i}]" if is_batch else "text"))
        else:
            tm.check_prompt(p, f"input_ids[{i}]" if is_batch else "input_ids")
            prompt_ids.append(list(p))
    samples = tm.make_samples(
        prompt_ids, params, rids=rids,
        return_logprob=_per_prompt(body.return_logprob, False, "return_logprob", n, is_batch),
        logprob_start_len=_per_prompt(body.logprob_start_len, -1, "logprob_start_len", n, is_batch),
        top_logprobs_num=_per_prompt(body.top_logprobs_num, 0, "top_logprobs_num", n, is_batch))
    call = tm.submit(samples, stream=body.stream)
    await start_call(call, request, body.stream)
    texts = tm.token_texts if body.return_text_in_logprobs else None
    if body.stream:
        return sse_response(_stream(call, texts, indexed=len(samples) > 1))
    call.close()
    results = [result(st, texts) for st in call.states]
    return results[0] if len(results) == 1 and not is_batch else results


async def _stream(call: Call, texts: TokenTexts | None, indexed: bool):
    chunkers = [StreamChunks() for _ in call.states]

    def emit(i: int, st: ReqState) -> list[str]:
        chunk = chunkers[i].next(st, texts)
        if chunk is None:
            return []
        if indexed:
            chunk["index"] = i
        return [sse(chunk)]

    try:
        async for event in stream_samples(call, emit):
            yield event
        yield SSE_DONE
    finally:
        call.close()

