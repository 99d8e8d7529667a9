"""The shapes tool-call parsers produce: whole calls (one-shot) and OpenAI ``delta.tool_calls`` pieces
(streaming)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["ToolCall", "ToolParseResult", "ToolStreamDelta", "ToolCallSyntaxError", "new_call_id", "IdFactory"]

_ID_ALPHABET = string.ascii_letters + string.digits

IdFactory = Callable[[], str]


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class ToolCallSyntaxError(ValueError):
    """A tool call's text is not valid; ``consumed`` characters of the piece were read before the error."""

    def __init__(self, message: str, consumed: int = 0):
        super().__init__(message)
        self.consumed = consumed


@dataclass
class ToolCall:
    """One function call the model made. ``arguments`` is JSON text, as in OpenAI's API."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict:
        """The ``message.tool_calls[i]`` object of a chat completion."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolParseResult:
    """A whole model output split into the text the user sees and the tool calls."""

    content: str | None
    tool_calls: list[ToolCall]


@dataclass
class ToolStreamDelta:
    """What one streamed piece of model text turned into.

    ``content``: new user-visible text. ``tool_calls``: entries shaped as OpenAI's
    ``choices[0].delta.tool_calls``: the first entry of a call carries ``index``, ``id``, ``type`` and
    ``function.name`` (with ``arguments: ""``), later ones ``index`` and a ``function.arguments`` piece.
    """

    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)

    def merge(self, other: "ToolStreamDelta") -> None:
        self.content += other.content
        self.tool_calls.extend(other.tool_calls)
