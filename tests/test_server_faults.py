"""A failed step fails only its requests, over real HTTP with the real model: the faults are
injected with LMRS_FAULT_STEPS (model steps counted from 1; requests below run one after the
other, so the step numbers are known). Their streams end with finish_reason "error" and a
message, their blocks are freed, their session keeps its history up to the last completed token
and continues, and the server keeps serving. Only an unrecoverable device error ends the process
(non-zero, with a log line). Logs and metrics record the real status of failed and timed-out
requests."""

import json
import re
import time

import pytest
import requests

from server_utils import ServerProcess

FAULT_STEP = 8


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--dtype", "float32", "--kv-cache-memory", "64MiB", "--log-format", "json",
                      "--request-timeout", "10", env={"LMRS_FAULT_STEPS": str(FAULT_STEP)})
    yield s
    s.stop()


def request_logs(server):
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [e["request"] for e in lines if e.get("logger") == "lmrs.requests"]


def chat_turn(url, sid, content, max_tokens):
    r = requests.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": content}], "session_id": sid, "temperature": 0,
        "max_tokens": max_tokens, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_failed_step_fails_only_its_requests(server):
    sid = 31
    # model steps 1-4: the prefill samples token 1, three decodes tokens 2-4
    t1 = chat_turn(server.url, sid, "Hi", 4)
    assert t1["usage"]["completion_tokens"] == 4
    n1 = t1["usage"]["prompt_tokens"]
    # steps 5-7 give tokens 1-3 of this turn; step 8 fails
    lines = []
    with requests.post(server.url + "/generate", stream=True, timeout=120, json={
            "prompt": "Tell me more.", "session_id": sid, "sequence_start": False, "stream": True,
            "temperature": 0, "request_output_len": 10, "ignore_eos": True}) as r:
        for line in r.iter_lines(delimiter=b"\n"):
            if line:
                lines.append(json.loads(line))
    last = lines[-1]
    assert last["finish_reason"] == "error" and "injected fault" in last["error"], last
    assert last["tokens"] == 3
    idle = server.wait_idle()
    assert idle["blocks_used"] == idle["blocks_pinned_by_sessions"] > 0, "only the session's pinned blocks remain"
    failed = [r for r in request_logs(server) if r["route"] == "/generate"][-1]
    assert failed["status"] == 503 and failed["finish_reason"] == "error"
    n2 = failed["prompt_tokens"]
    # the session continues from the history up to the last completed token: the same message
    # again adds as many tokens as it did the first time
    t3 = chat_turn(server.url, sid, "Tell me more.", 2)
    assert t3["usage"]["prompt_tokens"] == (n2 + 3) + (n2 - (n1 + 4))
    # and the server keeps serving everyone
    ok = requests.post(server.url + "/generate", json={"prompt": "Hi", "temperature": 0, "request_output_len": 3},
                       timeout=120)
    assert ok.status_code == 200 and ok.json()["tokens"] == 3
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    metrics = requests.get(server.url + "/metrics").text
    assert re.search(r'lmrs:http_requests_total\{[^}]*route="/generate"[^}]*status="503"[^}]*\} 1', metrics) or \
        re.search(r'lmrs:http_requests_total\{[^}]*status="503"[^}]*route="/generate"[^}]*\} 1', metrics), metrics
    requests.post(server.url + "/generate", json={"prompt": "", "session_id": sid, "sequence_end": True,
                                                 "sequence_start": False, "request_output_len": 0}, timeout=60)


def test_a_timed_out_request_is_logged_with_its_status(server):
    before = server.wait_idle()
    t0 = time.monotonic()
    r = requests.post(server.url + "/generate", json={"prompt": "Go on forever.", "request_output_len": 4000,
                                                     "ignore_eos": True}, timeout=120)
    assert r.status_code == 503 and "timeout" in r.json()["message"]
    assert time.monotonic() - t0 < 60
    after = server.wait_idle()
    assert after["blocks_used"] == before["blocks_used"]
    last = request_logs(server)[-1]
    assert last["status"] == 503 and last["finish_reason"] == "abort"
    metrics = requests.get(server.url + "/metrics").text
    assert 'status="503"' in metrics


def test_an_unrecoverable_device_error_ends_the_process():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--shutdown-timeout", "5", env={"LMRS_FAULT_STEPS": "2!"})
    try:
        r = requests.post(s.url + "/generate", json={"prompt": "Hi", "request_output_len": 50, "ignore_eos": True},
                          timeout=60)
        assert r.status_code == 503 and "engine" in r.json()["message"]
        try:  # between the failure and the exit, health says so
            assert requests.get(s.url + "/health", timeout=5).status_code == 503
        except requests.ConnectionError:
            pass
        assert s.proc.wait(30) != 0
        assert "unrecoverable device error" in s.logs() and "exiting with status 1" in s.logs()
    finally:
        s.stop()
