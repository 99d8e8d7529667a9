"""The OpenAPI 3.1 document, generated from the pydantic schemas in protocol.py (the same classes
that validate requests) and the route table below."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic.json_schema import models_json_schema

from lmrs import __version__
from lmrs.server import protocol as p
from lmrs.server import protocol_responses as pr

REF = "#/components/schemas/{model}"
ERROR_STATUSES = {
    "400": "Malformed JSON, a field of the wrong type or range, an invalid schema, regex, grammar or tool (the "
           "message names the field)",
    "401": "Missing or wrong API key",
    "404": "Unknown model, route or session",
    "413": "Body or prompt over the limits",
    "503": "Not ready, shutting down or overloaded (see Retry-After)",
}


@dataclass
class Route:
    method: str
    path: str
    summary: str
    request: type | None
    response: type | None
    stream: tuple[str, type] | None = None  # (media type, chunk schema) when the route can stream
    tag: str = "lmrs"
    description: str = ""
    path_params: tuple[str, ...] = ()  # names of `{...}` path parameters (strings)


ROUTES = [
    Route("post", "/generate", "Session-aware generation (lmdeploy interactive mode)", p.GenerateRequest,
          p.GenerateResponse, ("application/x-ndjson", p.GenerateResponse), "lmdeploy",
          "Non-stream: one JSON object. Stream: one JSON object per line (newline-delimited), `text` holding "
          "only the new text; the last line has a finish_reason. `response_format` (json_object, json_schema) or "
          "`structured_outputs` (json, regex, choice, grammar) constrain the output; an invalid schema, regex or "
          "grammar answers 400 naming the field."),
    Route("get", "/v1/models", "List the served model", None, p.ModelList, tag="openai"),
    Route("post", "/v1/chat/completions", "Chat completion (OpenAI)", p.ChatCompletionRequest,
          p.ChatCompletionResponse, ("text/event-stream", p.ChatCompletionChunk), "openai",
          "Stream: Server-Sent Events `data: {chunk}` ending with `data: [DONE]`. Structured output: "
          "`response_format` or `structured_outputs`. Tools: `tools`, `tool_choice` (none, auto, required, a named "
          "function), `parallel_tool_calls`; calls come back as `message.tool_calls` (streamed as "
          "`delta.tool_calls`) with finish_reason `tool_calls`."),
    Route("post", "/v1/completions", "Text completion (OpenAI)", p.CompletionRequest, p.CompletionResponse,
          ("text/event-stream", p.CompletionResponse), "openai"),
    Route("post", "/v1/embeddings", "Embeddings: mean-pooled final hidden states, L2-normalized",
          p.EmbeddingRequest, p.EmbeddingResponse, tag="openai"),
    # ---- Responses API and tokenizer routes
    Route("post", "/v1/responses", "Create a response (OpenAI Responses API) on a server-side session",
          pr.ResponsesRequest, pr.ResponseObject, ("text/event-stream", pr.ResponseStreamEvent), "openai",
          "`previous_response_id` continues the session holding that response's KV cache: the follow-up prefills "
          "only its new input. A follow-up to a response its session has moved past (a branch) starts a new "
          "session from the stored conversation. Stream: Server-Sent Events `event: <type>` / `data: {event}`."),
    Route("get", "/v1/responses/{response_id}", "A stored response (only its API key's)", None, pr.ResponseObject,
          tag="openai", path_params=("response_id",)),
    Route("delete", "/v1/responses/{response_id}", "Delete a stored response and end the session it holds",
          None, pr.ResponseDeleted, tag="openai", path_params=("response_id",)),
    Route("post", "/tokenize", "Token ids of a prompt or of chat messages (vLLM's shape)", p.TokenizeRequest,
          p.TokenizeResponse, tag="lmrs"),
    Route("post", "/detokenize", "Text of token ids (vLLM's shape)", p.DetokenizeRequest, p.DetokenizeResponse,
          tag="lmrs"),
    Route("get", "/stats", "Engine statistics: KV block pool (free / used / cached), prefix cache, queues, sessions",
          None, None, tag="operations"),
    Route("get", "/health", "Liveness: 200 when the engine loop is alive, 503 while loading or if it died",
          None, p.HealthResponse, tag="operations"),
    Route("get", "/health/ready", "Readiness: 200 when a one-token generation succeeds (cached a few seconds)",
          None, p.HealthResponse, tag="operations"),
]


def build_openapi(model_name: str, *, metrics: bool = True, auth: bool = False) -> dict:
    models = [p.ErrorResponse]
    for r in ROUTES:
        for m in (r.request, r.response, r.stream[1] if r.stream else None):
            if m is not None and m not in models:
                models.append(m)
    modes = [(m, "validation" if m in {r.request for r in ROUTES} else "serialization") for m in models]
    keys, defs = models_json_schema(modes, ref_template=REF)
    schemas = defs.get("$defs", {})

    def ref(m):
        return {"$ref": REF.format(model=m.__name__)}

    errors = {code: {"description": desc, "content": {"application/json": {"schema": ref(p.ErrorResponse)}}}
              for code, desc in ERROR_STATUSES.items()}
    paths: dict = {}
    for r in ROUTES:
        content = {"application/json": {"schema": ref(r.response) if r.response else {"type": "object"}}}
        if r.stream:
            content[r.stream[0]] = {"schema": ref(r.stream[1])}
        op_id = r.path.strip("/").replace("/", "_").replace("-", "_").replace("{", "").replace("}", "") or "root"
        if r.method != "post" and any(q.path == r.path and q.method != r.method for q in ROUTES):
            op_id = f"{r.method}_{op_id}"
        op = {"summary": r.summary, "operationId": op_id,
              "tags": [r.tag], "responses": {"200": {"description": r.description or "OK", "content": content}}}
        if r.description:
            op["description"] = r.description
        if r.path_params:
            op["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                for n in r.path_params]
            op["responses"]["404"] = errors["404"]
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(r.request)}}}
            op["responses"].update(errors)
        else:
            op["responses"]["503"] = errors["503"]
        if auth and r.path not in ("/health", "/health/ready"):
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = errors["401"]
        paths.setdefault(r.path, {})[r.method] = op
    paths["/openapi.json"] = {"get": {"summary": "This OpenAPI document", "operationId": "openapi", "tags": ["lmrs"],
                                      "responses": {"200": {"description": "OpenAPI 3.1 document",
                                                            "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    if metrics:
        paths["/metrics"] = {"get": {"summary": "Prometheus metrics (text format)", "operationId": "metrics",
                                     "tags": ["operations"],
                                     "responses": {"200": {"description": "Prometheus exposition",
                                                           "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "lmrs", "version": __version__,
                 "description": f"lmrs serving {model_name}: lmdeploy-style /generate sessions and OpenAI-compatible routes."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "tags": [{"name": "lmdeploy"}, {"name": "openai"}, {"name": "operations"}, {"name": "lmrs"}],
    }
    return doc
