"""The aiohttp application: middlewares (errors as JSON, API keys), routes, health, OpenAPI."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from lmrs.engine.async_engine import AsyncEngine
from lmrs.engine.outputs import FinishReason
from lmrs.engine.params import SamplingParams
from lmrs.server import docs
from lmrs.server.errors import APIError, error_response
from lmrs.server.generate import generate
from lmrs.server.openai_chat import chat_completions
from lmrs.server.openai_completions import completions
from lmrs.server.openai_misc import embeddings, list_models
from lmrs.server.openai_responses import RESPONSES_KEY, create_response, delete_response, get_response, make_store
from lmrs.server.openapi import build_openapi
from lmrs.server.settings import ServerSettings
from lmrs.server.state import STATE_KEY, ServerState, get_state
from lmrs.server.tokenize import detokenize, tokenize

log = logging.getLogger("lmrs.server")

PUBLIC_PATHS = ("/health", "/health/ready")
READY_CACHE_S = 5.0


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except APIError as e:
        return error_response(e.status, e.message, err_type=e.err_type, headers=e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = {404: f"no route {request.method} {request.path}; see GET /openapi.json",
               405: f"method {request.method} is not allowed on {request.path}",
               413: "the request body is larger than the server's limit"}.get(e.status, e.reason)
        return error_response(e.status, msg, headers={k: v for k, v in e.headers.items() if k == "Allow"})
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        raise
    except Exception as e:  # noqa: BLE001 - never an HTML 500; log and answer JSON
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(e).__name__}: {e}")


def auth_middleware(keys: list[str]):
    allowed = set(keys)

    @web.middleware
    async def check(request: web.Request, handler):
        if request.path in PUBLIC_PATHS or docs.is_public(request.path):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in allowed:
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
        request["api_key"] = key.strip()
        return await handler(request)

    return check


async def health(request: web.Request) -> web.Response:
    state = get_state(request)
    eng = state.engine
    if eng.error is not None:
        return web.json_response({"status": "error", "detail": f"engine stopped: {eng.error}"}, status=503)
    if not eng.ready.is_set():
        return web.json_response({"status": "loading"}, status=503)
    if not eng.alive:
        return web.json_response({"status": "error", "detail": "engine thread is not running"}, status=503)
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: a real one-token generation, cached for a few seconds."""
    state = get_state(request)
    live = await health(request)
    if live.status != 200:
        return live
    cache = state.ready_cache
    if time.monotonic() - cache["t"] > READY_CACHE_S:
        ok, detail = False, None
        try:
            ids = state.tokenizer.encode("ready", add_special_tokens=False) or [0]
            probe = state.validated(lambda p: p.generate(ids, SamplingParams(temperature=0, max_tokens=1)))

            async def one_token():
                async with state.track("/health/ready", [probe]) as group:
                    async for _, d in group.deltas():
                        if d.finished:
                            return d.finish_reason in (FinishReason.STOP, FinishReason.LENGTH), d.error
                return False, "the probe ended without a result"

            try:
                ok, detail = await asyncio.wait_for(one_token(), 30)
            except asyncio.TimeoutError:
                ok, detail = False, "a one-token generation took longer than 30 s"
        except Exception as e:  # noqa: BLE001
            detail = str(e)
        cache.update(t=time.monotonic(), ok=ok, detail=detail)
    if cache["ok"]:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not_ready", "detail": cache["detail"]}, status=503)


async def openapi_json(request: web.Request) -> web.Response:
    state = get_state(request)
    if state.openapi_doc is None:
        state.openapi_doc = build_openapi(state.settings.model_name, metrics=state.settings.enable_metrics,
                                          auth=bool(state.settings.api_keys))
    return web.json_response(state.openapi_doc)


def build_app(engine: AsyncEngine, settings: ServerSettings) -> web.Application:
    middlewares = [errors_middleware]
    if settings.api_keys:
        middlewares.append(auth_middleware(settings.api_keys))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    state = ServerState(engine, settings)
    app[STATE_KEY] = state
    if settings.enable_metrics:
        from lmrs.server.metrics import Metrics, metrics_handler

        state.metrics = Metrics(state)
        app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/generate", generate)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    # Responses API (stored responses on core sessions) and the tokenizer routes
    app[RESPONSES_KEY] = make_store(engine.config)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/stats", stats)
    docs.add_routes(app)

    async def on_startup(app):
        if engine.loop is None:
            engine.start(asyncio.get_running_loop())
        state.grammars.warm_when_ready()

    async def on_cleanup(app):
        engine.shutdown()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def stats(request: web.Request) -> web.Response:
    """Engine statistics: block pool (free / used / cached), prefix cache, queues, sessions."""
    state = get_state(request)
    s = dict(state.engine.stats_snapshot)
    s["unfinished_requests"] = state.engine.num_unfinished
    s["grammar_compiler"] = state.grammars.stats()
    return web.json_response(s)
