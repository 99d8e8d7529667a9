"""The default JSON layout of constrained outputs (compact: no free whitespace, ``,`` / ``:``) and the
default number bounds, so that every output closes in a length the schema alone bounds; the request's
``whitespace_pattern`` / ``disable_any_whitespace`` / ``x-guidance`` still choose another layout."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from grammar_walk import Walker, accepts, smollm2_tokenizer
from lmrs.structured import GrammarCompiler, spec_from_response_format, spec_from_structured_outputs, token_table
from lmrs.structured.json_bounds import MAX_ABS_NUMBER, NUMBER_STEP, bound_numbers, bounded_any_schema
from lmrs.structured.spec import COMPACT_JSON, GrammarSpec, json_schema_spec

NUMBERS = {"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}},
           "required": ["n", "x"], "additionalProperties": False}
# '{"n":' + '-' and 15 digits + ',"x":' + '-', 15 digits, '.', 6 digits + '}'
NUMBERS_MAX_BYTES = 5 + 16 + 5 + 23 + 1


def test_bound_numbers_adds_only_missing_bounds():
    schema = {"type": "object", "properties": {
        "i": {"type": "integer"}, "f": {"type": ["number", "null"]}, "own": {"type": "number", "minimum": 0, "multipleOf": 0.5},
        "far": {"type": "integer", "exclusiveMinimum": 1e20}, "list": {"type": "array", "items": {"type": "integer"}},
        "one": {"anyOf": [{"type": "number"}, {"$ref": "#/$defs/d"}]}, "c": {"const": {"type": "integer"}},
        "e": {"enum": [{"type": "number"}]}},
        "$defs": {"d": {"type": "integer", "maximum": 5}}}
    out = bound_numbers(schema)
    p = out["properties"]
    assert p["i"] == {"type": "integer", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER}
    assert p["f"]["multipleOf"] == NUMBER_STEP and p["f"]["maximum"] == MAX_ABS_NUMBER
    assert p["own"] == {"type": "number", "minimum": 0, "multipleOf": 0.5, "maximum": MAX_ABS_NUMBER}
    assert p["far"] == {"type": "integer", "exclusiveMinimum": 1e20}, "no bound that makes it unsatisfiable"
    assert p["list"]["items"]["maximum"] == MAX_ABS_NUMBER
    assert p["one"]["anyOf"][0]["minimum"] == -MAX_ABS_NUMBER
    assert out["$defs"]["d"] == {"type": "integer", "maximum": 5, "minimum": -MAX_ABS_NUMBER}
    assert p["c"] == schema["properties"]["c"] and p["e"] == schema["properties"]["e"], "data is not a schema"
    assert "minimum" not in schema["properties"]["i"], "the request's schema is not modified"


def test_default_layout_and_the_request_options():
    default = json.loads(json_schema_spec(NUMBERS, "s").source)
    assert default["x-guidance"] == COMPACT_JSON
    assert default["properties"]["x"]["multipleOf"] == NUMBER_STEP
    so = {"json": NUMBERS}
    assert json.loads(spec_from_structured_outputs({**so, "disable_any_whitespace": True}).source)["x-guidance"] == COMPACT_JSON
    assert json.loads(spec_from_structured_outputs({**so, "disable_any_whitespace": False}).source)["x-guidance"] == COMPACT_JSON
    ws = json.loads(spec_from_structured_outputs({**so, "whitespace_pattern": "[ ]?"}).source)
    assert ws["x-guidance"] == {"whitespace_pattern": "[ ]?"}
    own = json.loads(json_schema_spec({**NUMBERS, "x-guidance": {"whitespace_flexible": True}}, "s").source)
    assert own["x-guidance"] == {"whitespace_flexible": True}, "a schema's own layout options are kept"
    forced = spec_from_structured_outputs({"json": {**NUMBERS, "x-guidance": {"whitespace_pattern": " *"}},
                                           "disable_any_whitespace": True})
    assert json.loads(forced.source)["x-guidance"] == COMPACT_JSON
    assert json.loads(json_schema_spec(True, "s").source)["$defs"] == bounded_any_schema()["$defs"]
    with pytest.raises(ValueError, match="s.x-guidance"):
        json_schema_spec({"x-guidance": "flexible"}, "s")


@pytest.fixture(scope="module")
def tk():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def compiler(tk):
    c = GrammarCompiler.for_tokenizer(tk)
    yield c
    c.close()


def _accepts(compiler, tk, spec, text: str) -> bool:
    return accepts(compiler.compile(spec), tk.encode(text))


@pytest.mark.parametrize("text,default,spaced", [
    ('{"n":3,"x":-2.5}', True, False),
    ('{"n": 3, "x": -2.5}', False, True),
    ('{"n":3,\n"x":-2.5}', False, False),
    ('{"n":999999999999999,"x":0.123456}', True, False),
    ('{"n":1000000000000000,"x":0}', False, False),
    ('{"n":1,"x":0.1234567}', False, False),
    ('{"n":1,"x":1e5}', False, False),
])
def test_what_the_grammars_accept(text, default, spaced, compiler, tk):
    assert _accepts(compiler, tk, json_schema_spec(NUMBERS, "s"), text) is default
    spaced_spec = spec_from_structured_outputs({"json": NUMBERS, "whitespace_pattern": "[ ]?"})
    assert _accepts(compiler, tk, spaced_spec, text) is (spaced or (default and text.count(" ") == 0))


def test_json_object_is_compact_with_bounded_numbers(compiler, tk):
    spec = spec_from_response_format({"type": "json_object"})
    assert _accepts(compiler, tk, spec, '{"a":[1,2.5,"x y",null,{"b":true}],"c":{}}')
    for bad in ['{"a": 1}', '{"a":1.1234567}', '{"a":12345678901234567}', '[1]', '"text"']:
        assert not _accepts(compiler, tk, spec, bad), bad


def test_outputs_end_within_the_bounded_length(compiler, tk):
    """Under the default grammar every walk closes within the length the bounds allow, even one that
    never closes voluntarily; under llguidance's own number grammar that one runs on."""
    table, _ = token_table(tk)
    walker = Walker(table, tk.eos_token_ids, compiler.vocab.vocab_size)
    grammar = compiler.compile(json_schema_spec(NUMBERS, "s"))
    rng = random.Random(14)
    for i in range(60):
        raw = walker.walk(grammar, rng, max_tokens=NUMBERS_MAX_BYTES + 1, stubborn=bool(i % 2))[1]
        assert len(raw) <= NUMBERS_MAX_BYTES
        text = raw.decode()
        jsonschema.validate(json.loads(text), NUMBERS)
        assert not any(c.isspace() for c in text), text
    unbounded = compiler.compile(GrammarSpec("json_schema", json.dumps({**NUMBERS, "x-guidance": COMPACT_JSON})))
    with pytest.raises(AssertionError, match="did not finish"):
        walker.walk(unbounded, rng, max_tokens=200, stubborn=True)
