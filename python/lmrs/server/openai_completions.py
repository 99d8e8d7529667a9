"""POST /v1/completions (OpenAI legacy completions): a string, a list of strings, token ids or a
list of token-id lists; n choices per prompt; echo; logprobs; SSE streaming."""

from __future__ import annotations

from aiohttp import web

from lmrs.server.errors import APIError, parse_request
from lmrs.server.openai_common import (Choices, completion_logprobs, new_id, now, openai_finish, raise_for_error,
                                       sampling_params, timeout_error)
from lmrs.server.protocol import MAX_N, CompletionRequest
from lmrs.server.state import RequestTimeout, get_state
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
    prompts = prompts_of(req, tok)
    if len(prompts) * req.n > MAX_N * 4:
        raise APIError(400, f"prompt: {len(prompts)} prompts x n={req.n} is more than {MAX_N * 4} choices")
    vocab = state.engine.llm.model_config.vocab_size
    for _, ids in prompts:
        if not ids:
            raise APIError(400, "prompt: an empty prompt cannot be completed")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary (size {vocab})")
    texts_in = [t if t is not None else tok.decode(ids, skip_special_tokens=False) for t, ids in prompts]
    choices = Choices(state, "/v1/completions")
    for pi, (_, ids) in enumerate(prompts):
        for j in range(req.n):
            choices.add(ids, sampling_params(req, req.max_tokens, req.logprobs, pi * req.n + j))
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    cid, created, model = new_id("cmpl"), now(), state.settings.model_name
    total = len(prompts) * req.n

    def prefix(i):
        return texts_in[i // req.n] if req.echo else ""

    if not req.stream:
        texts = [[prefix(i)] for i in range(total)]
        lps = [[] for _ in range(total)]
        finish = [None] * total
        try:
            async for i, d in choices.merged():
                raise_for_error(d)
                texts[i].append(d.text)
                if d.logprobs:
                    lps[i].extend(d.logprobs)
                if d.finished:
                    finish[i] = d.finish_reason
        except RequestTimeout:
            raise timeout_error(state) from None
        out = [{"index": i, "text": "".join(texts[i]), "finish_reason": openai_finish(finish[i]),
                "logprobs": completion_logprobs(tok, lps[i], len(prefix(i))) if req.logprobs is not None else None}
               for i in range(total)]
        return web.json_response({"id": cid, "object": "text_completion", "created": created, "model": model,
                                  "choices": out, "usage": choices.usage(prompt_tokens)})

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
        async for i, d in choices.merged():
            if d.finished and d.finish_reason == "error":
                await write_sse(resp, {"object": "error", "message": d.error or "generation failed",
                                       "type": "internal_error", "code": d.error_status or 503})
                continue
            if not d.text and not d.finished:
                continue
            lp = completion_logprobs(tok, d.logprobs or [], offsets[i]) if req.logprobs is not None else None
            offsets[i] += len(d.text)
            await write_sse(resp, chunk([{"index": i, "text": d.text, "logprobs": lp,
                                          "finish_reason": openai_finish(d.finish_reason) if d.finished else None}]))
        if include_usage:
            await write_sse(resp, chunk([], choices.usage(prompt_tokens)))
    except (RequestTimeout, APIError) as e:
        msg = e.message if isinstance(e, APIError) else "the request exceeded the server's request timeout"
        await write_sse(resp, {"object": "error", "message": msg, "type": "internal_error", "code": 503})
    await end_sse(resp)
    return resp
