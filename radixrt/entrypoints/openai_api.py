"""OpenAI-compatible `/v1/models`, `/v1/completions` and `/v1/chat/completions`.

Requests map onto the same samples as `/generate`: `n` becomes n samples (seed + i when
seeded), `max_tokens` becomes max_new_tokens (completions default 16; chat defaults to the
rest of the context), `response_format` becomes a json_schema (or structural_tag)
constraint. Choices are indexed prompt-major; usage counts each prompt once and every
choice's completion. Chat `tools` become a structural_tag constraint and the output is parsed
into `tool_calls` (`tool_calls.py`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from fastapi import Request

from radixrt.entrypoints.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAISamplingFields,
)
from radixrt.entrypoints.serving import SSE_DONE, sse, sse_response, start_call, stream_samples
from radixrt.entrypoints.tool_calls import (
    TRIGGER,
    ToolCallError,
    ToolCallParser,
    ToolPlan,
    parse_tools,
    render_messages,
)
from radixrt.managers.inputs import normalize_prompts
from radixrt.managers.results import ReqState
from radixrt.managers.tokenizer_manager import Call, RequestFailed, TokenizerManager
from radixrt.sampling_params import SamplingParams
from radixrt.tokenizer import chat_template_renders_tools

COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# OpenAI field -> SamplingParams field, copied when set.
_SAMPLING_FIELDS = {
    "temperature": "temperature", "top_p": "top_p", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty", "seed": "seed", "top_k": "top_k", "min_p": "min_p",
    "min_tokens": "min_new_tokens", "repetition_penalty": "repetition_penalty",
    "stop_token_ids": "stop_token_ids", "stop_regex": "stop_regex", "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens", "no_jump_forward": "no_jump_forward",
    "no_budget_closing": "no_budget_closing", "no_stop_trim": "no_stop_trim", "regex": "regex",
    "json_schema": "json_schema", "ebnf": "ebnf", "structural_tag": "structural_tag",
}
_CONSTRAINTS = ("regex", "json_schema", "ebnf", "structural_tag")


def list_models(tm: TokenizerManager) -> dict[str, Any]:
    return {"object": "list", "data": [{
        "id": tm.served_model_name, "object": "model", "created": tm.started_at,
        "owned_by": "radixrt", "root": tm.model_info["model_dir"], "max_model_len": tm.context_len,
    }]}


def _sampling_params(req: OpenAISamplingFields, max_new_tokens: int,
                     tool_constraint: str | None = None) -> SamplingParams:
    if req.logit_bias:
        raise RequestFailed("logit_bias: not supported")
    d: dict[str, Any] = {"max_new_tokens": max_new_tokens, "n": req.n}
    for src, dst in _SAMPLING_FIELDS.items():
        value = getattr(req, src)
        if value is not None:
            d[dst] = value
    if tool_constraint is not None:
        if req.response_format is not None and req.response_format.type != "text" or any(
                d.get(k) is not None for k in _CONSTRAINTS):
            raise RequestFailed("tools: cannot be combined with response_format, regex, json_schema, "
                                "ebnf or structural_tag unless tool_choice is 'none'")
        d["structural_tag"] = tool_constraint
    if req.stop is not None:
        d["stop"] = [req.stop] if isinstance(req.stop, str) else req.stop
    rf = req.response_format
    if rf is not None and rf.type != "text":
        if any(d.get(k) is not None for k in _CONSTRAINTS):
            raise RequestFailed("response_format: cannot be combined with regex, json_schema, ebnf or "
                                "structural_tag")
        if rf.type == "json_object":
            d["json_schema"] = json.dumps({"type": "object"})
        elif rf.type == "structural_tag":
            if rf.structures is None or rf.triggers is None:
                raise RequestFailed("response_format: structural_tag needs structures and triggers")
            d["structural_tag"] = json.dumps({"structures": rf.structures, "triggers": rf.triggers})
        else:
            if rf.json_schema is None or rf.json_schema.schema_ is None:
                raise RequestFailed("response_format.json_schema.schema: required for type json_schema")
            d["json_schema"] = json.dumps(rf.json_schema.schema_)
    try:
        return SamplingParams.from_dict(d)
    except ValueError as e:
        raise RequestFailed(str(e)) from None


def _finish(st: ReqState) -> tuple[str | None, Any]:
    fr = st.finish_reason if st.finished else None
    if fr is None:
        return None, None
    return fr.type, fr.matched


def _usage(states: list[ReqState], n: int) -> dict[str, Any]:
    firsts = states[::n]
    prompt = sum(s.prompt_tokens for s in firsts)
    completion = sum(len(s.output_ids) for s in states)
    cached = sum(s.meta.cached_tokens for s in firsts)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}


async def _run(tm: TokenizerManager, request: Request, prompt_ids: list[list[int]],
               params: SamplingParams, stream: bool, rid: str | None, return_logprob: bool,
               top: int, logprob_start_len: int = -1) -> Call:
    k = len(prompt_ids)
    samples = tm.make_samples(prompt_ids, [params] * k, rids=[rid] if rid and k == 1 else None,
                              return_logprob=[return_logprob] * k,
                              logprob_start_len=[logprob_start_len] * k, top_logprobs_num=[top] * k)
    call = tm.submit(samples, stream=stream)
    await start_call(call, request, stream)
    return call


# ----------------------------------------------------------------- /v1/completions
def _legacy_logprobs(tm: TokenizerManager, pairs, tops, offset: int) -> dict[str, Any]:
    tokens = [tm.token_texts(t) for _, t in pairs]
    text_offset = []
    for t in tokens:
        text_offset.append(offset)
        offset += len(t)
    out: dict[str, Any] = {"tokens": tokens, "token_logprobs": [lp for lp, _ in pairs],
                           "text_offset": text_offset, "top_logprobs": None}
    if tops:
        out["top_logprobs"] = [None if e is None else {tm.token_texts(t): lp for lp, t in e} for e in tops]
    return out


async def completions(tm: TokenizerManager, req: CompletionRequest, request: Request):
    if req.suffix is not None:
        raise RequestFailed("suffix: not supported")
    if req.best_of is not None and req.best_of != req.n:
        raise RequestFailed("best_of: only best_of == n is supported")
    try:
        prompts, _ = normalize_prompts(req.prompt, None)
    except ValueError as e:
        raise RequestFailed(f"prompt: {e}") from None
    prompt_ids = []
    for p in prompts:
        if isinstance(p, str):
            prompt_ids.append(await tm.tokenize(p, "prompt"))
        else:
            tm.check_prompt(p, "prompt")
            prompt_ids.append(list(p))
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    params = _sampling_params(req, max_tokens)
    want_lp = req.logprobs is not None
    call = await _run(tm, request, prompt_ids, params, req.stream, req.rid, want_lp, req.logprobs or 0,
                      0 if (req.echo and want_lp) else -1)
    echo_text = [p if isinstance(p, str) else tm.tokenizer.decode(p) for p in prompts] if req.echo else None
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": tm.served_model_name}
    if req.stream:
        return sse_response(_stream_completions(tm, call, req, meta, echo_text))
    call.close()
    choices = []
    for i, st in enumerate(call.states):
        prefix = echo_text[i // req.n] if echo_text else ""
        lp = None
        if want_lp:
            pairs, tops = st.output_token_logprobs, st.output_top_logprobs
            if req.echo:
                pairs, tops = st.input_token_logprobs + pairs, st.input_top_logprobs + tops
            lp = _legacy_logprobs(tm, pairs, tops, 0)
        reason, matched = _finish(st)
        choices.append({"index": i, "text": prefix + st.text, "logprobs": lp, "finish_reason": reason,
                        "matched_stop": matched})
    return {**meta, "object": "text_completion", "choices": choices, "usage": _usage(call.states, req.n)}


async def _stream_completions(tm: TokenizerManager, call: Call, req: CompletionRequest,
                              meta: dict[str, Any], echo_text: list[str] | None):
    k = len(call.states)
    sent_chars, sent_lps, started = [0] * k, [0] * k, [False] * k
    include_usage = req.stream_options is not None and req.stream_options.include_usage

    def emit(i: int, st: ReqState) -> list[str]:
        text = st.text[sent_chars[i]:]
        prefix = echo_text[i // req.n] if echo_text and not started[i] else ""
        reason, matched = _finish(st)
        if not (text or prefix or reason):
            return []
        lp = None
        if req.logprobs is not None:
            pairs = st.output_token_logprobs[sent_lps[i]:]
            tops = st.output_top_logprobs[sent_lps[i]:]
            if req.echo and not started[i]:
                pairs, tops = st.input_token_logprobs + pairs, st.input_top_logprobs + tops
            lp = _legacy_logprobs(tm, pairs, tops, sent_chars[i])
            sent_lps[i] = len(st.output_token_logprobs)
        started[i] = True
        sent_chars[i] = len(st.text)
        return [sse({**meta, "object": "text_completion", "choices": [{
            "index": i, "text": prefix + text, "logprobs": lp, "finish_reason": reason,
            "matched_stop": matched}]})]

    try:
        async for event in stream_samples(call, emit):
            yield event
        if include_usage and call.error() is None:
            yield sse({**meta, "object": "text_completion", "choices": [],
                       "usage": _usage(call.states, req.n)})
        yield SSE_DONE
    finally:
        call.close()


# ----------------------------------------------------------------- /v1/chat/completions
def _chat_prompt(tm: TokenizerManager, req: ChatCompletionRequest) -> tuple[str, ToolPlan | None]:
    """The rendered prompt and the request's tool plan (docs/openai.md, "Tool calling")."""
    try:
        plan = parse_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
        native = plan is not None and chat_template_renders_tools(tm.tokenizer, TRIGGER)
        messages, tool_kwargs = render_messages(req.messages, plan, native)
    except ToolCallError as e:
        raise RequestFailed(str(e)) from None
    kwargs = dict(req.chat_template_kwargs or {})
    kwargs.update(tool_kwargs)
    if req.continue_final_message:
        kwargs.update(add_generation_prompt=False, continue_final_message=True)
    else:
        kwargs.setdefault("add_generation_prompt", True)
    return tm.apply_chat_template(messages, **kwargs), plan


