"""A tiny in-memory stand-in for a native-API server, for testing the interpreter.

Tokens are words with their leading space (``"The capital is "`` -> ``The| capital| is| ``),
which is enough to reproduce token healing. Generation is scripted: ``reply(prompt)``
returns the text to produce; logprobs come from ``score(context_text, token)``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from radixrt.lang.backends.native import NativeBackend
from radixrt.lang.chat_template import get_chat_template
from radixrt.lang.errors import BackendError

_TOKEN = re.compile(r"\s?\S+|\s")


class FakeBackend(NativeBackend):
    def __init__(self, reply: Callable[[str], str] | None = None,
                 score: Callable[[str, str], float] | None = None, chat_template: str = "chatml",
                 logprob_lists: str = "new", fail_with: str | None = None):
        super().__init__()
        self.chat_template = get_chat_template(chat_template)
        self.reply = reply or (lambda prompt: " fake answer")
        self.score = score or (lambda ctx, tok: -1.0)
        # What stream chunks carry in their output logprob lists: "new" entries (radixrt, SGLang's
        # frontend contract), the "whole" lists with their length (SGLang's default server), or
        # the whole lists without a length ("legacy" SGLang servers).
        self.logprob_lists = logprob_lists
        self.fail_with = fail_with
        self.vocab: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ tokenizer
    def encode(self, text: str) -> list[int]:
        with self.lock:
            return [self.vocab.setdefault(t, len(self.vocab)) for t in _TOKEN.findall(text)]

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)

    # ------------------------------------------------------------------ server
    def _one(self, prompt: Any, payload: dict[str, Any]) -> dict[str, Any]:
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        text = prompt if isinstance(prompt, str) else self.decode(ids)
        sp = payload.get("sampling_params") or {}
        out_text = "" if sp.get("max_new_tokens") == 0 else self.reply(text)
        for stop in sp.get("stop") or []:
            if stop in out_text:
                out_text = out_text[: out_text.index(stop)]
        out_tokens = _TOKEN.findall(out_text)[: sp.get("max_new_tokens", 128)]
        out_text = "".join(out_tokens)
        meta: dict[str, Any] = {"prompt_tokens": len(ids), "completion_tokens": len(out_tokens),
                                "cached_tokens": 0, "finish_reason": {"type": "stop"}}
        if payload.get("return_logprob"):
            start = payload.get("logprob_start_len", -1)
            toks = [self.decode([i]) for i in ids]
            meta["input_token_logprobs"] = [
                [None if p == 0 else self.score("".join(toks[:p]), toks[p]), ids[p], toks[p]]
                for p in range(max(start, 0), len(ids))] if start >= 0 else []
            meta["output_token_logprobs"] = [[-0.5, self.encode(t)[0], None] for t in out_tokens]
        return {"text": out_text, "output_ids": self.encode(out_text), "meta_info": meta}

    def _generate(self, payload: dict[str, Any]) -> Any:
        self.requests.append(payload)
        if self.fail_with:
            raise BackendError(self.fail_with, status=400)
        src = payload.get("text", payload.get("input_ids"))
        if isinstance(src, list) and src and not isinstance(src[0], int):
            return [self._one(p, payload) for p in src]
        return self._one(src, payload)

    def _generate_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.requests.append(payload)
        if self.fail_with:
            raise BackendError(self.fail_with, status=400)
        full = self._one(payload["text"], payload)
        tokens = _TOKEN.findall(full["text"])
        lps = full["meta_info"].get("output_token_logprobs")
        for i in range(len(tokens)):
            meta = dict(full["meta_info"], completion_tokens=i + 1)
            if lps is not None:
                meta["output_token_logprobs"] = lps[i: i + 1] if self.logprob_lists == "new" else lps[: i + 1]
                if self.logprob_lists != "legacy":
                    meta["output_token_logprobs_length"] = i + 1
            yield {"text": "".join(tokens[: i + 1]), "output_ids": full["output_ids"][: i + 1],
                   "meta_info": meta}

    def flush_cache(self, empty_cache: bool = True) -> bool:
        return True

    def get_server_info(self) -> dict[str, Any]:
        return {"fake": True}
