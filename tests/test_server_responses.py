"""The Responses API on core sessions, /tokenize + /detokenize and logit_bias, over real HTTP with
the real model (float32, so greedy replies are reproducible) and the real `openai` SDK, under
--api-keys (response ids are scoped to the key like sessions).

A follow-up with `previous_response_id` continues the session holding the previous response's
KV cache: its prefill is only the new input (the core's counters and usage.cached_tokens say so),
and its replies equal a stateless chat-completions run of the same conversation (session ==
stateless). Branches (two follow-ups to one response) rebuild the conversation from the stored
items and are just as correct."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from openapi_spec_validator import validate

from server_utils import ServerProcess

KEY_A, KEY_B = "key-a", "key-b"
SHORT = dict(temperature=0, max_output_tokens=8)


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--dtype", "float32", "--kv-cache-memory", "128MiB", "--session-len", "1024",
                      "--max-sessions", "8", "--model-name", "smol", "--api-keys", KEY_A, KEY_B)
    yield s
    s.stop()


def sdk(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server):
    return sdk(server, KEY_A)


@pytest.fixture(scope="module")
def other(server):
    return sdk(server, KEY_B)


def stats(server):
    return server.stats(headers={"Authorization": f"Bearer {KEY_A}"})


def post(server, path, body, key=KEY_A):
    return requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def stateless(client, messages, max_tokens=8):
    r = client.chat.completions.create(model="smol", messages=messages, temperature=0, max_tokens=max_tokens)
    return r.choices[0].message.content


# ---- Responses ------------------------------------------------------------------------------
def test_three_turns_continue_the_session_and_equal_a_stateless_chat(server, client):
    r1 = client.responses.create(model="smol", input="What is 2+2?", **SHORT)
    assert r1.id.startswith("resp_") and r1.object == "response" and r1.status in ("completed", "incomplete")
    assert r1.output[0].type == "message" and r1.output[0].content[0].type == "output_text"
    assert r1.output_text and r1.usage.output_tokens > 0
    r2 = client.responses.create(model="smol", input="And 3+3?", previous_response_id=r1.id, **SHORT)
    before = stats(server)
    r3 = client.responses.create(model="smol", input="Name a color.", previous_response_id=r2.id, **SHORT)
    after = stats(server)

    # The third turn prefilled only its new input (plus the previous reply's last token, which
    # was sampled but never fed through the model).
    new_tokens = r3.usage.input_tokens - (r2.usage.input_tokens + r2.usage.output_tokens)
    computed = after["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    cached = r3.usage.input_tokens_details.cached_tokens
    assert 0 < new_tokens < 20
    assert computed == r3.usage.input_tokens - cached
    assert computed <= new_tokens + 1
    assert after["session_hit_tokens"] - before["session_hit_tokens"] == cached
    assert cached >= r2.usage.input_tokens

    # Session == stateless: the same conversation resent whole gives the same replies.
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": r1.output_text},
            {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": r2.output_text},
            {"role": "user", "content": "Name a color."}]
    assert stateless(client, conv) == r3.output_text
    assert stateless(client, conv[:3]) == r2.output_text

    got = client.responses.retrieve(r3.id)
    assert got.id == r3.id and got.output_text == r3.output_text and got.previous_response_id == r2.id


def test_branches_rebuild_the_conversation(server, client):
    r1 = client.responses.create(model="smol", input="Tell me a fruit.", **SHORT)
    # Two follow-ups to r1 at once: one continues r1's session, the other starts a new session
    # from the stored items (whichever claims the session first).
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(client.responses.create, model="smol", input="Another one?", previous_response_id=r1.id,
                         **SHORT)
        fb = pool.submit(client.responses.create, model="smol", input="What color is it?",
                         previous_response_id=r1.id, **SHORT)
        a, b = fa.result(), fb.result()
    # and `a`, no longer its session's only future, still continues correctly
    a2 = client.responses.create(model="smol", input="Thanks!", previous_response_id=a.id, **SHORT)
    base = [{"role": "user", "content": "Tell me a fruit."}, {"role": "assistant", "content": r1.output_text}]
    assert stateless(client, base + [{"role": "user", "content": "What color is it?"}]) == b.output_text
    assert b.usage.input_tokens_details.cached_tokens > 0  # the shared prefix came from the prefix cache
    conv_a = base + [{"role": "user", "content": "Another one?"}, {"role": "assistant", "content": a.output_text},
                     {"role": "user", "content": "Thanks!"}]
    assert stateless(client, conv_a) == a2.output_text
    # a second follow-up to `a` (whose session moved on to a2) is a branch too
    a2b = client.responses.create(model="smol", input="Thanks!", previous_response_id=a.id, **SHORT)
    assert a2b.output_text == a2.output_text


def test_a_follow_up_whose_session_was_dropped_rebuilds_it(server, client):
    r1 = client.responses.create(model="smol", input="Pick a number.", **SHORT)
    dropped = stats(server)["sessions_dropped"]
    for sid in range(900, 909):  # more new sessions than --max-sessions: r1's idle one is dropped
        r = post(server, "/generate", {"prompt": "Hi", "session_id": sid, "request_output_len": 0})
        assert r.status_code == 200, r.text
    before = stats(server)
    assert before["sessions_dropped"] > dropped
    r2 = client.responses.create(model="smol", input="Double it.", previous_response_id=r1.id, **SHORT)
    # no session pin was there to reuse: the whole conversation was rebuilt (from the prefix cache)
    assert stats(server)["session_hit_tokens"] == before["session_hit_tokens"]
    assert r2.output_text == stateless(client, [{"role": "user", "content": "Pick a number."},
                                                {"role": "assistant", "content": r1.output_text},
                                                {"role": "user", "content": "Double it."}])
    for sid in range(900, 909):
        post(server, "/generate", {"prompt": "", "session_id": sid, "sequence_start": False, "sequence_end": True,
                                   "request_output_len": 0})


def test_instructions_are_a_system_message_not_carried_over(server, client):
    r = client.responses.create(model="smol", input="Hi", instructions="Answer in one word.", **SHORT)
    tok = post(server, "/tokenize", {"messages": [{"role": "system", "content": "Answer in one word."},
                                                  {"role": "user", "content": "Hi"}]}).json()
    assert r.usage.input_tokens == tok["count"]
    assert r.instructions == "Answer in one word."
    assert r.output_text == stateless(client, [{"role": "system", "content": "Answer in one word."},
                                               {"role": "user", "content": "Hi"}])
    # A follow-up without instructions: the conversation without the old system message.
    f = client.responses.create(model="smol", input="Why?", previous_response_id=r.id, **SHORT)
    assert f.output_text == stateless(client, [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": r.output_text},
                                               {"role": "user", "content": "Why?"}])


def test_input_items_and_developer_role(server, client):
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]
    r = client.responses.create(model="smol", input=items, **SHORT)
    assert r.output_text == stateless(client, [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hello"}])


def test_store_false_keeps_nothing(server, client):
    sessions = stats(server)["sessions"]
    r = client.responses.create(model="smol", input="Hi there", store=False, **SHORT)
    assert r.output_text and r.store is False
    assert stats(server)["sessions"] == sessions
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id"):
        client.responses.create(model="smol", input="more", previous_response_id=r.id, **SHORT)


def test_a_store_false_follow_up_leaves_the_session_to_its_response(server, client):
    r1 = client.responses.create(model="smol", input="Count to three.", **SHORT)
    side = client.responses.create(model="smol", input="Why?", previous_response_id=r1.id, store=False, **SHORT)
    before = stats(server)
    r2 = client.responses.create(model="smol", input="Why?", previous_response_id=r1.id, **SHORT)
    after = stats(server)
    assert r2.output_text == side.output_text
    assert after["session_hit_tokens"] > before["session_hit_tokens"]  # r1's session was still there


def test_delete_ends_the_session(server, client):
    r = client.responses.create(model="smol", input="Say hi", **SHORT)
    sessions = stats(server)["sessions"]
    deleted = client.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    assert stats(server)["sessions"] == sessions - 1
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_another_key_gets_404(server, client, other):
    r = client.responses.create(model="smol", input="Secret", **SHORT)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="smol", input="next", previous_response_id=r.id, **SHORT)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    assert client.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        client.responses.retrieve("resp_nope")


def test_streaming_events_parsed_by_the_sdk(server, client):
    plain = client.responses.create(model="smol", input="Name a planet.", store=False, **SHORT)
    events = list(client.responses.create(model="smol", input="Name a planet.", stream=True, **SHORT))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text
    final = events[-1].response
    assert final.output_text == plain.output_text and final.usage.output_tokens == plain.usage.output_tokens
    # the SDK's stream helper accumulates the response (its get_final_response needs
    # response.completed: a reply that ends before max_output_tokens), and it is stored
    with client.responses.stream(model="smol", input="Reply with just the word OK.", temperature=0,
                                 max_output_tokens=40) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        got = stream.get_final_response()
    assert got.status == "completed" and "".join(texts) == got.output_text
    assert client.responses.retrieve(got.id).output_text == got.output_text


def test_a_stream_left_early_keeps_no_response_and_no_session(server, client):
    r1 = client.responses.create(model="smol", input="Tell me a story.", **SHORT)
    sessions = stats(server)["sessions"]
    body = {"input": "Go on, at length.", "previous_response_id": r1.id, "stream": True, "temperature": 0,
            "max_output_tokens": 200}
    with requests.post(server.url + "/v1/responses", json=body, stream=True, timeout=300,
                       headers={"Authorization": f"Bearer {KEY_A}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if b"response.output_text.delta" in line:
                break  # leave after the first piece of text
    # the aborted turn's session matched no response any more: it is ended
    deadline = time.time() + 60
    while stats(server)["sessions"] != sessions - 1 and time.time() < deadline:
        time.sleep(0.2)
    assert stats(server)["sessions"] == sessions - 1
    server.wait_idle(headers={"Authorization": f"Bearer {KEY_A}"})
    # r1 is still there, and a follow-up rebuilds its conversation
    again = client.responses.create(model="smol", input="Why?", previous_response_id=r1.id, **SHORT)
    assert again.output_text == stateless(client, [{"role": "user", "content": "Tell me a story."},
                                                   {"role": "assistant", "content": r1.output_text},
                                                   {"role": "user", "content": "Why?"}])


def test_text_format_json_schema_constrains_the_reply(server, client):
    """`text.format` goes through the chat path's grammar: the reply parses and validates."""
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    r = client.responses.create(model="smol", input="Describe the weather in Paris as JSON.", max_output_tokens=60,
                                temperature=0, text={"format": {"type": "json_schema", "name": "weather",
                                                                "schema": schema, "strict": True}})
    assert r.status == "completed", r
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize("body, status, field", [
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
     "input.0.content.0.type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}}, 400,
     "text.format"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, 400, "tools"),  # no parser
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": []}, 400, "input"),
    ({"input": "hi", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
    ({"input": "hi", "model": "other"}, 404, "model"),
])
def test_bad_responses_requests(server, body, status, field):
    r = post(server, "/v1/responses", body)
    assert r.status_code == status, r.text
    assert field in r.json()["message"]


def test_responses_need_a_key(server):
    r = requests.post(server.url + "/v1/responses", json={"input": "hi"}, timeout=30)
    assert r.status_code == 401


# ---- /tokenize and /detokenize --------------------------------------------------------------
def test_tokenize_round_trips(server, client):
    text = "Hello world, <|im_start|>tokens!"
    r = post(server, "/tokenize", {"prompt": text, "model": "smol"}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] > 0
    assert 1 in r["tokens"]  # special-token text maps to its id
    assert post(server, "/detokenize", {"tokens": r["tokens"]}).json() == {"prompt": text}

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    m = post(server, "/tokenize", {"messages": msgs}).json()
    chat = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=1)
    assert m["count"] == chat.usage.prompt_tokens  # the same tokens a chat request is given
    rendered = post(server, "/detokenize", {"tokens": m["tokens"]}).json()["prompt"]
    assert rendered.endswith("<|im_start|>assistant\n") and "capital of France" in rendered
    no_gen = post(server, "/tokenize", {"messages": msgs, "add_generation_prompt": False}).json()
    assert m["tokens"][:no_gen["count"]] == no_gen["tokens"] and no_gen["count"] < m["count"]


