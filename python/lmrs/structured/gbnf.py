"""GBNF / EBNF grammars (llama.cpp's and xgrammar's ``root ::= ...`` syntax) translated to llguidance's
Lark dialect, so vLLM's ``structured_outputs.grammar`` works in either notation.

Covered: rules ``name ::= ...`` (spanning lines), ``|``, grouping, ``* + ?``, ``{m}`` ``{m,}`` ``{m,n}``,
string literals with ``\\n \\t \\r \\" \\\\ \\xHH \\uHHHH \\UHHHHHHHH`` escapes, character classes
``[a-z]`` / ``[^"\\\\]``, ``.`` and ``#`` comments. ``root`` becomes Lark's ``start``.
"""

from __future__ import annotations

import json
import re

__all__ = ["looks_like_gbnf", "gbnf_to_lark"]

_DEFINE_RE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9_-]*\s*::=", re.M)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_BRACE_RE = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "[": "[", "]": "]", "-": "-",
                   "^": "^", "/": "/"}


def looks_like_gbnf(text: str) -> bool:
    return bool(_DEFINE_RE.search(text))


def _escape(text: str, i: int) -> tuple[str, int]:
    """The character of the escape starting at ``text[i] == '\\\\'`` and the index after it."""
    if i + 1 >= len(text):
        raise ValueError("a lone backslash at the end")
    c = text[i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 2
    width = {"x": 2, "u": 4, "U": 8}.get(c)
    if width is None:
        raise ValueError(f"unknown escape \\{c}")
    digits = text[i + 2:i + 2 + width]
    if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
        raise ValueError(f"bad \\{c} escape")
    return chr(int(digits, 16)), i + 2 + width


def _rx_char(ch: str) -> str:
    return f"\\x{{{ord(ch):x}}}"


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("::=", i):
            out.append(("define", "::="))
            i += 3
        elif c == '"':
            j, chars = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    ch, j = _escape(text, j)
                    chars.append(ch)
                else:
                    chars.append(text[j])
                    j += 1
            if j >= n:
                raise ValueError("unterminated string literal")
            out.append(("item", json.dumps("".join(chars), ensure_ascii=False).replace("\x7f", "\\u007f")))
            i = j + 1
        elif c == "[":
            j, parts = i + 1, []
            negate = j < n and text[j] == "^"
            if negate:
                j += 1
            while j < n and text[j] != "]":
                if text[j] == "\\":
                    ch, j = _escape(text, j)
                else:
                    ch, j = text[j], j + 1
                if j + 1 < n and text[j] == "-" and text[j + 1] != "]":
                    if text[j + 1] == "\\":
                        hi, j = _escape(text, j + 1)
                    else:
                        hi, j = text[j + 1], j + 2
                    if ord(hi) < ord(ch):
                        raise ValueError(f"bad character range {ch!r}-{hi!r}")
                    parts.append(_rx_char(ch) + "-" + _rx_char(hi))
                else:
                    parts.append(_rx_char(ch))
            if j >= n:
                raise ValueError("unterminated character class")
            if not parts:
                raise ValueError("empty character class")
            out.append(("item", "/[" + ("^" if negate else "") + "".join(parts) + "]/"))
            i = j + 1
        elif c == ".":
            out.append(("item", "/(?s:.)/"))
            i += 1
        elif c in "()|*+?":
            out.append(("op", c))
            i += 1
        elif c == "{":
            m = _BRACE_RE.match(text, i)
            if not m:
                raise ValueError("bad repetition {...}")
            lo, comma, hi = m.groups()
            out.append(("op", "{" + (lo or "0") + comma + hi + "}"))
            i = m.end()
        else:
            m = _NAME_RE.match(text, i)
            if not m:
                raise ValueError(f"unexpected character {c!r}")
            out.append(("name", m.group()))
            i = m.end()
    return out


def gbnf_to_lark(text: str) -> str:
    toks = _tokens(text)
    rules: list[tuple[str, list[tuple[str, str]]]] = []
    i = 0
    while i < len(toks):
        if i + 1 < len(toks) and toks[i][0] == "name" and toks[i + 1][0] == "define":
            rules.append((toks[i][1], []))
            i += 2
        elif not rules:
            raise ValueError("expected a rule 'name ::= ...'")
        else:
            rules[-1][1].append(toks[i])
            i += 1
    names: dict[str, str] = {}
    for name, _ in rules:
        if name in names:
            raise ValueError(f"rule {name!r} is defined twice")
        lark = "start" if name == "root" else "r_" + name.lower().replace("-", "_")
        if lark in names.values():
            lark += f"_{len(names)}"
        names[name] = lark
    if "root" not in names:
        raise ValueError("no 'root' rule")
    lines = []
    for name, body in rules:
        if not body:
            raise ValueError(f"rule {name!r} is empty")
        parts = []
        for kind, val in body:
            if kind == "name":
                if val not in names:
                    raise ValueError(f"rule {val!r} is used but not defined")
                parts.append(names[val])
            elif kind == "define":
                raise ValueError("unexpected '::='")
            else:
                parts.append(val)
        lines.append(f"{names[name]}: " + " ".join(parts))
    return "\n".join(lines) + "\n"
