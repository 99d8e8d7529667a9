"""The grammar compiler: errors naming the field, one compile per spec under concurrency, the LRU bound,
the timeout, async use, and compile work that does not hold the GIL."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from grammar_walk import smollm2_tokenizer
from lmrs import _core
from lmrs.structured import (GrammarCompiler, GrammarError, GrammarTimeoutError, spec_from_request,
                             spec_from_structured_outputs)
from lmrs.structured.spec import json_schema_spec, regex_spec
from lmrs.tools import get_tool_parser, plan_tools


@pytest.fixture(scope="module")
def tk():
    return smollm2_tokenizer()


@pytest.fixture()
def compiler(tk):
    c = GrammarCompiler.for_tokenizer(tk, cache_size=8)
    yield c
    c.close()


def many_tools(n: int) -> list[dict]:
    props = {f"field_{j}": {"type": ["string", "integer", "boolean"][j % 3]} for j in range(6)}
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"tool number {i}",
        "parameters": {"type": "object", "properties": {**props, f"only_{i}": {"enum": ["x", "y"]}},
                       "required": ["field_0", f"only_{i}"]}}} for i in range(n)]


@pytest.mark.parametrize("body,field,words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema", "invalid JSON schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}},
     "response_format.json_schema.schema", "invalid JSON schema"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex", "invalid regular expression"),
    ({"structured_outputs": {"regex": "(?<=a)b"}}, "structured_outputs.regex", "invalid regular expression"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs.grammar", "invalid grammar"),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}},
     "guided_json", "invalid JSON schema"),
])
def test_invalid_constraints_name_the_field(body, field, words, compiler):
    spec = spec_from_request(body)
    with pytest.raises(GrammarError) as e:
        compiler.compile(spec)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: {words}")
    assert len(str(e.value)) < 700, "the message is short enough for a client"
    assert compiler.stats()["failures"] == 1
    with pytest.raises(GrammarError):
        compiler.compile(spec)
    assert compiler.stats()["failures"] == 1, "a bad grammar is remembered, not recompiled"


def test_concurrent_requests_compile_once(compiler):
    schema = {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(10)}}
    spec = json_schema_spec(schema, "response_format.json_schema.schema")
    barrier = threading.Barrier(8)
    results = []

    def worker():
        barrier.wait()
        results.append(compiler.compile(spec))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    st = compiler.stats()
    assert (st["misses"], st["hits"]) == (1, 7)


def test_cache_is_a_bounded_lru(compiler):
    specs = [regex_spec(f"a{i}b", "r") for i in range(12)]
    first = compiler.compile(specs[0])
    for s in specs[1:]:
        compiler.compile(s)
    assert compiler.stats()["cached"] == 8
    assert compiler.compile(specs[-1]) is compiler.compile(specs[-1])
    assert compiler.compile(specs[0]) is not first, "the oldest entry was evicted"


def test_timeout_answers_a_field_error_and_the_compile_finishes_later(compiler):
    plan = plan_tools(many_tools(128), "required", None, parser=get_tool_parser("hermes"))
    with pytest.raises(GrammarTimeoutError) as e:
        compiler.compile(plan.grammar, timeout_s=1e-4)
    assert e.value.field == "tools"
    assert "grammar compilation took longer than 0.0001 s" in str(e.value)
    grammar = compiler.compile(plan.grammar, timeout_s=120)
    assert grammar.compile_seconds > 1e-4
    assert compiler.stats()["timeouts"] == 1


def test_async_compile_and_timeout(compiler):
    async def main():
        spec = spec_from_structured_outputs({"choice": ["a", "b"]})
        g1, g2 = await asyncio.gather(compiler.compile_async(spec), compiler.compile_async(spec))
        assert g1 is g2
        big = plan_tools(many_tools(64), "required", None, parser=get_tool_parser("mistral")).grammar
        with pytest.raises(GrammarTimeoutError):
            await compiler.compile_async(big, timeout_s=1e-4)

    asyncio.run(main())


def test_a_128_tool_compile_does_not_hold_the_gil(compiler):
    """While the largest grammar compiles, Python threads keep running (the event loop, the engine)."""
    plan = plan_tools(many_tools(128), "required", None, parser=get_tool_parser("hermes"))
    fut = compiler.submit(plan.grammar)
    ticks, longest = 0, 0.0
    last = time.perf_counter()
    while not fut.done():
        time.sleep(0.001)
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
        ticks += 1
    grammar = fut.result()
    assert grammar.kind == "lark"
    assert ticks > 0 and longest < 0.25, f"the GIL was held for {longest:.3f} s"


def test_vocabulary_errors():
    with pytest.raises(_core.GrammarError, match="EOS"):
        _core.GrammarVocab([b"a", b"b"], [], [], 2)
    with pytest.raises(_core.GrammarError, match="outside"):
        _core.GrammarVocab([b"a", b"b"], [5], [0], 8)
    with pytest.raises(_core.GrammarError):
        _core.Grammar.compile(_core.GrammarVocab([b"a", b"b"], [], [1], 2), "yaml", "a")
