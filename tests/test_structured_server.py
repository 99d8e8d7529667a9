"""Structured output and tool calls end to end: the real SmolLM2 model behind a real server on loopback,
driven by the real `openai` SDK (and plain HTTP for /generate and the error cases)."""

import json
import re

import jsonschema
import openai
import pydantic
import pytest
import requests
from server_utils import ServerProcess

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--tool-call-parser", "hermes", "--dtype", "float32", "--kv-cache-memory", "128MiB")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int


def test_sdk_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                      response_format=Person, max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person) and choice.message.parsed.name


def test_json_schema_with_n2_and_logprobs(client):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                               "count": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["colour", "count"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Pick a colour and a count."}], n=2, temperature=1.0,
        seed=11, max_tokens=40, logprobs=True, top_logprobs=2,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}})
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), schema)
        tokens = c.logprobs.content
        assert "".join(t.token for t in tokens) == c.message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)


def test_structured_outputs_regex_and_choice(client):
    r = client.completions.create(model=MODEL, prompt="The year the war ended:", max_tokens=12, temperature=0.8,
                                  seed=3, extra_body={"structured_outputs": {"regex": r" (19|20)[0-9]{2}\."}})
    assert re.fullmatch(r" (19|20)[0-9]{2}\.", r.choices[0].text), r.choices[0].text
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], stream=True, max_tokens=8,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) in ("yes", "no", "maybe")
    assert chunks[-1].choices[0].finish_reason == "stop"


def check_call(call):
    assert call.id.startswith("call_") and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_calls_streamed_and_reassembled_by_the_sdk(client, seed=2):
    with client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS,
            tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=80) as stream:
        saw_delta = False
        for event in stream:
            saw_delta |= event.type == "tool_calls.function.arguments.delta"
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert saw_delta and choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and not choice.message.content
    for call in choice.message.tool_calls:
        check_call(call)


def test_named_tool_choice(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=TOOLS, max_tokens=72,
        tool_choice={"type": "function", "function": {"name": "add"}}, parallel_tool_calls=False, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [c.function.name for c in choice.message.tool_calls] == ["add"]
    check_call(choice.message.tool_calls[0])


def test_tool_history_is_rendered(client, server):
    history = [{"role": "user", "content": "What is 2 plus 3?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=4, temperature=0)
    shorter = client.chat.completions.create(model=MODEL, messages=history[:1], tools=TOOLS, max_tokens=1)
    # the call and its result reach the model: the template renders them into the prompt
    assert r.usage.prompt_tokens > shorter.usage.prompt_tokens + 15
    bad = [*history[:1], {"role": "assistant", "content": None,
                          "tool_calls": [{"id": "c", "type": "function", "function": {"name": "add", "arguments": "{"}}]}]
    resp = requests.post(server.url + "/v1/chat/completions", json={"messages": bad, "max_tokens": 1}, timeout=60)
    assert resp.status_code == 400 and resp.json()["message"].startswith("messages[1].tool_calls[0].function.arguments")


BAD = [
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}}},
     "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("/v1/chat/completions", {"structured_outputs": {"regex": "(["}}, "structured_outputs.regex"),
    ("/v1/chat/completions", {"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ("/v1/chat/completions", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ("/v1/completions", {"structured_outputs": {"grammar": "start: ("}}, "structured_outputs.grammar"),
    ("/generate", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
]


@pytest.mark.parametrize("route,extra,field", BAD, ids=[b[2] + "@" + b[0] for b in BAD])
def test_bad_constraints_answer_400_naming_the_field(server, route, extra, field):
    body = {"/generate": {"prompt": "hi", "request_output_len": 4}, "/v1/completions": {"prompt": "hi"}}.get(
        route, {"messages": [{"role": "user", "content": "hi"}]})
    r = requests.post(server.url + route, json={**body, **extra, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(field + ":"), r.json()["message"]


def test_sdk_raises_bad_request_for_an_unknown_tool(client):
    with pytest.raises(openai.BadRequestError, match="tool_choice.function.name"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_constrained_turn_in_a_generate_session(server):
    def turn(**kw):
        r = requests.post(server.url + "/generate", json={"session_id": 77, "request_output_len": 6,
                                                          "temperature": 0.0, **kw}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    turn(prompt="Hello, my name is Ann.", sequence_start=True)
    second = turn(prompt="Answer yes or no: is my name Ann?", sequence_start=False,
                  structured_outputs={"choice": ["yes", "no"]})
    assert second["text"] in ("yes", "no") and second["finish_reason"] == "stop"
    third = turn(prompt="Say it as JSON.", sequence_start=False, response_format={"type": "json_object"},
                 request_output_len=24, sequence_end=True)
    assert third["finish_reason"] in ("stop", "length")
    assert third["text"].lstrip().startswith("{")
    if third["finish_reason"] == "stop":
        assert isinstance(json.loads(third["text"]), dict)
