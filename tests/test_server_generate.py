"""/generate over real HTTP with the real model: the lmdeploy streaming client, sessions
(interactive turns == stateless history, only new tokens computed, the length refusal, end and
restart, serialized turns), cancel, concurrency, and disconnects that leave the pool as it was."""

import concurrent.futures as cf
import json
import threading
import time

import pytest
import requests

from server_utils import ServerProcess


@pytest.fixture(scope="module")
def server():
    # float32: greedy outputs are then reproducible bit for bit whatever the batch or cache state,
    # which the equality checks below need (bfloat16 can flip near-ties between runs).
    s = ServerProcess("--dtype", "float32", "--kv-cache-memory", "256MiB", "--session-len", "2048", "--instance-num", "32")
    yield s
    s.stop()


def lmdeploy_client(url, prompt, **kw):
    """The streaming client exactly as lmdeploy's docs write it (requests + iter_lines)."""
    headers = {"User-Agent": "Test Client"}
    pload = {"prompt": prompt, "stream": True, "sequence_start": True, "sequence_end": True, **kw}
    response = requests.post(url + "/generate", headers=headers, json=pload, stream=True)
    for chunk in response.iter_lines(chunk_size=8192, decode_unicode=False, delimiter=b"\n"):
        if chunk:
            data = json.loads(chunk.decode("utf-8"))
            output = data["text"]
            tokens = data["tokens"]
            finish_reason = data["finish_reason"]
            yield output, tokens, finish_reason


def test_lmdeploy_streaming_client_and_stream_equals_non_stream(server):
    chunks = list(lmdeploy_client(server.url, "Tell me about the sea.", temperature=0, request_output_len=40))
    assert chunks and chunks[-1][2] in ("stop", "length")
    assert all(c[2] is None for c in chunks[:-1])
    counts = [c[1] for c in chunks]
    assert counts == sorted(counts) and min(counts) >= 0
    streamed = "".join(c[0] for c in chunks)
    r = requests.post(server.url + "/generate", json={"prompt": "Tell me about the sea.", "temperature": 0,
                                                     "request_output_len": 40}).json()
    assert r["text"] == streamed and r["tokens"] == counts[-1]
    # every line is exactly one JSON object
    raw = requests.post(server.url + "/generate", json={"prompt": "Hi", "stream": True, "temperature": 0,
                                                       "request_output_len": 10}, stream=True)
    assert raw.headers["Content-Type"].startswith("application/x-ndjson")
    lines = raw.content.decode().split("\n")
    assert lines[-1] == ""
    assert all(isinstance(json.loads(line), dict) for line in lines[:-1])


