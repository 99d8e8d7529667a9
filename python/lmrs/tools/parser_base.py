"""The interface of a tool-call format: a streaming parser, a one-shot parse built on it, and the grammar
that forces the format when ``tool_choice`` is ``required`` or names a function.

The one-shot :meth:`ToolParser.parse` feeds the whole text to a fresh stream and joins what comes out, so a
streamed response and a non-streamed one always contain the same content and calls (vLLM's parsers are
two separate code paths that have disagreed).

Malformed output: a call whose JSON breaks before its name is complete is left in the content, markers
included. A call that breaks after its name was sent keeps the arguments sent so far and the rest of the
text is content; a call cut off by the end of the output (``finish_reason: "length"``) keeps its partial
arguments, as OpenAI's API does.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Callable, Iterable, Sequence

from ..structured.json_bounds import bound_numbers
from ..structured.spec import lark_literal
from .call_stream import DeltaEmitter
from .types import IdFactory, ToolCall, ToolParseResult, ToolStreamDelta

__all__ = ["ToolParser", "ToolCallStream", "held_prefix_len", "ToolSchema", "SpecialTokenLookup"]

# (function name, JSON schema of its arguments)
ToolSchema = tuple[str, dict]
# text of a marker -> its token id when the marker is one special token of the vocabulary, else None
SpecialTokenLookup = Callable[[str], "int | None"]


def held_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker`` (text that must be
    held back because it may still become the marker)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream(ABC):
    """Streaming parser of one model output. ``feed`` each new piece of text, then ``finish`` once."""

    def __init__(self, tool_names: Iterable[str] | None = None, id_factory: IdFactory | None = None):
        self.tool_names = set(tool_names) if tool_names is not None else None
        self.emit = DeltaEmitter(id_factory)
        self.buf = ""  # text received and not yet decided
        self._finished = False

    def feed(self, text: str) -> ToolStreamDelta:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self.buf += text
        self._run(final=False)
        return self.emit.take()

    def finish(self) -> ToolStreamDelta:
        """End of the output: held text is flushed, an open call is closed."""
        if not self._finished:
            self._finished = True
            self._run(final=True)
            self.emit.finish()
        return self.emit.take()

    @property
    def calls(self) -> list[ToolCall]:
        """The calls started so far (complete once ``finish`` was called)."""
        return self.emit.calls

    @abstractmethod
    def _run(self, final: bool) -> None:
        """Consume as much of ``self.buf`` as can be decided (all of it when ``final``)."""


class ToolParser(ABC):
    """One tool-call format (``hermes``, ``llama3_json``, ``mistral``)."""

    name: str = ""

    @abstractmethod
    def stream(self, tool_names: Iterable[str] | None = None,
               id_factory: IdFactory | None = None) -> ToolCallStream:
        """A fresh streaming parser. ``tool_names``: the request's functions, used where the format alone
        cannot tell a call from ordinary JSON content."""

    def parse(self, text: str, tool_names: Iterable[str] | None = None,
              id_factory: IdFactory | None = None) -> ToolParseResult:
        s = self.stream(tool_names, id_factory)
        d = s.feed(text)
        d.merge(s.finish())
        content = (d.content or None) if s.calls else d.content
        return ToolParseResult(content=content, tool_calls=list(s.calls))

    @abstractmethod
    def calls_grammar(self, tools: Sequence[ToolSchema], parallel: bool, special: SpecialTokenLookup) -> str:
        """A Lark grammar (llguidance dialect) whose every sentence is this format's tool calls, one or more
        (``parallel``) or exactly one, each naming one of ``tools`` with arguments valid under its schema."""


def call_object_schema(tools: Sequence[ToolSchema], args_key: str = "arguments") -> dict:
    """JSON schema of ``{"name": <one of tools>, "<args_key>": <that tool's arguments>}``, compact, the
    arguments' numbers bounded (``structured/json_bounds.py``)."""
    variants = [
        {"type": "object",
         "properties": {"name": {"const": name}, args_key: bound_numbers(params)},
         "required": ["name", args_key], "additionalProperties": False}
        for name, params in tools
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**schema, "x-guidance": COMPACT_JSON}


# tool-call JSON in the style chat templates show it: {"name": "f", "arguments": {"a": 1}}
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def marker_expr(marker: str, special: SpecialTokenLookup) -> str:
    """A marker as a grammar item: its special token when the vocabulary has one, else its text."""
    tid = special(marker)
    return f"<[{tid}]>" if tid is not None else lark_literal(marker)


def json_rule(schema: dict) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)
