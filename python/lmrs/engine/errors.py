"""Every error the engine raises to its callers, each with the HTTP status the server answers.

The input processor raises `InvalidParameter` (400) and `PromptTooLong` (413); the engine
`SessionNotOwned` (404: the session belongs to another API key), `Overloaded` (503 with
Retry-After) and `EngineDead` (503). `is_unrecoverable` says whether a failed step left the
device unusable (the process must exit) or failed only that step's requests.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: `status` is the HTTP status a server answers with."""

    status = 503


class InvalidParameter(EngineError, ValueError):
    """A request parameter is out of range or of the wrong type. `.field` names it."""

    status = 400

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class PromptTooLong(InvalidParameter):
    """A prompt that can never fit the context length."""

    status = 413

    def __init__(self, field_name: str, n: int, limit: int, *, generating: bool = True):
        extra = " (including at least one generated token)" if generating else ""
        super().__init__(field_name, f"has {n} tokens but the context length is {limit} tokens{extra}; shorten it")
        self.num_tokens = n
        self.limit = limit


class SessionNotOwned(EngineError):
    """The session exists but belongs to another API key (answered as if it did not exist)."""

    status = 404


class EngineDead(EngineError, RuntimeError):
    """The engine thread has stopped (it failed, or the server is shutting down)."""

    status = 503


class Overloaded(EngineError, RuntimeError):
    """Too many requests are queued; retry later."""

    status = 503

    def __init__(self, retry_after: float = 1.0):
        super().__init__("the server is overloaded: too many requests are queued; retry later")
        self.retry_after = retry_after
