"""`RuntimeEndpoint`: a radixrt (or SGLang) server reached over its native HTTP API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from radixrt.lang.backends.http import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S, HttpClient
from radixrt.lang.backends.native import NativeBackend
from radixrt.lang.chat_template import resolve_chat_template


class RuntimeEndpoint(NativeBackend):
    """``timeout`` bounds each request (and each wait between streamed chunks), so a
    program never hangs on a server that stopped answering."""

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None,
                 chat_template_name: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 liveness: Callable[[], str | None] | None = None, transport: Any = None):
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = HttpClient(self.base_url, api_key, timeout, connect_timeout, verify, liveness,
                               transport)
        self.model_info: dict[str, Any] = self.http.get("/get_model_info")
        # The tokenizer directory is only readable when the server runs on this machine;
        # otherwise the template is matched by the model's name.
        self.chat_template = resolve_chat_template(
            chat_template_name, tokenizer_dir=self.model_info.get("tokenizer_path"),
            model_path=self.model_info.get("model_path"))

    def get_model_name(self) -> str:
        return self.model_info.get("model_path", "")

    def _generate(self, payload: dict[str, Any]) -> Any:
        return self.http.post("/generate", payload)

    def _generate_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.http.stream_sse("/generate", payload)

    def flush_cache(self, empty_cache: bool = True) -> bool:
        out = self.http.post("/flush_cache", {})
        return bool(out.get("success", True)) if isinstance(out, dict) else True

    def get_server_info(self) -> dict[str, Any]:
        return self.http.get("/get_server_info")

    def health(self) -> bool:
        try:
            self.http.get("/health")
            return True
        except Exception:
            return False

    def shutdown(self) -> None:
        self.http.close()
