"""The grammar engine over the real SmolLM2 vocabulary (49152 tokens): random walks under the mask finish
with outputs that are valid (JSON schemas checked with ``jsonschema``, regexes with ``re``, choices,
Lark / EBNF grammars, forced tool calls parsed and validated), and invalid outputs are refused."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import numpy as np
import pytest

from grammar_walk import Walker, accepts, smollm2_tokenizer
from lmrs.structured import GrammarCompiler, spec_from_structured_outputs, token_table
from lmrs.structured.spec import choice_spec, grammar_spec, json_schema_spec, regex_spec
from lmrs.tools import get_tool_parser, plan_tools

WALKS = 200

SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                            "required": ["lat", "lon"], "additionalProperties": False},
                },
                "required": ["geo"], "additionalProperties": False,
            },
        },
        "required": ["name", "address"], "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 4},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                       "maxItems": 3},
            "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}},
                                                 "required": ["id"], "additionalProperties": False}},
        },
        "required": ["tags", "matrix"], "additionalProperties": False,
    },
    "enums_and_consts": {
        "type": "object",
        "properties": {
            "status": {"enum": ["active", "inactive", "on \"hold\""]},
            "kind": {"const": "widget"},
            "level": {"enum": [1, 2, 3]},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["status", "kind", "level", "flag", "nothing"], "additionalProperties": False,
    },
    "required_optional_numbers": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 1000},
            "price": {"type": "number"},
            "ratio": {"type": "number", "minimum": -1, "maximum": 1},
            "count": {"type": "integer"},
            "note": {"type": "string", "maxLength": 20},
        },
        "required": ["id", "price"], "additionalProperties": False,
    },
    "strings_with_escapes": {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "short": {"type": "string", "minLength": 2, "maxLength": 5},
            "value": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        },
        "required": ["text", "code", "short", "value"], "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def tk():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def compiler(tk):
    c = GrammarCompiler.for_tokenizer(tk)
    yield c
    c.close()


@pytest.fixture(scope="module")
def walker(tk, compiler):
    table, _ = token_table(tk)
    return Walker(table, tk.eos_token_ids, compiler.vocab.vocab_size)


def test_token_table_matches_the_tokenizer(tk):
    table, special = token_table(tk)
    assert len(table) == 49152 and {0, 1, 2} <= set(special)
    texts = ['{"a": "b\\n", "ü": [1, 2.5]}', "  Hello,\tworld!\n\n", "日本語 🙂 ok", "x" * 40]
    for text in texts:
        ids = tk.encode(text)
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_walks_validate(name, compiler, walker, tk):
    schema = SCHEMAS[name]
    grammar = compiler.compile(json_schema_spec(schema, "response_format.json_schema.schema"))
    rng = random.Random(name)
    seen = set()
    for _ in range(WALKS):
        toks, raw = walker.walk(grammar, rng)
        text = raw.decode("utf-8")
        assert tk.decode(toks[:-1]) == text
        jsonschema.validate(json.loads(text), schema)
        seen.add(text)
    # enums_and_consts has 3 x 3 x 2 outputs in the compact layout: the walks reach them all
    assert len(seen) == 18 if name == "enums_and_consts" else len(seen) > WALKS // 2, "walks explore different outputs"
    if name == "strings_with_escapes":
        assert sum("\\" in t for t in seen) > 5, "strings with escapes were generated"


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def test_json_schema_refuses_invalid_documents(compiler, tk):
    grammar = compiler.compile(json_schema_spec(SCHEMAS["enums_and_consts"], "s"))
    good = {"status": "on \"hold\"", "kind": "widget", "level": 2, "flag": False, "nothing": None}
    assert accepts(grammar, tk.encode(_compact(good)))
    assert not accepts(grammar, tk.encode(json.dumps(good))), "the default layout is compact"
    spaced = compiler.compile(json_schema_spec(SCHEMAS["enums_and_consts"], "s", whitespace_pattern=r"[ \n]*"))
    assert accepts(spaced, tk.encode(json.dumps(good, indent=2)))
    for bad in [{**good, "status": "done"}, {**good, "kind": "gadget"}, {**good, "level": 4},
                {k: v for k, v in good.items() if k != "flag"}, {**good, "extra": 1}, {**good, "flag": "no"}]:
        assert not accepts(grammar, tk.encode(_compact(bad))), bad
    assert not accepts(grammar, tk.encode(_compact(good)[:-1])), "an unfinished document is not accepted"


def test_regex_walks(compiler, walker):
    pattern = r"[0-9]{3}-[a-z]{2,4}(\.[A-Z]+)?"
    grammar = compiler.compile(regex_spec(pattern, "structured_outputs.regex"))
    rng = random.Random(1)
    outs = set()
    for _ in range(WALKS):
        _, raw = walker.walk(grammar, rng)
        assert re.fullmatch(pattern, raw.decode()), raw
        outs.add(raw)
    assert any(b"." in o for o in outs) and any(b"." not in o for o in outs)


def test_choice_walks_reach_every_choice(compiler, walker):
    choices = ["yes", "no", "maybe later", "no way"]
    grammar = compiler.compile(choice_spec(choices, "structured_outputs.choice"))
    rng = random.Random(2)
    got = {walker.walk(grammar, rng)[1].decode() for _ in range(WALKS)}
    assert got == set(choices)


@pytest.mark.parametrize("text", [
    'start: "[" num ("," num)* "]"\nnum: /-?[0-9]+/\n',
    'root ::= "[" num ("," num)* "]"\nnum ::= "-"? [0-9]+\n',
])
def test_lark_and_ebnf_grammar_walks(text, compiler, walker):
    grammar = compiler.compile(grammar_spec(text, "structured_outputs.grammar"))
    rng = random.Random(3)
    for _ in range(50):
        _, raw = walker.walk(grammar, rng)
        assert re.fullmatch(r"\[-?[0-9]+(,-?[0-9]+)*\]", raw.decode()), raw


def test_whitespace_options(compiler, walker):
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
              "required": ["a"], "additionalProperties": False}
    compact = compiler.compile(spec_from_structured_outputs({"json": schema, "disable_any_whitespace": True}))
    narrow = compiler.compile(spec_from_structured_outputs({"json": schema, "whitespace_pattern": "[ ]?"}))
    rng = random.Random(4)
    for _ in range(40):
        text = walker.walk(compact, rng)[1].decode()
        assert "\n" not in text and "  " not in text and json.loads(text)["a"] is not None
        text = walker.walk(narrow, rng)[1].decode()
        assert "\n" not in text and "  " not in text


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ping"}},
]
SCHEMA_OF = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json", "mistral"])
@pytest.mark.parametrize("choice,parallel", [("required", True), ("required", False),
                                             ({"type": "function", "function": {"name": "add"}}, True)])
def test_forced_tool_calls_always_parse_and_validate(parser_name, choice, parallel, compiler, walker):
    parser = get_tool_parser(parser_name)
    plan = plan_tools(TOOLS, choice, parallel, parser=parser, special=compiler.special_token_id)
    grammar = compiler.compile(plan.grammar)
    rng = random.Random(f"{parser_name}{choice}{parallel}")
    counts = []
    for _ in range(40):
        _, raw = walker.walk(grammar, rng)
        result = parser.parse(raw.decode(), plan.tool_names)
        assert not result.content, raw
        assert result.tool_calls, raw
        for call in result.tool_calls:
            if plan.forced_name:
                assert call.name == plan.forced_name
            jsonschema.validate(json.loads(call.arguments), SCHEMA_OF[call.name])
        counts.append(len(result.tool_calls))
    if plan.parallel:
        assert max(counts) > 1, "parallel calls are possible"
    else:
        assert set(counts) == {1}


def test_auto_tools_with_a_json_response_format(compiler, walker):
    fmt = json_schema_spec({"type": "object", "properties": {"answer": {"type": "integer"}},
                            "required": ["answer"], "additionalProperties": False}, "response_format.json_schema.schema")
    parser = get_tool_parser("hermes")
    plan = plan_tools(TOOLS, "auto", None, parser=parser, response_spec=fmt)
    grammar = compiler.compile(plan.grammar)
    rng = random.Random(5)
    kinds = set()
    for _ in range(60):
        text = walker.walk(grammar, rng)[1].decode()
        result = parser.parse(text, plan.tool_names)
        if result.tool_calls:
            kinds.add("calls")
            assert not result.content
        else:
            kinds.add("answer")
            assert set(json.loads(text)) == {"answer"}
    assert kinds == {"calls", "answer"}


def test_masks_of_a_batch_match_single_fills(compiler, tk):
    from lmrs import _core

    grammar = compiler.compile(json_schema_spec(SCHEMAS["arrays"], "s"))
    matchers = [grammar.matcher() for _ in range(5)]
    prefix = tk.encode('{"tags":["a","b"')
    for i, m in enumerate(matchers):
        m.commit_tokens(prefix[: i * 2])
    words = compiler.vocab.mask_words
    batch = np.zeros((7, words), dtype=np.int32)
    errors = _core.fill_next_token_bitmasks(matchers, batch, [6, 0, 2, 3, 5], threads=2)
    assert errors == [None] * 5
    for m, row in zip(matchers, [6, 0, 2, 3, 5]):
        single = np.zeros((1, words), dtype=np.int32)
        m.fill_next_token_bitmask(single, 0)
        assert np.array_equal(single[0], batch[row])
    assert not batch[1].any() and not batch[4].any()
