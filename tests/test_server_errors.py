"""Malformed requests across the routes: each gets the right 4xx and a JSON error whose message
names the problem; the server keeps serving afterwards. Also /openapi.json validity, the offline
Swagger UI, API keys and per-key sessions, and the terminal client."""

import io
import json
import os
import subprocess

import pytest
import requests
from openapi_spec_validator import validate

from server_utils import ServerProcess

LONG = "word " * 5000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--max-model-len", "512", "--max-body-bytes", "100000")
    yield s
    s.stop()


CASES = [
    # (method, path, body (dict/str/bytes/None), status, words expected in the message)
    ("post", "/generate", "{not json", 400, ["not valid JSON"]),
    ("post", "/generate", "[1, 2]", 400, ["JSON object"]),
    ("post", "/generate", "", 400, ["empty"]),
    ("post", "/generate", {}, 400, ["prompt", "Field required"]),
    ("post", "/generate", {"prompt": 5}, 400, ["prompt"]),
    ("post", "/generate", {"prompt": "hi", "temperature": -1}, 400, ["temperature"]),
    ("post", "/generate", {"prompt": "hi", "temperature": "hot"}, 400, ["temperature"]),
    ("post", "/generate", {"prompt": "hi", "top_p": 0}, 400, ["top_p"]),
    ("post", "/generate", {"prompt": "hi", "top_p": 1.5}, 400, ["top_p"]),
    ("post", "/generate", {"prompt": "hi", "request_output_len": -5}, 400, ["request_output_len"]),
    ("post", "/generate", {"prompt": "hi", "stream": "yes"}, 400, ["stream"]),
    ("post", "/generate", {"prompt": "hi", "session_id": -7}, 400, ["session_id"]),
    ("post", "/generate", {"prompt": "hi", "stop_words": "END"}, 400, ["stop_words"]),
    ("post", "/generate", {"prompt": "hi", "top_k": -3}, 400, ["top_k"]),
    ("post", "/generate", {"prompt": ""}, 400, ["prompt", "empty"]),
    ("post", "/generate", {"prompt": "", "stop": True}, 400, ["session_id"]),
    ("post", "/generate", {"prompt": LONG[:60000]}, 413, ["prompt", "context length"]),
    ("post", "/generate", {"prompt": [{"role": "wizard", "content": "x"}]}, 400, ["role"]),
    ("post", "/generate", {"prompt": [{"role": "user"}]}, 400, ["content"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, 400, ["content"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "sequence_end": True}, 400,
     ["session_id"]),
    ("post", "/v1/chat/completions", {"messages": []}, 400, ["messages"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "nope"}, 404, ["nope"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, ["max_tokens"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, ["n"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 1000}, 400, ["n"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 3}, 400,
     ["presence_penalty"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, 400,
     ["top_logprobs", "logprobs"]),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, ["stop"]),
    ("post", "/v1/chat/completions", {"messages": "x", "temperature": 9}, 400, ["temperature"]),
    ("post", "/v1/completions", {"prompt": "hi", "suffix": "end"}, 400, ["suffix", "not supported"]),
    ("post", "/v1/completions", {"prompt": [99999999]}, 400, ["vocabulary"]),
    ("post", "/v1/completions", {"prompt": []}, 400, ["prompt"]),
    ("post", "/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, ["logprobs"]),
    ("post", "/v1/completions", {"prompt": LONG[:60000]}, 413, ["context length"]),
    ("post", "/v1/embeddings", {"input": []}, 400, ["input"]),
    ("post", "/v1/embeddings", {"input": "hi", "encoding_format": "hex"}, 400, ["encoding_format"]),
    ("post", "/v1/embeddings", {"input": [[1, 2], []]}, 400, ["input"]),
    ("post", "/v1/embeddings", {"input": "hi", "model": "other"}, 404, ["other"]),
    ("post", "/v1/embeddings", {"input": LONG[:60000]}, 413, ["context length"]),
    ("post", "/generate", "x" * 200000, 413, ["larger than"]),
    ("get", "/v2/nothing", None, 404, ["no route"]),
    ("get", "/generate", None, 405, ["not allowed"]),
]


@pytest.mark.parametrize("method,path,body,status,words", CASES, ids=[f"{i}-{c[1]}-{c[3]}" for i, c in enumerate(CASES)])
def test_malformed_request(server, method, path, body, status, words):
    kw = {}
    if isinstance(body, (dict, list)):
        kw["json"] = body
    elif body is not None:
        kw["data"] = body
        kw["headers"] = {"Content-Type": "application/json"}
    r = requests.request(method, server.url + path, timeout=60, **kw)
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()
    assert err["object"] == "error" and err["code"] == status and err["type"]
    for w in words:
        assert w.lower() in err["message"].lower(), (w, err["message"])


def test_server_still_serves_after_bad_requests(server):
    assert len(CASES) >= 25
    r = requests.post(server.url + "/generate", json={"prompt": "Hi", "temperature": 0, "request_output_len": 4})
    assert r.status_code == 200 and r.json()["tokens"] > 0
    assert requests.get(server.url + "/health").json()["status"] == "ok"


def test_openapi_document_is_valid_and_complete(server):
    doc = requests.get(server.url + "/openapi.json").json()
    validate(doc)
    for path in ("/generate", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/health"):
        assert path in doc["paths"]
    gen = doc["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"prompt", "session_id", "sequence_start", "sequence_end", "stream", "stop", "request_output_len"} <= set(gen)
    # every finish_reason the routes send is in the schema, "error" included
    for name in ("GenerateResponse", "ChatChoice", "ChatChunkChoice", "CompletionChoice"):
        reason = json.dumps(doc["components"]["schemas"][name]["properties"]["finish_reason"])
        assert all(f'"{v}"' in reason for v in ("stop", "length", "error")), (name, reason)
    assert "error" in doc["components"]["schemas"]["GenerateResponse"]["properties"]


def test_swagger_ui_page_and_assets_offline(server):
    from lmrs.server.docs import swagger_ui_assets_dir

    page = requests.get(server.url + "/")
    assert page.status_code == 200 and "swagger-ui" in page.text and "/openapi.json" in page.text
    installed = swagger_ui_assets_dir()
    assert "site-packages" in installed and os.sep + "swagger_ui" + os.sep in installed, installed
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        r = requests.get(server.url + "/docs/static/" + asset)
        assert r.status_code == 200 and len(r.content) > 10000, asset
        with open(os.path.join(installed, asset), "rb") as f:  # served from the installed package
            assert r.content == f.read(), asset
    assert requests.get(server.url + "/docs/static/swagger-editor-bundle.js").status_code == 404
    assert "https://" not in page.text, "the page must not load anything from the internet"


def test_no_third_party_assets_in_the_repository():
    files = subprocess.run(["git", "ls-files", "python/lmrs/server"], capture_output=True, text=True,
                           cwd=REPO).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    assert not [f for f in files if not f.endswith(".py")], files


def test_api_keys_and_session_ownership():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--api-keys", "key-a", "key-b")
    try:
        assert requests.get(s.url + "/health").status_code == 200
        # the docs page, its assets and the OpenAPI document need no key (a browser cannot send one
        # when it loads a page); the document declares the bearer scheme for the Authorize button
        for path in ("/", "/docs", "/docs/static/swagger-ui-bundle.js", "/openapi.json"):
            assert requests.get(s.url + path).status_code == 200, path
        doc = requests.get(s.url + "/openapi.json").json()
        assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert doc["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
        assert requests.get(s.url + "/docs/static/../../v1/models").status_code in (401, 404)
        assert requests.get(s.url + "/v1/models").status_code == 401
        r = requests.post(s.url + "/generate", json={"prompt": "Hi"})
        assert r.status_code == 401 and "API key" in r.json()["message"]
        assert requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        a = {"Authorization": "Bearer key-a"}
        b = {"Authorization": "Bearer key-b"}
        assert requests.get(s.url + "/v1/models", headers=a).status_code == 200
        assert requests.get(s.url + "/metrics", headers={}).status_code == 401
        r = requests.post(s.url + "/generate", headers=a, json={"prompt": "Hi", "session_id": 5, "request_output_len": 4,
                                                               "temperature": 0})
        assert r.status_code == 200
        for body in ({"prompt": "Go on", "session_id": 5, "sequence_start": False},
                     {"prompt": "", "session_id": 5, "stop": True},
                     {"prompt": "", "session_id": 5, "sequence_start": False, "sequence_end": True, "request_output_len": 0}):
            r = requests.post(s.url + "/generate", headers=b, json=body)
            assert r.status_code == 404 and "session 5" in r.json()["message"], body
        r = requests.post(s.url + "/generate", headers=a, json={"prompt": "Go on", "session_id": 5, "sequence_start": False,
                                                               "request_output_len": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["tokens"] > 0
    finally:
        s.stop()


def test_terminal_client(server):
    from lmrs.client.api_client import main

    inp = io.StringIO("What is 2+2?\n\nAnd 3+3?\n\nend\n\nexit\n")
    out = io.StringIO()
    assert main([server.url, "--session-id", "77", "--max-tokens", "12", "--temperature", "0"], inp=inp, out=out) == 0
    text = out.getvalue()
    assert "session ended" in text
    assert text.count("double enter to end input") >= 4
    stats = requests.get(server.url + "/stats").json()
    assert stats["sessions"] == 0
