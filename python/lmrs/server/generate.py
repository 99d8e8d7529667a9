"""POST /generate: lmdeploy's session-aware generation (interactive mode), streaming NDJSON.

Turn 1 of a session: `sequence_start=true`; later turns: `sequence_start=false` with only the new
user message; the server keeps the token history and KV cache, so a turn prefills only its new
tokens. `sequence_end=true` ends the session; `stop=true` cancels its running generation.
"""

from __future__ import annotations

from aiohttp import web

from lmrs.engine.params import SamplingParams
from lmrs.server.errors import APIError, parse_request
from lmrs.server.protocol import GenerateRequest
from lmrs.server.state import RequestRecord, RequestTimeout, api_key_of, get_state
from lmrs.server.streaming import start_ndjson, write_ndjson


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"  # abort (cancel) and EOS/stop words are "stop"


async def generate(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    req = await parse_request(request, GenerateRequest)
    state.require_ready()
    key = api_key_of(request)
    sid = req.session_id if req.session_id >= 0 else None
    record = state.sessions.check(sid, key) if sid is not None else None

    if req.stop:
        if sid is None:
            raise APIError(400, "stop: true needs a session_id (the session whose generation to cancel)")
        state.engine.cancel_session(sid)
        return web.json_response({"text": "", "tokens": 0, "finish_reason": "stop"})

    start = req.sequence_start or record is None
    if req.prompt == "" or req.prompt == []:
        ids = []  # only update the session (prefill nothing; generate from its history or end it)
    else:
        messages = ([{"role": "user", "content": req.prompt}] if isinstance(req.prompt, str)
                    else [m.model_dump(exclude_none=True) for m in req.prompt])
        ids = state.prompts.turn(messages, None if start else record)
    if sid is None and not ids:
        raise APIError(400, "prompt: is empty (an empty prompt only makes sense with a session_id)")

    params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                            repetition_penalty=req.repetition_penalty, max_tokens=req.request_output_len,
                            stop=req.stop_words, ignore_eos=req.ignore_eos, seed=req.seed)
    stream = state.submit(ids, params, session_id=sid, sequence_start=start, sequence_end=req.sequence_end)
    if sid is not None:
        if start:
            record = state.sessions.start(sid, key)
        record.turns += 1
    rec = RequestRecord(stream.request_id, "/generate", sid)
    eos_ids = set(state.engine.llm.model_config.eos_token_ids)

    def after(d):
        """Remember whether the session's history ends with EOS; forget ended sessions."""
        if sid is None:
            return
        if d.token_ids:
            record.ends_with_eos = d.token_ids[-1] in eos_ids
        if d.finished and req.sequence_end:
            state.sessions.end(sid)

    if not req.stream:
        text, tokens, finish, refused = [], 0, None, False
        try:
            async for d in state.deltas(stream, rec):
                text.append(d.text)
                tokens = d.num_generated
                after(d)
                if d.finished:
                    finish, refused = d.finish_reason, d.refused
                    if finish == "error":
                        raise APIError(d.error_status or 503, d.error or "generation failed")
        except RequestTimeout:
            raise APIError(503, f"the request exceeded the server's request timeout of "
                                f"{state.settings.request_timeout:g} s") from None
        if refused:
            return web.json_response({"text": "", "tokens": 0, "finish_reason": "length"})
        return web.json_response({"text": "".join(text), "tokens": tokens, "finish_reason": _finish(finish)})

    resp = await start_ndjson(request)
    try:
        async for d in state.deltas(stream, rec):
            after(d)
            if d.finished:
                if d.refused:
                    await write_ndjson(resp, {"text": "", "tokens": 0, "finish_reason": "length"})
                elif d.finish_reason == "error":
                    await write_ndjson(resp, {"text": d.text, "tokens": d.num_generated, "finish_reason": "error",
                                              "error": d.error or "generation failed"})
                else:
                    await write_ndjson(resp, {"text": d.text, "tokens": d.num_generated,
                                              "finish_reason": _finish(d.finish_reason)})
            elif d.text:
                await write_ndjson(resp, {"text": d.text, "tokens": d.num_generated, "finish_reason": None})
    except RequestTimeout:
        await write_ndjson(resp, {"text": "", "tokens": rec.output_tokens, "finish_reason": "error",
                                  "error": "the request exceeded the server's request timeout"})
    except APIError as e:
        await write_ndjson(resp, {"text": "", "tokens": rec.output_tokens, "finish_reason": "error", "error": e.message})
    await resp.write_eof()
    return resp
