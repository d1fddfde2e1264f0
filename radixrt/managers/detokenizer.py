"""The detokenizer: token ids -> text deltas, per request, with stop strings.

While a streaming request runs, text that could be the start of one of its stop strings is
held back; when it finishes on a stop string (or a stop regex match), the text is cut where the
match begins, so a stop string is never emitted. A request that does not stream gets its text
at the end. A final stop token is not part of the text.

`Detokenizer` is the process-agnostic core (the offline Engine runs it in-process);
`run_detokenizer_process` wraps it in a ZeroMQ loop. Control replies from the scheduler pass
through that loop unchanged, so the tokenizer manager has a single inbound socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq

from radixrt.managers.ipc import (
    IDLE_POLL_MS,
    IpcPaths,
    parent_alive,
    pull_socket,
    push_socket,
    report_ready,
    send,
    setup_child,
)
from radixrt.managers.messages import (
    BatchStrOut,
    BatchTokenIDOut,
    ProcessReady,
    ReqMeta,
    StrOut,
    TokenIDOut,
    decode,
)
from radixrt.scheduler.detokenize import IncrementalDetokenizer, find_stop, stop_holdback
from radixrt.scheduler.req import FinishReason

logger = logging.getLogger("radixrt.detokenizer")


@dataclass
class _DetokState:
    detok: IncrementalDetokenizer
    stops: list[str]
    trim: bool = True  # cut the matched stop string / drop the stop token's text at the end
    sent: int = 0  # characters of detok.text already emitted


class Detokenizer:
    """Process-agnostic core: feed TokenIDOut, get StrOut (also run in-process by the Engine)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.states: dict[str, _DetokState] = {}

    def process_safe(self, o: TokenIDOut) -> StrOut:
        """`process`, turning a failure into that request's error instead of a dead process."""
        try:
            return self.process(o)
        except Exception as e:
            logger.exception("detokenizing %s failed", o.rid)
            self.states.pop(o.rid, None)
            msg = f"detokenization failed: {type(e).__name__}: {e}"
            return StrOut(rid=o.rid, text="", new_ids=[], error=msg, error_code=500,
                          meta=ReqMeta(finish_reason=FinishReason("abort", message=msg)))

    def process(self, o: TokenIDOut) -> StrOut:
        if o.error is not None:
            self.states.pop(o.rid, None)
            return StrOut(rid=o.rid, text="", new_ids=[], meta=o.meta, error=o.error,
                          error_code=o.error_code)
        st = self.states.get(o.rid)
        if st is None:
            st = _DetokState(IncrementalDetokenizer(self.tokenizer, o.skip_special_tokens,
                                                    o.spaces_between_special_tokens), list(o.stop),
                             trim=not o.no_stop_trim)
            self.states[o.rid] = st
        reason = o.meta.finish_reason
        matched = reason.matched if reason is not None and st.trim else None
        text_ids = o.new_ids[:-1] if isinstance(matched, int) and o.new_ids else o.new_ids
        before = len(st.detok.text)
        if text_ids:
            st.detok.add(text_ids)
        if reason is not None:
            st.detok.flush()
            text = st.detok.text
            end = len(text)
            if isinstance(matched, str):
                i = find_stop(text, [matched], before)
                if i == -1:
                    i = text.find(matched)
                if i != -1:
                    end = i
            del self.states[o.rid]
        elif o.stream:
            text = st.detok.text
            end = len(text) - stop_holdback(text, st.stops) if st.stops else len(text)
        else:  # reported early only to be timed: its text waits for the end (a stop regex may cut it)
            text, end = st.detok.text, st.sent
        delta = text[st.sent:end] if end > st.sent else ""
        st.sent = max(st.sent, end)
        return StrOut(rid=o.rid, text=delta, new_ids=list(o.new_ids), meta=o.meta,
                      input_token_logprobs=o.input_token_logprobs,
                      input_top_logprobs=o.input_top_logprobs,
                      output_token_logprobs=o.output_token_logprobs,
                      output_top_logprobs=o.output_top_logprobs)


def run_detokenizer_process(tokenizer_path: str, ipc: IpcPaths, ready_conn, parent_pid: int,
                            log_level: str) -> None:
    """Entry point of the spawned detokenizer process."""
    setup_child("detokenizer", log_level)
    try:
        from radixrt.tokenizer import load_tokenizer

        detok = Detokenizer(load_tokenizer(tokenizer_path))
        ctx = zmq.Context()
        recv_sock = pull_socket(ctx, ipc.detokenizer_in)
        send_sock = push_socket(ctx, ipc.tokenizer_in)
    except Exception as e:
        logger.exception("detokenizer start-up failed")
        report_ready(ready_conn, ProcessReady(name="detokenizer", error=f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    report_ready(ready_conn, ProcessReady(name="detokenizer"))
    while parent_alive(parent_pid):
        if not recv_sock.poll(IDLE_POLL_MS):
            continue
        while True:
            try:
                data = recv_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = decode(data)
            except Exception:
                logger.exception("dropping a message that does not decode")
                continue
            if isinstance(msg, BatchTokenIDOut):
                send(send_sock, BatchStrOut(outputs=[detok.process_safe(o) for o in msg.outputs]))
            else:
                send_sock.send(data)
    logger.info("parent process is gone; detokenizer exiting")
