"""Errors of structured output and tool requests. Each names the request field at fault, so the server
can answer HTTP 400 with a message the client can act on."""

from __future__ import annotations

__all__ = ["FieldError", "GrammarError", "GrammarTimeoutError"]


class FieldError(ValueError):
    """A request field is invalid. ``field`` is its path (``response_format.json_schema.schema``,
    ``tools[2].function.name``); the message starts with it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class GrammarError(FieldError):
    """The grammar engine rejected the schema, regex or grammar in ``field``."""


class GrammarTimeoutError(GrammarError):
    """Compiling the grammar in ``field`` took longer than the server allows."""

    def __init__(self, field: str, timeout_s: float):
        super().__init__(field, f"grammar compilation took longer than {timeout_s:g} s; "
                                "simplify the schema or grammar")
        self.timeout_s = timeout_s
