"""Two SmolLM2-135M replicas behind Ray Serve (a local Ray cluster on 2 CPUs, 1 per replica, dashboard
off), through the one HTTP endpoint: 20 sessions of 3 turns each stay on one replica and read exactly
what the same sessions read on a single server (greedy, float32); streaming passes through; the
monitoring routes cover both replicas; bad input is still a 4xx; no Ray process outlives the module."""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.server_utils import ServerProcess, free_port

ray = pytest.importorskip("ray", reason="Ray Serve is in the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(900)

NUM_SESSIONS = 20
CHAT_SESSIONS = range(14, 20)  # these talk through /v1/chat/completions, the others through /generate
TURNS = ["Hi! Who are you?", "Name a color.", "And a fruit?"]
MAX_TOKENS = 8
ENGINE_FLAGS = dict(dtype="float32", num_blocks=256, num_threads=1)


def run_session(url: str, n: int) -> list[tuple[str, str | None]]:
    """One session's three turns: (reply text, x-lmrs-replica) per turn."""
    sid = 1000 + n
    out = []
    for t, prompt in enumerate(TURNS):
        if n in CHAT_SESSIONS:
            r = requests.post(url + "/v1/chat/completions", timeout=300, json={
                "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": f"{prompt} ({n})"}],
                "session_id": sid, "max_tokens": MAX_TOKENS, "temperature": 0})
            assert r.status_code == 200, r.text
            text = r.json()["choices"][0]["message"]["content"]
        else:
            r = requests.post(url + "/generate", timeout=300, json={
                "prompt": f"{prompt} ({n})", "session_id": sid, "sequence_start": t == 0,
                "request_output_len": MAX_TOKENS, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["finish_reason"] in ("length", "stop")
            text = r.json()["text"]
        out.append((text, r.headers.get("x-lmrs-replica")))
    return out


def run_all_sessions(url: str) -> dict[int, list[tuple[str, str | None]]]:
    with ThreadPoolExecutor(NUM_SESSIONS) as pool:
        return dict(zip(range(NUM_SESSIONS), pool.map(lambda n: run_session(url, n), range(NUM_SESSIONS))))


@pytest.fixture(scope="module")
def single_server_transcripts():
    """The 20 sessions on one plain server (run before Ray starts, so the CPUs are not shared)."""
    srv = ServerProcess("--dtype", "float32", "--cache-blocks", str(ENGINE_FLAGS["num_blocks"]), "--num-threads", "1")
    try:
        return run_all_sessions(srv.url)
    finally:
        srv.stop()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd[:160]}")
    return found


@pytest.fixture(scope="module")
def ray_url(single_server_transcripts):
    from ray import serve

    from lmrs.engine.config import EngineConfig
    from lmrs.ray_serve.deployments import build_serve_app
    from lmrs.server.settings import ServerSettings

    temp_dir = tempfile.mkdtemp(prefix="lmrs-ray-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = EngineConfig(model=None, progress=False, **ENGINE_FLAGS)
        settings = ServerSettings(max_body_bytes=1 << 20)
        serve.run(build_serve_app(cfg, settings, replicas=2, num_cpus=1), name="lmrs", route_prefix="/",
                  blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while requests.get(url + "/health", timeout=30).status_code != 200:
            assert time.time() < deadline, "the Ray endpoint never became healthy"
            time.sleep(1)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    deadline = time.time() + 30
    while _processes_mentioning(temp_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(temp_dir) == [], "Ray processes outlived ray.shutdown()"


def replica_sessions_alive(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", timeout=60)
    assert r.status_code == 200, r.text
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    return {s.labels["replica"]: s.value for s in fams["lmrs:sessions_alive"].samples}


def test_sessions_stick_to_one_replica_and_match_a_single_server(ray_url, single_server_transcripts):
    health = requests.get(ray_url + "/health", timeout=60).json()
    assert health["status"] == "ok" and len(health["replicas"]) == 2, health
    replicas = set(health["replicas"])
    got = run_all_sessions(ray_url)
    owner = {}
    for n in range(NUM_SESSIONS):
        names = {name for _, name in got[n]}
        assert len(names) == 1 and names <= replicas, (n, got[n])  # every turn on one replica
        owner[n] = names.pop()
        texts = [text for text, _ in got[n]]
        assert texts == [text for text, _ in single_server_transcripts[n]], n
        assert all(texts), n
    assert set(owner.values()) == replicas, owner  # the ring spread the sessions over both
    # each replica's engine holds exactly the sessions routed to it
    alive = replica_sessions_alive(ray_url)
    assert alive == {name: float(list(owner.values()).count(name)) for name in replicas}, (alive, owner)


def test_streams_pass_through_and_stateless_requests_spread(ray_url):
    from openai import OpenAI

    streamed = 32
    start = time.monotonic()
    with requests.post(ray_url + "/generate", stream=True, timeout=300, json={
            "prompt": "Count to ten.", "request_output_len": streamed, "temperature": 0, "stream": True,
            "ignore_eos": True}) as r:
        assert r.status_code == 200 and r.headers.get("x-lmrs-replica")
        lines, arrived = [], []
        for line in r.iter_lines():
            if line:
                lines.append(json.loads(line))
                arrived.append(time.monotonic())
    assert len(lines) >= 2 and lines[-1]["finish_reason"] == "length" and lines[-1]["tokens"] == streamed
    # the lines came as they were generated, not all at once at the end (a buffering hop would do that)
    assert arrived[-1] - arrived[0] > 0.25 * (arrived[-1] - start), (start, arrived)

    client = OpenAI(base_url=ray_url + "/v1", api_key="none", timeout=300)
    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", stream=True, max_tokens=MAX_TOKENS,
                                            temperature=0, messages=[{"role": "user", "content": "Say hi."}])
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]

    # concurrent stateless requests: the least busy replica takes each, so both get work
    def one(i):
        r = requests.post(ray_url + "/generate", timeout=300, json={
            "prompt": f"Tell me about the number {i}.", "request_output_len": 16, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.headers["x-lmrs-replica"]

    with ThreadPoolExecutor(6) as pool:
        used = set(pool.map(one, range(6)))
    assert len(used) == 2, used


def test_stored_responses_follow_their_replica(ray_url):
    first = requests.post(ray_url + "/v1/responses", timeout=300, json={
        "model": "SmolLM2-135M-Instruct", "input": "Name an animal.", "max_output_tokens": MAX_TOKENS,
        "temperature": 0})
    assert first.status_code == 200, first.text
    home, rid = first.headers["x-lmrs-replica"], first.json()["id"]
    assert rid.startswith(f"resp_{home}_")
    for _ in range(3):
        follow = requests.post(ray_url + "/v1/responses", timeout=300, json={
            "model": "SmolLM2-135M-Instruct", "input": "Another one.", "previous_response_id": rid,
            "max_output_tokens": MAX_TOKENS, "temperature": 0})
        assert follow.status_code == 200, follow.text
        assert follow.headers["x-lmrs-replica"] == home
    got = requests.get(f"{ray_url}/v1/responses/{rid}", timeout=60)
    assert got.status_code == 200 and got.headers["x-lmrs-replica"] == home and got.json()["id"] == rid


def test_bad_input_is_a_4xx_through_the_router(ray_url):
    cases = [
        (b"{not json", "JSON"),
        (json.dumps({"prompt": "hi", "session_id": "abc"}).encode(), "session_id"),
        (json.dumps({"prompt": 5}).encode(), "prompt"),
        (json.dumps({"prompt": "hi", "request_output_len": -3}).encode(), "request_output_len"),
    ]
    for raw, field in cases:
        r = requests.post(ray_url + "/generate", data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert field in r.json()["message"], (raw, r.text)
    r = requests.post(ray_url + "/v1/chat/completions", json={"model": "SmolLM2-135M-Instruct", "messages": []},
                      timeout=60)
    assert r.status_code == 400 and "messages" in r.json()["message"]
    r = requests.get(ray_url + "/v1/responses/resp_nosuchreplica_0123", timeout=60)
    assert r.status_code == 404
    r = requests.get(ray_url + "/no/such/route", timeout=60)
    assert r.status_code == 404
    r = requests.post(ray_url + "/generate", data=b"x" * (2 << 20), timeout=60)
    assert r.status_code == 413
    assert requests.get(ray_url + "/health", timeout=60).status_code == 200  # nothing crashed
