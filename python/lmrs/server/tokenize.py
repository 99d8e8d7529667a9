"""POST /tokenize and POST /detokenize (vLLM's shapes): the server's own tokenizer and chat
template, so a client can count tokens exactly as a generation request would see them."""

from __future__ import annotations

from aiohttp import web

from lmrs.models.chat_template import ChatTemplateError
from lmrs.server.errors import APIError, parse_request
from lmrs.server.prompts import _normalize
from lmrs.server.protocol import DetokenizeRequest, TokenizeRequest
from lmrs.server.state import get_state


async def tokenize(request: web.Request) -> web.Response:
    state = get_state(request)
    req = await parse_request(request, TokenizeRequest)
    state.require_ready()
    state.check_model(req.model)
    tok = state.tokenizer
    if req.prompt is not None:
        special = True if req.add_special_tokens is None else req.add_special_tokens
        ids = tok.encode(req.prompt, add_special_tokens=special)
    else:
        special = bool(req.add_special_tokens)
        messages = _normalize([m.model_dump(exclude_none=True) for m in req.messages])
        if tok.chat_template:
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt)
            except ChatTemplateError as e:
                raise APIError(400, f"messages: the model's chat template rejected them: {e}") from None
        else:  # as generation does without a template: the contents, one per line
            text = "\n".join(m["content"] for m in messages)
        ids = tok.encode(text, add_special_tokens=special)
    return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": state.info.max_model_len})


async def detokenize(request: web.Request) -> web.Response:
    state = get_state(request)
    req = await parse_request(request, DetokenizeRequest)
    state.require_ready()
    state.check_model(req.model)
    ids = state.validated(lambda p: p.check_token_ids(req.tokens, "tokens"))
    return web.json_response({"prompt": state.tokenizer.decode(ids, skip_special_tokens=False)})
