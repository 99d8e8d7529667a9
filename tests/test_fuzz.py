"""Fuzzing: schemathesis generates requests for every route from the server's own /openapi.json
(no 5xx, the server stays healthy); hypothesis throws arbitrary JSON at the request schemas and
the sampling-parameter validation (only validation errors, each with a message naming a field).
`make fuzz` runs the long version (`--fuzz-long`)."""

import json
import math
import subprocess
import sys

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lmrs.engine.params import InvalidParameter, SamplingParams
from lmrs.server import protocol, protocol_responses
from lmrs.server.errors import describe_validation_error
from server_utils import ServerProcess

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
FIELDS = {
    protocol.GenerateRequest: ["prompt", "session_id", "instance_id", "sequence_start", "sequence_end", "stream", "stop",
                               "request_output_len", "top_p", "top_k", "temperature", "repetition_penalty",
                               "ignore_eos", "stop_words", "seed"],
    protocol.ChatCompletionRequest: ["messages", "model", "temperature", "top_p", "n", "stop", "stream",
                                     "stream_options", "max_tokens", "logprobs", "top_logprobs", "seed", "session_id"],
    protocol.CompletionRequest: ["prompt", "max_tokens", "echo", "suffix", "logprobs", "n", "stop", "temperature"],
    protocol.EmbeddingRequest: ["input", "model", "encoding_format"],
    protocol_responses.ResponsesRequest: ["input", "instructions", "previous_response_id", "max_output_tokens", "store",
                                "stream", "text", "tools", "temperature"],
    protocol.TokenizeRequest: ["prompt", "messages", "add_generation_prompt", "add_special_tokens"],
    protocol.DetokenizeRequest: ["tokens", "model"],
}


@pytest.mark.parametrize("model", list(FIELDS), ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_request_validation_never_crashes(model, data):
    keys = st.sampled_from(FIELDS[model]) | st.text(max_size=8)
    body = data.draw(st.dictionaries(keys, JSON, max_size=6))
    try:
        model.model_validate(body)
    except ValidationError as e:
        msg = describe_validation_error(e)
        assert msg and ":" in msg


@settings(max_examples=500, deadline=None)
@given(kw=st.fixed_dictionaries({}, optional={
    "temperature": JSON, "top_p": JSON, "top_k": JSON, "min_p": JSON, "max_tokens": JSON, "min_tokens": JSON,
    "presence_penalty": JSON, "frequency_penalty": JSON, "repetition_penalty": JSON, "seed": JSON, "logprobs": JSON,
    "stop": JSON, "stop_token_ids": JSON, "logit_bias": JSON}))
def test_sampling_params_validation(kw):
    try:
        p = SamplingParams(**kw)
    except InvalidParameter as e:
        assert e.field and e.field in str(e)
        return
    except TypeError:
        return  # e.g. stop=5: not a list at all; the HTTP schema rejects these before
    assert p.temperature >= 0 and 0 < p.top_p <= 1 and p.max_tokens >= 0
    assert not (isinstance(p.temperature, float) and math.isnan(p.temperature))


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--max-model-len", "160", "--instance-num", "16")
    yield s
    s.stop()


def test_schemathesis_finds_no_server_errors(server, request):
    long = request.config.getoption("--fuzz-long")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
           "--checks", "not_a_server_error", "--max-examples", "60" if long else "6",
           "--max-time", "1200" if long else "100", "--workers", "1", "--seed", "1", "--no-shrink",
           "--request-timeout", "120", "--warnings", "off",
           # readiness answers 503 by design when a one-token generation cannot finish in 30 s,
           # which happens while this very fuzzing saturates the 2-core machine
           "--exclude-path", "/health/ready"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500 if long else 300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "not_a_server_error" in out or "passed" in out.lower()
    # still healthy and serving
    assert requests.get(server.url + "/health").status_code == 200
    ok = requests.post(server.url + "/generate", json={"prompt": "Hi", "request_output_len": 3, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["tokens"] > 0
    assert "Internal" not in server.logs() and "unhandled error" not in server.logs()
