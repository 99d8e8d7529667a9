"""Pieces shared by every tool-call format.

- :class:`CallScanner`: one call's JSON, fed incrementally. It finds the function name and the span of the
  arguments value (``"arguments"`` or ``"parameters"``), so the name can be sent once and the arguments
  streamed as they grow; in *bare* mode (Mistral's ``name[ARGS]{...}``) the whole value is the arguments.
- :class:`DeltaEmitter`: turns content text and call events into :class:`ToolStreamDelta` pieces, and
  applies one whitespace rule in every format: whitespace next to a tool call is dropped (so streamed
  and one-shot outputs agree, and ``"\\n"`` between calls is not sent as content).

Arguments are sent as the model wrote them (the raw text of the JSON value), so the concatenated
``function.arguments`` pieces of a call are exactly the one-shot parse's ``arguments``.
"""

from __future__ import annotations

import json

from .json_scan import JsonScanner, JsonSyntaxError
from .types import IdFactory, ToolCall, ToolCallSyntaxError, ToolStreamDelta, new_call_id

__all__ = ["CallScanner", "DeltaEmitter", "ARGUMENT_KEYS"]

ARGUMENT_KEYS = ("arguments", "parameters")


class CallScanner:
    """One tool call. ``feed(text)`` consumes characters until the call's JSON value is complete and
    returns how many it consumed; a syntax error raises :class:`ToolCallSyntaxError`.

    Object mode: the value must be ``{"name": "...", "arguments": {...}}`` (keys in any order, other keys
    ignored). Bare mode (``name`` given): the value is the arguments themselves.
    """

    def __init__(self, name: str | None = None):
        self.bare = name is not None
        self.name: str | None = name
        self.text = ""  # everything consumed so far
        self.first_key: str | None = None  # the first key of the call object (format detection)
        self._scanner = JsonScanner()
        self._key: str | None = None  # the key whose value is being read (depth 1)
        self._name_start = -1
        self._args_start = -1  # position of the arguments value, -1 until it starts
        self._args_end = -1  # position after it, -1 while it is open
        self._args_sent = 0  # how much of the raw arguments text was handed out
        self._args_final_sent = False

    @property
    def done(self) -> bool:
        return self._scanner.done

    @property
    def has_arguments(self) -> bool:
        return self._args_start >= 0

    def feed(self, piece: str) -> int:
        sc = self._scanner
        for i, ch in enumerate(piece):
            if sc.done:
                return i
            try:
                events = sc.feed(ch)
            except JsonSyntaxError as e:
                raise ToolCallSyntaxError(f"tool call is not valid JSON: {e}", consumed=i) from None
            self.text += ch
            try:
                for ev in events:
                    self._event(ev)
            except ToolCallSyntaxError as e:
                e.consumed = i + 1
                raise
        return len(piece)

    def _event(self, ev: tuple) -> None:
        kind, depth, val = ev
        if self.bare:
            if kind == "start" and depth == 0:
                self._args_start = val
            elif kind == "end" and depth == 0:
                self._args_end = val
            return
        if depth == 0:
            if kind == "start" and self.text[val] != "{":
                raise ToolCallSyntaxError("a tool call must be a JSON object")
            if kind == "end" and self.name is None:
                raise ToolCallSyntaxError('a tool call needs a "name"')
            return
        if depth != 1:
            return
        if kind == "key":
            if self.first_key is None:
                self.first_key = val
            if (val == "name" and (self.name is not None or self._name_start >= 0)) or (
                    val in ARGUMENT_KEYS and self._args_start >= 0):
                raise ToolCallSyntaxError(f"duplicate {val!r} in a tool call")
            self._key = val
        elif kind == "start":
            if self._key == "name":
                self._name_start = val
            elif self._key in ARGUMENT_KEYS:
                self._args_start = val
        elif kind == "end":
            if self._key == "name":
                name = json.loads(self.text[self._name_start:val])
                if not isinstance(name, str) or not name:
                    raise ToolCallSyntaxError("a tool call's name must be a non-empty string")
                self.name = name
            elif self._key in ARGUMENT_KEYS and self._args_start >= 0 and self._args_end < 0:
                self._args_end = val
            self._key = None

    def take_arguments(self) -> str:
        """New arguments text since the last call. An object or array value streams as it grows; a string
        value (arguments as a JSON-encoded string) comes out decoded once complete; ``null`` or a missing
        value comes out as ``{}`` when the call is done."""
        start = self._args_start
        if start < 0:
            if self.done and not self._args_final_sent:
                self._args_final_sent = True
                return "{}"
            return ""
        first = self.text[start]
        if first in "{[":
            end = self._args_end if self._args_end >= 0 else len(self.text)
            piece = self.text[start + self._args_sent:end]
            self._args_sent = end - start
            return piece
        if self._args_end < 0 or self._args_final_sent:
            return ""
        self._args_final_sent = True
        raw = self.text[start:self._args_end]
        value = json.loads(raw)
        if value is None:
            return "{}"
        return value if isinstance(value, str) else raw


class DeltaEmitter:
    """Collects the output of one streaming parser: content text and tool-call deltas.

    Whitespace rule: whitespace at the edges of the content, and around tool calls, is dropped; where a
    call sits between two pieces of content, one whitespace run between them is kept as the separator.
    """

    def __init__(self, id_factory: IdFactory | None = None):
        self._new_id = id_factory or new_call_id
        self._delta = ToolStreamDelta()
        self.calls: list[ToolCall] = []  # every call started so far, with its arguments so far
        self._pending_ws = ""  # trailing whitespace of the content, held until we know what follows
        self._ws_before_call = ""  # the whitespace that preceded the latest call(s)
        self._after_call = False  # the last thing emitted was a tool call
        self._has_content = False  # some content was emitted

    def take(self) -> ToolStreamDelta:
        d, self._delta = self._delta, ToolStreamDelta()
        return d

    def content(self, text: str) -> None:
        if not text:
            return
        text = self._pending_ws + text
        self._pending_ws = ""
        if self._after_call:
            body = text.lstrip()
            if not body:
                self._pending_ws = text
                return
            separator = text[:len(text) - len(body)] or self._ws_before_call
            text = (separator if self._has_content else "") + body
            self._after_call = False
        body = text.rstrip()
        self._pending_ws = text[len(body):]
        if body:
            self._delta.content += body
            self._has_content = True

    def start_call(self, name: str) -> int:
        """A call whose name is known; whitespace just before it is dropped. Returns its index."""
        if not self._after_call:
            self._ws_before_call = self._pending_ws
        self._pending_ws = ""
        index = len(self.calls)
        call = ToolCall(name=name, arguments="", id=self._new_id())
        self.calls.append(call)
        self._delta.tool_calls.append({"index": index, "id": call.id, "type": "function",
                                       "function": {"name": name, "arguments": ""}})
        self._after_call = True
        return index

    def arguments(self, piece: str) -> None:
        if not piece:
            return
        index = len(self.calls) - 1
        self.calls[index].arguments += piece
        self._delta.tool_calls.append({"index": index, "function": {"arguments": piece}})

    def end_call(self) -> None:
        self._after_call = True

    def finish(self) -> None:
        if self._pending_ws and not self.calls:
            self._delta.content += self._pending_ws
        self._pending_ws = ""

    def stream_call(self, scanner: CallScanner, started: bool) -> bool:
        """Send what ``scanner`` has ready: the name once it is known, then new argument text.
        Returns whether the call has been started."""
        if not started and scanner.name is not None:
            self.start_call(scanner.name)
            started = True
        if started:
            self.arguments(scanner.take_arguments())
        return started