_STRUCTURE_ERROR = re.compile(r"^sampling_params\.structural_tag: structures\[(\d+)\]\.schema: ")


def _tool_error(err: RequestFailed, plan: ToolPlan) -> RequestFailed:
    """A tool schema the constraint compiler rejected, named as the request's field."""
    m = _STRUCTURE_ERROR.match(err.message)
    if m is None:
        return err
    where = f"tools[{plan.tool_of_structure(int(m.group(1)))}].function.parameters: "
    return RequestFailed(where + err.message[m.end():], err.status)


def _tool_parsers(plan: ToolPlan | None, k: int) -> list[ToolCallParser] | None:
    return [ToolCallParser() for _ in range(k)] if plan is not None and plan.calls_expected else None


def _tool_reason(parser: ToolCallParser, reason: str | None) -> str | None:
    """finish_reason "tool_calls" when the output holds calls, all of them complete."""
    return "tool_calls" if reason in ("stop", "length") and parser.all_complete else reason


def _chat_logprobs(tm: TokenizerManager, pairs, tops) -> dict[str, Any]:
    content = []
    for j, (lp, tok) in enumerate(pairs):
        text = tm.token_texts(tok)
        entry: dict[str, Any] = {"token": text, "logprob": lp, "bytes": list(text.encode()),
                                 "top_logprobs": []}
        if tops and j < len(tops) and tops[j] is not None:
            entry["top_logprobs"] = [{"token": tm.token_texts(t), "logprob": v,
                                      "bytes": list(tm.token_texts(t).encode())} for v, t in tops[j]]
        content.append(entry)
    return {"content": content}


