"""POST /v1/completions (OpenAI legacy completions): a string, a list of strings, token ids or a
list of token-id lists; n choices per prompt; echo; logprobs; SSE streaming; structured output
(`response_format`, `structured_outputs`: every choice follows the grammar, each with its own matcher)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from lmrs.server.chat_request import CHAT_OUTPUT_FIELDS
from lmrs.server.grammars import compile_constraint, spec_of

from lmrs.server.errors import APIError, parse_request
from lmrs.server.openai_common import (collect_choices, completion_logprobs, error_event, new_id, now, openai_finish,
                                       sampling_params)
from lmrs.server.protocol import MAX_N, CompletionRequest
from lmrs.server.requests import RequestTimeout
from lmrs.server.state import get_state
from lmrs.server.streaming import end_sse, start_sse, write_sse


def prompts_of(req: CompletionRequest, tok) -> list[tuple[str | None, list[int]]]:
    p = req.prompt
    if isinstance(p, str):
        return [(p, tok.encode(p, add_special_tokens=tok.add_bos_token))]
    if p and isinstance(p[0], str):
        return [(s, tok.encode(s, add_special_tokens=tok.add_bos_token)) for s in p]
    if p and isinstance(p[0], int):
        return [(None, list(p))]
    return [(None, list(ids)) for ids in p]


async def completions(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    req = await parse_request(request, CompletionRequest)
    state.require_ready()
    state.check_model(req.model)
    if req.suffix:
        raise APIError(400, "suffix: is not supported by this server (insertion needs a fill-in-the-middle model)")
    tok = state.tokenizer
    spec = spec_of(req.model_dump(include=set(CHAT_OUTPUT_FIELDS)))
    compiling = asyncio.ensure_future(compile_constraint(state, spec)) if spec is not None else None
    try:
        prompts = prompts_of(req, tok)
    except BaseException:
        if compiling is not None:
            compiling.cancel()
            await asyncio.gather(compiling, return_exceptions=True)
        raise
    grammar = await compiling if compiling is not None else None
    if len(prompts) * req.n > MAX_N * 4:
        raise APIError(400, f"prompt: {len(prompts)} prompts x n={req.n} is more than {MAX_N * 4} choices")
    field = "prompt" if len(prompts) == 1 else "prompt[{}]"
    requests = [state.validated(lambda p, ids=ids, k=pi * req.n + j, f=field.format(pi):
                                p.generate(ids, sampling_params(req, req.max_tokens, req.logprobs, k), field=f,
                                           grammar=grammar))
                for pi, (_, ids) in enumerate(prompts) for j in range(req.n)]
    texts_in = [t if t is not None else tok.decode(ids, skip_special_tokens=False) for t, ids in prompts]
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    cid, created, model = new_id("cmpl"), now(), state.settings.model_name
    total = len(prompts) * req.n

    def prefix(i):
        return texts_in[i // req.n] if req.echo else ""

    async with state.track("/v1/completions", requests) as group:
        if not req.stream:
            got = await collect_choices(group, total)
            out = [{"index": i, "text": prefix(i) + got.texts[i], "finish_reason": openai_finish(got.finish[i]),
                    "logprobs": completion_logprobs(tok, got.logprobs[i], len(prefix(i))) if req.logprobs is not None
                    else None}
                   for i in range(total)]
            return web.json_response({"id": cid, "object": "text_completion", "created": created, "model": model,
                                      "choices": out, "usage": group.usage(prompt_tokens)})
        return await _stream(request, req, group, tok, cid, created, model, total, prefix, prompt_tokens)


async def _stream(request, req, group, tok, cid, created, model, total, prefix, prompt_tokens):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    resp = await start_sse(request)
    offsets = [len(prefix(i)) for i in range(total)]

    def chunk(choice_list, usage=None):
        c = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choice_list}
        if include_usage:
            c["usage"] = usage
        return c

    try:
        if req.echo:
            for i in range(total):
                await write_sse(resp, chunk([{"index": i, "text": prefix(i), "finish_reason": None, "logprobs": None}]))
        async for i, d in group.deltas():
            if not d.text and not d.finished:
                continue
            lp = completion_logprobs(tok, d.logprobs or [], offsets[i]) if req.logprobs is not None else None
            offsets[i] += len(d.text)
            await write_sse(resp, chunk([{"index": i, "text": d.text, "logprobs": lp,
                                          "finish_reason": openai_finish(d.finish_reason)}]))
            if d.error:
                await write_sse(resp, error_event(d.error, d.error_status or 503))
        if include_usage:
            await write_sse(resp, chunk([], group.usage(prompt_tokens)))
    except RequestTimeout:
        await write_sse(resp, error_event("the request exceeded the server's request timeout"))
    except APIError as e:
        await write_sse(resp, error_event(e.message, e.status))
    await end_sse(resp)
    return resp
