"""An incremental JSON syntax scanner: text goes in piece by piece, structural events come out.

The tool-call parsers need to know, while a call is still being generated, where its ``"name"`` value
starts and ends and where its ``"arguments"`` value starts and ends, so they can stream the name once and
the arguments as they grow. A full parse (``json.loads``) only works on complete text; this scanner checks
the whole JSON syntax (strings with escapes, numbers, ``true``/``false``/``null``, nesting) one character at a
time and reports:

- ``("start", depth, pos)``: a value begins at ``pos`` (``depth``: how many containers enclose it),
- ``("end", depth, pos)``: that value ends just before ``pos`` (numbers end when the next character comes),
- ``("key", depth, key)``: an object key whose value will be at ``depth``.

The first syntax error raises :class:`JsonSyntaxError`; a scanner that saw ``done`` rejects more
non-whitespace text.
"""

from __future__ import annotations

import json

__all__ = ["JsonScanner", "JsonSyntaxError"]

_WS = " \t\n\r"
_ESCAPES = set('"\\/bfnrtu')
_HEX = set("0123456789abcdefABCDEF")
_LITERALS = ("true", "false", "null")

# what the scanner expects next
_VALUE = 0  # a value (after '[', ':', ',' in an array, or at the top)
_VALUE_OR_CLOSE = 1  # right after '[': a value or ']'
_KEY_OR_CLOSE = 2  # right after '{': a key or '}'
_KEY = 3  # after ',' in an object
_COLON = 4
_COMMA_OR_CLOSE = 5  # after a value inside a container
_DONE = 6  # the top-level value is complete
_STRING = 7
_NUMBER = 8
_LITERAL = 9


class JsonSyntaxError(ValueError):
    """The text is not (a prefix of) valid JSON; ``pos`` is the offending character."""

    def __init__(self, message: str, pos: int):
        super().__init__(f"{message} at offset {pos}")
        self.pos = pos


