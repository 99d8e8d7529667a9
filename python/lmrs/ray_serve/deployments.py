"""The Ray Serve application: EngineReplica (one lmrs server per replica) behind LmrsIngress.

EngineReplica runs the ordinary lmrs aiohttp app and AsyncEngine in its replica process, listening on
a loopback port of its own node only; `forward` replays one HTTP request against it and streams the
answer back through Ray (a streaming DeploymentHandle call: first the status and headers, then body
chunks as they come, so NDJSON and SSE stream through). LmrsIngress is the one HTTP endpoint (Serve's
proxy): it reads the RouteKey of each request and calls the engine deployment, whose
SessionAffinityRouter picks the replica. /metrics, /health, /health/ready and /stats are fanned out to
every replica and merged (metrics labelled `replica`). Every answer names its replica in
`x-lmrs-replica`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

from ray import serve
from ray.serve.config import RequestRouterConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from lmrs.ray_serve.metrics_merge import merge_metrics
from lmrs.ray_serve.request_router import ROUTERS, replica_name
from lmrs.ray_serve.route_key import RouteKey, route_key_of

log = logging.getLogger("lmrs.ray_serve")

REPLICA_HEADER = "x-lmrs-replica"
ENGINE_DEPLOYMENT = "lmrs-engine"
INGRESS_DEPLOYMENT = "lmrs-ingress"
#: Headers not passed along (hop-by-hop, or recomputed by the next hop).
DROPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding",
                   "upgrade", "te", "trailer", "proxy-connection"}
FAN_OUT_ROUTES = ("/metrics", "/health", "/health/ready", "/stats")


def _kept(headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in DROPPED_HEADERS]


class EngineReplica:
    """One lmrs server (AsyncEngine + aiohttp app on 127.0.0.1) in a Ray Serve replica."""

    async def __init__(self, engine_cfg, settings):
        import aiohttp
        from aiohttp import web

        from lmrs.engine.async_engine import AsyncEngine
        from lmrs.server.app import build_app

        self.name = replica_name(serve.get_replica_context().replica_id)
        settings = replace(settings, host="127.0.0.1", port=0, response_id_tag=self.name)
        self.engine = AsyncEngine(engine_cfg, max_queued_requests=settings.max_queued_requests)
        self.runner = web.AppRunner(build_app(self.engine, settings), handler_cancellation=True, access_log=None,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        while not self.engine.ready.is_set():  # the replica counts as started once its model is loaded
            if self.engine.error is not None:
                raise RuntimeError(f"lmrs replica {self.name}: the engine failed to start: {self.engine.error}")
            await asyncio.sleep(0.2)
        log.info("lmrs replica %s ready on %s", self.name, self.base)

    async def check_health(self):
        if self.engine.error is not None or not self.engine.alive:
            raise RuntimeError(f"lmrs replica {self.name}: engine stopped: {self.engine.error}")

    async def forward(self, key: RouteKey, method: str, path_qs: str, headers: list, body: bytes):
        """Stream one request's answer: {"status", "headers"} first, then body chunks (bytes)."""
        async with self.http.request(method, self.base + path_qs, headers=_kept(headers), data=body or None) as resp:
            yield {"status": resp.status, "headers": _kept(resp.headers.items()) + [(REPLICA_HEADER, self.name)]}
            async for chunk in resp.content.iter_any():
                yield chunk

    async def fetch(self, key: RouteKey, method: str, path_qs: str, headers: list, body: bytes) -> dict:
        """One whole answer (for the fan-out routes): status, headers, body, replica."""
        async with self.http.request(method, self.base + path_qs, headers=_kept(headers), data=body or None) as resp:
            return {"status": resp.status, "headers": _kept(resp.headers.items()), "body": await resp.read(),
                    "replica": self.name}

    async def __del__(self):
        try:
            await self.http.close()
        finally:
            await self.runner.cleanup()  # stops the engine thread (app on_cleanup)