def gen(url, **kw):
    r = requests.post(url + "/generate", json=kw, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


TURNS = ["What is the capital of France?", "And of Germany?", "Thank you!"]


def chat(url, messages, **kw):
    r = requests.post(url + "/v1/chat/completions", json={"messages": messages, "temperature": 0, "max_tokens": 64, **kw},
                      timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_three_turn_session_equals_stateless_history(server):
    sid = 1001
    replies, tokens, computed = [], [], []
    for i, msg in enumerate(TURNS):
        s0 = server.wait_idle()["prompt_tokens_computed"]
        r = gen(server.url, prompt=msg, session_id=sid, sequence_start=(i == 0), sequence_end=False,
                temperature=0, request_output_len=64)
        assert r["finish_reason"] == "stop", "these turns' replies end with EOS"
        replies.append(r["text"])
        tokens.append(r["tokens"])
        computed.append(server.wait_idle()["prompt_tokens_computed"] - s0)
    assert server.stats()["sessions"] >= 1
    # stateless: the whole history resent through the chat template, as an OpenAI client does
    history, prompt_lens = [], []
    for i, msg in enumerate(TURNS):
        history.append({"role": "user", "content": msg})
        r = chat(server.url, history)
        assert r["choices"][0]["message"]["content"] == replies[i], f"turn {i + 1} differs"
        prompt_lens.append(r["usage"]["prompt_tokens"])
        history.append({"role": "assistant", "content": replies[i]})
    # turn 1 computes its whole prompt; turns 2 and 3 only their new tokens, plus the previous
    # reply's EOS (sampled, never computed): new = len(history + message) - len(history)
    assert 0 < computed[0] <= prompt_lens[0]  # less when the system prompt's block is in the prefix cache
    for i in (1, 2):
        history_len = prompt_lens[i - 1] + tokens[i - 1]
        assert computed[i] == prompt_lens[i] - history_len + 1, (i, computed, prompt_lens, tokens)
    end = gen(server.url, prompt="", session_id=sid, sequence_start=False, sequence_end=True, request_output_len=0)
    assert end["tokens"] == 0 and end["finish_reason"] is not None


def test_length_refusal_leaves_the_session_as_it_was():
    s = ServerProcess("--dtype", "float32", "--kv-cache-memory", "64MiB", "--session-len", "96")
    try:
        sid = 7
        first = gen(s.url, prompt="Hi", session_id=sid, temperature=0, request_output_len=8)
        assert first["tokens"] == 8 or first["finish_reason"] == "stop"
        hist = s.wait_idle()
        long_msg = "Please tell me a long story about dragons and castles and knights. " * 5
        r = gen(s.url, prompt=long_msg, session_id=sid, sequence_start=False, temperature=0, request_output_len=8)
        assert r == {"text": "", "tokens": 0, "finish_reason": "length"}
        after = s.wait_idle()
        assert after["prompt_tokens_computed"] == hist["prompt_tokens_computed"], "a refused turn computes nothing"
        assert after["finished_refused"] == hist["finished_refused"] + 1
        # the session is intact: a short turn still works, then reaching session_len ends with "length"
        ok = gen(s.url, prompt="Bye", session_id=sid, sequence_start=False, temperature=0, request_output_len=200)
        assert ok["finish_reason"] in ("stop", "length") and ok["tokens"] > 0
        # sequence_end is never refused, and sequence_start restarts from nothing
        end = gen(s.url, prompt=long_msg, session_id=sid, sequence_start=False, sequence_end=True, request_output_len=4)
        assert end["finish_reason"] == "length"
        assert s.wait_idle()["sessions"] == 0
        again = gen(s.url, prompt="Hello again", session_id=sid, sequence_start=True, temperature=0, request_output_len=4,
                    ignore_eos=True)
        assert again["tokens"] == 4
    finally:
        s.stop()


def test_sequence_start_restarts_and_end_frees(server):
    sid = 2002
    a = gen(server.url, prompt="Name a color.", session_id=sid, temperature=0, request_output_len=16)
    gen(server.url, prompt="Another one?", session_id=sid, sequence_start=False, temperature=0, request_output_len=16)
    b = gen(server.url, prompt="Name a color.", session_id=sid, sequence_start=True, temperature=0, request_output_len=16)
    assert a["text"] == b["text"], "a restarted session answers like a new one"
    gen(server.url, prompt="", session_id=sid, sequence_start=False, sequence_end=True, request_output_len=0)
    assert server.wait_idle()["sessions"] == 0


def test_two_requests_on_one_session_are_serialized(server):
    sid = 3003
    gen(server.url, prompt="Count to three.", session_id=sid, temperature=0, request_output_len=8)
    results = {}

    def turn(name, msg):
        t0 = time.monotonic()
        results[name] = (gen(server.url, prompt=msg, session_id=sid, sequence_start=False, temperature=0,
                             request_output_len=24, ignore_eos=True), t0, time.monotonic())

    threads = [threading.Thread(target=turn, args=(n, m)) for n, m in (("a", "Go on."), ("b", "And then?"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (ra, a0, a1), (rb, b0, b1) = results["a"], results["b"]
    assert ra["tokens"] == 24 and rb["tokens"] == 24
    # one waited for the other: their generation windows do not overlap much
    first_end = min(a1, b1)
    second_start_gap = max(a1, b1) - first_end
    assert second_start_gap > 0.3 * (first_end - min(a0, b0))
    gen(server.url, prompt="", session_id=sid, sequence_start=False, sequence_end=True, request_output_len=0)


def test_stop_true_cancels_the_running_generation(server):
    sid = 4004
    out = {}

    def long_turn():
        out["r"] = gen(server.url, prompt="Write a very long essay about rivers.", session_id=sid, temperature=0,
                       request_output_len=400, ignore_eos=True)

    t = threading.Thread(target=long_turn)
    t.start()
    time.sleep(1.5)
    r = requests.post(server.url + "/generate", json={"prompt": "", "session_id": sid, "stop": True}, timeout=30)
    assert r.status_code == 200
    t.join(60)
    assert out["r"]["finish_reason"] == "stop" and 0 < out["r"]["tokens"] < 400
    # the KV of what was generated stays in the session: the next turn continues it
    nxt = gen(server.url, prompt="Summarize that in one word.", session_id=sid, sequence_start=False, temperature=0,
              request_output_len=8)
    assert nxt["tokens"] > 0
    gen(server.url, prompt="", session_id=sid, sequence_start=False, sequence_end=True, request_output_len=0)


def stream_tokens(url, prompt, n, stop_after=None):
    r = requests.post(url + "/generate", json={"prompt": prompt, "stream": True, "temperature": 0,
                                              "request_output_len": n, "ignore_eos": True}, stream=True, timeout=300)
    last = None
    for i, line in enumerate(r.iter_lines(delimiter=b"\n")):
        if line:
            last = json.loads(line)
            if stop_after is not None and last["tokens"] >= stop_after:
                r.close()
                return last
    return last


def test_32_concurrent_streams_beat_sequential(server):
    prompts = [f"Write a fact about the number {i}." for i in range(32)]
    t0 = time.monotonic()
    for p in prompts:
        assert stream_tokens(server.url, p, 16)["finish_reason"] == "length"
    sequential = time.monotonic() - t0
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda p: stream_tokens(server.url, p, 16), prompts))
    together = time.monotonic() - t0
    assert all(r["finish_reason"] == "length" and r["tokens"] == 16 for r in results)
    assert together < sequential, (together, sequential)


def test_disconnected_streams_leave_the_pool_as_before(server):
    before = server.wait_idle()
    with cf.ThreadPoolExecutor(10) as ex:
        list(ex.map(lambda i: stream_tokens(server.url, f"Tell a long tale number {i}.", 300, stop_after=5), range(10)))
    after = server.wait_idle(timeout=30)
    assert after["blocks_used"] == before["blocks_used"], (before, after)
    assert after["finished_abort"] - before["finished_abort"] == 10
