"""AsyncEngine: the engine thread behind the HTTP server.

One engine thread owns `LLMEngine` (the Rust core and the model) and loops: drain commands ->
schedule -> run -> update -> hand the step's results to the event loop in one
`call_soon_threadsafe`. HTTP handlers talk to it only through a command queue, so the event loop
never blocks on the model. Idle, the thread sleeps on a condition variable (no busy loop).

The event loop reads model facts from `model_info` (frozen when the model is loaded) and
validates requests with `processor`; it never touches the engine thread's objects. Every
command ends: when the engine stops or fails, queued commands, open streams and pending
futures all get `EngineDead`.
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
from lmrs.engine.errors import EngineDead, EngineError, Overloaded
from lmrs.engine.input_processor import InputProcessor
from lmrs.engine.llm_engine import LLMEngine
from lmrs.engine.memory import release_free_memory
from lmrs.engine.model_info import ModelInfo
from lmrs.engine.outputs import RequestDelta
from lmrs.engine.request import EngineRequest

log = logging.getLogger("lmrs.engine")

__all__ = ["AsyncEngine", "RequestStream", "EngineDead", "Overloaded"]


@dataclass
class RequestStream:
    """The deltas of one request, consumed by its HTTP handler. Several streams may share one
    queue (the requests of one API call); items are RequestDelta or an exception."""

    request_id: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    accepted: asyncio.Future | None = None  # resolved once the engine queued it (or refused it)
    finished: bool = False
    created: float = field(default_factory=time.monotonic)


@dataclass
class _Accepted:
    """The engine thread's answer to an add: queued (error None) or refused."""

    request_id: int
    error: BaseException | None = None