class LmrsIngress:
    """The HTTP endpoint: routes each request to an engine replica, fans the monitoring routes out."""

    def __init__(self, engine, max_body_bytes: int):
        self.engine = engine
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > self.max_body_bytes:
            return _error(413, "the request body is larger than the server's limit")
        path = request.url.path
        path_qs = path + (f"?{request.url.query}" if request.url.query else "")
        headers = list(request.headers.items())
        if request.method == "GET" and path in FAN_OUT_ROUTES:
            return await self._fan_out(path_qs, path, headers)
        key = route_key_of(request.method, path, body)
        stream = self.engine.options(stream=True).forward.remote(key, request.method, path_qs, headers, body)
        try:
            head = await stream.__anext__()
        except Exception as e:  # noqa: BLE001 - a replica that died or failed before answering
            log.warning("%s %s: the engine replica failed before answering: %s: %s", request.method, path,
                        type(e).__name__, e)
            return _error(503, f"the engine replica failed before answering ({type(e).__name__}); retry")
        return StreamingResponse(_rest(stream), status_code=head["status"], headers=dict(head["headers"]))

    async def _replica_names(self, headers) -> list[str]:
        router = ROUTERS.get(ENGINE_DEPLOYMENT)
        if router is None or not router.curr_replicas:  # no call made yet: one brings the router up
            try:
                await self.engine.fetch.remote(RouteKey(), "GET", "/health", headers, b"")
            except Exception as e:  # noqa: BLE001 - no replica answers: the fan-out reports none
                log.warning("no engine replica answered: %s: %s", type(e).__name__, e)
            router = ROUTERS.get(ENGINE_DEPLOYMENT)
        return router.replica_names() if router is not None else []

    async def _fan_out(self, path_qs: str, path: str, headers) -> Response:
        names = await self._replica_names(headers)
        answers = []
        for n in names:
            # One call at a time: calls made while serving one HTTP request share its internal request id,
            # by which Serve's router hands each routed call its replica, so concurrent ones would collide.
            try:
                answers.append(await self.engine.fetch.remote(RouteKey(replica=n), "GET", path_qs, headers, b""))
            except Exception as e:  # noqa: BLE001 - a dead replica is reported, not fatal
                answers.append({"status": 503, "headers": [], "replica": None,
                                "body": json.dumps({"status": "error", "detail": str(e)}).encode()})
        replicas = ",".join(a["replica"] or "?" for a in answers)
        bad = [a for a in answers if a["status"] != 200]
        if path == "/metrics":
            if bad:  # auth errors and the like read as the replica said them
                a = bad[0]
                return Response(a["body"], status_code=a["status"], headers=dict(a["headers"]))
            text = merge_metrics({a["replica"]: a["body"].decode() for a in answers})
            return Response(text, headers={"content-type": "text/plain; version=0.0.4; charset=utf-8",
                                           REPLICA_HEADER: replicas})
        per_replica = {(a["replica"] or f"unreachable-{i}"): _json_or_text(a["body"]) for i, a in enumerate(answers)}
        if path == "/stats":
            return JSONResponse({"replicas": per_replica}, headers={REPLICA_HEADER: replicas})
        ok = bool(answers) and len(bad) < len(answers)  # serving while at least one replica is
        status = ("ok" if path == "/health" else "ready") if ok else "unavailable"
        return JSONResponse({"status": status, "replicas": per_replica}, status_code=200 if ok else 503,
                            headers={REPLICA_HEADER: replicas})


async def _rest(stream):
    async for chunk in stream:
        yield chunk


def _json_or_text(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def _error(status: int, message: str) -> JSONResponse:
    from lmrs.server.errors import error_body

    return JSONResponse(error_body(status, message), status_code=status)


def build_serve_app(engine_cfg, settings, *, replicas: int, num_cpus: float = 1.0, num_gpus: float = 0.0):
    """The Serve application: `replicas` engine replicas behind one ingress."""
    engine = serve.deployment(EngineReplica).options(
        name=ENGINE_DEPLOYMENT, num_replicas=replicas,
        max_ongoing_requests=settings.max_queued_requests + 64,  # the engine's own 503 comes first
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        request_router_config=RequestRouterConfig(
            request_router_class="lmrs.ray_serve.request_router:SessionAffinityRouter"),
        health_check_period_s=5.0, health_check_timeout_s=60.0,
        graceful_shutdown_timeout_s=settings.shutdown_timeout)
    ingress = serve.deployment(LmrsIngress).options(
        name=INGRESS_DEPLOYMENT, num_replicas=1,
        max_ongoing_requests=max(1024, replicas * (settings.max_queued_requests + 64)),
        ray_actor_options={"num_cpus": 0})
    return ingress.bind(engine.bind(engine_cfg, settings), settings.max_body_bytes)