class JsonScanner:
    """Scans one JSON value. ``feed(text)`` returns the events found in ``text``; positions count
    characters from the first character ever fed (plus ``offset``)."""

    def __init__(self, offset: int = 0):
        self.pos = offset  # position of the next character
        self.stack: list[str] = []  # open containers: '{' or '['
        self.state = _VALUE
        self._after_scalar = _DONE  # the state a finished scalar returns to
        self._str_escape = 0  # 0: none, 1: after '\\', 2..5: inside a \\u escape (hex digits left + 1)
        self._str_is_key = False
        self._key_chars: list[str] = []
        self._number = ""
        self._literal = ""
        self._literal_target = ""

    @property
    def done(self) -> bool:
        """The top-level value is complete."""
        return self.state == _DONE

    @property
    def depth(self) -> int:
        return len(self.stack)

    def feed(self, text: str) -> list[tuple]:
        events: list[tuple] = []
        for ch in text:
            self._char(ch, events)
            self.pos += 1
        return events

    def finish(self) -> list[tuple]:
        """End of input: a pending top-level number ends here; anything else unfinished is an error."""
        events: list[tuple] = []
        if self.state == _NUMBER and not self.stack:
            self._end_number(events)
        if self.state != _DONE:
            raise JsonSyntaxError("unexpected end of JSON", self.pos)
        return events

    # -------------------------------------------------------------------------------------- internals
    def _after_value_state(self) -> int:
        return _COMMA_OR_CLOSE if self.stack else _DONE

    def _start_value(self, ch: str, events: list) -> None:
        depth = len(self.stack)
        events.append(("start", depth, self.pos))
        if ch == "{":
            self.stack.append("{")
            self.state = _KEY_OR_CLOSE
        elif ch == "[":
            self.stack.append("[")
            self.state = _VALUE_OR_CLOSE
        elif ch == '"':
            self.state = _STRING
            self._str_is_key = False
            self._str_escape = 0
        elif ch == "-" or ch.isdigit():
            self.state = _NUMBER
            self._number = ch
        else:
            for lit in _LITERALS:
                if lit[0] == ch:
                    self.state = _LITERAL
                    self._literal = ch
                    self._literal_target = lit
                    return
            raise JsonSyntaxError(f"unexpected character {ch!r} where a value should start", self.pos)

    def _close(self, ch: str, events: list) -> None:
        opener = "{" if ch == "}" else "["
        if not self.stack or self.stack[-1] != opener:
            raise JsonSyntaxError(f"unexpected {ch!r}", self.pos)
        self.stack.pop()
        events.append(("end", len(self.stack), self.pos + 1))
        self.state = self._after_value_state()

    def _end_number(self, events: list) -> None:
        n = self._number
        if not _valid_number(n):
            raise JsonSyntaxError(f"invalid number {n!r}", self.pos)
        events.append(("end", len(self.stack), self.pos))
        self.state = self._after_value_state()

    def _char(self, ch: str, events: list) -> None:
        st = self.state
        if st == _STRING:
            self._string_char(ch, events)
            return
        if st == _NUMBER:
            if ch.isdigit() or ch in "+-.eE":
                self._number += ch
                if not _valid_number_prefix(self._number):
                    raise JsonSyntaxError(f"invalid number {self._number!r}", self.pos)
                return
            self._end_number(events)
            st = self.state  # fall through: the terminator is processed below
        elif st == _LITERAL:
            self._literal += ch
            if not self._literal_target.startswith(self._literal):
                raise JsonSyntaxError(f"invalid literal {self._literal!r}", self.pos)
            if self._literal == self._literal_target:
                events.append(("end", len(self.stack), self.pos + 1))
                self.state = self._after_value_state()
            return
        if ch in _WS:
            return
        if st == _VALUE:
            self._start_value(ch, events)
        elif st == _VALUE_OR_CLOSE:
            if ch == "]":
                self._close(ch, events)
            else:
                self._start_value(ch, events)
        elif st in (_KEY_OR_CLOSE, _KEY):
            if ch == '"':
                self.state = _STRING
                self._str_is_key = True
                self._str_escape = 0
                self._key_chars = []
            elif ch == "}" and st == _KEY_OR_CLOSE:
                self._close(ch, events)
            else:
                raise JsonSyntaxError(f"expected an object key, got {ch!r}", self.pos)
        elif st == _COLON:
            if ch != ":":
                raise JsonSyntaxError(f"expected ':', got {ch!r}", self.pos)
            self.state = _VALUE
        elif st == _COMMA_OR_CLOSE:
            if ch == ",":
                self.state = _KEY if self.stack[-1] == "{" else _VALUE
            elif ch in "}]":
                self._close(ch, events)
            else:
                raise JsonSyntaxError(f"expected ',' or a closing bracket, got {ch!r}", self.pos)
        elif st == _DONE:
            raise JsonSyntaxError(f"unexpected {ch!r} after the end of the JSON value", self.pos)

    def _string_char(self, ch: str, events: list) -> None:
        if self._str_is_key:
            self._key_chars.append(ch)
        esc = self._str_escape
        if esc == 1:
            if ch not in _ESCAPES:
                raise JsonSyntaxError(f"invalid escape \\{ch}", self.pos)
            self._str_escape = 5 if ch == "u" else 0
        elif esc > 1:
            if ch not in _HEX:
                raise JsonSyntaxError(f"invalid \\u escape digit {ch!r}", self.pos)
            self._str_escape = esc - 1 if esc > 2 else 0
        elif ch == "\\":
            self._str_escape = 1
        elif ch == '"':
            if self._str_is_key:
                raw = "".join(self._key_chars[:-1])
                key = json.loads('"' + raw + '"')
                events.append(("key", len(self.stack), key))
                self.state = _COLON
            else:
                events.append(("end", len(self.stack), self.pos + 1))
                self.state = self._after_value_state()
        elif ord(ch) < 0x20:
            raise JsonSyntaxError("unescaped control character in a string", self.pos)


def _valid_number_prefix(s: str) -> bool:
    """Whether ``s`` can still grow into a JSON number."""
    i, n = 0, len(s)
    if i < n and s[i] == "-":
        i += 1
    if i == n:
        return True
    if s[i] == "0":
        i += 1
    elif s[i].isdigit():
        while i < n and s[i].isdigit():
            i += 1
    else:
        return False
    if i < n and s[i] == ".":
        i += 1
        while i < n and s[i].isdigit():
            i += 1
    if i < n and s[i] in "eE":
        i += 1
        if i < n and s[i] in "+-":
            i += 1
        while i < n and s[i].isdigit():
            i += 1
    return i == n


def _valid_number(s: str) -> bool:
    return _valid_number_prefix(s) and s[-1] not in "+-.eE"