async def chat_completions(tm: TokenizerManager, req: ChatCompletionRequest, request: Request):
    if req.top_logprobs and not req.logprobs:
        raise RequestFailed("top_logprobs: requires logprobs to be true")
    text, plan = _chat_prompt(tm, req)
    ids = await tm.tokenize(text, "messages", add_special_tokens=False)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = tm.context_len - len(ids)
    params = _sampling_params(req, max_tokens, plan.structural_tag() if plan is not None else None)
    try:
        call = await _run(tm, request, [ids], params, req.stream, req.rid, req.logprobs,
                          req.top_logprobs or 0)
    except RequestFailed as e:
        raise (e if plan is None else _tool_error(e, plan)) from None
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": tm.served_model_name}
    parsers = _tool_parsers(plan, len(call.states))
    if req.stream:
        return sse_response(_stream_chat(tm, call, req, meta, parsers))
    call.close()
    choices = []
    for i, st in enumerate(call.states):
        reason, matched = _finish(st)
        message: dict[str, Any] = {"role": "assistant", "content": st.text}
        if parsers is not None:
            parsers[i].feed(st.text, final=True)
            content, calls = parsers[i].result()
            if calls:
                message = {"role": "assistant", "content": content,
                           "tool_calls": [c.openai() for c in calls]}
                reason = _tool_reason(parsers[i], reason)
        choices.append({
            "index": i, "message": message,
            "logprobs": _chat_logprobs(tm, st.output_token_logprobs, st.output_top_logprobs)
            if req.logprobs else None,
            "finish_reason": reason, "matched_stop": matched})
    return {**meta, "object": "chat.completion", "choices": choices, "usage": _usage(call.states, req.n)}


