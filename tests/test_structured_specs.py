"""API request fields -> GrammarSpec: every accepted form, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from lmrs.structured import (FieldError, GrammarSpec, spec_from_request, spec_from_response_format,
                             spec_from_structured_outputs, spec_from_text_format)
from lmrs.structured.gbnf import gbnf_to_lark
from lmrs.structured.json_bounds import bound_numbers, bounded_any_schema
from lmrs.structured.spec import COMPACT_JSON, MAX_SOURCE_CHARS, choice_spec, grammar_spec, json_schema_spec

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "required": ["a"]}


def test_response_format_forms():
    assert spec_from_response_format(None) is None
    assert spec_from_response_format({"type": "text"}) is None
    obj = spec_from_response_format({"type": "json_object"})
    assert obj.kind == "json_schema" and json.loads(obj.source) == {**bounded_any_schema("object"), "x-guidance": COMPACT_JSON}
    s = spec_from_response_format({"type": "json_schema",
                                   "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}})
    assert s.kind == "json_schema" and s.field == "response_format.json_schema.schema"
    assert list(json.loads(s.source)["properties"]) == ["b", "a"], "property order is kept (it orders output)"
    r = spec_from_response_format({"type": "regex_schema", "regex_schema": "[0-9]+"})
    assert (r.kind, r.source) == ("regex", "[0-9]+")


def test_equal_constraints_share_a_key():
    a = spec_from_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    b = spec_from_structured_outputs({"json": json.dumps(SCHEMA, indent=2)})
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert a.field != b.field


def test_structured_outputs_forms():
    assert spec_from_structured_outputs({"regex": r"\d+"}).kind == "regex"
    ch = spec_from_structured_outputs({"choice": ["yes", "no", "yes", 'say "hi"\n']})
    assert ch.kind == "lark" and ch.source == 'start: "yes" | "no" | "say \\"hi\\"\\n"\n'
    g = spec_from_structured_outputs({"grammar": 'start: "a"+'})
    assert (g.kind, g.source) == ("lark", 'start: "a"+')
    ebnf = spec_from_structured_outputs({"grammar": 'root ::= "a" digit+\ndigit ::= [0-9]'})
    assert ebnf.kind == "lark" and ebnf.source.startswith("start: ")
    default = spec_from_structured_outputs({"json": SCHEMA})
    assert json.loads(default.source)["x-guidance"] == COMPACT_JSON
    ws = spec_from_structured_outputs({"json": SCHEMA, "whitespace_pattern": "[ ]?"})
    assert json.loads(ws.source)["x-guidance"] == {"whitespace_pattern": "[ ]?"}
    compact = spec_from_structured_outputs({"json_object": True, "disable_any_whitespace": True})
    assert json.loads(compact.source)["x-guidance"] == COMPACT_JSON


def test_text_format_of_the_responses_api():
    assert spec_from_text_format({"type": "text"}) is None
    s = spec_from_text_format({"type": "json_schema", "name": "thing", "schema": SCHEMA, "strict": True})
    source = json.loads(s.source)
    assert s.field == "text.format.schema" and source.pop("x-guidance") == COMPACT_JSON
    assert source == bound_numbers(SCHEMA)


def test_spec_from_request_picks_the_one_given():
    assert spec_from_request({"messages": []}) is None
    assert spec_from_request({"response_format": {"type": "json_object"}}).field == "response_format"
    assert spec_from_request({"guided_regex": "a+", "guided_whitespace_pattern": " "}).field == "guided_regex"
    assert spec_from_request({"text": {"format": {"type": "json_object"}}}).field == "text.format"
    assert spec_from_request({"response_format": {"type": "text"}, "structured_outputs": {"regex": "a"}}).kind == "regex"


@pytest.mark.parametrize("body,field", [
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{oops"}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}},
     "response_format.json_schema.strict"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"regex": ""}}, "structured_outputs.regex"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"choice": ["a", 3]}}, "structured_outputs.choice[1]"),
    ({"structured_outputs": {"grammar": "  "}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"grammar": 'root ::= "a" undefined'}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"json": SCHEMA, "whitespace_pattern": 3}}, "structured_outputs.whitespace_pattern"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
    ({"guided_json": "{oops"}, "guided_json"),
    ({"guided_choice": [], "structured_outputs": {"regex": "a"}}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
])
def test_errors_name_the_field(body, field):
    with pytest.raises(FieldError) as e:
        spec_from_request(body)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(field + ": ")
    assert isinstance(e.value, ValueError)


def test_size_limit():
    with pytest.raises(FieldError, match="limit"):
        json_schema_spec({"description": "x" * MAX_SOURCE_CHARS}, "response_format.json_schema.schema")
    with pytest.raises(ValueError):
        GrammarSpec("yaml", "a: b")


def test_choice_and_grammar_validation():
    assert choice_spec(("a",), "c").source == 'start: "a"\n'
    assert "\\u007f" in choice_spec(["del\x7f"], "c").source
    with pytest.raises(FieldError):
        grammar_spec(None, "g")


@pytest.mark.parametrize("gbnf,lark", [
    ('root ::= "yes" | "no"', 'start: "yes" | "no"\n'),
    ('root ::= item ("," item)*\nitem ::= [a-zA-Z_] [0-9]{1,3}  # an id\n',
     'start: r_item "," r_item*\nr_item: /[\\x{61}-\\x{7a}\\x{41}-\\x{5a}\\x{5f}]/ /[\\x{30}-\\x{39}]/ {1,3}\n'),
    ('root ::= [^"\\\\\\n]+ .?\nWS-Char ::= "\\t"', None),
])
def test_gbnf_translation(gbnf, lark):
    out = gbnf_to_lark(gbnf)
    assert out.startswith("start: ")
    if lark is not None and "(" not in gbnf:
        assert out == lark


@pytest.mark.parametrize("bad", ['item ::= "a"', 'root ::= "a"\nroot ::= "b"', 'root ::= [z-a]', 'root ::= "open',
                                 'root ::= "\\q"', '"a" ::= b', "root ::= a {x}"])
def test_gbnf_errors(bad):
    with pytest.raises(ValueError):
        gbnf_to_lark(bad)
