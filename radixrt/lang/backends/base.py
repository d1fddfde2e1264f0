"""The interface between the interpreter and a model server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from radixrt.lang.chat_template import ChatTemplate, get_chat_template
from radixrt.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from radixrt.lang.errors import UnsupportedFeatureError
from radixrt.lang.ir import SamplingParams


class BaseBackend:
    """A backend generates for a program state (`s.text_`, `s.messages_`).

    `generate` returns (text, meta_info); `generate_stream` yields (text delta, meta_info
    whose output logprob lists hold only that chunk's tokens); `select` returns a
    `ChoicesDecision`.
    """

    is_chat_model = False

    def __init__(self) -> None:
        self.chat_template: ChatTemplate = get_chat_template("default")

    def get_model_name(self) -> str:
        raise NotImplementedError

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def cache_prefix(self, prefix_str: str) -> None:
        """Make the server compute (and cache) a prompt prefix now."""

    def commit_lazy_operations(self, s: Any) -> None:
        self.cache_prefix(s.text_)

    def generate(self, s: Any, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def generate_stream(self, s: Any, sampling_params: SamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        raise NotImplementedError

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        raise UnsupportedFeatureError(f"{type(self).__name__} does not support select")

    def flush_cache(self, empty_cache: bool = True) -> bool:
        return False

    def get_server_info(self) -> dict[str, Any]:
        raise UnsupportedFeatureError(f"{type(self).__name__} has no server info")

    def end_program(self, s: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass
