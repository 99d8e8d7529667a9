"""Response writers: newline-delimited JSON (/generate) and Server-Sent Events (OpenAI routes).

Every chunk is one compact JSON object. A client that disconnects makes the write fail (or
cancels the handler); the caller's `finally` then aborts the request in the engine.
"""

from __future__ import annotations

import json

from aiohttp import web


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def start_ndjson(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def write_ndjson(resp: web.StreamResponse, obj) -> None:
    await resp.write((dumps(obj) + "\n").encode())


async def start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   "X-Accel-Buffering": "no"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def write_sse(resp: web.StreamResponse, obj) -> None:
    data = obj if isinstance(obj, str) else dumps(obj)
    await resp.write(f"data: {data}\n\n".encode())


async def end_sse(resp: web.StreamResponse) -> None:
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
