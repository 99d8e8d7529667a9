"""The lifecycle of one API call's engine requests, seen from HTTP.

    async with RequestGroup(state, "/generate", [request]) as group:   # submitted and accepted
        async for i, delta in group.deltas():                          # merged, with the timeout
            ...

Entering submits the requests and waits until the engine has queued them, so refusals become
HTTP errors before any response starts (503 overloaded or stopped, 404 a session of another
key, 400/413 invalid). Leaving early for any reason (the client disconnected, even before the
first delta; an error; the request timeout) aborts whatever is unfinished. Each request is
logged once, with the real status of its outcome (the route's own, or 499 when the client left,
503 for a timeout or an engine failure), and observed by the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from lmrs.engine.errors import EngineError, Overloaded
from lmrs.engine.outputs import FinishReason, RequestDelta
from lmrs.engine.request import EngineRequest
from lmrs.server.errors import APIError

if TYPE_CHECKING:
    from lmrs.server.state import ServerState

log = logging.getLogger("lmrs.requests")

CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the end


class RequestTimeout(Exception):
    """The call ran past the server's --request-timeout."""


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
    finish_reason: str | None = None  # FinishReason.label, or "abort" when the server ended it
    status: int = 200
    queue_time: float | None = None  # arrival -> first scheduled step (seconds)
    error: str | None = None


def api_error(e: EngineError) -> APIError:
    """An engine refusal as the HTTP error every route answers."""
    headers = {"Retry-After": str(int(e.retry_after))} if isinstance(e, Overloaded) else None
    return APIError(e.status, str(e), headers=headers)


class RequestGroup:
    """The engine requests of one API call (n choices, several prompts or inputs)."""

    def __init__(self, state: "ServerState", route: str, requests: list[EngineRequest],
                 session_id: int | None = None):
        self.state = state
        self.route = route
        self.requests = requests
        self.records = [RequestRecord(r.request_id, route, session_id) for r in requests]
        self._index = {r.request_id: i for i, r in enumerate(requests)}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._streams = []
        self._done = [False] * len(requests)
        timeout = state.settings.request_timeout
        self._deadline = time.monotonic() + timeout if timeout else None

    async def __aenter__(self) -> "RequestGroup":
        state = self.state
        state.require_ready()
        try:
            self._streams = state.engine.submit(self.requests, self._queue)
            await asyncio.gather(*(s.accepted for s in self._streams))
        except BaseException as e:
            status = e.status if isinstance(e, EngineError) else CLIENT_CLOSED
            await self._close(status, log_them=bool(self._streams))
            if isinstance(e, EngineError):
                raise api_error(e) from None
            raise
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = 200
        elif issubclass(exc_type, (asyncio.CancelledError, ConnectionError)):
            status = CLIENT_CLOSED
        elif issubclass(exc_type, RequestTimeout):
            status = 503
        elif isinstance(exc, APIError):
            status = exc.status
        else:
            status = 500
        await self._close(status)

    async def _close(self, status: int, log_them: bool = True) -> None:
        """Abort what is unfinished and log every request once. `status`: how the call ended."""
        for i, s in enumerate(self._streams):
            rec = self.records[i]
            if not self._done[i]:
                self.state.engine.abort(s.request_id)
                rec.finish_reason = rec.finish_reason or "abort"
                if rec.status == 200:  # not already marked (timeout, engine failure)
                    rec.status = status if status != 200 else CLIENT_CLOSED
            elif rec.status == 200 and status not in (200, CLIENT_CLOSED):
                rec.status = status
            if log_them:
                self.state.log_request(rec)

    def _end_unfinished(self, reason: str, status: int) -> None:
        for i, done in enumerate(self._done):
            if not done and self.records[i].status == 200:
                self.records[i].finish_reason, self.records[i].status = reason, status

    def _observe(self, i: int, d: RequestDelta) -> None:
        rec = self.records[i]
        if d.token_ids and rec.first_token is None:
            rec.first_token = time.monotonic()
        if d.queue_time is not None and rec.queue_time is None:
            rec.queue_time = d.queue_time
        rec.output_tokens = d.num_generated
        if d.num_prompt_tokens:
            rec.prompt_tokens, rec.cached_tokens = d.num_prompt_tokens, d.num_cached_tokens
        if d.finished:
            self._done[i] = True
            rec.finish_reason = d.finish_reason.label
            if d.finish_reason == FinishReason.ERROR:
                rec.status, rec.error = d.error_status or 503, d.error

    async def deltas(self) -> AsyncIterator[tuple[int, RequestDelta]]:
        """(request index, delta) as they arrive, until every request finished. Raises
        RequestTimeout past the deadline, APIError(503) if the engine stops."""
        while not all(self._done):
            if self._deadline is None:
                item = await self._queue.get()
            else:
                left = self._deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise asyncio.TimeoutError
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    self._end_unfinished("abort", 503)
                    raise RequestTimeout() from None
            if isinstance(item, BaseException):
                self._end_unfinished("error", 503)
                self._done = [True] * len(self._done)  # the engine is gone: nothing to abort
                raise APIError(503, str(item)) from None
            i = self._index.get(item.request_id)
            if i is None or self._done[i]:
                continue
            self._observe(i, item)
            yield i, item

    def usage(self, prompt_tokens: int | None = None) -> dict:
        """OpenAI usage: prompt tokens (by default the first request's context: history +
        prompt), completion tokens of every request, and the cached part of the prompt."""
        first = self.records[0]
        prompt = first.prompt_tokens if prompt_tokens is None else prompt_tokens
        completion = sum(r.output_tokens for r in self.records)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": first.cached_tokens}}

    def timeout_error(self) -> APIError:
        return APIError(503, f"the request exceeded the server's request timeout of "
                             f"{self.state.settings.request_timeout:g} s")
