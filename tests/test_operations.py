"""Operating the server: metrics, health and readiness, graceful shutdown, faults (engine death,
a failed model load), request timeouts, clients that never read, and JSON logs."""

import json
import os
import re
import signal
import socket
import threading
import time

import pytest
import requests

from server_utils import ServerProcess


def stream_some(url, n_tokens, path="/generate", body=None, out=None):
    body = body or {"prompt": "Write a long story about a lighthouse.", "stream": True, "request_output_len": n_tokens,
                    "ignore_eos": True, "temperature": 0}
    r = requests.post(url + path, json=body, stream=True, timeout=300)
    lines = []
    try:
        for line in r.iter_lines(delimiter=b"\n"):
            if line:
                lines.append(line)
    except requests.exceptions.ChunkedEncodingError:
        pass  # the server went away mid-stream (the second-signal test)
    if out is not None:
        out.append((r.status_code, lines))
    return r.status_code, lines


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--log-format", "json", "--request-timeout", "20")
    yield s
    s.stop()


def test_metrics_names_and_values(server):
    requests.post(server.url + "/generate", json={"prompt": "Hi", "request_output_len": 4, "temperature": 0})
    requests.post(server.url + "/generate", json={"prompt": "Hi", "request_output_len": 4, "temperature": 0})
    text = requests.get(server.url + "/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:request_queue_time_seconds_bucket", "vllm:request_prompt_tokens_bucket",
                 "vllm:request_generation_tokens_bucket", "vllm:num_preemptions_total", "lmrs:sessions_alive",
                 "lmrs:engine_step_seconds_bucket", "lmrs:kv_blocks"]:
        assert name in text, name
    gen = float(re.search(r'^vllm:generation_tokens_total\{[^}]*\} (\S+)$', text, re.M).group(1))
    assert gen >= 8
    hits = float(re.search(r'^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$', text, re.M).group(1))
    assert hits > 0, "the second identical prompt hit the prefix cache"
    assert 'model_name="SmolLM2-135M-Instruct"' in text


def test_disable_metrics():
    s = ServerProcess("--kv-cache-memory", "32MiB", "--disable-metrics")
    try:
        assert requests.get(s.url + "/metrics").status_code == 404
    finally:
        s.stop()


def test_health_ready_and_stats(server):
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    assert requests.get(server.url + "/health/ready").json() == {"status": "ready"}
    s = requests.get(server.url + "/stats").json()
    assert s["blocks_free"] + s["blocks_used"] == s["num_blocks"]


def test_json_logs_one_line_per_request(server):
    requests.post(server.url + "/generate", json={"prompt": "Hello", "request_output_len": 3, "temperature": 0})
    time.sleep(0.3)
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    reqs = [entry for entry in lines if entry.get("logger") == "lmrs.requests"]
    assert reqs, "request log lines are JSON objects"
    r = reqs[-1]["request"]
    for key in ("request_id", "session_id", "route", "prompt_tokens", "output_tokens", "ttft_s", "tokens_per_s",
                "finish_reason", "status"):
        assert key in r


def test_request_timeout_ends_the_request_and_frees_blocks(server):
    before = server.wait_idle()
    t0 = time.monotonic()
    r = requests.post(server.url + "/generate", json={"prompt": "Go on forever.", "request_output_len": 5000,
                                                     "ignore_eos": True})
    assert r.status_code == 503 and "timeout" in r.json()["message"]
    assert 15 < time.monotonic() - t0 < 60
    after = server.wait_idle()
    assert after["blocks_used"] == before["blocks_used"]


def test_a_client_that_never_reads_does_not_grow_memory_without_bound(server):
    def rss_kb(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    before = server.wait_idle()
    rss0 = rss_kb(server.proc.pid)
    socks = []
    body = json.dumps({"prompt": "Tell a story.", "stream": True, "request_output_len": 4000, "ignore_eos": True})
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        socks.append(s)  # never read
    time.sleep(8)
    # the server keeps serving others meanwhile
    r = requests.post(server.url + "/generate", json={"prompt": "Hi", "request_output_len": 4, "temperature": 0}, timeout=60)
    assert r.status_code == 200
    grown_mb = (rss_kb(server.proc.pid) - rss0) / 1024
    assert grown_mb < 200, grown_mb
    for s in socks:
        s.close()
    after = server.wait_idle(timeout=60)
    assert after["blocks_used"] == before["blocks_used"]


def test_sigterm_drains_streams_in_flight_then_exits_0():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--shutdown-timeout", "60")
    results = []
    threads = [threading.Thread(target=stream_some, args=(s.url, 40), kwargs={"out": results}) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    try:
        late = requests.post(s.url + "/generate", json={"prompt": "Hi"}, timeout=10)
        assert late.status_code == 503
    except requests.ConnectionError:
        pass  # the listener may already be closed
    for t in threads:
        t.join(120)
    assert s.proc.wait(120) == 0
    assert len(results) == 3
    for status, lines in results:
        assert status == 200 and json.loads(lines[-1])["finish_reason"] == "length"


def test_second_signal_exits_at_once():
    s = ServerProcess("--kv-cache-memory", "64MiB", "--shutdown-timeout", "300")
    t = threading.Thread(target=stream_some, args=(s.url, 2000))
    t.start()
    time.sleep(2.0)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert s.proc.poll() is None, "still draining after the first signal"
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(15) != 0
    t.join(30)


def test_sigterm_while_the_model_loads_exits_0_cleanly():
    """A signal during model loading (slowed down here) ends the server at once with status 0,
    not with an abort from the loading thread."""
    slow_load = "import time, lmrs.engine.loading as L\n_b = L.build_engine_parts\n" \
                "L.build_engine_parts = lambda *a, **k: (time.sleep(3), _b(*a, **k))[1]\n"
    s = ServerProcess("--kv-cache-memory", "64MiB", wait=False, prelude=slow_load)
    deadline = time.time() + 60
    while "loading the model" not in s.logs() and time.time() < deadline:
        time.sleep(0.1)
    assert requests.get(s.url + "/health/ready", timeout=5).status_code == 503
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0, s.logs()
    assert "terminate called" not in s.logs() and "stopped before the model finished loading" in s.logs()


def test_engine_death_errors_every_client_and_exits_nonzero():
    """An unrecoverable device error (injected: LMRS_FAULT_STEPS with `!`) ends the engine:
    every waiting client gets an error, and the process exits non-zero with the traceback logged.
    (A step that fails otherwise ends only its own requests: tests/test_server_faults.py.)"""
    s = ServerProcess("--kv-cache-memory", "64MiB", env={"LMRS_FAULT_STEPS": "60!"})
    results = []
    threads = [threading.Thread(target=stream_some, args=(s.url, 500), kwargs={"out": results}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4
    for status, lines in results:
        last = json.loads(lines[-1])
        assert last["finish_reason"] == "error" and "error" in last, last
    code = s.proc.wait(30)
    assert code != 0
    assert "injected unrecoverable device error" in s.logs() and "Traceback" in s.logs()


def test_model_load_failure_is_reported(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    s = ServerProcess(str(bad), wait=False)
    code = s.proc.wait(120)
    assert code != 0
    assert "broken.gguf" in s.logs()