@pytest.mark.parametrize("path, body, field", [
    ("/detokenize", {"tokens": [1, 10 ** 9]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one of"),
    ("/tokenize", {}, "exactly one of"),
    ("/tokenize", {"prompt": 5}, "prompt"),
])
def test_bad_tokenize_requests(server, path, body, field):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert field in r.json()["message"]


def test_tokenize_needs_a_key(server):
    for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
        assert requests.post(server.url + path, json=body, timeout=30).status_code == 401


# ---- logit_bias -----------------------------------------------------------------------------
def token_id(server, text):
    ids = post(server, "/tokenize", {"prompt": text}).json()["tokens"]
    assert len(ids) == 1, ids
    return ids[0]


def test_logit_bias_forces_and_bans_tokens(server, client):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    banana = token_id(server, " banana")
    forced = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=3,
                                            logit_bias={str(banana): 100}, logprobs=True)
    assert forced.choices[0].message.content == " banana" * 3
    # the returned logprobs are the model's own, not the biased distribution's
    assert all(t.logprob < -1.0 for t in forced.choices[0].logprobs.content)

    plain = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=1, logprobs=True)
    first = post(server, "/tokenize", {"prompt": plain.choices[0].message.content}).json()["tokens"][0]
    banned = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=1,
                                            logit_bias={str(first): -100})
    assert banned.choices[0].message.content != plain.choices[0].message.content

    c = client.completions.create(model="smol", prompt="The capital of France is", temperature=0, max_tokens=2,
                                  logit_bias={str(banana): 100})
    assert c.choices[0].text == " banana" * 2


@pytest.mark.parametrize("bias, field", [
    ({"abc": 1}, "logit_bias"), ({"5": 101}, "logit_bias"), ({"5": -100.5}, "logit_bias"),
    ({"999999": 1}, "logit_bias"), ({"5": "x"}, "logit_bias"), ({"-3": 1}, "logit_bias"),
])
def test_bad_logit_bias(server, bias, field):
    for path, body in (("/v1/chat/completions", {"messages": "hi"}), ("/v1/completions", {"prompt": "hi"})):
        r = post(server, path, {**body, "max_tokens": 1, "logit_bias": bias})
        assert r.status_code == 400, r.text
        assert field in r.json()["message"]


def test_openapi_documents_the_new_routes(server):
    doc = requests.get(server.url + "/openapi.json", timeout=30).json()
    validate(doc)
    for path in ("/v1/responses", "/v1/responses/{response_id}", "/tokenize", "/detokenize"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/v1/responses/{response_id}"]) == {"get", "delete"}
    assert "logit_bias" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "previous_response_id" in doc["components"]["schemas"]["ResponsesRequest"]["properties"]
