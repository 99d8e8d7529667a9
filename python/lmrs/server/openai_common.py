"""What the OpenAI chat and completions routes share: sampling parameters from a request, running
n choices at once (each its own request in the continuous batch), merging their delta streams,
logprob formatting, and the finish-reason mapping."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

from lmrs.engine.llm_engine import RequestDelta
from lmrs.engine.params import InvalidParameter, SamplingParams
from lmrs.server.errors import APIError
from lmrs.server.state import RequestRecord, RequestTimeout, ServerState

DEFAULT_CHAT_MAX_TOKENS = 512


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def openai_finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return {"length": "length", "error": "error"}.get(reason, "stop")


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def sampling_params(req, max_tokens: int, logprobs: int | None, choice: int) -> SamplingParams:
    seed = None if req.seed is None else (req.seed + choice) & 0x7FFF_FFFF_FFFF_FFFF
    try:
        return SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=max(0, req.top_k), min_p=req.min_p,
                              repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                              frequency_penalty=req.frequency_penalty, max_tokens=max_tokens,
                              min_tokens=min(req.min_tokens, max_tokens), stop=stop_list(req.stop),
                              ignore_eos=req.ignore_eos, seed=seed, logprobs=logprobs,
                              skip_special_tokens=req.skip_special_tokens)
    except InvalidParameter as e:
        raise APIError(400, str(e)) from None


class Choices:
    """n engine requests for one API call, with their records; aborted together on exit."""

    def __init__(self, state: ServerState, route: str):
        self.state = state
        self.route = route
        self.streams = []
        self.records = []

    def add(self, ids: list[int], params: SamplingParams, **kw) -> None:
        try:
            s = self.state.submit(ids, params, **kw)
        except APIError:
            self.abort_all()
            raise
        self.streams.append(s)
        self.records.append(RequestRecord(s.request_id, self.route, kw.get("session_id")))

    def abort_all(self) -> None:
        for s in self.streams:
            if not s.finished:
                self.state.engine.abort(s.request_id)

    async def merged(self) -> AsyncIterator[tuple[int, RequestDelta]]:
        """(choice index, delta) from all choices as they arrive."""
        if len(self.streams) == 1:
            async for d in self.state.deltas(self.streams[0], self.records[0]):
                yield 0, d
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i):
            try:
                async for d in self.state.deltas(self.streams[i], self.records[i]):
                    await queue.put((i, d, None))
            except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
                await queue.put((i, None, e))
            finally:
                await queue.put((i, None, StopAsyncIteration()))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self.streams))]
        done = 0
        try:
            while done < len(tasks):
                i, d, exc = await queue.get()
                if isinstance(exc, StopAsyncIteration):
                    done += 1
                elif exc is not None:
                    raise exc
                else:
                    yield i, d
        finally:
            for t in tasks:
                t.cancel()
            self.abort_all()

    def usage(self, prompt_tokens: int) -> dict:
        completion = sum(r.output_tokens for r in self.records)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def raise_for_error(d: RequestDelta) -> None:
    if d.finished and d.finish_reason == "error":
        raise APIError(d.error_status or 503, d.error or "generation failed")


def timeout_error(state: ServerState) -> APIError:
    return APIError(503, f"the request exceeded the server's request timeout of {state.settings.request_timeout:g} s")


def token_text(tok, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tok, entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    content = []
    for e in entries:
        t = token_text(tok, e["token_id"])
        content.append({"token": t, "logprob": e["logprob"], "bytes": list(t.encode()),
                        "top_logprobs": [{"token": token_text(tok, i), "logprob": lp,
                                          "bytes": list(token_text(tok, i).encode())} for i, lp in e["top"]]})
    return {"content": content}


def completion_logprobs(tok, entries: list[dict] | None, offset: int) -> dict | None:
    if entries is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        t = token_text(tok, e["token_id"])
        offsets.append(offset)
        offset += len(t)
        tokens.append(t)
        lps.append(e["logprob"])
        tops.append({token_text(tok, i): lp for i, lp in e["top"]} or None)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


__all__ = ["Choices", "RequestTimeout", "sampling_params", "new_id", "now", "openai_finish", "raise_for_error",
           "timeout_error", "chat_logprobs", "completion_logprobs", "DEFAULT_CHAT_MAX_TOKENS"]
