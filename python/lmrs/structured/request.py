"""API request fields -> one :class:`GrammarSpec` (or None for free text).

Accepted forms:

- OpenAI chat / completions ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``; lmdeploy's
  ``{"type": "regex_schema", "regex_schema": "..."}``.
- vLLM's ``structured_outputs``: exactly one of ``json`` (schema or JSON text), ``regex``, ``choice``,
  ``grammar`` (Lark or GBNF/EBNF), ``json_object: true``; plus ``whitespace_pattern`` and
  ``disable_any_whitespace``. Its older top-level ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
  ``guided_grammar`` / ``guided_whitespace_pattern`` fields map to the same.
- The Responses API's ``text.format``: ``{"type": "text" | "json_object"}`` or
  ``{"type": "json_schema", "name", "schema", "strict", "description"}``.

Every error is a :class:`FieldError` naming the field (turned into HTTP 400 by the server).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import FieldError
from .spec import GrammarSpec, choice_spec, grammar_spec, json_object_spec, json_schema_spec, regex_spec

__all__ = ["spec_from_response_format", "spec_from_structured_outputs", "spec_from_text_format",
           "spec_from_request"]

_SCHEMA_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar", "guided_whitespace_pattern": "whitespace_pattern"}
_SO_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _mapping(value: Any, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be an object, got {type(value).__name__}")
    return value


def _json_schema_object(obj: Mapping, field: str) -> GrammarSpec:
    """The ``{"name", "schema", "strict", "description"}`` object of a json_schema format."""
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or not _SCHEMA_NAME_RE.fullmatch(name)):
        raise FieldError(f"{field}.name", "must be 1-64 letters, digits, '_' or '-'")
    strict = obj.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise FieldError(f"{field}.strict", "must be a boolean")
    if "schema" not in obj or obj["schema"] is None:
        raise FieldError(f"{field}.schema", "is required: the JSON schema the output must follow")
    return json_schema_spec(obj["schema"], f"{field}.schema")


def spec_from_response_format(value: Any, field: str = "response_format") -> GrammarSpec | None:
    if value is None:
        return None
    rf = _mapping(value, field)
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_spec(field)
    if kind == "json_schema":
        return _json_schema_object(_mapping(rf.get("json_schema"), f"{field}.json_schema"), f"{field}.json_schema")
    if kind == "regex_schema":
        return regex_spec(rf.get("regex_schema"), f"{field}.regex_schema")
    raise FieldError(f"{field}.type", f"must be 'text', 'json_object' or 'json_schema', got {kind!r}")


def spec_from_text_format(value: Any, field: str = "text.format") -> GrammarSpec | None:
    if value is None:
        return None
    fmt = _mapping(value, field)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_spec(field)
    if kind == "json_schema":
        return _json_schema_object(fmt, field)
    raise FieldError(f"{field}.type", f"must be 'text', 'json_object' or 'json_schema', got {kind!r}")


def spec_from_structured_outputs(value: Any, field: str = "structured_outputs", *,
                                 field_names: Mapping[str, str] | None = None) -> GrammarSpec | None:
    """``field_names`` maps a key of ``value`` to the request field to name in errors (default:
    ``structured_outputs.<key>``)."""
    if value is None:
        return None
    so = _mapping(value, field)

    def sub_field(key: str) -> str:
        return field_names[key] if field_names and key in field_names else f"{field}.{key}"

    given = [k for k in _SO_KINDS if so.get(k) not in (None, False)]
    if len(given) > 1:
        raise FieldError(field, f"set only one of {', '.join(_SO_KINDS)} (got {', '.join(given)})")
    if not given:
        if so.get("structural_tag") is not None:
            raise FieldError(f"{field}.structural_tag", "is not supported; use json, regex, choice or grammar")
        raise FieldError(field, f"set one of {', '.join(_SO_KINDS)}")
    kind = given[0]
    ws = so.get("whitespace_pattern")
    if ws is not None and not isinstance(ws, str):
        raise FieldError(sub_field("whitespace_pattern"), "must be a string (a regex)")
    compact = so.get("disable_any_whitespace", False)
    if not isinstance(compact, bool):
        raise FieldError(sub_field("disable_any_whitespace"), "must be a boolean")
    sub = sub_field(kind)
    if kind == "json":
        spec = json_schema_spec(so["json"], sub, whitespace_pattern=ws, compact=compact)
    elif kind == "json_object":
        if so["json_object"] is not True:
            raise FieldError(sub, "must be true")
        spec = json_object_spec(sub, whitespace_pattern=ws, compact=compact)
    elif kind == "regex":
        spec = regex_spec(so["regex"], sub)
    elif kind == "choice":
        spec = choice_spec(so["choice"], sub)
    else:
        spec = grammar_spec(so["grammar"], sub)
    return spec


def spec_from_request(body: Mapping[str, Any]) -> GrammarSpec | None:
    """The constraint of a whole request body (chat, completions or responses), or None. Setting more
    than one of ``response_format``, ``structured_outputs`` (or its ``guided_*`` fields) and
    ``text.format`` is an error."""
    found: list[tuple[str, GrammarSpec | None]] = []
    if body.get("response_format") is not None:
        found.append(("response_format", spec_from_response_format(body["response_format"])))
    guided = {so_key: body[k] for k, so_key in _GUIDED_FIELDS.items() if body.get(k) is not None}
    if body.get("structured_outputs") is not None:
        if guided:
            raise FieldError(next(k for k in _GUIDED_FIELDS if body.get(k) is not None),
                             "cannot be combined with structured_outputs")
        found.append(("structured_outputs", spec_from_structured_outputs(body["structured_outputs"])))
    elif set(guided) - {"whitespace_pattern"}:
        names = {so_key: k for k, so_key in _GUIDED_FIELDS.items()}
        spec = spec_from_structured_outputs(guided, field="guided_*", field_names=names)
        found.append((spec.field, spec))
    text = body.get("text")
    if isinstance(text, Mapping) and text.get("format") is not None:
        found.append(("text.format", spec_from_text_format(text["format"])))
    set_fields = [name for name, spec in found if spec is not None]
    if len(set_fields) > 1:
        raise FieldError(set_fields[1], f"cannot be combined with {set_fields[0]}; give one output format")
    return next((spec for _, spec in found if spec is not None), None)
