"""What the ingress reads from a request to route it: RouteKey (no Ray here).

- a session (`session_id`/`instance_id` >= 0 on /generate, `session_id` >= 0 on /v1/chat/completions)
  -> `session`: the consistent-hash ring picks its owner, every turn (and `stop`) lands there;
- a stored response (`previous_response_id` on /v1/responses, GET/DELETE /v1/responses/{id}) ->
  `replica`: the replica named inside the response id (`resp_<replica>_<hex>`, see ServerSettings.
  response_id_tag), which holds the stored response and its session;
- anything else -> stateless: the fewest requests in flight, preferring the replica that last served
  the same `prefix` (a hash of the prompt's first characters, about one KV block) when that costs
  little balance.

A body that is not JSON, or fields of the wrong type, route as stateless: the replica answers with the
API's own 4xx naming the field, so errors read the same with or without the router.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Characters of prompt text hashed for the prefix preference: about one 16-token KV block of English.
PREFIX_CHARS = 64

SESSION_ROUTES = ("/generate", "/v1/chat/completions")
RESPONSES_ROUTE = "/v1/responses"


@dataclass(frozen=True)
class RouteKey:
    """How one request is routed; crosses from the ingress to the request router inside Ray Serve."""

    session: str | None = None  # session key hashed on the ring ("s<session_id>"); None: no session
    replica: str | None = None  # a replica pinned by name (a stored response's, or a fan-out); None: any
    prefix: str | None = None  # the prompt's first PREFIX_CHARS characters (stateless requests); None: unknown

    @property
    def stateless(self) -> bool:
        return self.session is None and self.replica is None


def replica_of_response_id(response_id: str) -> str | None:
    """`resp_<replica>_<hex>` -> replica; ids without a tag (a single server's) -> None."""
    if not response_id.startswith("resp_"):
        return None
    tag, sep, _ = response_id[5:].rpartition("_")
    return tag if sep and tag else None


def _as_int(value) -> int | None:
    """The int the API accepts: a JSON integer (its validation is strict: not "7", 7.0 or true)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _session_id(body: dict, *names: str) -> int | None:
    for name in names:
        if name in body:
            sid = _as_int(body[name])
            return sid if sid is not None and sid >= 0 else None
    return None


def _prefix_of(body: dict) -> str | None:
    for field in ("prompt", "messages", "input"):
        value = body.get(field)
        if value:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
            return text[:PREFIX_CHARS]
    return None


def route_key_of(method: str, path: str, body: bytes) -> RouteKey:
    """The RouteKey of one HTTP request (path without the query string)."""
    if path.startswith(RESPONSES_ROUTE + "/") and method in ("GET", "DELETE"):
        return RouteKey(replica=replica_of_response_id(path[len(RESPONSES_ROUTE) + 1:]))
    if method != "POST" or not body:
        return RouteKey()
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return RouteKey()
    if not isinstance(parsed, dict):
        return RouteKey()
    if path in SESSION_ROUTES:
        names = ("session_id", "instance_id") if path == "/generate" else ("session_id",)
        sid = _session_id(parsed, *names)
        if sid is not None:
            return RouteKey(session=f"s{sid}")
    if path == RESPONSES_ROUTE:
        prev = parsed.get("previous_response_id")
        if isinstance(prev, str):
            return RouteKey(replica=replica_of_response_id(prev), prefix=_prefix_of(parsed))
    return RouteKey(prefix=_prefix_of(parsed))
