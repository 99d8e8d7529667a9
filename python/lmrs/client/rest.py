"""The HTTP client of an lmrs server's REST API, shared by the terminal client and the web UI.

Plain functions use `requests` (for scripts and the terminal client); the `a`-prefixed twins use
`aiohttp` (for async apps such as the Gradio UI, where a blocked thread per open stream would not
scale). Both raise `ServerUnreachable` when nothing answers at the URL and `ServerError` (with the
server's own message) on an HTTP error status.

    for chunk in iter_generate(url, generate_body("Hi", session_id=7, sequence_start=True)):
        print(chunk["text"], end="")        # chunk: {"text", "tokens", "finish_reason"}
    stop(url, 7)                            # cancel the generation running in session 7
    end_session(url, 7)                     # end session 7 and free its KV cache
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import AsyncIterator, Iterator

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 600.0  # a long reply on a slow CPU server
SHORT_TIMEOUT = 30.0  # stop / end session / model list


class ServerError(RuntimeError):
    """The server answered with an error (`status` the HTTP status, or None for a stream error)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class ServerUnreachable(ServerError):
    """Nothing answered at the URL (server not started, wrong host or port, network down)."""


def normalize_url(url: str) -> str:
    """`0.0.0.0:23333/` -> `http://0.0.0.0:23333`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def generate_body(prompt, session_id: int, *, sequence_start: bool, sequence_end: bool = False,
                  stream: bool = True, request_output_len: int = 512, temperature: float = 0.8,
                  top_p: float = 0.8, top_k: int = 40, **extra) -> dict:
    """A /generate request (interactive mode: sequence_start only on a session's first turn)."""
    body = {"prompt": prompt, "session_id": int(session_id), "sequence_start": bool(sequence_start),
            "sequence_end": bool(sequence_end), "stream": bool(stream),
            "request_output_len": int(request_output_len), "temperature": float(temperature),
            "top_p": float(top_p), "top_k": int(top_k)}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def stop_body(session_id: int) -> dict:
    return {"prompt": "", "session_id": int(session_id), "stop": True}


def end_body(session_id: int) -> dict:
    return {"prompt": "", "session_id": int(session_id), "request_output_len": 0,
            "sequence_start": False, "sequence_end": True}


def is_session_full(chunk: dict) -> bool:
    """The server's answer to a turn that would overflow the session: no inference at all."""
    return chunk.get("finish_reason") == "length" and not chunk.get("tokens") and not chunk.get("text")


def error_message(status: int, body: str) -> str:
    try:
        msg = json.loads(body).get("message") or body
    except (ValueError, AttributeError):
        msg = body
    return f"HTTP {status}: {str(msg).strip()[:500]}"


def _unreachable(url: str, e: Exception) -> ServerUnreachable:
    oe = getattr(e, "os_error", None)  # aiohttp's connector errors
    if isinstance(oe, OSError):
        why = os.strerror(oe.errno) if oe.errno and oe.errno > 0 else (oe.strerror or str(oe))
        return ServerUnreachable(f"cannot reach the lmrs server at {url} ({why})")
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(e))  # e.g. "[Errno 111] Connect call failed ..."
    reason = m.group(0).strip() if m else (f"{type(e).__name__}: {e}"[:200] if str(e) else type(e).__name__)
    return ServerUnreachable(f"cannot reach the lmrs server at {url} ({reason})")


def _chunks(lines) -> Iterator[dict]:
    for line in lines:
        line = line.strip()
        if line:
            yield json.loads(line)


# ---- requests (sync) ---------------------------------------------------------------------------
def iter_generate(url: str, body: dict, api_key: str | None = None,
                  timeout: float = READ_TIMEOUT) -> Iterator[dict]:
    """POST /generate with stream=true; yield each NDJSON chunk (the last has a finish_reason)."""
    import requests

    url = normalize_url(url)
    try:
        with requests.post(url + "/generate", json=dict(body, stream=True), headers=auth_headers(api_key),
                           stream=True, timeout=(CONNECT_TIMEOUT, timeout)) as r:
            if r.status_code != 200:
                raise ServerError(error_message(r.status_code, r.text), r.status_code)
            yield from _chunks(r.iter_lines(delimiter=b"\n"))
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(url, e) from None


def _post(url: str, body: dict, api_key: str | None, timeout: float) -> dict:
    import requests

    url = normalize_url(url)
    try:
        r = requests.post(url + "/generate", json=body, headers=auth_headers(api_key),
                          timeout=(CONNECT_TIMEOUT, timeout))
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(url, e) from None
    if r.status_code != 200:
        raise ServerError(error_message(r.status_code, r.text), r.status_code)
    return r.json()


def stop(url: str, session_id: int, api_key: str | None = None, timeout: float = SHORT_TIMEOUT) -> dict:
    """Cancel the generation running in the session (its stream ends with finish_reason "stop")."""
    return _post(url, stop_body(session_id), api_key, timeout)


def end_session(url: str, session_id: int, api_key: str | None = None, timeout: float = SHORT_TIMEOUT) -> dict:
    """End the session (waits for a running turn of it) and free its KV cache."""
    return _post(url, end_body(session_id), api_key, timeout)


def model_name(url: str, api_key: str | None = None, timeout: float = CONNECT_TIMEOUT) -> str:
    """The served model's name, from GET /v1/models."""
    import requests

    url = normalize_url(url)
    try:
        r = requests.get(url + "/v1/models", headers=auth_headers(api_key), timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(url, e) from None
    if r.status_code != 200:
        raise ServerError(error_message(r.status_code, r.text), r.status_code)
    return r.json()["data"][0]["id"]


# ---- aiohttp (async) ---------------------------------------------------------------------------
def _client_timeout(read: float):
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=read)


async def agenerate(url: str, body: dict, api_key: str | None = None,
                    timeout: float = READ_TIMEOUT) -> AsyncIterator[dict]:
    """Async twin of `iter_generate`. Closing the iterator early disconnects, which cancels the request."""
    import aiohttp

    url = normalize_url(url)
    answered = False
    try:
        async with aiohttp.ClientSession(timeout=_client_timeout(timeout)) as s:
            async with s.post(url + "/generate", json=dict(body, stream=True), headers=auth_headers(api_key)) as r:
                answered = True
                if r.status != 200:
                    raise ServerError(error_message(r.status, await r.text()), r.status)
                buf = b""
                async for data in r.content.iter_any():
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for chunk in _chunks(lines):
                        yield chunk
                for chunk in _chunks([buf]):
                    yield chunk
    except asyncio.TimeoutError as e:
        if not answered:
            raise _unreachable(url, e) from None
        raise ServerError(f"the lmrs server at {url} sent nothing for {timeout:g} s") from None
    except aiohttp.ClientConnectionError as e:
        if isinstance(e, aiohttp.ServerDisconnectedError):
            raise ServerUnreachable(f"the lmrs server at {url} closed the connection mid-reply") from None
        raise _unreachable(url, e) from None


async def _apost(url: str, body: dict, api_key: str | None, timeout: float) -> dict:
    import aiohttp

    url = normalize_url(url)
    try:
        async with aiohttp.ClientSession(timeout=_client_timeout(timeout)) as s:
            async with s.post(url + "/generate", json=body, headers=auth_headers(api_key)) as r:
                text = await r.text()
                if r.status != 200:
                    raise ServerError(error_message(r.status, text), r.status)
                return json.loads(text)
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
        raise _unreachable(url, e) from None


async def astop(url: str, session_id: int, api_key: str | None = None, timeout: float = SHORT_TIMEOUT) -> dict:
    return await _apost(url, stop_body(session_id), api_key, timeout)


async def aend_session(url: str, session_id: int, api_key: str | None = None,
                       timeout: float = SHORT_TIMEOUT) -> dict:
    return await _apost(url, end_body(session_id), api_key, timeout)


async def amodel_name(url: str, api_key: str | None = None, timeout: float = CONNECT_TIMEOUT) -> str:
    import aiohttp

    url = normalize_url(url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url + "/v1/models", headers=auth_headers(api_key)) as r:
                text = await r.text()
                if r.status != 200:
                    raise ServerError(error_message(r.status, text), r.status)
                return json.loads(text)["data"][0]["id"]
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
        raise _unreachable(url, e) from None
