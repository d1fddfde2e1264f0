"""`OpenAI`: programs against an OpenAI-compatible API (OpenAI itself, or the /v1 routes of
radixrt, SGLang, vLLM, ...), over plain HTTP.

Chat models get the program's messages (a `gen` must sit inside an assistant role);
completion models get the program's text. What the API cannot express is refused with
`UnsupportedFeatureError` instead of being silently dropped:

- `select` needs prompt logprobs: done with ``echo`` + ``logprobs`` on completion models; on
  chat models only with the server extensions (a regex over the choices);
- ``regex`` and the SGLang sampling fields (top_k, min_p, ignore_eos, ...) need the server
  extensions, which are on by default for any ``base_url`` other than OpenAI's own;
- ``json_schema`` maps to OpenAI's ``response_format`` on chat models.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from radixrt.lang.backends.base import BaseBackend
from radixrt.lang.backends.http import HttpClient
from radixrt.lang.chat_template import get_chat_template, get_chat_template_by_model_path
from radixrt.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from radixrt.lang.errors import BackendError, UnsupportedFeatureError
from radixrt.lang.ir import SamplingParams

logger = logging.getLogger("radixrt.lang")

OPENAI_BASE_URL = "https://api.openai.com/v1"
_COMPLETION_ONLY = ("instruct", "davinci", "babbage")


class OpenAI(BaseBackend):
    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 is_chat_model: bool | None = None, chat_template: str | None = None,
                 extensions: bool | None = None, timeout: float = 600.0, transport: Any = None):
        super().__init__()
        self.model_name = model_name
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.http = HttpClient(self.base_url, api_key, timeout, transport=transport)
        if is_chat_model is None:
            is_chat_model = not any(k in model_name.lower() for k in _COMPLETION_ONLY)
        self.is_chat_model = is_chat_model
        self.extensions = ("api.openai.com" not in self.base_url) if extensions is None else extensions
        if chat_template:
            self.chat_template = get_chat_template(chat_template)
        elif is_chat_model:
            self.chat_template = get_chat_template("default")  # only shapes s.text(); not sent
        else:
            self.chat_template = get_chat_template_by_model_path(model_name)

    def get_model_name(self) -> str:
        return self.model_name

    # ------------------------------------------------------------------ requests
    def _sampling_body(self, p: SamplingParams, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name}
        if p.max_new_tokens is not None:
            body["max_tokens"] = p.max_new_tokens
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "n"):
            if getattr(p, name) is not None:
                body[name] = getattr(p, name)
        if p.stop_list():
            body["stop"] = p.stop_list()
        extras = {"top_k": (p.top_k, -1), "min_p": (p.min_p, 0.0), "min_tokens": (p.min_new_tokens, 0),
                  "ignore_eos": (p.ignore_eos, False), "stop_token_ids": (list(p.stop_token_ids or []), []),
                  "stop_regex": (p.stop_regex_list(), [])}
        for name, (value, default) in extras.items():
            if value is None or value == default:
                continue
            if self.extensions:
                body[name] = value
            else:
                logger.warning("OpenAI backend: %s=%r is not part of the OpenAI API; ignored", name, value)
        if p.regex is not None:
            if not self.extensions:
                raise UnsupportedFeatureError("regex-constrained generation is not available on the "
                                              "OpenAI API; use RuntimeEndpoint or an OpenAI-compatible "
                                              "server with extensions=True")
            body["regex"] = p.regex
        if p.json_schema is not None:
            if self.extensions:
                body["json_schema"] = p.json_schema
            elif chat:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "output", "schema": json.loads(p.json_schema)}}
            else:
                raise UnsupportedFeatureError("json_schema needs a chat model on the OpenAI API")
        if p.return_logprob:
            if chat:
                body["logprobs"] = True
                if p.top_logprobs_num:
                    body["top_logprobs"] = p.top_logprobs_num
            else:
                body["logprobs"] = p.top_logprobs_num or 0
        return body

    def _chat_messages(self, s: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        if s.cur_role != "assistant":
            raise UnsupportedFeatureError("with a chat model, gen() must be inside an assistant role, "
                                          "e.g. s += sgl.assistant(sgl.gen('answer'))")
        messages = list(s.messages_)
        partial = s.text_[s.cur_role_begin_pos:]
        if partial.strip():
            if not self.extensions:
                raise UnsupportedFeatureError("the OpenAI chat API cannot continue a partly written "
                                              "assistant message; put gen() first in the role")
            messages.append({"role": "assistant", "content": partial})
            body["continue_final_message"] = True
        return messages

    def _request_body(self, s: Any, p: SamplingParams) -> tuple[str, dict[str, Any]]:
        body = self._sampling_body(p, self.is_chat_model)
        if self.is_chat_model:
            body["messages"] = self._chat_messages(s, body)
            return "/chat/completions", body
        body["prompt"] = s.text_
        return "/completions", body

    # ------------------------------------------------------------------ generation
    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, Any]:
        path, body = self._request_body(s, sampling_params)
        out = self.http.post(path, body)
        texts, metas = [], []
        for choice in out["choices"]:
            texts.append(self._choice_text(choice))
            metas.append(self._meta(choice, out.get("usage")))
        if len(texts) == 1:
            return texts[0], metas[0]
        return texts, metas

    def _choice_text(self, choice: dict[str, Any]) -> str:
        if self.is_chat_model:
            return (choice.get("message") or choice.get("delta") or {}).get("content") or ""
        return choice.get("text") or ""

    def _logprob_entries(self, choice: dict[str, Any]) -> list[list[Any]]:
        lp = choice.get("logprobs")
        if not lp:
            return []
        if self.is_chat_model:
            return [[e.get("logprob"), None, e.get("token")] for e in lp.get("content") or []]
        return [[v, None, t] for v, t in zip(lp.get("token_logprobs") or [], lp.get("tokens") or [], strict=False)]

    def _meta(self, choice: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if usage:
            meta["prompt_tokens"] = usage.get("prompt_tokens")
            meta["completion_tokens"] = usage.get("completion_tokens")
        if choice.get("finish_reason"):
            meta["finish_reason"] = {"type": choice["finish_reason"]}
        if choice.get("logprobs"):
            meta["output_token_logprobs"] = self._logprob_entries(choice)
        return meta

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        if (sampling_params.n or 1) > 1:
            raise ValueError("streaming supports n=1 only")
        path, body = self._request_body(s, sampling_params)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        for chunk in self.http.stream_sse(path, body):
            choices = chunk.get("choices") or []
            if not choices:  # the closing usage chunk
                if chunk.get("usage"):
                    yield "", self._meta({}, chunk["usage"])
                continue
            choice = choices[0]
            if self.is_chat_model:
                text = (choice.get("delta") or {}).get("content") or ""
            else:
                text = choice.get("text") or ""
            yield text, self._meta(choice, chunk.get("usage"))

    # ------------------------------------------------------------------ select
    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if getattr(choices_method, "requires_unconditional_logprobs", False):
            raise UnsupportedFeatureError("unconditional_likelihood_normalized is not available on the "
                                          "OpenAI backend; use RuntimeEndpoint")
        if self.is_chat_model:
            return self._select_by_regex(s, choices)
        prefix = s.text_
        out = self.http.post("/completions", {"model": self.model_name, "prompt": [prefix + c for c in choices],
                                              "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0})
        by_index = {c.get("index", i): c for i, c in enumerate(out["choices"])}
        token_lps = []
        for i in range(len(choices)):
            lp = by_index[i].get("logprobs") or {}
            entries = [[v, None, t] for v, t, off in zip(lp.get("token_logprobs") or [], lp.get("tokens") or [],
                                                          lp.get("text_offset") or [], strict=False)
                       if off + len(t) > len(prefix)]  # tokens reaching into the choice (healing included)
            if not entries:
                raise UnsupportedFeatureError("the server returned no prompt logprobs (echo); select "
                                              "needs them")
            token_lps.append(entries)
        normalized = [sum(e[0] for e in es if e[0] is not None) / max(1, sum(e[0] is not None for e in es))
                      for es in token_lps]
        kwargs: dict[str, Any] = dict(choices=choices, normalized_prompt_logprobs=normalized,
                                      input_token_logprobs=token_lps,
                                      output_token_logprobs=[[] for _ in choices])
        if isinstance(choices_method, ChoicesSamplingMethod):
            kwargs["temperature"] = temperature
        return choices_method(**kwargs)

    def _select_by_regex(self, s: Any, choices: list[str]) -> ChoicesDecision:
        if not self.extensions:
            raise UnsupportedFeatureError("select needs prompt logprobs, which OpenAI chat models do "
                                          "not return; use a completion model or RuntimeEndpoint")
        regex = "(" + "|".join(re.escape(c) for c in choices) + ")"
        params = SamplingParams(max_new_tokens=max(len(c) for c in choices) + 8, temperature=0.0, regex=regex)
        text, meta = self.generate(s, params)
        if text not in choices:
            raise BackendError(f"the server did not keep to the choices regex (got {text!r})")
        return ChoicesDecision(decision=text, meta_info={"method": "regex", **meta})

    def shutdown(self) -> None:
        self.http.close()
