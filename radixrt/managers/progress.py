"""The scheduler side of the result pipeline: what each request has new since its previous
report, as a `TokenIDOut`.

Shared by the server's scheduler process and the offline Engine, so both see the same
reports: a streaming request reports after every step that touched it; the others report
their first token (time-to-first-token is measured the same way for both) and their end.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixrt.managers.messages import ReqMeta, TokenIDOut
from radixrt.scheduler.req import FinishReason, Req


@dataclass
class _Sent:
    """How much of one request has been reported."""

    stream: bool
    ids: int = 0
    input_lps: int = 0
    output_lps: int = 0


class ProgressTracker:
    """Not thread safe: used by the thread that steps the scheduler."""

    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}

    def track(self, rid: str, stream: bool) -> None:
        self._sent[rid] = _Sent(stream)

    def rids(self) -> list[str]:
        return list(self._sent)

    def report(self, req: Req) -> TokenIDOut | None:
        """What is new about ``req`` (None if nothing is due or it is not tracked). A finished
        request's last report also forgets it."""
        sent = self._sent.get(req.rid)
        if sent is None:
            return None
        if req.error:  # e.g. its constraint failed to compile: the client gets an error status
            return self.fail(req.rid, req.error, req.error_code)
        done = req.finished is not None
        if not done and not (sent.stream or (sent.ids == 0 and req.output_ids)):
            return None
        p = req.params
        out = TokenIDOut(
            rid=req.rid, new_ids=req.output_ids[sent.ids:],
            meta=ReqMeta(prompt_tokens=len(req.prompt_ids), completion_tokens=len(req.output_ids),
                         cached_tokens=req.cached_tokens, finish_reason=req.finished),
            skip_special_tokens=p.skip_special_tokens,
            spaces_between_special_tokens=p.spaces_between_special_tokens, stop=list(p.stop),
            no_stop_trim=p.no_stop_trim,
            stream=sent.stream)
        sent.ids = len(req.output_ids)
        if req.return_logprob:
            out.input_token_logprobs = req.input_token_logprobs[sent.input_lps:]
            out.output_token_logprobs = req.output_token_logprobs[sent.output_lps:]
            if req.top_logprobs_num:
                out.input_top_logprobs = req.input_top_logprobs[sent.input_lps:]
                out.output_top_logprobs = req.output_top_logprobs[sent.output_lps:]
            sent.input_lps = len(req.input_token_logprobs)
            sent.output_lps = len(req.output_token_logprobs)
        if done:
            del self._sent[req.rid]
        return out

    def fail(self, rid: str, message: str, code: int) -> TokenIDOut:
        """The report that ends ``rid`` with an error (HTTP status ``code``)."""
        self._sent.pop(rid, None)
        meta = ReqMeta(finish_reason=FinishReason("abort", message=message))
        return TokenIDOut(rid=rid, new_ids=[], meta=meta, error=message, error_code=code)

    def fail_all(self, message: str, code: int) -> list[TokenIDOut]:
        return [self.fail(rid, message, code) for rid in self.rids()]
