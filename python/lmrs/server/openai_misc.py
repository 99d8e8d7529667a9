"""GET /v1/models and POST /v1/embeddings (real embeddings: the model's final hidden states,
mean-pooled over the input tokens and L2-normalized). Each input is a prefill-only request in the
continuous batch: chunked under the step's token budget beside running decodes, counted in the
queue limit, cancelled when the client leaves, and covered by the request timeout."""

from __future__ import annotations

import base64
import time

import numpy as np
from aiohttp import web

from lmrs.server.errors import parse_request
from lmrs.server.openai_common import raise_for_error
from lmrs.server.protocol import EmbeddingRequest
from lmrs.server.requests import RequestTimeout
from lmrs.server.state import get_state

STARTED = int(time.time())


async def list_models(request: web.Request) -> web.Response:
    state = get_state(request)
    name = state.settings.model_name
    info = state.info
    card = {"id": name, "object": "model", "created": STARTED, "owned_by": "lmrs", "root": name, "parent": None,
            "max_model_len": info.max_model_len if info is not None else None,
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
    field = "input" if len(batches) == 1 else "input[{}]"
    requests = [state.validated(lambda p, ids=ids, f=field.format(i): p.embedding(ids, f))
                for i, ids in enumerate(batches)]
    vectors = [None] * len(requests)
    async with state.track("/v1/embeddings", requests) as group:
        try:
            async for i, d in group.deltas():
                raise_for_error(d)
                if d.finished:
                    vectors[i] = d.embedding
        except RequestTimeout:
            raise group.timeout_error() from None
    data = []
    for i, v in enumerate(vectors):
        emb = (base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
               if req.encoding_format == "base64" else [float(x) for x in v])
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(b) for b in batches)
    return web.json_response({"object": "list", "data": data, "model": state.settings.model_name,
                              "usage": {"prompt_tokens": n, "total_tokens": n}})
