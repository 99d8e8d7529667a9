"""The engine thread's contract with the event loop, with a stand-in LLMEngine (no model): no
command is ever left hanging when the engine stops or dies; the one request-id counter."""

import asyncio
import threading

import pytest

from lmrs.engine.async_engine import AsyncEngine
from lmrs.engine.config import EngineConfig
from lmrs.engine.errors import EngineDead
from lmrs.engine.input_processor import InputProcessor
from lmrs.engine.model_info import ModelInfo
from lmrs.engine.params import SamplingParams
from lmrs.engine.request import EngineRequest, next_request_id


class StandInEngine:
    """What AsyncEngine needs of an LLMEngine: requests are accepted and never progress, and a
    step can be made to fail."""

    def __init__(self, fail_steps=False):
        self.model_info = ModelInfo("stand-in", 64, (0,), 128, 128, 8)
        self.processor = InputProcessor(self.model_info)
        self.tokenizer = None
        self.requests = set()
        self.fail_steps = fail_steps

    def stats(self):
        return {"running": 0, "waiting": len(self.requests)}

    def has_unfinished(self):
        return bool(self.requests)

    def add(self, req):
        self.requests.add(req.request_id)

    def abort_request(self, rid):
        self.requests.discard(rid)

    def step(self):
        if self.fail_steps:
            raise RuntimeError("the device is gone")
        return []


async def started(engine_obj):
    eng = AsyncEngine(EngineConfig(), engine_factory=lambda cfg: engine_obj)
    eng.start(asyncio.get_running_loop())
    assert await asyncio.to_thread(eng.wait_ready, 10)
    return eng


def test_commands_queued_when_the_engine_stops_fail_instead_of_hanging():
    async def main():
        eng = await started(StandInEngine())
        gate = threading.Event()
        first = asyncio.ensure_future(eng.call(lambda llm: gate.wait(10)))  # holds the engine thread
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(eng.call(lambda llm: "never runs"))
        req = eng.processor.generate([1, 2], SamplingParams(max_tokens=4))
        [stream] = eng.submit([req])
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(asyncio.to_thread(eng.shutdown, 10))
        await asyncio.sleep(0.2)
        gate.set()
        await stopping
        assert await first is True
        with pytest.raises(EngineDead):
            await asyncio.wait_for(second, 5)
        with pytest.raises(EngineDead):
            await asyncio.wait_for(stream.accepted, 5)
        assert isinstance(await asyncio.wait_for(stream.queue.get(), 5), EngineDead)
        with pytest.raises(EngineDead):
            await eng.call(lambda llm: 1)
        with pytest.raises(EngineDead):
            eng.submit([eng.processor.generate([1], SamplingParams(max_tokens=1))])

    asyncio.run(main())


def test_commands_fail_when_the_engine_thread_dies():
    async def main():
        eng = await started(StandInEngine(fail_steps=True))
        gate = threading.Event()
        blocker = asyncio.ensure_future(eng.call(lambda llm: gate.wait(10)))
        await asyncio.sleep(0.2)
        req = eng.processor.generate([1, 2], SamplingParams(max_tokens=4))
        [stream] = eng.submit([req])  # its step will fail
        pending = asyncio.ensure_future(eng.call(lambda llm: 1))
        gate.set()
        await blocker
        item = await asyncio.wait_for(stream.queue.get(), 5)
        assert isinstance(item, EngineDead) and "the device is gone" in str(item)
        try:
            await asyncio.wait_for(pending, 5)  # ran before the failing step, or failed with it
        except EngineDead:
            pass
        assert eng.error is not None and not eng.alive
        with pytest.raises(EngineDead):
            await eng.call(lambda llm: 1)

    asyncio.run(main())


def test_one_request_id_counter():
    a = next_request_id()
    r = EngineRequest([1], SamplingParams())
    b = next_request_id()
    assert a < r.request_id < b
