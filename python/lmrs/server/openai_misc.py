"""GET /v1/models and POST /v1/embeddings (real embeddings: the model's final hidden states,
mean-pooled over the input tokens and L2-normalized)."""

from __future__ import annotations

import base64
import time

import numpy as np
from aiohttp import web

from lmrs.engine.async_engine import EngineDead
from lmrs.engine.params import InvalidParameter
from lmrs.server.errors import APIError, parse_request
from lmrs.server.protocol import EmbeddingRequest
from lmrs.server.state import get_state

STARTED = int(time.time())


async def list_models(request: web.Request) -> web.Response:
    state = get_state(request)
    name = state.settings.model_name
    card = {"id": name, "object": "model", "created": STARTED, "owned_by": "lmrs", "root": name, "parent": None,
            "permission": [{"id": f"modelperm-{name}", "object": "model_permission", "created": STARTED,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}
    return web.json_response({"object": "list", "data": [card]})


async def embeddings(request: web.Request) -> web.Response:
    state = get_state(request)
    req = await parse_request(request, EmbeddingRequest)
    state.require_ready()
    state.check_model(req.model)
    tok = state.tokenizer
    inp = req.input
    if isinstance(inp, str):
        batches = [tok.encode(inp, add_special_tokens=tok.add_bos_token)]
    elif inp and isinstance(inp[0], str):
        batches = [tok.encode(s, add_special_tokens=tok.add_bos_token) for s in inp]
    elif inp and isinstance(inp[0], int):
        batches = [list(inp)]
    else:
        batches = [list(x) for x in inp]
    vocab = state.engine.llm.model_config.vocab_size
    limit = state.engine.llm.max_model_len
    for i, ids in enumerate(batches):
        if not ids:
            raise APIError(400, f"input[{i}]: is empty (it tokenizes to no tokens)")
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"input[{i}]: contains a token id outside the vocabulary (size {vocab})")
        if len(ids) > limit:
            raise APIError(413, f"input[{i}]: has {len(ids)} tokens, more than the context length {limit}")
    try:
        vectors = await state.engine.call(lambda llm: [llm.embed(ids) for ids in batches])
    except InvalidParameter as e:
        raise APIError(400, str(e)) from None
    except EngineDead as e:
        raise APIError(503, str(e)) from None
    data = []
    for i, v in enumerate(vectors):
        emb = (base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
               if req.encoding_format == "base64" else [float(x) for x in v])
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(b) for b in batches)
    return web.json_response({"object": "list", "data": data, "model": state.settings.model_name,
                              "usage": {"prompt_tokens": n, "total_tokens": n}})
