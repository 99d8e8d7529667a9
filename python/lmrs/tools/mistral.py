"""Mistral tool calls: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (v3 tokenizers) and the
newer ``[TOOL_CALLS]name[ARGS]{...}`` (v11+, one marker per call). Content may precede the marker."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .call_stream import CallScanner
from .parser_base import (SpecialTokenLookup, ToolCallStream, ToolParser, ToolSchema, call_object_schema,
                          held_prefix_len, json_rule, marker_expr)
from .types import IdFactory, ToolCallSyntaxError

__all__ = ["MistralToolParser"]

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

_TEXT, _AFTER_MARKER, _ARRAY_ITEM, _ARRAY_NEXT, _CALL, _NAME = range(6)


class MistralStream(ToolCallStream):
    def __init__(self, tool_names=None, id_factory=None):
        super().__init__(tool_names, id_factory)
        self.mode = _TEXT
        self.raw = ""  # text of the current [TOOL_CALLS] segment since its last sent call (or its marker)
        self.segment_started = False  # a call of the current segment was sent
        self.in_array = False
        self.call: CallScanner | None = None
        self.started = False

    def _run(self, final: bool) -> None:
        while True:
            m = self.mode
            if m == _TEXT:
                idx = self.buf.find(TOOL_CALLS)
                if idx < 0:
                    keep = 0 if final else held_prefix_len(self.buf, TOOL_CALLS)
                    self.emit.content(self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return
                self.emit.content(self.buf[:idx])
                self.buf = self.buf[idx + len(TOOL_CALLS):]
                self.mode, self.raw, self.segment_started = _AFTER_MARKER, TOOL_CALLS, False
            elif m == _AFTER_MARKER:
                if not self._skip_ws(final):
                    return
                if self.buf[0] == "[":
                    self._take(1)
                    self.in_array, self.mode = True, _ARRAY_ITEM
                else:
                    self.in_array, self.mode = False, _NAME
            elif m in (_ARRAY_ITEM, _ARRAY_NEXT):
                if not self._skip_ws(final):
                    return
                ch = self.buf[0]
                if m == _ARRAY_ITEM and ch == "{":
                    self.mode, self.call, self.started = _CALL, CallScanner(), False
                elif m == _ARRAY_NEXT and ch == ",":
                    self._take(1)
                    self.mode = _ARRAY_ITEM
                elif ch == "]" and (m == _ARRAY_NEXT or not self.segment_started):
                    self.buf = self.buf[1:]  # the segment is complete ("[TOOL_CALLS][]" shows nothing)
                    self.raw = ""
                    self.mode = _TEXT
                else:
                    self._broken(0)
            elif m == _NAME:
                idx = self.buf.find(ARGS)
                # the name so far (a tail that may still become "[ARGS]" is not part of it)
                head = self.buf[:len(self.buf) - held_prefix_len(self.buf, ARGS)] if idx < 0 else self.buf[:idx]
                name = head.strip()
                if (name and not _NAME_RE.fullmatch(name)) or (idx < 0 and len(head) > 80):
                    self._broken(0)
                    continue
                if idx < 0:
                    if final:
                        self._broken(0)
                        continue
                    return
                if not name:
                    self._broken(0)
                    continue
                self._take(idx + len(ARGS))
                self.mode, self.call, self.started = _CALL, CallScanner(name=name), False
            else:  # _CALL
                call = self.call
                try:
                    n = call.feed(self.buf)
                except ToolCallSyntaxError as e:
                    self._advance(call)  # what was valid before the error counts
                    self.raw += call.text
                    self.buf = self.buf[e.consumed:]
                    self._broken(0)
                    continue
                self.buf = self.buf[n:]
                self._advance(call)
                if not call.done:
                    if final:
                        self.raw += call.text
                        self._broken(0)
                        continue
                    return
                self.emit.end_call()
                self.raw = ""
                self.mode = _ARRAY_NEXT if self.in_array else _TEXT

    def _advance(self, call: CallScanner) -> None:
        if not self.started and call.name is not None:
            self.segment_started = True
        self.started = self.emit.stream_call(call, self.started)

    def _take(self, n: int) -> None:
        self.raw += self.buf[:n]
        self.buf = self.buf[n:]

    def _skip_ws(self, final: bool) -> bool:
        """Skip whitespace; False when the buffer ran out (after handling the end of the output)."""
        head = self.buf.lstrip()
        self.raw += self.buf[:len(self.buf) - len(head)]
        self.buf = head
        if head:
            return True
        if final:
            self._broken(0)
        return False

    def _broken(self, consumed: int) -> None:
        """The segment is malformed from here on. A call whose name was sent ends with the arguments
        sent so far; otherwise the segment's unsent text is content. The rest is read as text."""
        self._take(consumed)
        if self.started:
            self.emit.end_call()
        else:
            self.emit.content(self.raw)
        self.raw = ""
        self.started = False
        self.mode = _TEXT


class MistralToolParser(ToolParser):
    name = "mistral"

    def stream(self, tool_names: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> MistralStream:
        return MistralStream(tool_names, id_factory)

    def calls_grammar(self, tools: Sequence[ToolSchema], parallel: bool, special: SpecialTokenLookup) -> str:
        rules = [
            f'start: {marker_expr(TOOL_CALLS, special)} "[" call' + (' (", " call)*' if parallel else "") + ' "]"',
            "call: " + json_rule(call_object_schema(tools)),
        ]
        return "\n".join(rules) + "\n"