async def _stream_chat(tm: TokenizerManager, call: Call, req: ChatCompletionRequest, meta: dict[str, Any],
                       parsers: list[ToolCallParser] | None):
    k = len(call.states)
    sent_chars, sent_lps, started = [0] * k, [0] * k, [False] * k
    include_usage = req.stream_options is not None and req.stream_options.include_usage

    def chunk(i: int, delta: dict[str, Any], reason: str | None = None, logprobs=None, matched=None) -> str:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        if reason is not None:
            choice["matched_stop"] = matched
        return sse({**meta, "object": "chat.completion.chunk", "choices": [choice]})

    def emit(i: int, st: ReqState) -> list[str]:
        events = []
        if not started[i]:
            started[i] = True
            events.append(chunk(i, {"role": "assistant", "content": ""}))
        reason, matched = _finish(st)
        if parsers is None:
            text = st.text[sent_chars[i]:]
            sent_chars[i] = len(st.text)
            deltas = [{"content": text}] if text else []
        else:
            deltas = [_tool_delta(parsers[i], e) for e in parsers[i].feed(st.text, final=reason is not None)]
            if reason is not None:
                reason = _tool_reason(parsers[i], reason)
        for j, delta in enumerate(deltas):
            lp = None
            if req.logprobs and j == 0:  # the new tokens' logprobs ride on the first delta
                lp = _chat_logprobs(tm, st.output_token_logprobs[sent_lps[i]:],
                                    st.output_top_logprobs[sent_lps[i]:])
                sent_lps[i] = len(st.output_token_logprobs)
            events.append(chunk(i, delta, logprobs=lp))
        if reason is not None:
            lp = None
            if req.logprobs and sent_lps[i] < len(st.output_token_logprobs):
                lp = _chat_logprobs(tm, st.output_token_logprobs[sent_lps[i]:],
                                    st.output_top_logprobs[sent_lps[i]:])
            events.append(chunk(i, {}, reason, logprobs=lp, matched=matched))
        return events

    try:
        async for event in stream_samples(call, emit):
            yield event
        if include_usage and call.error() is None:
            yield sse({**meta, "object": "chat.completion.chunk", "choices": [],
                       "usage": _usage(call.states, req.n)})
        yield SSE_DONE
    finally:
        call.close()


def _tool_delta(parser: ToolCallParser, event: tuple) -> dict[str, Any]:
    """A streamed parser event as an OpenAI chat delta: content, or a tool call's first chunk
    (index, id, type, name, empty arguments), or a fragment of its arguments."""
    if event[0] == "content":
        return {"content": event[1]}
    c = event[1]
    index = parser.calls.index(c)
    if event[0] == "start":
        return {"tool_calls": [{"index": index, "id": c.id, "type": "function",
                                "function": {"name": c.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": index, "function": {"arguments": event[2]}}]}
