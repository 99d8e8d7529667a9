"""The chat translation's handling of tool-call history (no model needed)."""

import pytest

from lmrs.server.chat_request import _history
from lmrs.structured import FieldError
from lmrs.tools import get_tool_parser

CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
HISTORY = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": "call_1", "content": "5"}]


def test_arguments_become_objects_for_templates_that_render_tool_calls():
    out = _history(HISTORY, "{% for m in messages %}{{ m.tool_calls }}{% endfor %}", get_tool_parser("hermes"))
    assert out[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert out[1]["content"] is None and out[0] == HISTORY[0] and out[2] == HISTORY[2]


@pytest.mark.parametrize("parser,expect", [("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'),
                                           ("mistral", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 2, "b": 3}}]'),
                                           ("llama3_json", '{"name": "add", "arguments": {"a": 2, "b": 3}}')])
def test_calls_written_into_content_where_the_template_has_no_tool_calls(parser, expect):
    out = _history(HISTORY, "{{ messages }}", get_tool_parser(parser))
    assert out[1]["content"] == expect


@pytest.mark.parametrize("call,field", [
    ({"function": {"arguments": "{}"}}, "messages[1].tool_calls[0].function.name"),
    ({"function": {"name": "add", "arguments": "{oops"}}, "messages[1].tool_calls[0].function.arguments"),
    ("nonsense", "messages[1].tool_calls[0].function.name"),
])
def test_bad_history_names_the_field(call, field):
    with pytest.raises(FieldError) as e:
        _history([HISTORY[0], {"role": "assistant", "content": None, "tool_calls": [call]}], "", None)
    assert e.value.field == field


def test_only_assistants_make_calls():
    with pytest.raises(FieldError, match=r"messages\[0\].tool_calls"):
        _history([{"role": "user", "content": "x", "tool_calls": [CALL]}], "", None)
