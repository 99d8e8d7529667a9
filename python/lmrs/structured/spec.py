"""The one normalized form of every output constraint: a :class:`GrammarSpec` (what the grammar engine
compiles, and the compile cache's key), and the builders that make one from each kind of constraint
with errors naming the request field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import FieldError
from .gbnf import gbnf_to_lark, looks_like_gbnf
from .json_bounds import bound_numbers, bounded_any_schema

__all__ = ["GrammarSpec", "COMPACT_JSON", "json_schema_spec", "json_object_spec", "regex_spec", "choice_spec", "grammar_spec",
           "lark_literal", "MAX_SOURCE_CHARS"]

# a bound on what one request may ask the engine to compile (about a 128-tool set with long schemas)
MAX_SOURCE_CHARS = 1_000_000


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint the engine compiles: ``kind`` is ``json_schema`` (``source``: the schema as compact
    JSON text), ``regex`` (``source``: a regex in Rust ``regex`` syntax, matched in full) or ``lark``
    (``source``: a grammar in llguidance's Lark dialect). ``field`` names where it came from in the
    request (for errors); it is not part of the identity, so equal constraints share one compile."""

    kind: str
    source: str
    field: str = field(default="", compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.source)

    def __post_init__(self):
        if self.kind not in ("json_schema", "regex", "lark"):
            raise ValueError(f"unknown grammar kind {self.kind!r}")
        if len(self.source) > MAX_SOURCE_CHARS:
            raise FieldError(self.field or "grammar",
                             f"is {len(self.source)} characters long; the limit is {MAX_SOURCE_CHARS}")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: The JSON layout when a request sets none: no free whitespace, ``,`` and ``:`` separators (OpenAI's
#: strict structured outputs are compact JSON too). Free whitespace let a small model spend its whole
#: token budget between two JSON tokens; a compact document is also ~18% fewer tokens than one with
#: ``", "`` / ``": "`` separators on SmolLM2's vocabulary (a space before a value is a token of its own).
COMPACT_JSON = {"whitespace_flexible": False, "whitespace_pattern": None, "item_separator": ",", "key_separator": ":"}

#: The layout keys of llguidance's ``x-guidance`` options: a schema that sets any keeps its own layout.
_LAYOUT_KEYS = ("whitespace_flexible", "whitespace_pattern", "item_separator", "key_separator")


def json_schema_spec(schema: Any, field: str, *, whitespace_pattern: str | None = None,
                     compact: bool = False) -> GrammarSpec:
    """Output that is a JSON value valid under ``schema`` (a dict, ``true``, or JSON text of one), its
    numbers bounded (``json_bounds.py``). Layout: ``whitespace_pattern`` (a regex, vLLM's field) allows
    that whitespace between JSON tokens; else ``compact`` (``disable_any_whitespace``) forces
    :data:`COMPACT_JSON`; else the schema's own ``x-guidance`` layout options if it sets any; else
    :data:`COMPACT_JSON`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise FieldError(field, f"is not valid JSON: {e}") from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise FieldError(field, f"must be a JSON schema object, got {type(schema).__name__}")
    guidance = schema.get("x-guidance", {})
    if not isinstance(guidance, dict):
        raise FieldError(f"{field}.x-guidance", "must be an object of llguidance options")
    if whitespace_pattern is not None:
        if not isinstance(whitespace_pattern, str):
            raise FieldError("whitespace_pattern", "must be a string")
        guidance = {**guidance, "whitespace_pattern": whitespace_pattern}
    elif compact or not any(k in guidance for k in _LAYOUT_KEYS):
        guidance = {**guidance, **COMPACT_JSON}
    body = {k: v for k, v in schema.items() if k != "x-guidance"}
    body = bounded_any_schema() if not body else bound_numbers(body)
    return GrammarSpec("json_schema", _dumps({**body, "x-guidance": guidance}), field)


def json_object_spec(field: str, *, whitespace_pattern: str | None = None, compact: bool = False) -> GrammarSpec:
    """Any JSON object (OpenAI's ``{"type": "json_object"}``), its numbers bounded as a schema's are."""
    return json_schema_spec(bounded_any_schema("object"), field, whitespace_pattern=whitespace_pattern,
                            compact=compact)


def regex_spec(pattern: Any, field: str) -> GrammarSpec:
    """Output matching ``pattern`` in full (Rust ``regex`` syntax: no look-around or backreferences)."""
    if not isinstance(pattern, str) or not pattern:
        raise FieldError(field, "must be a non-empty string (a regular expression)")
    return GrammarSpec("regex", pattern, field)


def lark_literal(text: str) -> str:
    """``text`` as a Lark string literal (JSON escapes; DEL escaped too, as the Lark lexer wants)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def choice_spec(choices: Any, field: str) -> GrammarSpec:
    """Output that is exactly one of ``choices`` (vLLM's ``choice``)."""
    if not isinstance(choices, (list, tuple)) or not choices:
        raise FieldError(field, "must be a non-empty list of strings")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            raise FieldError(f"{field}[{i}]", "must be a non-empty string")
    unique = list(dict.fromkeys(choices))
    return GrammarSpec("lark", "start: " + " | ".join(lark_literal(c) for c in unique) + "\n", field)


def grammar_spec(text: Any, field: str) -> GrammarSpec:
    """A context-free grammar: llguidance's Lark dialect, or GBNF / EBNF (``root ::= ...``, as llama.cpp and
    xgrammar take), translated to Lark."""
    if not isinstance(text, str) or not text.strip():
        raise FieldError(field, "must be a non-empty string (a Lark or EBNF grammar)")
    if looks_like_gbnf(text):
        try:
            text = gbnf_to_lark(text)
        except ValueError as e:
            raise FieldError(field, f"invalid EBNF grammar: {e}") from None
    return GrammarSpec("lark", text, field)


def union_lark(parts: Sequence[str]) -> str:
    """``start: a | b`` over nested grammars (each a ``%json {...}`` item or a rule body)."""
    return "start: " + " | ".join(parts) + "\n"
