"""Backends that speak SGLang's native generate API (radixrt's server or in-process Engine).

Subclasses supply one blocking call (`_generate`) and one streaming call
(`_generate_stream`, yielding SGLang's stream chunks: `streaming.py`) taking a /generate
request body; generation, streaming and `select` are built on them here.

`select` scores every choice by the prompt logprobs of ``prefix + choice``:
1. the prefix alone is sent with ``max_new_tokens=0``, so the server caches its KV and all
   choices then share it through the radix cache;
2. one batched request sends ``prefix`` and every ``prefix + choice`` with input logprobs
   from a few tokens before the prefix's end;
3. token healing: the prefix's last token(s) may merge with the choice's first characters
   (prefix ``"... is "`` + ``"Paris"`` is tokenized ``" is", " Paris"``). So a choice's
   tokens are found by comparing the token ids of ``prefix + choice`` with those of the
   prefix, position by position: they start at the first position where the two differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from radixrt.lang.backends.base import BaseBackend
from radixrt.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from radixrt.lang.errors import BackendError
from radixrt.lang.ir import SamplingParams
from radixrt.lang.streaming import StreamMerger

# Input logprobs are requested from this many tokens before the end of the prefix: the
# positions token healing can reach. A choice whose tokens differ from the prefix's already
# at the first of them is scored again with logprobs over the whole prompt.
HEAL_WINDOW = 4


def _placed(result: dict[str, Any]) -> tuple[int, list[list[Any]]]:
    """(absolute position of the first entry, input_token_logprobs): the entries are the
    last ones of the prompt."""
    meta = result["meta_info"]
    entries = list(meta.get("input_token_logprobs") or [])
    return meta["prompt_tokens"] - len(entries), entries


def choice_token_logprobs(prefix_result: dict[str, Any], choice_result: dict[str, Any]) -> list[list[Any]] | None:
    """The entries of a ``prefix + choice`` prompt that belong to the choice (from the first
    token that differs from the prefix's tokenization), or None when the comparison window
    did not reach back far enough to tell."""
    p_first, p_entries = _placed(prefix_result)
    c_first, c_entries = _placed(choice_result)
    prefix_ids = {p_first + j: e[1] for j, e in enumerate(p_entries)}
    n_prefix = prefix_result["meta_info"]["prompt_tokens"]
    lo = max(p_first, c_first)
    k = lo
    while k < n_prefix and k - c_first < len(c_entries) and prefix_ids.get(k) == c_entries[k - c_first][1]:
        k += 1
    if k < n_prefix and k == lo and lo > 0:
        return None  # differs at the first position compared: the merge may start earlier
    return c_entries[k - c_first:]


class NativeBackend(BaseBackend):
    def _generate(self, payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _generate_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _payload(text: str, params: SamplingParams) -> dict[str, Any]:
        return {"text": text, "sampling_params": params.to_native(), **params.logprob_args()}

    def cache_prefix(self, prefix_str: str) -> None:
        if prefix_str:
            self._generate({"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, Any]:
        result = self._generate(self._payload(s.text_, sampling_params))
        if isinstance(result, list):  # n > 1
            return [r["text"] for r in result], [r["meta_info"] for r in result]
        return result["text"], result["meta_info"]

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        if (sampling_params.n or 1) > 1:
            raise ValueError("streaming supports n=1 only")
        payload = self._payload(s.text_, sampling_params)
        payload["stream"] = True
        merger = StreamMerger()
        for chunk in self._generate_stream(payload):
            yield merger.add(chunk)

    # ------------------------------------------------------------------ select
    def _score(self, texts: list[str], start: int) -> list[dict[str, Any]]:
        out = self._generate({"text": texts, "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                              "return_logprob": True, "logprob_start_len": start,
                              "return_text_in_logprobs": True})
        if not isinstance(out, list) or len(out) != len(texts):
            raise BackendError(f"a batch of {len(texts)} prompts returned {out!r:.200}")
        return out

    def choice_logprobs(self, prefix: str, choices: list[str]) -> list[list[list[Any]]]:
        """For each choice, the input logprob entries of its tokens after ``prefix``."""
        start = 0
        if prefix:
            first = self._generate({"text": prefix, "sampling_params": {"max_new_tokens": 0}})
            start = max(first["meta_info"]["prompt_tokens"] - HEAL_WINDOW, 0)
        texts = [prefix] + [prefix + c for c in choices]
        results = self._score(texts, start)
        entries: list[list[list[Any]] | None] = [
            choice_token_logprobs(results[0], r) for r in results[1:]]
        redo = [i for i, e in enumerate(entries) if e is None]
        if redo:  # token healing reached further back than the window: use the whole prompt
            again = self._score([prefix] + [prefix + choices[i] for i in redo], 0)
            for i, r in zip(redo, again[1:], strict=True):
                entries[i] = choice_token_logprobs(again[0], r) or []
        return entries  # type: ignore[return-value]

    def unconditional_logprobs(self, token_entries: list[list[list[Any]]]) -> list[list[list[Any]]]:
        """Logprobs of each choice's tokens with no prompt before them."""
        ids = [[e[1] for e in entries] for entries in token_entries]
        out = self._generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
                              "return_logprob": True, "logprob_start_len": 0})
        results = []
        for toks, r in zip(ids, out, strict=True):
            got = list(r["meta_info"].get("input_token_logprobs") or [])
            # The first token has no logprob; some servers leave its entry out.
            got = [[None, t, None] for t in toks[: len(toks) - len(got)]] + got
            results.append(got)
        return results

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        token_lps = self.choice_logprobs(s.text_, choices)
        normalized = [_mean([e[0] for e in entries if e[0] is not None]) for entries in token_lps]
        uncond = None
        if getattr(choices_method, "requires_unconditional_logprobs", False):
            uncond = self.unconditional_logprobs(token_lps)
        kwargs: dict[str, Any] = dict(
            choices=choices, normalized_prompt_logprobs=normalized, input_token_logprobs=token_lps,
            output_token_logprobs=[[] for _ in choices], unconditional_token_logprobs=uncond)
        if isinstance(choices_method, ChoicesSamplingMethod):
            kwargs["temperature"] = temperature
        return choices_method(**kwargs)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
