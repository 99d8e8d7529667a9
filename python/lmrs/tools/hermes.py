"""Hermes-style tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call,
content allowed around them. Used by Qwen2.5 / Qwen3, SmolLM3, Hermes 2/3 and others."""

from __future__ import annotations

from typing import Iterable, Sequence

from .call_stream import CallScanner
from .parser_base import (SpecialTokenLookup, ToolCallStream, ToolParser, ToolSchema, call_object_schema,
                          held_prefix_len, json_rule, marker_expr)
from .types import IdFactory, ToolCallSyntaxError

__all__ = ["HermesToolParser"]

START = "<tool_call>"
END = "</tool_call>"

_TEXT, _CALL, _AFTER_CALL = range(3)


class HermesStream(ToolCallStream):
    def __init__(self, tool_names=None, id_factory=None):
        super().__init__(tool_names, id_factory)
        self.mode = _TEXT
        self.call: CallScanner | None = None
        self.started = False  # the current call's name was sent

    def _run(self, final: bool) -> None:
        while True:
            if self.mode == _TEXT:
                idx = self.buf.find(START)
                if idx < 0:
                    keep = 0 if final else held_prefix_len(self.buf, START)
                    self.emit.content(self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return
                self.emit.content(self.buf[:idx])
                self.buf = self.buf[idx + len(START):]
                self.mode, self.call, self.started = _CALL, CallScanner(), False
            elif self.mode == _CALL:
                call = self.call
                try:
                    n = call.feed(self.buf)
                except ToolCallSyntaxError as e:
                    # what was valid before the error counts, whatever the chunking
                    self.started = self.emit.stream_call(call, self.started)
                    self._broken(e.consumed)
                    continue
                self.buf = self.buf[n:]
                self.started = self.emit.stream_call(call, self.started)
                if not call.done:
                    if final:
                        self._broken(0)
                        continue
                    return
                self.emit.end_call()
                self.mode = _AFTER_CALL
            else:  # _AFTER_CALL: whitespace, then the end marker (a missing one is forgiven)
                rest = self.buf.lstrip()
                if rest.startswith(END):
                    self.buf = rest[len(END):]
                elif not final and END.startswith(rest):
                    return
                else:
                    self.buf = rest
                self.mode = _TEXT

    def _broken(self, consumed: int) -> None:
        """The current call is malformed (or cut off): see :mod:`.parser_base` for what happens."""
        call = self.call
        self.buf = self.buf[consumed:]
        if self.started:
            self.emit.end_call()
        else:
            self.emit.content(START + call.text)
        self.mode = _TEXT


class HermesToolParser(ToolParser):
    name = "hermes"

    def stream(self, tool_names: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> HermesStream:
        return HermesStream(tool_names, id_factory)

    def calls_grammar(self, tools: Sequence[ToolSchema], parallel: bool, special: SpecialTokenLookup) -> str:
        start, end = marker_expr(START, special), marker_expr(END, special)
        rules = [
            "start: call" + (' ("\\n" call)*' if parallel else ""),
            f'call: {start} "\\n" body "\\n" {end}',
            "body: " + json_rule(call_object_schema(tools)),
        ]
        return "\n".join(rules) + "\n"
