"""AsyncEngine: the engine thread behind the HTTP server.

One engine thread owns `LLMEngine` (the Rust core and the model) and loops: drain commands ->
schedule -> run -> update -> hand the step's deltas to the event loop in one
`call_soon_threadsafe`. HTTP handlers talk to it only through a command queue, so the event loop
never blocks on the model. Idle, the thread sleeps on a condition variable (no busy loop).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from lmrs.engine.config import EngineConfig
from lmrs.engine.llm_engine import LLMEngine, RequestDelta, StepError
from lmrs.engine.memory import release_free_memory
from lmrs.engine.params import InvalidParameter, SamplingParams

log = logging.getLogger("lmrs.engine")


class EngineDead(RuntimeError):
    """The engine thread has stopped (it crashed, or the server is shutting down)."""


class Overloaded(RuntimeError):
    """Too many requests are queued; retry later."""

    def __init__(self, retry_after: float = 1.0):
        super().__init__("the server is overloaded: too many requests are queued; retry later")
        self.retry_after = retry_after


@dataclass
class RequestStream:
    """The deltas of one request, consumed by its HTTP handler with `async for`."""

    request_id: int
    session_id: int | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: bool = False
    created: float = field(default_factory=time.monotonic)

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestDelta:
        if self.finished and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item


class AsyncEngine:
    """Runs an LLMEngine on its own thread and exposes it to asyncio code."""

    def __init__(self, config: EngineConfig, *, max_queued_requests: int = 1024,
                 engine_factory: Callable[[EngineConfig], LLMEngine] | None = None):
        self.config = config
        self.max_queued_requests = max_queued_requests
        self._factory = engine_factory or (lambda cfg: LLMEngine(cfg))
        self.llm: LLMEngine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._cmds: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._streams: dict[int, RequestStream] = {}
        self._session_active: dict[int, int] = {}  # session id -> running request id
        self._thread: threading.Thread | None = None
        self._stop = False
        self.ready = threading.Event()  # the model is loaded
        self.error: BaseException | None = None  # why the engine thread died
        self.error_traceback: str | None = None
        self.stats_snapshot: dict = {}
        self.on_step: Callable[[list[RequestDelta], float], None] | None = None  # metrics hook (event loop)
        self._next_id = 1

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="lmrs-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    # ---- requests (event loop thread) ---------------------------------------------------------
    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDead(f"the engine stopped: {type(self.error).__name__}: {self.error}")
        if self._stop:
            raise EngineDead("the server is shutting down")
        if not self.ready.is_set():
            raise EngineDead("the model is still loading")

    def new_request_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def generate(self, prompt_token_ids: list[int], params: SamplingParams, *, session_id: int | None = None,
                 sequence_start: bool = True, sequence_end: bool = False, session_len: int | None = None,
                 request_id: int | None = None) -> RequestStream:
        """Submit a request; returns its stream. Raises Overloaded / EngineDead / InvalidParameter."""
        self._check_alive()
        if len(self._streams) >= self.max_queued_requests:
            raise Overloaded()
        self.validate(prompt_token_ids, params, session_id)
        rid = request_id if request_id is not None else self.new_request_id()
        stream = RequestStream(rid, session_id)
        self._streams[rid] = stream
        if session_id is not None and session_id >= 0:
            self._session_active[session_id] = rid
        self._submit(("add", rid, list(prompt_token_ids), params,
                      dict(session_id=session_id, sequence_start=sequence_start, sequence_end=sequence_end,
                           session_len=session_len)))
        return stream

    def validate(self, prompt_token_ids, params: SamplingParams, session_id: int | None) -> None:
        """The cheap checks of LLMEngine.add_request, done before queueing so errors become HTTP 4xx."""
        llm = self.llm
        vocab = llm.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidParameter("prompt", f"contains a token id outside the vocabulary (size {vocab})")
        if (session_id is None or session_id < 0) and len(prompt_token_ids) + min(params.max_tokens, 1) > llm.max_model_len:
            raise PromptTooLong(len(prompt_token_ids), llm.max_model_len)
        if (session_id is None or session_id < 0) and not prompt_token_ids and params.max_tokens > 0:
            raise InvalidParameter("prompt", "is empty: give at least one token to generate from")

    def abort(self, request_id: int) -> None:
        """Cancel a request (client gone, cancel, timeout). Idempotent."""
        if request_id in self._streams:
            self._submit(("abort", request_id))

    def cancel_session(self, session_id: int) -> bool:
        """Stop the generation now running in a session (its KV stays with the session)."""
        rid = self._session_active.get(session_id)
        if rid is None or rid not in self._streams:
            return False
        self.abort(rid)
        return True

    def end_session(self, session_id: int) -> None:
        self._submit(("end_session", session_id))

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(llm) on the engine thread between steps and await its result (embeddings, stats)."""
        self._check_alive()
        fut = self.loop.create_future()
        self._submit(("call", fn, fut))
        return await fut

    def _submit(self, cmd) -> None:
        with self._cv:
            self._cmds.append(cmd)
            self._cv.notify()

    # ---- engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.llm = self._factory(self.config)
            self.stats_snapshot = self.llm.stats()
            self.ready.set()
            self._loop_forever()
        except BaseException as e:  # noqa: BLE001 - the thread must report every failure
            self.error = e
            self.error_traceback = traceback.format_exc()
            log.error("engine thread died: %s\n%s", e, self.error_traceback)
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self._fail_all, e)

    def _loop_forever(self) -> None:
        llm = self.llm
        worked_since_trim = False
        while True:
            with self._cv:
                while not self._cmds and not self._stop and not llm.has_unfinished():
                    if not self._cv.wait(timeout=1.0) and worked_since_trim:
                        release_free_memory()  # idle for a second after work: give freed pages back
                        worked_since_trim = False
                if self._stop:
                    return
                cmds = list(self._cmds)
                self._cmds.clear()
            early = [d for c in cmds if (d := self._apply(c)) is not None]
            deltas, step_time = early, 0.0
            if llm.has_unfinished():
                worked_since_trim = True
                t0 = time.perf_counter()
                try:
                    deltas = early + llm.step()
                except StepError as e:
                    self.stats_snapshot = llm.stats()
                    self._deliver(early + e.deltas, 0.0)
                    raise e.cause
                step_time = time.perf_counter() - t0
            # stats first, so a client that sees its request end also sees its effect in /stats
            self.stats_snapshot = llm.stats()
            if deltas:
                self._deliver(deltas, step_time)

    def _apply(self, cmd) -> RequestDelta | None:
        llm = self.llm
        kind = cmd[0]
        if kind == "add":
            _, rid, ids, params, kw = cmd
            try:
                llm.add_request(ids, params, request_id=rid, **kw)
            except Exception as e:  # noqa: BLE001 - reported to the request, not fatal
                return RequestDelta(rid, "", [], 0, True, "error", error=str(e), error_status=400)
        elif kind == "abort":
            return llm.abort_request(cmd[1])
        elif kind == "end_session":
            llm.end_session(cmd[1])
        elif kind == "call":
            _, fn, fut = cmd
            try:
                res = fn(llm)
                self.loop.call_soon_threadsafe(_set_result, fut, res, None)
            except Exception as e:  # noqa: BLE001
                self.loop.call_soon_threadsafe(_set_result, fut, None, e)
        return None

    def _deliver(self, deltas: list[RequestDelta], step_time: float) -> None:
        if deltas and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._dispatch, deltas, step_time)

    # ---- event loop side ----------------------------------------------------------------------
    def _dispatch(self, deltas: list[RequestDelta], step_time: float) -> None:
        for d in deltas:
            stream = self._streams.get(d.request_id)
            if stream is None or stream.finished:
                continue
            stream.queue.put_nowait(d)
            if d.finished:
                self._streams.pop(d.request_id, None)
                sid = stream.session_id
                if sid is not None and self._session_active.get(sid) == d.request_id:
                    del self._session_active[sid]
        if self.on_step is not None:
            self.on_step(deltas, step_time)

    def _fail_all(self, exc: BaseException) -> None:
        err = EngineDead(f"the engine stopped: {type(exc).__name__}: {exc}")
        for stream in self._streams.values():
            stream.queue.put_nowait(err)
        self._streams.clear()
        self._session_active.clear()


class PromptTooLong(InvalidParameter):
    def __init__(self, n: int, limit: int):
        super().__init__("prompt", f"has {n} tokens but the context length is {limit} tokens "
                                   f"(including at least one generated token); shorten it")
        self.num_tokens = n
        self.limit = limit


def _set_result(fut: asyncio.Future, res, exc) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)
