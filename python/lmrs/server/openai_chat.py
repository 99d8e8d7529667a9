"""POST /v1/chat/completions (OpenAI), stateless by default. Structured output (`response_format`,
`structured_outputs`) and tools (`tools`, `tool_choice`, `parallel_tool_calls`) are translated by
`chat_request.py`; tool calls are parsed out of the output (`message.tool_calls`, streamed as
`delta.tool_calls`, `finish_reason: "tool_calls"`). With a `session_id` it is a session
turn like /generate: send only the new messages, the core keeps the conversation;
`renew_session: true` drops the session's history first, `sequence_end: true` ends the session
after this reply (with `messages: []` and `max_tokens: 0`, at once, without running the model)."""

from __future__ import annotations

from aiohttp import web

from lmrs.server.chat_request import CHAT_OUTPUT_FIELDS, prepare_chat
from lmrs.server.errors import APIError, parse_request
from lmrs.server.openai_common import (DEFAULT_CHAT_MAX_TOKENS, chat_logprobs, error_event, new_id, now,
                                       openai_finish, sampling_params, collect_choices)
from lmrs.server.protocol import ChatCompletionRequest
from lmrs.server.requests import RequestTimeout
from lmrs.server.state import api_key_of, get_state
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
    if not messages and not (sid is not None and req.sequence_end):
        raise APIError(400, "messages: must not be empty (an empty list only ends a session: "
                            "give session_id and sequence_end: true)")
    if sid is not None and req.n != 1:
        raise APIError(400, "n: must be 1 when a session_id is given (a session is one conversation)")
    if sid is None and (req.sequence_end or req.renew_session):
        raise APIError(400, "sequence_end / renew_session: need a session_id")
    body = req.model_dump(include=set(CHAT_OUTPUT_FIELDS))
    owner = api_key_of(request)

    def render(chat):
        if sid is not None:
            return state.prompts.session_turn(chat.messages, sid, sequence_start=req.renew_session,
                                              sequence_end=req.sequence_end, owner=owner, tools=chat.tools)
        return state.prompts.conversation(chat.messages, chat.tools), None

    chat, (ids, turn), grammar = await prepare_chat(state, messages, body, render)
    # a tool-call parser must see the format's markers, even where they are special tokens
    skip_special = req.skip_special_tokens and chat.parser is None

    def params(i):
        return sampling_params(req, max_tokens, want_lp, i, skip_special_tokens=skip_special)

    if sid is not None:
        requests = [state.validated(lambda p: p.generate(ids, params(0), session=turn, grammar=grammar))]
    else:
        requests = [state.validated(lambda p, i=i: p.generate(ids, params(i), grammar=grammar))
                    for i in range(req.n)]
    cid, created, model = new_id("chatcmpl"), now(), state.settings.model_name
    async with state.track("/v1/chat/completions", requests, sid) as group:
        if not req.stream:
            return await _complete(state, req, chat, group, want_lp, cid, created, model)
        return await _stream(request, state, req, chat, group, want_lp, cid, created, model)


def _finish(reason, calls: bool) -> str | None:
    """OpenAI's finish_reason: "tool_calls" when a reply that ended normally made calls."""
    name = openai_finish(reason)
    return "tool_calls" if calls and name == "stop" else name


async def _complete(state, req, chat, group, want_lp, cid, created, model) -> web.Response:
    tok = state.tokenizer
    got = await collect_choices(group, req.n)
    out = []
    for i in range(req.n):
        text = got.texts[i]
        message = {"role": "assistant", "content": text}
        calls = False
        if chat.parser is not None:
            parsed = chat.parser.parse(text, chat.tool_names)
            if parsed.tool_calls:
                calls = True
                message = {"role": "assistant", "content": parsed.content or None,
                           "tool_calls": [c.to_openai() for c in parsed.tool_calls]}
        out.append({"index": i, "message": message, "finish_reason": _finish(got.finish[i], calls),
                    "logprobs": chat_logprobs(tok, got.logprobs[i]) if want_lp is not None else None})
    return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                              "choices": out, "usage": group.usage()})


async def _stream(request, state, req, chat, group, want_lp, cid, created, model) -> web.StreamResponse:
    tok = state.tokenizer
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    parsers = [chat.parser.stream(chat.tool_names) for _ in range(req.n)] if chat.parser is not None else None
    resp = await start_sse(request)

    def chunk(choices_list, usage=None):
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": choices_list}
        if include_usage:
            c["usage"] = usage
        return c

    try:
        for i in range(req.n):
            await write_sse(resp, chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None, "logprobs": None}]))
        async for i, d in group.deltas():
            if not d.text and not d.finished:
                continue
            delta, calls = ({"content": d.text} if d.text else {}), False
            if parsers is not None:
                piece = parsers[i].feed(d.text) if d.text else None
                if d.finished:
                    end = parsers[i].finish()
                    if piece is None:
                        piece = end
                    else:
                        piece.merge(end)
                delta = {}
                if piece is not None and piece.content:
                    delta["content"] = piece.content
                if piece is not None and piece.tool_calls:
                    delta["tool_calls"] = piece.tool_calls
                calls = bool(parsers[i].calls)
            lp = chat_logprobs(tok, d.logprobs) if want_lp is not None and d.logprobs else None
            if not delta and not d.finished and lp is None:
                continue  # text held back by the tool-call parser
            await write_sse(resp, chunk([{"index": i, "delta": delta,
                                          "finish_reason": _finish(d.finish_reason, calls) if d.finished else None,
                                          "logprobs": lp}]))
            if d.error:
                await write_sse(resp, error_event(d.error, d.error_status or 503))
        if include_usage:
            await write_sse(resp, chunk([], group.usage()))
    except RequestTimeout:
        await write_sse(resp, error_event("the request exceeded the server's request timeout"))
    except APIError as e:
        await write_sse(resp, error_event(e.message, e.status))
    await end_sse(resp)
    return resp
