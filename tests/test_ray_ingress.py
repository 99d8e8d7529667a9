"""LmrsIngress without a Ray cluster: a stand-in engine handle whose calls fail the way a dead replica's
do. A replica that fails before answering is a 503 with the API's error body (never Serve's bare 500),
and the monitoring fan-out reports it rather than failing."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray", reason="Ray Serve is in the test extra: pip install -e '.[test]'")


class ReplicaDied(RuntimeError):
    pass


class _FailingStream:
    def remote(self, *args):
        async def answer():
            raise ReplicaDied("the actor died unexpectedly before finishing this task")
            yield  # an async generator, like a streaming DeploymentHandle call

        return answer()


class _FailingCall:
    def remote(self, *args):
        async def answer():
            raise ReplicaDied("the actor died unexpectedly before finishing this task")

        return answer()


class DeadEngineHandle:
    """What `LmrsIngress` sees of the engine deployment when its replica dies."""

    forward = _FailingStream()
    fetch = _FailingCall()

    def options(self, **_kw):
        return self


def _request(method: str, path: str, body: bytes):
    from starlette.requests import Request

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "scheme": "http", "server": ("t", 80)}
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_a_replica_failing_before_it_answers_is_a_503_with_the_error_body():
    from lmrs.ray_serve.deployments import LmrsIngress

    ingress = LmrsIngress(DeadEngineHandle(), max_body_bytes=1 << 20)
    body = json.dumps({"prompt": "hi", "session_id": 3}).encode()
    resp = asyncio.run(ingress(_request("POST", "/generate", body)))
    assert resp.status_code == 503
    err = json.loads(resp.body)
    assert err["code"] == 503 and "replica" in err["message"], err


@pytest.mark.parametrize("path", ["/health", "/health/ready"])
def test_health_with_no_replica_answering_is_a_503_not_a_500(path):
    from lmrs.ray_serve.deployments import LmrsIngress
    from lmrs.ray_serve.request_router import ROUTERS

    assert "lmrs-engine" not in ROUTERS  # no router yet: the ingress makes a first call to bring it up
    ingress = LmrsIngress(DeadEngineHandle(), max_body_bytes=1 << 20)
    resp = asyncio.run(ingress(_request("GET", path, b"")))
    assert resp.status_code == 503
    assert json.loads(resp.body)["status"] == "unavailable"