class AsyncEngine:
    """Runs an LLMEngine on its own thread and exposes it to asyncio code."""

    def __init__(self, config: EngineConfig, *, max_queued_requests: int = 1024,
                 engine_factory: Callable[[EngineConfig], LLMEngine] | None = None):
        self.config = config
        self.max_queued_requests = max_queued_requests
        self._factory = engine_factory or (lambda cfg: LLMEngine(cfg))
        self.llm: LLMEngine | None = None  # engine thread only
        self.model_info: ModelInfo | None = None  # set once loaded; safe to read anywhere
        self.processor: InputProcessor | None = None
        self.tokenizer = None  # thread-safe (a Rust tokenizers object)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._cmds: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._streams: dict[int, RequestStream] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False  # the engine thread will not read commands any more
        self.ready = threading.Event()  # the model is loaded
        self.error: BaseException | None = None  # why the engine thread died
        self.error_traceback: str | None = None
        self.stats_snapshot: dict = {}
        self.on_step: Callable[[list[RequestDelta], float], None] | None = None  # metrics hook (event loop)

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
        """Stop the engine thread: it finishes its step and ends. An engine still loading its model
        cannot be interrupted (the thread is inside PyTorch): it is not waited for, and the caller
        should end the process (`os._exit`) rather than tear the interpreter down under it."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None and self.ready.is_set():
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    # ---- requests (event loop thread) ---------------------------------------------------------
    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDead(f"the engine stopped: {type(self.error).__name__}: {self.error}")
        if self._stop or self._closed:
            raise EngineDead("the server is shutting down")
        if not self.ready.is_set():
            raise EngineDead("the model is still loading")

    def submit(self, requests: list[EngineRequest], queue: asyncio.Queue | None = None) -> list[RequestStream]:
        """Queue validated requests (all or none); returns their streams, sharing `queue` when
        given. Await each stream's `accepted` before relying on it (a session owned by another
        key is refused there). Raises Overloaded / EngineDead."""
        self._check_alive()
        if len(self._streams) + len(requests) > self.max_queued_requests:
            raise Overloaded()
        streams = []
        for req in requests:
            s = RequestStream(req.request_id, accepted=self.loop.create_future())
            s.accepted.add_done_callback(_retrieve)  # a refusal nobody awaits any more is not an error
            if queue is not None:
                s.queue = queue
            streams.append(s)
        for s in streams:
            self._streams[s.request_id] = s
        try:
            self._submit_many([("add", req) for req in requests])
        except EngineDead:
            for s in streams:
                self._streams.pop(s.request_id, None)
            raise
        return streams

    def abort(self, request_id: int) -> None:
        """Cancel a request (client gone, timeout). Idempotent."""
        if request_id in self._streams:
            try:
                self._submit_many([("abort", request_id)])
            except EngineDead:
                pass  # the engine is gone: the stream already failed

    async def cancel_session(self, session_id: int, owner: str | None) -> bool:
        """`stop: true`: abort the session's current turn. True when a turn was cancelled.
        Raises SessionNotOwned / EngineDead."""
        return await self._future_command("cancel", session_id, owner)

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(llm) on the engine thread between steps and await its result (tests, tools)."""
        return await self._future_command("call", fn)

    async def _future_command(self, kind: str, *args) -> Any:
        self._check_alive()
        fut = self.loop.create_future()
        self._submit_many([(kind, *args, fut)])
        return await fut

    def _submit_many(self, cmds: list) -> None:
        with self._cv:
            if self._closed:
                raise EngineDead("the engine has stopped")
            self._cmds.extend(cmds)
            self._cv.notify()

    # ---- engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            llm = self.llm = self._factory(self.config)
            self.model_info, self.processor, self.tokenizer = llm.model_info, llm.processor, llm.tokenizer
            self.stats_snapshot = llm.stats()
            self.ready.set()
            self._loop_forever()
            self._close(EngineDead("the server is shutting down"))
            getattr(llm, "close", lambda: None)()  # stop tensor-parallel worker ranks
        except BaseException as e:  # noqa: BLE001 - the thread must report every failure
            self.error = e
            self.error_traceback = traceback.format_exc()
            log.error("engine thread died: %s\n%s", e, self.error_traceback)
            self._close(EngineDead(f"the engine stopped: {type(e).__name__}: {e}"))

    def _close(self, err: EngineDead) -> None:
        """Stop taking commands; every queued command, open stream and future gets `err`."""
        with self._cv:
            self._closed = True
            pending = list(self._cmds)
            self._cmds.clear()
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._fail_all, err, pending)
            except RuntimeError:
                pass  # the loop closed meanwhile

    def _loop_forever(self) -> None:
        llm = self.llm
        # a dead tensor-parallel rank ends an idle engine too (within 1 s); stand-in engines have no ranks
        check_health = getattr(llm, "check_health", lambda: None)
        worked_since_trim = False
        while True:
            with self._cv:
                while not self._cmds and not self._stop and not llm.has_unfinished():
                    if not self._cv.wait(timeout=1.0) and worked_since_trim:
                        release_free_memory()  # idle for a second after work: give freed pages back
                        worked_since_trim = False
                    check_health()
                if self._stop:
                    return
                cmds = list(self._cmds)
                self._cmds.clear()
            items = [item for c in cmds for item in self._apply(c)]
            step_time = 0.0
            if llm.has_unfinished():
                worked_since_trim = True
                t0 = time.perf_counter()
                try:
                    items += llm.step()
                except BaseException:
                    self.stats_snapshot = llm.stats()
                    self._deliver(items, 0.0)  # what the commands produced still goes out
                    raise
                step_time = time.perf_counter() - t0
            # stats first, so a client that sees its request end also sees its effect in /stats
            self.stats_snapshot = llm.stats()
            if items:
                self._deliver(items, step_time)

    def _apply(self, cmd) -> list:
        """Run one command on the engine thread; returns what to deliver to the event loop."""
        llm = self.llm
        kind = cmd[0]
        if kind == "add":
            req = cmd[1]
            try:
                llm.add(req)
            except EngineError as e:  # refused: reported to the request, not fatal
                return [_Accepted(req.request_id, e)]
            return [_Accepted(req.request_id)]
        if kind == "abort":
            d = llm.abort_request(cmd[1])
            return [d] if d is not None else []
        fut = cmd[-1]
        try:
            if kind == "cancel":
                d = llm.cancel_session(cmd[1], cmd[2])
                self._resolve(fut, d is not None, None)
                return [d] if d is not None else []
            if kind == "call":
                self._resolve(fut, cmd[1](llm), None)
                return []
            raise ValueError(f"unknown engine command {kind!r}")
        except Exception as e:  # noqa: BLE001 - reported to the caller
            self._resolve(fut, None, e)
            return []

    def _resolve(self, fut: asyncio.Future, result, exc) -> None:
        self.loop.call_soon_threadsafe(_set_result, fut, result, exc)

    def _deliver(self, items: list, step_time: float) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._dispatch, items, step_time)

    # ---- event loop side ----------------------------------------------------------------------
    def _dispatch(self, items: list, step_time: float) -> None:
        deltas = []
        for item in items:
            if isinstance(item, _Accepted):
                stream = self._streams.get(item.request_id)
                if stream is None:
                    continue
                _set_result(stream.accepted, None, item.error)
                if item.error is not None:
                    self._streams.pop(item.request_id, None)
                    stream.finished = True
                continue
            deltas.append(item)
            stream = self._streams.get(item.request_id)
            if stream is None or stream.finished:
                continue
            stream.queue.put_nowait(item)
            if item.finished:
                stream.finished = True
                self._streams.pop(item.request_id, None)
        if self.on_step is not None:
            self.on_step(deltas, step_time)

    def _fail_all(self, err: EngineDead, pending: list) -> None:
        for cmd in pending:
            if cmd[0] in ("cancel", "call"):
                _set_result(cmd[-1], None, err)
        for stream in self._streams.values():
            _set_result(stream.accepted, None, err)
            stream.queue.put_nowait(err)
            stream.finished = True
        self._streams.clear()


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _set_result(fut: asyncio.Future | None, res, exc) -> None:
    if fut is None or fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)
