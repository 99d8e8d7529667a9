"""The one normalized form of every output constraint: a :class:`GrammarSpec` (what the grammar engine
compiles, and the compile cache's key), and the builders that make one from each kind of constraint
with errors naming the request field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import FieldError
from .gbnf import gbnf_to_lark, looks_like_gbnf

__all__ = ["GrammarSpec", "DEFAULT_JSON_WHITESPACE", "json_schema_spec", "json_object_spec", "regex_spec", "choice_spec", "grammar_spec",
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


#: Whitespace allowed between JSON tokens when a request sets none: enough for pretty-printed
#: output (a newline and 14 levels of indentation), bounded so that a model drifting into
#: whitespace cannot spend its whole token budget there (llguidance's default is unbounded).
DEFAULT_JSON_WHITESPACE = r"[ \t\n]{0,30}"


def json_schema_spec(schema: Any, field: str, *, whitespace_pattern: str | None = None,
                     compact: bool = False) -> GrammarSpec:
    """Output that is a JSON value valid under ``schema`` (a dict, ``true``, or JSON text of one).
    ``whitespace_pattern``: a regex for the whitespace allowed between JSON tokens (vLLM's field);
    ``compact``: no free whitespace (``", "`` and ``": "`` separators); neither:
    ``DEFAULT_JSON_WHITESPACE``."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise FieldError(field, f"is not valid JSON: {e}") from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise FieldError(field, f"must be a JSON schema object, got {type(schema).__name__}")
    options: dict[str, Any] = {}
    if whitespace_pattern is not None:
        if not isinstance(whitespace_pattern, str):
            raise FieldError("whitespace_pattern", "must be a string")
        options["whitespace_pattern"] = whitespace_pattern
    if compact:
        options.update(whitespace_flexible=False, item_separator=", ", key_separator=": ")
    elif whitespace_pattern is None and "whitespace_pattern" not in schema.get("x-guidance", {}):
        options["whitespace_pattern"] = DEFAULT_JSON_WHITESPACE
    if options:
        schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), **options}}
    return GrammarSpec("json_schema", _dumps(schema), field)


def json_object_spec(field: str, *, whitespace_pattern: str | None = None) -> GrammarSpec:
    """Any JSON object (OpenAI's ``{"type": "json_object"}``)."""
    return json_schema_spec({"type": "object"}, field, whitespace_pattern=whitespace_pattern)


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
