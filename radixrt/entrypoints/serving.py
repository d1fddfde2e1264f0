"""Pieces shared by the native and OpenAI routes: error bodies, SSE, running a Call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from radixrt.managers.tokenizer_manager import Call, RequestFailed, SampleState

SSE_DONE = "data: [DONE]\n\n"

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 413: "invalid_request_error", 500: "internal_error",
                503: "service_unavailable"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"),
                      "code": status}}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def sse_response(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def start_call(call: Call, request: Request, stream: bool) -> None:
    """Watch for the client going away, then wait until the call is done (stream=False) or
    has its first output (stream=True: errors found by the scheduler still become a 4xx
    before any byte of the stream is sent). Raises the call's error; closes it on failure."""
    call.watch_disconnect(request.receive)
    try:
        if stream:
            await call.wait_update()
        else:
            while not call.done and call.error() is None:  # one failed sample fails the call
                await call.wait_update()
        err = call.error()
        if err is not None and (not stream or not any(s.output_ids for s in call.states)):
            raise err
    except BaseException:
        call.close()
        raise


def stream_error(err: RequestFailed) -> str:
    return sse(error_body(err.status, err.message))


async def stream_samples(call: Call, emit: Callable[[int, SampleState], list[str]]) -> AsyncIterator[str]:
    """The SSE events of a streaming call, until every sample has ended. After each wake-up,
    ``emit(i, state)`` turns what sample i has new into events (possibly none); a sample ends
    after the pass that sees it finished, or with one error event if it failed. The caller
    adds its trailer (usage, ``[DONE]``) and closes the call."""
    ended = [False] * len(call.states)
    while True:
        for i, st in enumerate(call.states):
            if ended[i]:
                continue
            ended[i] = True
            if st.error is not None:
                yield stream_error(st.failure())
                continue
            ended[i] = st.finished  # read with the output: both are final from here on
            for event in emit(i, st):
                yield event
        if all(ended):
            return
        await call.wait_update()
