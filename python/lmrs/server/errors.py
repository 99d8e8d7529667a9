"""The one error shape of every route: {"object": "error", "message", "type", "code"} with a real
HTTP status. Request bodies are parsed and validated here so every failure names its field."""

from __future__ import annotations

import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error to return to the client as JSON with `status`."""

    def __init__(self, status: int, message: str, *, err_type: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or ERROR_TYPES.get(status, "error")
        self.headers = headers or {}


def error_body(status: int, message: str, err_type: str | None = None) -> dict:
    return {"object": "error", "message": message, "type": err_type or ERROR_TYPES.get(status, "error"), "code": status}


def error_response(status: int, message: str, *, err_type: str | None = None, headers: dict | None = None) -> web.Response:
    return web.json_response(error_body(status, message, err_type), status=status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "null", "bytes"}


def _is_type_tag(part) -> bool:
    """Union branches in pydantic error locations ('str', 'list[ChatMessage]', 'ChatMessage', ...)."""
    if not isinstance(part, str):
        return False
    return (part in _TYPE_TAGS or "[" in part or part[:1].isupper()
            or part.startswith(("function-", "union", "json-or-python", "lax-or-strict", "constrained-")))


def describe_validation_error(e: ValidationError) -> str:
    """'temperature: Input should be greater than or equal to 0 (got -1); ...' naming each field."""
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if not _is_type_tag(p))
        msg = err["msg"]
        if "input" in err and err["type"] not in ("missing",):
            shown = json.dumps(err["input"])[:60] if not isinstance(err["input"], dict) else "{...}"
            msg = f"{msg} (got {shown})"
        parts.append(f"{loc or 'body'}: {msg}")
    more = len(e.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


async def read_json(request: web.Request) -> dict:
    """The JSON object body of a request, or a 400/413/415 APIError."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise APIError(413, f"the request body is larger than the limit of {request.app._client_max_size} bytes; "
                            "send a smaller body (the server's --max-body-bytes)") from None
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


async def parse_request(request: web.Request, model: type[T]) -> T:
    body = await read_json(request)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise APIError(400, describe_validation_error(e)) from None
