"""POST /v1/chat/completions (OpenAI), stateless by default; with a `session_id` it keeps the
conversation on the server like /generate (send only the new messages; `renew_session` restarts)."""

from __future__ import annotations

from aiohttp import web

from lmrs.server.errors import APIError, parse_request
from lmrs.server.openai_common import (DEFAULT_CHAT_MAX_TOKENS, Choices, chat_logprobs, new_id, now, openai_finish,
                                       raise_for_error, sampling_params, timeout_error)
from lmrs.server.protocol import ChatCompletionRequest
from lmrs.server.state import RequestTimeout, api_key_of, get_state
from lmrs.server.streaming import end_sse, start_sse, write_sse


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    req = await parse_request(request, ChatCompletionRequest)
    state.require_ready()
    state.check_model(req.model)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = DEFAULT_CHAT_MAX_TOKENS
    want_lp = req.top_logprobs or 0 if req.logprobs else None
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs: true")
    messages = ([{"role": "user", "content": req.messages}] if isinstance(req.messages, str)
                else [m.model_dump(exclude_none=True) for m in req.messages])

    sid = req.session_id if req.session_id >= 0 else None
    key = api_key_of(request)
    if sid is not None:
        if req.n != 1:
            raise APIError(400, "n: must be 1 when a session_id is given (a session is one conversation)")
        record = state.sessions.check(sid, key)
        start = req.renew_session or record is None
        ids = state.prompts.turn(messages, None if start else record)
    else:
        start, record = True, None
        ids = state.prompts.conversation(messages)

    choices = Choices(state, "/v1/chat/completions")
    for i in range(req.n):
        kw = dict(session_id=sid, sequence_start=start) if sid is not None else {}
        choices.add(ids, sampling_params(req, max_tokens, want_lp, i), **kw)
    if sid is not None and start:
        record = state.sessions.start(sid, key)
    eos_ids = set(state.engine.llm.model_config.eos_token_ids)
    tok = state.tokenizer
    cid, created, model = new_id("chatcmpl"), now(), state.settings.model_name

    def track(d):
        if record is not None and d.token_ids:
            record.ends_with_eos = d.token_ids[-1] in eos_ids

    if not req.stream:
        texts = [[] for _ in range(req.n)]
        lps = [[] for _ in range(req.n)]
        finish = [None] * req.n
        try:
            async for i, d in choices.merged():
                raise_for_error(d)
                track(d)
                texts[i].append(d.text)
                if d.logprobs:
                    lps[i].extend(d.logprobs)
                if d.finished:
                    finish[i] = d.finish_reason
        except RequestTimeout:
            raise timeout_error(state) from None
        out = [{"index": i, "message": {"role": "assistant", "content": "".join(texts[i])},
                "finish_reason": openai_finish(finish[i]),
                "logprobs": chat_logprobs(tok, lps[i]) if want_lp is not None else None} for i in range(req.n)]
        return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                  "choices": out, "usage": choices.usage(len(ids))})

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    resp = await start_sse(request)

    def chunk(choices_list, usage=None):
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices_list}
        if include_usage:
            c["usage"] = usage
        return c

    try:
        for i in range(req.n):
            await write_sse(resp, chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None, "logprobs": None}]))
        async for i, d in choices.merged():
            track(d)
            if d.finished and d.finish_reason == "error":
                await write_sse(resp, {"object": "error", "message": d.error or "generation failed",
                                       "type": "internal_error", "code": d.error_status or 503})
                continue
            if not d.text and not d.finished:
                continue
            await write_sse(resp, chunk([{"index": i, "delta": {"content": d.text} if d.text else {},
                                          "finish_reason": openai_finish(d.finish_reason) if d.finished else None,
                                          "logprobs": chat_logprobs(tok, d.logprobs) if want_lp is not None else None}]))
        if include_usage:
            await write_sse(resp, chunk([], choices.usage(len(ids))))
    except (RequestTimeout, APIError) as e:
        msg = e.message if isinstance(e, APIError) else "the request exceeded the server's request timeout"
        await write_sse(resp, {"object": "error", "message": msg, "type": "internal_error", "code": 503})
    await end_sse(resp)
    return resp
