"""`python -m lmrs.serve --tp 2`: the real server on two gloo ranks answers the /generate client and
the openai SDK; killing rank 1 mid-stream ends the stream with an error, the server exits non-zero
within seconds and leaves no rank process behind."""

from __future__ import annotations

import json
import os
import signal
import time

import requests

from proc_table import alive, children, rank_children
from server_utils import ServerProcess


def test_tp2_server_serves_clients_and_dies_cleanly_with_a_rank():
    from openai import OpenAI

    s = ServerProcess("--tp", "2", "--dtype", "float32", "--kv-cache-memory", "64MiB", "--shutdown-timeout", "5")
    try:
        ranks = rank_children(s.proc.pid)
        assert len(ranks) == 1, f"one worker rank expected, found {ranks}"
        r = requests.post(s.url + "/generate", timeout=120, json={
            "prompt": "What is the capital of France?", "request_output_len": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["text"], r.text
        client = OpenAI(base_url=s.url + "/v1", api_key="none")
        chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in chat.choices[0].message.content
        lines = []
        with requests.post(s.url + "/generate", stream=True, timeout=60, json={
                "prompt": "Count to one thousand.", "stream": True, "request_output_len": 2000,
                "ignore_eos": True, "temperature": 0}) as resp:
            for line in resp.iter_lines(delimiter=b"\n"):
                if not line:
                    continue
                lines.append(json.loads(line))
                if len(lines) == 5:
                    os.kill(ranks[0], signal.SIGKILL)
                    killed = time.monotonic()
        assert len(lines) > 5
        last = lines[-1]
        assert last["finish_reason"] == "error", last
        code = s.proc.wait(30)
        assert code != 0
        assert time.monotonic() - killed < 15, "the server exits within seconds"
        assert "tensor-parallel rank 1 exited" in s.logs()
        assert not any(alive(p) for p in ranks) and children(s.proc.pid) == []
    finally:
        s.stop(signal.SIGKILL)


def test_tp2_server_stops_every_rank_on_sigterm():
    s = ServerProcess("--tp", "2", "--dtype", "float32", "--kv-cache-memory", "64MiB", "--shutdown-timeout", "5")
    try:
        ranks = rank_children(s.proc.pid)
        assert ranks
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in ranks), "the worker rank stopped with the server"
    finally:
        s.stop(signal.SIGKILL)
