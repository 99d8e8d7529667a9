"""Tool-call parsers (Hermes, Llama 3 JSON, Mistral): one-shot results on crafted model outputs, streaming
that gives the same result however the text is split, deltas that the openai SDK's own stream
accumulator reassembles into the same calls, and the validation of tools / tool_choice."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from lmrs.structured import FieldError
from lmrs.tools import detect_tool_parser, get_tool_parser, plan_tools

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
TRICKY_ARGS = ('{"q": "a \\"quoted\\" \\\\ path\\n", "xs": [1, -2.5e-3, {"y": null}, true], '
               '"\\u00fc": "\u65e5\u672c", "empty": {}}')

# (parser, model output, expected content, expected calls as (name, arguments text))
CASES = [
    ("hermes", "Hello there.\n", "Hello there.\n", []),
    ("hermes", f"Let me look.\n<tool_call>\n{WEATHER}\n</tool_call>", "Let me look.",
     [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("hermes", f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
               f'{{"name": "search", "arguments": {TRICKY_ARGS}}}\n</tool_call>\nDone.', "Done.",
     [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("search", TRICKY_ARGS)]),
    ("hermes", f"Checking.\n<tool_call>{WEATHER}</tool_call>\nBack with more.", "Checking.\nBack with more.",
     [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("hermes", '<tool_call>\n{"arguments": {"a": [1, 2]}, "name": "late_name"}\n</tool_call>', None,
     [("late_name", '{"a": [1, 2]}')]),
    ("hermes", '<tool_call>{"name": "no_args"}</tool_call>', None, [("no_args", "{}")]),
    ("hermes", '<tool_call>{"name": "stringy", "arguments": "{\\"a\\": 1}"}</tool_call>', None,
     [("stringy", '{"a": 1}')]),
    ("hermes", f"<tool_call>\n{WEATHER}", None, [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("hermes", "<tool_call>not json</tool_call> ok", "<tool_call>not json</tool_call> ok", []),
    ("hermes", '<tool_call>{"name": 42}</tool_call>', '<tool_call>{"name": 42}</tool_call>', []),
    ("hermes", '<tool_call>{"na', '<tool_call>{"na', []),
    ("hermes", '<tool_call>{"name": "cut", "arguments": {"a": 1', None, [("cut", '{"a": 1')]),
    ("hermes", "a <toolbox> and <tool_call", "a <toolbox> and <tool_call", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [("get_weather", '{"city": "Paris"}')]),
    ("llama3_json", '<|python_tag|>{"name": "search", "parameters": ' + TRICKY_ARGS + "}", None,
     [("search", TRICKY_ARGS)]),
    ("llama3_json", '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {}}', None,
     [("a", '{"x": 1}'), ("b", "{}")]),
    ("llama3_json", " The answer is 4.", " The answer is 4.", []),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3_json", '{"name": "a", "parameters": {}} and then text', "and then text", [("a", "{}")]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', None,
     [("get_weather", '{"city": "Paris"}')]),
    ("mistral", 'Sure. [TOOL_CALLS] [{"name": "a", "arguments": {"x": [1]}}, {"name": "b", "arguments": '
                + TRICKY_ARGS + "}]", "Sure.", [("a", '{"x": [1]}'), ("b", TRICKY_ARGS)]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]b[ARGS]{}', None,
     [("get_weather", '{"city": "Paris"}'), ("b", "{}")]),
    ("mistral", "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", []),
    ("mistral", "no calls [TOOL", "no calls [TOOL", []),
]

CASE_IDS = [f"{p}-{i}" for i, (p, *_rest) in enumerate(CASES)]


def _ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _stream(parser_name: str, pieces, tool_names=None):
    s = get_tool_parser(parser_name).stream(tool_names, _ids())
    deltas = [s.feed(p) for p in pieces] + [s.finish()]
    return deltas


def _reassemble(deltas):
    """Join deltas by hand, checking the shape of every tool_calls entry."""
    content, calls = "", {}
    for d in deltas:
        content += d.content
        for tc in d.tool_calls:
            i = tc["index"]
            if i not in calls:
                assert i == len(calls), "call indices go up by one"
                assert tc["type"] == "function" and tc["id"] and tc["function"]["name"]
                assert tc["function"]["arguments"] == ""
                calls[i] = [tc["function"]["name"], ""]
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                assert tc["function"]["arguments"], "no empty argument pieces"
                calls[i][1] += tc["function"]["arguments"]
    return content, [tuple(c) for c in calls.values()]


def _oneshot(parser_name, text, tool_names=None):
    r = get_tool_parser(parser_name).parse(text, tool_names)
    return r.content, [(c.name, c.arguments) for c in r.tool_calls]


@pytest.mark.parametrize("parser_name,text,content,calls", CASES, ids=CASE_IDS)
def test_one_shot(parser_name, text, content, calls):
    got_content, got_calls = _oneshot(parser_name, text)
    assert got_content == content
    assert got_calls == calls
    for _, args in got_calls:
        if args.endswith("}"):
            json.loads(args)  # complete arguments are valid JSON


@pytest.mark.parametrize("parser_name,text,content,calls", CASES, ids=CASE_IDS)
def test_streaming_matches_one_shot_at_every_split(parser_name, text, content, calls):
    expected = _oneshot(parser_name, text)
    want_content = expected[0] or ""
    for cut in range(len(text) + 1):
        got = _reassemble(_stream(parser_name, [text[:cut], text[cut:]]))
        assert got == (want_content, expected[1]), f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"
    assert _reassemble(_stream(parser_name, list(text))) == (want_content, expected[1])
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(6, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert _reassemble(_stream(parser_name, pieces)) == (want_content, expected[1])


def test_three_way_splits_of_a_two_call_output():
    text = CASES[2][1]
    expected = _oneshot("hermes", text)
    step = 7
    for a in range(0, len(text) + 1, step):
        for b in range(a, len(text) + 1, step):
            got = _reassemble(_stream("hermes", [text[:a], text[a:b], text[b:]]))
            assert got == (expected[0], expected[1])


def test_names_are_sent_before_arguments_and_arguments_stream():
    text = f"<tool_call>\n{WEATHER}\n</tool_call>"
    deltas = _stream("hermes", list(text))
    pieces = [tc for d in deltas for tc in d.tool_calls]
    assert pieces[0]["function"]["name"] == "get_weather"
    assert len(pieces) > 10, "arguments arrive in pieces as the model writes them"


def test_markers_are_not_leaked_while_held():
    s = get_tool_parser("hermes").stream()
    assert s.feed("Hi <tool").content == "Hi"
    d = s.feed("_call>{\"name\": \"f\"")
    assert d.content == "" and d.tool_calls[0]["function"]["name"] == "f"


def _sdk_final(deltas, finish_reason):
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state = ChatCompletionStreamState()
    chunks = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    for d in deltas:
        if not d:
            continue
        delta = {}
        if d.content:
            delta["content"] = d.content
        if d.tool_calls:
            delta["tool_calls"] = d.tool_calls
        chunks.append({"index": 0, "delta": delta, "finish_reason": None})
    chunks.append({"index": 0, "delta": {}, "finish_reason": finish_reason})
    for choice in chunks:
        chunk = ChatCompletionChunk.model_validate({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [choice]})
        state.handle_chunk(chunk)
    return state.get_final_completion().choices[0].message


@pytest.mark.parametrize("parser_name,text,content,calls", CASES, ids=CASE_IDS)
def test_openai_sdk_reassembles_the_stream(parser_name, text, content, calls):
    expected = get_tool_parser(parser_name).parse(text)
    rng = random.Random(7)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        pieces.append(text[i:i + n])
        i += n
    msg = _sdk_final(_stream(parser_name, pieces), "tool_calls" if expected.tool_calls else "stop")
    assert (msg.content or None) == (expected.content or None)
    got = [(tc.function.name, tc.function.arguments) for tc in (msg.tool_calls or [])]
    assert got == [(c.name, c.arguments) for c in expected.tool_calls]
    assert all(tc.id.startswith("call_") for tc in (msg.tool_calls or []))


def test_llama3_json_object_answers_are_content_unless_a_known_tool():
    text = '{"name": "Bob", "parameters": {"age": 3}}'
    assert _oneshot("llama3_json", text, tool_names=["get_weather"]) == (text, [])
    assert _oneshot("llama3_json", text, tool_names=["Bob"])[1] == [("Bob", '{"age": 3}')]
    tagged = "<|python_tag|>" + text
    assert _oneshot("llama3_json", tagged, tool_names=["get_weather"])[1] == [("Bob", '{"age": 3}')]


def test_call_ids_are_unique_openai_style():
    r = get_tool_parser("hermes").parse(CASES[2][1])
    ids = [c.id for c in r.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) == 29 for i in ids)
    assert r.tool_calls[0].to_openai()["function"]["name"] == "get_weather"


def test_parser_choice_by_name_and_template():
    assert get_tool_parser("mistral").name == "mistral"
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("nope")
    qwen = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n{\"name\": ...}\n</tool_call>"
    assert detect_tool_parser(qwen).name == "hermes"
    assert detect_tool_parser("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}").name == "mistral"
    assert detect_tool_parser("{{- '<|python_tag|>' }}{{ 'ipython' }}").name == "llama3_json"
    assert detect_tool_parser("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert detect_tool_parser(None) is None


# ------------------------------------------------------------------------------ tools / tool_choice
def _tool(name, params=None, flat=False):
    fn = {"name": name, "description": f"{name} tool",
          "parameters": params or {"type": "object", "properties": {"x": {"type": "integer"}}}}
    return {"type": "function", **fn} if flat else {"type": "function", "function": fn}


HERMES = get_tool_parser("hermes")


@pytest.mark.parametrize("tools,choice,parallel,field", [
    ([_tool("a")], {"type": "function", "function": {"name": "zzz"}}, None, "tool_choice.function.name"),
    ([_tool("a", flat=True)], {"type": "function", "name": "zzz"}, None, "tool_choice.name"),
    ([_tool("a")], "sometimes", None, "tool_choice"),
    ([_tool("a")], {"type": "web_search"}, None, "tool_choice.type"),
    (None, "required", None, "tool_choice"),
    ([], {"type": "function", "function": {"name": "a"}}, None, "tool_choice"),
    ([_tool("a"), _tool("a")], "auto", None, "tools[1].function.name"),
    ([_tool("bad name!")], "auto", None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "a", "parameters": "{}"}}], "auto", None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "a", "parameters": {"type": "array"}}}], "auto", None,
     "tools[0].function.parameters.type"),
    ([{"type": "code_interpreter"}], "auto", None, "tools[0].type"),
    ("not a list", "auto", None, "tools"),
    ([_tool("a")], "auto", "yes", "parallel_tool_calls"),
])
def test_tool_validation_errors_name_the_field(tools, choice, parallel, field):
    with pytest.raises(FieldError) as e:
        plan_tools(tools, choice, parallel, parser=HERMES)
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_tool_plans():
    tools = [_tool("a"), _tool("b", flat=True)]
    auto = plan_tools(tools, None, None, parser=HERMES)
    assert (auto.mode, auto.parse_calls, auto.grammar, auto.parallel) == ("auto", True, None, True)
    assert auto.tool_names == ["a", "b"] and auto.tools[1]["function"]["description"] == "b tool"
    none = plan_tools(tools, "none", None, parser=None)
    assert (none.mode, none.parse_calls, none.grammar) == ("none", False, None)
    assert plan_tools(None, None, None, parser=None).mode == "none"
    req = plan_tools(tools, "required", False, parser=HERMES)
    assert req.grammar.kind == "lark" and '"const":"a"' in req.grammar.source.replace(" ", "")
    assert "call)*" not in req.grammar.source, "parallel_tool_calls=false allows one call"
    named = plan_tools(tools, {"type": "function", "function": {"name": "b"}}, None, parser=HERMES)
    assert named.forced_name == "b" and not named.parallel
    assert '"const": "b"' in named.grammar.source and '"const": "a"' not in named.grammar.source
    with pytest.raises(FieldError, match="--tool-call-parser") as e:
        plan_tools(tools, "auto", None, parser=None)
    assert e.value.field == "tools"
