"""Default bounds on JSON numbers, so that a constrained output always closes in reasonable length.

llguidance compiles ``{"type": "integer"}`` to ``-?(0|[1-9][0-9]*)`` and ``{"type": "number"}`` to the
same with an unbounded fraction and exponent, and has no option to bound them: a small model that keeps
choosing digits runs to ``max_tokens`` and the output is cut off. :func:`bound_numbers` gives every
integer / number subschema of a schema the bounds it lacks, in the schema the grammar is compiled from
(never the one outputs are checked against):

- ``minimum`` / ``maximum`` of -/+ ``MAX_ABS_NUMBER`` (at most 15 integer digits: exact in a float64
  and in JavaScript) where the schema has no lower / upper bound (``exclusive*`` count as bounds);
- for ``number``, ``multipleOf`` ``NUMBER_STEP`` (at most 6 fraction digits, no exponent) where the
  schema has no ``multipleOf``.

A number under these bounds satisfies the user's schema too (the bounds only narrow it), so a request
that wants more (larger values, more fraction digits) states its own bounds or ``multipleOf``. A
one-sided bound outside the default range (``minimum: 1e20``) leaves the other side open rather than make
the schema unsatisfiable. ``json_object`` and ``{}`` at the top use :data:`BOUNDED_ANY_SCHEMA`, any JSON
value with numbers bounded the same way (llguidance's own "any" has unbounded numbers).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_ABS_NUMBER", "NUMBER_STEP", "bound_numbers", "bounded_any_schema"]

MAX_ABS_NUMBER = 10**15 - 1
NUMBER_STEP = 1e-6

_NUMERIC = ("integer", "number")
# keywords whose value is one subschema, a list of them, or a map of names to them
_ONE = ("additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then",
        "else", "unevaluatedItems", "unevaluatedProperties")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _types(schema: dict) -> set:
    t = schema.get("type")
    return {t} if isinstance(t, str) else set(t) if isinstance(t, list) else set()


def _bound(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _with_bounds(schema: dict, types: set) -> dict:
    lower = [b for b in map(_bound, (schema.get("minimum"), schema.get("exclusiveMinimum"))) if b is not None]
    upper = [b for b in map(_bound, (schema.get("maximum"), schema.get("exclusiveMaximum"))) if b is not None]
    has_lower = lower or "minimum" in schema or "exclusiveMinimum" in schema
    has_upper = upper or "maximum" in schema or "exclusiveMaximum" in schema
    out = dict(schema)
    if not has_lower and all(u >= -MAX_ABS_NUMBER for u in upper):
        out["minimum"] = -MAX_ABS_NUMBER
    if not has_upper and all(b <= MAX_ABS_NUMBER for b in lower):
        out["maximum"] = MAX_ABS_NUMBER
    if "number" in types and "multipleOf" not in schema:
        out["multipleOf"] = NUMBER_STEP
    return out


def bound_numbers(schema: Any) -> Any:
    """A copy of ``schema`` with the default number bounds added to every integer / number subschema
    that lacks them (``enum``, ``const``, ``default`` and other data are left as they are)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = bound_numbers(out[key])
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [bound_numbers(s) for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: bound_numbers(s) for name, s in out[key].items()}
    types = _types(out)
    return _with_bounds(out, types) if types & set(_NUMERIC) else out


def bounded_any_schema(top_type: str | None = None) -> dict:
    """Any JSON value (an object if ``top_type == "object"``), its numbers bounded (a recursive ``$defs``
    entry in place of llguidance's built-in "any")."""
    ref = {"$ref": "#/$defs/lmrs_any"}
    any_value = {"anyOf": [{"type": "null"}, {"type": "boolean"},
                           _with_bounds({"type": "number"}, {"number"}), {"type": "string"},
                           {"type": "array", "items": ref}, {"type": "object", "additionalProperties": ref}]}
    top = {"type": "object", "additionalProperties": ref} if top_type == "object" else dict(ref)
    return {**top, "$defs": {"lmrs_any": any_value}}
