"""Function tools on the Responses API, end to end: the real SmolLM2 model (float32, greedy) behind a
real server on loopback with the Hermes tool-call parser, driven by the real `openai` SDK.

`tool_choice: required` / a named function generate the call under the function's schema, returned as
`function_call` output items (streamed with their own event types); the tool's result goes back as a
`function_call_output` item, in a follow-up that continues the session (prefilling only the tool turn)
or in a fresh request that carries the whole conversation as items."""

import json

import jsonschema
import openai
import pytest
import requests
from server_utils import ServerProcess

ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "name": "add", "description": "Add two integers", "parameters": ADD, "strict": True},
         {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER,
          "strict": True}]
SCHEMAS = {"add": ADD, "get_weather": WEATHER}
ASK = "What is 2 plus 3? Use the add tool."


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--tool-call-parser", "hermes", "--dtype", "float32", "--kv-cache-memory", "128MiB",
                        "--model-name", "smol")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def calls_of(response):
    calls = [o for o in response.output if o.type == "function_call"]
    for c in calls:
        assert c.id.startswith("fc_") and c.call_id.startswith("call_") and c.status == "completed"
        jsonschema.validate(json.loads(c.arguments), SCHEMAS[c.name])
    return calls


def test_required_tool_choice_returns_a_valid_function_call(client):
    r = client.responses.create(model="smol", input=ASK, tools=TOOLS, tool_choice="required",
                                parallel_tool_calls=False, temperature=0, max_output_tokens=80)
    assert r.status == "completed", r
    calls = calls_of(r)
    assert len(calls) == 1 and not any(o.type == "message" for o in r.output)
    assert r.tool_choice == "required" and [t.name for t in r.tools] == ["add", "get_weather"]
    assert r.parallel_tool_calls is False


def test_named_function_and_stored_response(client):
    r = client.responses.create(model="smol", input="How warm is it in Oslo?", tools=TOOLS, temperature=0,
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80)
    [call] = calls_of(r)
    assert call.name == "get_weather"
    assert client.responses.retrieve(r.id).output[0].call_id == call.call_id


def test_tool_output_follow_up_continues_the_session(server, client):
    r1 = client.responses.create(model="smol", input=ASK, tools=TOOLS, tool_choice="required",
                                 parallel_tool_calls=False, temperature=0, max_output_tokens=80)
    [call] = calls_of(r1)
    before = server.stats()
    r2 = client.responses.create(model="smol", previous_response_id=r1.id, tools=TOOLS, temperature=0,
                                 max_output_tokens=12,
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "5"}])
    after = server.stats()
    assert r2.status in ("completed", "incomplete") and r2.output_text
    # the session held the call: only the tool turn (and the assistant prompt) was prefilled
    computed = after["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    assert r2.usage.input_tokens > r1.usage.input_tokens + r1.usage.output_tokens
    assert computed == r2.usage.input_tokens - r2.usage.input_tokens_details.cached_tokens
    assert 0 < computed < 20

    # the same conversation sent whole, as items, is the chat path's conversation with the call and its
    # result (the session instead holds the call's tokens as generated, which may tokenize differently)
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
             {"type": "function_call_output", "call_id": call.call_id, "output": "5"}]
    fresh = client.responses.create(model="smol", tools=TOOLS, temperature=0, max_output_tokens=12, store=False,
                                    input=items)
    chat_tools = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in TOOLS]
    chat = client.chat.completions.create(
        model="smol", tools=chat_tools, temperature=0, max_tokens=12,
        messages=[items[0], {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
                  {"role": "tool", "tool_call_id": call.call_id, "content": "5"}])
    assert fresh.output_text == chat.choices[0].message.content
    assert fresh.usage.input_tokens == chat.usage.prompt_tokens


def test_streamed_function_call_events_reassembled_by_the_sdk(client):
    plain = client.responses.create(model="smol", input=ASK, tools=TOOLS, tool_choice="required", store=False,
                                    parallel_tool_calls=False, temperature=0, max_output_tokens=80)
    with client.responses.stream(model="smol", input=ASK, tools=TOOLS, tool_choice="required",
                                 parallel_tool_calls=False, temperature=0, max_output_tokens=80) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = events[2].item
    assert added.type == "function_call" and added.name == "add" and added.arguments == ""
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = calls_of(final)
    assert pieces == call.arguments == calls_of(plain)[0].arguments
    assert call.call_id == added.call_id and events[-2].item.arguments == call.arguments


BAD = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]}, "tools[0].parameters.type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "strin"}}}}], "tool_choice": "required"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"parallel_tool_calls": "yes", "tools": TOOLS}, "parallel_tool_calls"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "5"}]}, "input"),
    ({"input": [{"type": "function_call", "name": "add", "arguments": "{}"}]}, "input.0.call_id"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input.0"),
    ({"input": [{"type": {}, "call_id": "0", "output": ""}]}, "input.0"),  # once a 500 (schemathesis)
    ({"input": [{"type": ["function_call"], "call_id": "0", "output": ""}]}, "input.0"),
]


@pytest.mark.parametrize("extra,field", BAD, ids=[b[1] for b in BAD])
def test_bad_tool_requests_answer_400_naming_the_field(server, extra, field):
    body = {"input": "hi", "max_output_tokens": 4, **extra}
    r = requests.post(server.url + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert field + ":" in r.json()["message"], r.json()["message"]


def test_a_call_cut_off_by_max_output_tokens_is_an_incomplete_item(client):
    """The token limit ends the reply inside the call's arguments: the response is incomplete and so is
    its function_call item (its arguments are not whole JSON), streamed or not."""
    kw = dict(model="smol", input=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
              temperature=0, max_output_tokens=36, store=False)  # the whole call takes 48
    plain = client.responses.create(**kw)
    with client.responses.stream(**kw) as stream:
        events = list(stream)
    # (the SDK's get_final_response() wants response.completed; an incomplete one ends response.incomplete)
    [streamed] = [e.response for e in events if e.type == "response.incomplete"]
    for r in (plain, streamed):
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r
        [call] = [o for o in r.output if o.type == "function_call"]
        assert call.status == "incomplete", call
        with pytest.raises(ValueError):
            json.loads(call.arguments)
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[-1].item.status == "incomplete"
    assert streamed.output[-1].arguments == plain.output[-1].arguments


def test_follow_ups_to_a_cut_off_call(server, client):
    """A call cut off by max_output_tokens is no call of the conversation: answering it is a 400 naming
    `input` (not a stored message the client never sent), and a plain follow-up continues."""
    r = client.responses.create(model="smol", input=ASK, tools=TOOLS, tool_choice="required",
                                parallel_tool_calls=False, temperature=0, max_output_tokens=36)
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.status == "incomplete"
    answer = requests.post(server.url + "/v1/responses", timeout=120, json={
        "model": "smol", "previous_response_id": r.id, "tools": TOOLS, "max_output_tokens": 4,
        "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "5"}]})
    assert answer.status_code == 400 and answer.json()["message"].startswith("input:"), answer.text
    plain = client.responses.create(model="smol", previous_response_id=r.id, tools=TOOLS, temperature=0,
                                    input="Never mind.", max_output_tokens=4)
    assert plain.status in ("completed", "incomplete") and plain.output
