"""Exceptions a frontend program can see."""

from __future__ import annotations


class BackendError(RuntimeError):
    """A backend request failed; the message carries the server's own message.

    ``status`` is the HTTP status when there was one (None for connection errors)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class BackendConnectionError(BackendError):
    """The server could not be reached or went away mid-request."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The server did not answer within the backend's timeout."""


class UnsupportedFeatureError(BackendError, NotImplementedError):
    """The backend cannot do what the program asked (e.g. select on an OpenAI chat model)."""
