"""POST /generate: lmdeploy's session-aware generation (interactive mode), streaming NDJSON.

Turn 1 of a session: `sequence_start=true`; later turns: `sequence_start=false` with only the new
user message; the core keeps the token history and KV cache, so a turn prefills only its new
tokens. Turns of one session run one after the other. `sequence_end=true` ends the session
(with nothing to generate: at once, without running the model). `stop=true` cancels the turn the
session is running now; turns queued behind it run afterwards. `response_format` /
`structured_outputs` constrain this turn's output (a JSON schema, regex, choice or grammar); the
session's history is untouched by it.
"""

from __future__ import annotations

from aiohttp import web

from lmrs.engine.outputs import FinishReason
from lmrs.engine.params import InvalidParameter, SamplingParams
from lmrs.server.chat_request import CHAT_OUTPUT_FIELDS
from lmrs.server.errors import APIError, parse_request
from lmrs.server.grammars import compile_constraint, spec_of
from lmrs.server.protocol import GenerateRequest
from lmrs.server.requests import RequestTimeout
from lmrs.server.state import api_key_of, get_state
from lmrs.server.streaming import start_ndjson, write_ndjson

#: /generate's words for each reason: a cancel (abort) reads "stop" as in lmdeploy, a refused
#: session turn "length" (with no text and no tokens).
GENERATE_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.ABORT: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.REFUSED: "length",
    FinishReason.ERROR: "error",
}


def _chunk(d) -> dict:
    if d.refused:
        return {"text": "", "tokens": 0, "finish_reason": "length"}
    out = {"text": d.text, "tokens": d.num_generated,
           "finish_reason": GENERATE_FINISH[d.finish_reason] if d.finished else None}
    if d.finish_reason == FinishReason.ERROR:
        out["error"] = d.error or "generation failed"
    return out


async def generate(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    req = await parse_request(request, GenerateRequest)
    state.require_ready()
    key = api_key_of(request)
    sid = req.session_id if req.session_id >= 0 else None

    if req.stop:
        if sid is None:
            raise APIError(400, "stop: true needs a session_id (the session whose generation to cancel)")
        await state.cancel_session(sid, key)
        return web.json_response({"text": "", "tokens": 0, "finish_reason": "stop"})

    if req.prompt == "" or req.prompt == []:
        messages = []  # only update the session (prefill nothing; generate from its history or end it)
    else:
        messages = ([{"role": "user", "content": req.prompt}] if isinstance(req.prompt, str)
                    else [m.model_dump(exclude_none=True) for m in req.prompt])
    spec = spec_of(req.model_dump(include=set(CHAT_OUTPUT_FIELDS)))
    grammar = await compile_constraint(state, spec)
    try:
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                repetition_penalty=req.repetition_penalty, max_tokens=req.request_output_len,
                                stop=req.stop_words, ignore_eos=req.ignore_eos, seed=req.seed)
    except InvalidParameter as e:
        raise APIError(400, str(e)) from None
    if sid is None:
        ids = state.prompts.conversation(messages) if messages else []
        engine_req = state.validated(lambda p: p.generate(ids, params, grammar=grammar))
    else:
        ids, turn = state.prompts.session_turn(messages, sid, sequence_start=req.sequence_start,
                                               sequence_end=req.sequence_end, owner=key)
        engine_req = state.validated(lambda p: p.generate(ids, params, session=turn, grammar=grammar))

    async with state.track("/generate", [engine_req], sid) as group:
        if not req.stream:
            text, last = [], None
            try:
                async for _, d in group.deltas():
                    text.append(d.text)
                    last = d
            except RequestTimeout:
                raise group.timeout_error() from None
            if last.finish_reason == FinishReason.ERROR:
                raise APIError(last.error_status or 503, last.error or "generation failed")
            out = _chunk(last)
            if not last.refused:
                out["text"] = "".join(text)
            return web.json_response(out)

        resp = await start_ndjson(request)
        try:
            async for _, d in group.deltas():
                if d.finished or d.text:
                    await write_ndjson(resp, _chunk(d))
        except RequestTimeout:
            await write_ndjson(resp, {"text": "", "tokens": group.records[0].output_tokens, "finish_reason": "error",
                                      "error": "the request exceeded the server's request timeout"})
        except APIError as e:
            await write_ndjson(resp, {"text": "", "tokens": group.records[0].output_tokens, "finish_reason": "error",
                                      "error": e.message})
        await resp.write_eof()
        return resp
