"""A small HTTP client for backends: JSON calls and SSE streams with timeouts, where every
failure becomes a `BackendError` carrying the server's message."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from radixrt.lang.errors import BackendConnectionError, BackendError, BackendTimeoutError

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0


def error_message(status: int, body: bytes | str) -> str:
    """The message in an error body: radixrt/OpenAI ``{"error": {"message"}}``, SGLang
    ``{"message"}``, FastAPI ``{"detail"}``, or the raw text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        obj = json.loads(text)
    except ValueError:
        return text.strip()[:1000] or f"HTTP {status}"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if obj.get(key):
                return obj[key] if isinstance(obj[key], str) else json.dumps(obj[key])
    return text.strip()[:1000]


class HttpClient:
    """``liveness`` (optional) returns why the server is gone (e.g. its process exited), to
    explain connection errors; None while it is believed alive. ``transport``: an httpx
    transport to use instead of the network (tests, custom routing)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, verify: Any = None,
                 liveness: Callable[[], str | None] | None = None, transport: Any = None):
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers, verify=True if verify is None else verify,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64), transport=transport)
        self.liveness = liveness

    def _transport_error(self, path: str, e: Exception) -> BackendError:
        reason = self.liveness() if self.liveness else None
        where = f"{self.base_url}{path}"
        if isinstance(e, self._httpx.TimeoutException):
            return BackendTimeoutError(f"{where}: no answer within the timeout ({type(e).__name__})"
                                       + (f"; {reason}" if reason else ""))
        return BackendConnectionError(f"{where}: {reason or f'{type(e).__name__}: {e}'}")

    def _check(self, path: str, resp: Any) -> None:
        if resp.status_code >= 400:
            body = resp.read()
            raise BackendError(f"{self.base_url}{path} returned {resp.status_code}: "
                               f"{error_message(resp.status_code, body)}", status=resp.status_code)

    def _ensure_open(self, path: str) -> None:
        if self.client.is_closed:
            raise BackendConnectionError(f"{self.base_url}{path}: "
                                         f"{(self.liveness and self.liveness()) or 'the backend was shut down'}")

    def request(self, method: str, path: str, json_body: Any = None) -> Any:
        self._ensure_open(path)
        try:
            resp = self.client.request(method, path, json=json_body)
        except self._httpx.HTTPError as e:
            raise self._transport_error(path, e) from e
        self._check(path, resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, json_body: Any = None) -> Any:
        return self.request("POST", path, json_body)

    def stream_sse(self, path: str, json_body: Any) -> Iterator[dict[str, Any]]:
        """The JSON objects of a server-sent-events response, until ``data: [DONE]``."""
        self._ensure_open(path)
        try:
            with self.client.stream("POST", path, json=json_body) as resp:
                self._check(path, resp)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    obj = json.loads(data)
                    if isinstance(obj, dict) and "error" in obj and "text" not in obj and "choices" not in obj:
                        raise BackendError(f"{self.base_url}{path} stream failed: "
                                           f"{error_message(0, data)}")
                    yield obj
        except self._httpx.HTTPError as e:
            raise self._transport_error(path, e) from e
        raise BackendConnectionError(f"{self.base_url}{path}: the stream ended without [DONE]")

    def close(self) -> None:
        self.client.close()
