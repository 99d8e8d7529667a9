"""ServerState: what every handler shares (the async engine, settings, sessions, prompts), and the
lifecycle of one engine request seen from HTTP: submit (engine errors -> HTTP statuses), iterate
its deltas with the request timeout, abort it if the handler leaves early (client gone), and log
one line when it ends."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

from lmrs.engine.async_engine import AsyncEngine, EngineDead, Overloaded, PromptTooLong, RequestStream
from lmrs.engine.llm_engine import RequestDelta
from lmrs.engine.params import InvalidParameter, SamplingParams
from lmrs.server.errors import APIError
from lmrs.server.prompts import PromptBuilder
from lmrs.server.sessions import SessionRegistry
from lmrs.server.settings import ServerSettings

log = logging.getLogger("lmrs.requests")

STATE_KEY = web.AppKey("lmrs_state", object)


class RequestTimeout(Exception):
    pass


@dataclass
class RequestRecord:
    """Per-request facts for the log line and the metrics."""

    request_id: int
    route: str
    session_id: int | None
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    status: int = 200
    queue_time: float | None = None  # arrival -> first scheduled step (seconds)


class ServerState:
    def __init__(self, engine: AsyncEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.sessions = SessionRegistry()
        self._prompts: PromptBuilder | None = None
        self.metrics = None  # lmrs.server.metrics.Metrics when enabled
        self.draining = False  # set on SIGTERM: new requests get 503
        self.ready_cache = {"t": 0.0, "ok": False, "detail": None}  # /health/ready probe result
        self.openapi_doc: dict | None = None

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            self._prompts = PromptBuilder(self.engine.llm.tokenizer)
        return self._prompts

    @property
    def tokenizer(self):
        return self.engine.llm.tokenizer

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

    def submit(self, ids: list[int], params: SamplingParams, **kw) -> RequestStream:
        """Queue a request in the engine, turning engine refusals into HTTP errors."""
        self.require_ready()
        try:
            return self.engine.generate(ids, params, **kw)
        except Overloaded as e:
            raise APIError(503, str(e), headers={"Retry-After": str(int(e.retry_after))}) from None
        except PromptTooLong as e:
            raise APIError(413, str(e)) from None
        except InvalidParameter as e:
            raise APIError(400, str(e)) from None
        except EngineDead as e:
            raise APIError(503, str(e)) from None

    async def deltas(self, stream: RequestStream, rec: RequestRecord) -> AsyncIterator[RequestDelta]:
        """The request's deltas, with the request timeout. Aborts the request if the consumer
        stops early (client disconnected, error) and logs one line at the end."""
        timeout = self.settings.request_timeout or None
        deadline = rec.arrival + timeout if timeout else None
        finished = False
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RequestTimeout()
                    try:
                        d = await asyncio.wait_for(stream.__anext__(), left)
                    except asyncio.TimeoutError:
                        raise RequestTimeout() from None
                else:
                    try:
                        d = await stream.__anext__()
                    except StopAsyncIteration:
                        return
                if d.token_ids and rec.first_token is None:
                    rec.first_token = time.monotonic()
                if d.queue_time is not None and rec.queue_time is None:
                    rec.queue_time = d.queue_time
                rec.output_tokens = d.num_generated
                if d.num_prompt_tokens:
                    rec.prompt_tokens, rec.cached_tokens = d.num_prompt_tokens, d.num_cached_tokens
                if d.finished:
                    finished = True
                    rec.finish_reason = d.finish_reason
                yield d
                if finished:
                    return
        except EngineDead as e:
            rec.finish_reason, rec.status = "error", 503
            raise APIError(503, str(e)) from None
        finally:
            if not finished:
                self.engine.abort(stream.request_id)
                if rec.finish_reason is None:
                    rec.finish_reason = "abort"
            self.log_request(rec)

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
