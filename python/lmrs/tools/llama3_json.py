"""Llama 3.x JSON tool calls: the whole reply is ``{"name": ..., "parameters": {...}}`` (``"arguments"`` is
accepted too), optionally after ``<|python_tag|>``, several calls separated by ``;``.

Without ``<|python_tag|>`` a reply that is a JSON object could be an ordinary JSON answer, so an object
counts as a call only when its first key is ``name`` / ``parameters`` / ``arguments`` and, when the
request's functions are known, its name is one of them; otherwise the reply is content.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .call_stream import ARGUMENT_KEYS, CallScanner
from .parser_base import (SpecialTokenLookup, ToolCallStream, ToolParser, ToolSchema, call_object_schema,
                          json_rule, marker_expr)
from .types import IdFactory, ToolCallSyntaxError

__all__ = ["Llama3JsonToolParser"]

PYTHON_TAG = "<|python_tag|>"

_START, _BETWEEN, _CALL, _TEXT = range(4)


class Llama3JsonStream(ToolCallStream):
    def __init__(self, tool_names=None, id_factory=None):
        super().__init__(tool_names, id_factory)
        self.mode = _START
        self.tagged = False  # <|python_tag|> came first: every object is a call
        self.gap = ""  # text since the previous call (whitespace and ';'), content if no call follows
        self.call: CallScanner | None = None
        self.started = False

    def _run(self, final: bool) -> None:
        while True:
            if self.mode == _TEXT:
                self.emit.content(self.buf)
                self.buf = ""
                return
            if self.mode == _START:
                head = self.buf.lstrip()
                if not head or (not final and PYTHON_TAG.startswith(head)):
                    if final:
                        self.mode = _TEXT
                        continue
                    return
                if head.startswith(PYTHON_TAG):
                    self.tagged = True
                    self.buf = head[len(PYTHON_TAG):]
                    self.mode = _BETWEEN
                elif head[0] == "{":
                    self.mode = _BETWEEN
                else:
                    self.mode = _TEXT
            elif self.mode == _BETWEEN:
                i = 0
                while i < len(self.buf) and (self.buf[i].isspace() or self.buf[i] == ";"):
                    i += 1
                self.gap += self.buf[:i]
                self.buf = self.buf[i:]
                if not self.buf:
                    if final:
                        self._to_text("")
                    return
                if self.buf[0] != "{":
                    self._to_text("")
                    continue
                self.mode, self.call, self.started = _CALL, CallScanner(), False
            else:  # _CALL
                call = self.call
                try:
                    n = call.feed(self.buf)
                except ToolCallSyntaxError as e:
                    if self._advance(call):  # what was valid before the error counts
                        self._broken(e.consumed)
                    else:
                        self.buf = self.buf[e.consumed:]
                    continue
                self.buf = self.buf[n:]
                if not self._advance(call):
                    continue
                if not call.done:
                    if final:
                        self._broken(0)
                        continue
                    return
                self.emit.end_call()
                self.mode = _BETWEEN

    def _advance(self, call: CallScanner) -> bool:
        """Send what the call has ready; False (and the call's text turned into content) when the object
        turned out not to be a tool call."""
        if not self.started and not self._looks_like_call(call):
            self._to_text(call.text)
            return False
        if not self.started and call.name is not None:
            self.gap = ""
        self.started = self.emit.stream_call(call, self.started)
        return True

    def _looks_like_call(self, call: CallScanner) -> bool:
        if self.tagged:
            return True
        if call.first_key is not None and call.first_key != "name" and call.first_key not in ARGUMENT_KEYS:
            return False
        if call.name is not None and self.tool_names is not None and call.name not in self.tool_names:
            return False
        return True

    def _to_text(self, held: str) -> None:
        """What was held (the gap and ``held``) and everything after it is content."""
        self.emit.content(self.gap + held)
        self.gap = ""
        self.mode = _TEXT

    def _broken(self, consumed: int) -> None:
        call = self.call
        self.buf = self.buf[consumed:]
        if self.started:
            self.emit.end_call()
            self.mode = _TEXT
        else:
            self._to_text(call.text)


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def stream(self, tool_names: Iterable[str] | None = None,
               id_factory: IdFactory | None = None) -> Llama3JsonStream:
        return Llama3JsonStream(tool_names, id_factory)

    def calls_grammar(self, tools: Sequence[ToolSchema], parallel: bool, special: SpecialTokenLookup) -> str:
        tag = special(PYTHON_TAG)
        rules = [
            "start: " + (f"{marker_expr(PYTHON_TAG, special)} " if tag is not None else "") + "calls",
            "calls: call" + (' ("; " call)*' if parallel else ""),
            "call: " + json_rule(call_object_schema(tools, args_key="parameters")),
        ]
        return "\n".join(rules) + "\n"
