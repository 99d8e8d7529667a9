"""The Ray replica router's pure parts, without Ray: the consistent-hash ring, the RouteKey read from
each request, and the merged /metrics page."""

from __future__ import annotations

import json

import pytest

from lmrs.ray_serve.hash_ring import HashRing
from lmrs.ray_serve.metrics_merge import merge_metrics, with_label
from lmrs.ray_serve.route_key import PREFIX_CHARS, RouteKey, replica_of_response_id, route_key_of

KEYS = [f"s{i}" for i in range(4000)]


def owners(ring: HashRing) -> dict[str, str]:
    return {k: ring.owner(k) for k in KEYS}


@pytest.mark.parametrize("r", [2, 3, 5])
def test_adding_a_replica_moves_about_one_in_r_plus_one_keys_all_to_the_new_one(r):
    ring = HashRing([f"replica-{i}" for i in range(r)])
    before = owners(ring)
    ring.add("replica-new")
    after = owners(ring)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "replica-new" for k in moved)  # nobody else's keys are reshuffled
    share = len(moved) / len(KEYS)
    assert abs(share - 1 / (r + 1)) < 0.35 / (r + 1), share


@pytest.mark.parametrize("r", [2, 3, 5])
def test_removing_a_replica_moves_only_its_own_keys(r):
    ring = HashRing([f"replica-{i}" for i in range(r)])
    before = owners(ring)
    ring.remove("replica-0")
    after = owners(ring)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "replica-0"}
    assert abs(len(moved) / len(KEYS) - 1 / r) < 0.35 / r
    ring.add("replica-0")  # it comes back: the same keys come home
    assert owners(ring) == before


def test_ring_balances_and_is_the_same_in_every_process():
    ring = HashRing(["a", "b", "c"])
    counts = {m: 0 for m in "abc"}
    for k in KEYS:
        counts[ring.owner(k)] += 1
    assert min(counts.values()) > len(KEYS) / 3 * 0.75, counts
    # independent of insertion order and of Python's per-process hash salt
    assert owners(HashRing(["c", "a", "b"])) == owners(ring)
    ring2 = HashRing(["x"])
    ring2.set_members(["a", "b", "c"])
    assert owners(ring2) == owners(ring) and ring2.members == {"a", "b", "c"}


def test_empty_ring_says_so():
    with pytest.raises(LookupError):
        HashRing().owner("s1")
    with pytest.raises(ValueError):
        HashRing(vnodes=0)


def body(**kw) -> bytes:
    return json.dumps(kw).encode()


def test_route_keys_of_sessions_responses_and_stateless_requests():
    assert route_key_of("POST", "/generate", body(prompt="hi", session_id=7)) == RouteKey(session="s7")
    assert route_key_of("POST", "/generate", body(prompt="hi", instance_id=7)) == RouteKey(session="s7")
    assert route_key_of("POST", "/generate", body(prompt="", session_id=7, stop=True)).session == "s7"
    assert route_key_of("POST", "/v1/chat/completions", body(messages=[], session_id=3)).session == "s3"
    stateless = route_key_of("POST", "/generate", body(prompt="x" * 200, session_id=-1))
    assert stateless.stateless and stateless.prefix == "x" * PREFIX_CHARS
    chat = route_key_of("POST", "/v1/chat/completions", body(messages=[{"role": "user", "content": "hello"}]))
    assert chat.stateless and "hello" in chat.prefix
    follow = route_key_of("POST", "/v1/responses", body(input="more", previous_response_id="resp_ab12cd34_00ff"))
    assert follow.replica == "ab12cd34" and follow.session is None
    assert route_key_of("GET", "/v1/responses/resp_ab12cd34_00ff", b"") == RouteKey(replica="ab12cd34")
    assert route_key_of("DELETE", "/v1/responses/resp_ab12cd34_00ff", b"").replica == "ab12cd34"


def test_bad_bodies_route_as_stateless_so_the_replica_names_the_field():
    for raw in (b"{bad", b"[1, 2]", b"", b"\xff\xfe", body(prompt="hi", session_id="abc"),
                body(prompt="hi", session_id=True), body(prompt="hi", session_id=-5),
                body(prompt="hi", session_id="7"), body(prompt="hi", session_id=7.0)):  # the API's ints are strict
        key = route_key_of("POST", "/generate", raw)
        assert key.stateless, raw


def test_response_ids_without_a_replica_tag():
    assert replica_of_response_id("resp_0123456789abcdef01234567") is None  # a single server's id
    assert replica_of_response_id("chatcmpl-1") is None
    assert replica_of_response_id("resp_r1_abc") == "r1"


def test_with_label_handles_labelled_and_bare_samples():
    assert with_label('m{a="b"} 1.0', "replica", "r1") == 'm{replica="r1",a="b"} 1.0'
    assert with_label("m 2.0", "replica", "r1") == 'm{replica="r1"} 2.0'
    assert with_label("m{} 2.0", "replica", 'q"x') == 'm{replica="q\\"x"} 2.0'


def test_merged_metrics_keep_one_help_and_type_per_family_and_parse():
    from prometheus_client.parser import text_string_to_metric_families

    page = ('# HELP vllm:generation_tokens_total Tokens generated.\n# TYPE vllm:generation_tokens_total counter\n'
            'vllm:generation_tokens_total{model_name="m"} {n}\n'
            '# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le="1.0"} {n}\nlat_bucket{le="+Inf"} {n}\n'
            'lat_count {n}\nlat_sum 0.5\n')
    merged = merge_metrics({"r1": page.replace("{n}", "3"), "r2": page.replace("{n}", "5")})
    assert merged.count("# TYPE lat histogram") == 1
    assert merged.count("# HELP vllm:generation_tokens_total") == 1
    fams = {f.name: f for f in text_string_to_metric_families(merged)}
    tokens = {s.labels["replica"]: s.value for s in fams["vllm:generation_tokens"].samples}
    assert tokens == {"r1": 3.0, "r2": 5.0}
    counts = {s.labels["replica"]: s.value for s in fams["lat"].samples if s.name == "lat_count"}
    assert counts == {"r1": 3.0, "r2": 5.0}


def test_lmrs_serve_ray_refuses_zero_replicas_before_starting_ray(capsys):
    from lmrs.cli import main

    assert main(["serve", "ray", "--replicas", "0"]) == 2
    assert "--replicas" in capsys.readouterr().err


def test_serve_ray_with_a_missing_model_exits_2_before_starting_ray(capsys, monkeypatch):
    """The model is checked as `lmrs serve api_server` checks it, before any Ray process starts (it used
    to start Ray, deploy, and end in a traceback when every replica failed to load)."""
    pytest.importorskip("ray", reason="Ray Serve is in the test extra")
    import ray

    from lmrs.cli import main as cli_main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a model that does not exist")

    monkeypatch.setattr(ray, "init", no_ray)
    assert cli_main(["serve", "ray", "/no/such/model.gguf", "--replicas", "1"]) == 2
    assert "lmrs serve ray: model '/no/such/model.gguf' not found" in capsys.readouterr().err
