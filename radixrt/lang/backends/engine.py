"""`EngineBackend`: programs run against a `radixrt.Engine` in this process (no server)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from radixrt.lang.backends.native import NativeBackend
from radixrt.lang.chat_template import resolve_chat_template
from radixrt.lang.errors import BackendError

_ENGINE_ARGS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


def is_radixrt_engine(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "Engine" and cls.__module__ == "radixrt.entrypoints.engine"


class EngineBackend(NativeBackend):
    """Wraps an existing engine (``EngineBackend(engine)``), or starts one from server
    arguments (``EngineBackend(model_path=..., disable_radix_cache=True)``) and then owns
    it: `shutdown()` stops it. The Engine streams the server's chunks, so nothing here differs
    from `RuntimeEndpoint` but the transport."""

    def __init__(self, engine: Any = None, chat_template_name: str | None = None, **server_args: Any):
        super().__init__()
        self._owns_engine = engine is None
        if engine is None:
            from radixrt.entrypoints.engine import Engine

            engine = Engine(**server_args)
        self.engine = engine
        tok = engine.tokenizer
        self.model_path = (getattr(engine.server_args, "model_path", None)
                           or getattr(tok, "name_or_path", "") or "")
        self.chat_template = resolve_chat_template(
            chat_template_name, jinja_template=getattr(tok, "chat_template", None),
            eos_token=getattr(tok, "eos_token", "") or "", model_path=self.model_path)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_model_name(self) -> str:
        return self.model_path

    @staticmethod
    def _engine_kwargs(payload: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"sampling_params": payload.get("sampling_params")}
        if "text" in payload:
            kw["prompt"] = payload["text"]
        if "input_ids" in payload:
            kw["input_ids"] = payload["input_ids"]
        for key in _ENGINE_ARGS:
            if payload.get(key) is not None:
                kw[key] = payload[key]
        return kw

    def _generate(self, payload: dict[str, Any]) -> Any:
        try:
            return self.engine.generate(**self._engine_kwargs(payload))
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"engine: {e}") from e

    def _generate_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            yield from self.engine.generate(**self._engine_kwargs(payload), stream=True)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"engine: {e}") from e

    def flush_cache(self, empty_cache: bool = True) -> bool:
        return bool(self.engine.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        info = dataclasses.asdict(self.engine.server_args)
        if info.get("api_key"):
            info["api_key"] = "<hidden>"
        return {**info, **self.engine.get_stats()}

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()
