"""ServerState: what every handler shares: the async engine, the settings, the model facts
(`info`, frozen when the model loaded), the input processor that validates requests, the prompt
builder, and the request log. The server keeps nothing about sessions: the core owns them
(history, EOS state, turns, expiry, and the API key that owns each one)."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from lmrs.engine.async_engine import AsyncEngine
from lmrs.engine.errors import EngineError, InvalidParameter
from lmrs.engine.input_processor import InputProcessor
from lmrs.engine.model_info import ModelInfo
from lmrs.engine.request import EngineRequest
from lmrs.server.errors import APIError
from lmrs.server.grammars import GrammarServices
from lmrs.server.prompts import PromptBuilder
from lmrs.server.requests import RequestGroup, RequestRecord, api_error
from lmrs.server.settings import ServerSettings

log = logging.getLogger("lmrs.requests")

STATE_KEY = web.AppKey("lmrs_state", object)


class ServerState:
    def __init__(self, engine: AsyncEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self._prompts: PromptBuilder | None = None
        self.metrics = None  # lmrs.server.metrics.Metrics when enabled
        self.draining = False  # set on SIGTERM: new requests get 503
        self.ready_cache = {"t": 0.0, "ok": False, "detail": None}  # /health/ready probe result
        self.openapi_doc: dict | None = None
        self.grammars = GrammarServices(self)  # grammar compiler and tool-call parser of the model

    @property
    def info(self) -> ModelInfo:
        return self.engine.model_info

    @property
    def processor(self) -> InputProcessor:
        return self.engine.processor

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            self._prompts = PromptBuilder(self.engine.tokenizer)
        return self._prompts

    def require_ready(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", headers={"Retry-After": "5"})
        if self.engine.error is not None:
            raise APIError(503, f"the engine has stopped: {self.engine.error}")
        if not self.engine.ready.is_set():
            raise APIError(503, "the model is still loading; retry shortly", headers={"Retry-After": "2"})

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.settings.model_name!r} "
                                f"(see GET /v1/models)", err_type="model_not_found")

    def validated(self, make) -> EngineRequest:
        """Run an input-processor call, turning its refusals into HTTP errors."""
        try:
            return make(self.processor)
        except InvalidParameter as e:
            raise APIError(e.status, str(e)) from None

    def track(self, route: str, requests: list[EngineRequest], session_id: int | None = None) -> RequestGroup:
        """`async with state.track(route, requests) as group:` submits, waits for acceptance,
        and aborts and logs on exit (see server/requests.py)."""
        return RequestGroup(self, route, requests, session_id)

    async def cancel_session(self, session_id: int, owner: str | None) -> bool:
        """`stop: true`: abort the session's current turn. 404 for another key's session."""
        self.require_ready()
        try:
            return await self.engine.cancel_session(session_id, owner)
        except EngineError as e:
            raise api_error(e) from None

    def log_request(self, rec: RequestRecord) -> None:
        now = time.monotonic()
        ttft = (rec.first_token - rec.arrival) if rec.first_token else None
        dur = now - (rec.first_token or rec.arrival)
        tps = (rec.output_tokens - 1) / dur if rec.output_tokens > 1 and dur > 0 else 0.0
        if self.metrics is not None:
            self.metrics.observe_request(rec, now)
        if self.settings.log_requests:
            log.info("request id=%s session=%s route=%s prompt_tokens=%d cached_tokens=%d output_tokens=%d "
                     "ttft_ms=%s tokens_per_s=%.1f finish=%s status=%d",
                     rec.request_id, rec.session_id if rec.session_id is not None else "-", rec.route,
                     rec.prompt_tokens, rec.cached_tokens, rec.output_tokens,
                     f"{ttft * 1000:.1f}" if ttft is not None else "-", tps, rec.finish_reason, rec.status,
                     extra={"request": rec.__dict__ | {"ttft_s": ttft, "tokens_per_s": tps}})


def get_state(request: web.Request) -> ServerState:
    return request.app[STATE_KEY]


def api_key_of(request: web.Request) -> str | None:
    return request.get("api_key")
