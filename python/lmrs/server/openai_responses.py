"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API on core sessions.

A stored response maps to a core session and the point after it (server/response_store.py). A
follow-up (`previous_response_id`) to the response its session ends with is a session turn
carrying only the new input as its continuation, so it prefills only that input (the whole
conversation rebuilt from the stored items goes along as the turn's other form, used when the core
dropped the session meanwhile). A follow-up to any other response (a branch, an older response)
starts a new session from the whole rebuilt conversation. `store: false` runs statelessly and
keeps nothing. The request is translated into the chat path's request by one function
(`chat_request_of`); the streamed events are written by server/responses_stream.py.
"""

from __future__ import annotations

import asyncio
import uuid
import logging
from dataclasses import dataclass

from aiohttp import web
from pydantic import ValidationError

from lmrs.engine.outputs import FinishReason
from lmrs.engine.params import SamplingParams
from lmrs.engine.request import EngineRequest, SessionTurn
from lmrs.server.grammars import compile_constraint, spec_of
from lmrs.server.errors import APIError, describe_validation_error, parse_request
from lmrs.server.openai_common import DEFAULT_CHAT_MAX_TOKENS, now, sampling_params
from lmrs.server.protocol import ChatCompletionRequest, ResponsesRequest
from lmrs.server.requests import RequestTimeout
from lmrs.server.response_store import ResponseStore, StoredResponse
from lmrs.server.responses_stream import ResponseEvents
from lmrs.server.state import ServerState, api_key_of, get_state

log = logging.getLogger("lmrs.server")

RESPONSES_KEY = web.AppKey("lmrs_responses", ResponseStore)
ROUTE = "/v1/responses"
#: Stored responses per session the engine may keep (a chain of follow-ups shares one session).
RESPONSES_PER_SESSION = 4


def make_store(engine_config) -> ResponseStore:
    """The store, bounded in line with the core's sessions: 4 responses per session allowed, and
    the sessions' idle timeout."""
    return ResponseStore(max_entries=engine_config.max_sessions * RESPONSES_PER_SESSION,
                         idle_timeout_s=engine_config.session_idle_timeout_s)


def store_of(request: web.Request) -> ResponseStore:
    return request.app[RESPONSES_KEY]


# ---- request translation ---------------------------------------------------------------------
def input_messages(req: ResponsesRequest) -> list[dict]:
    """The request's input as chat messages ({"role", "content": str}); developer -> system."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out = []
    for item in req.input:
        content = item.content if isinstance(item.content, str) else "\n".join(p.text for p in item.content)
        out.append({"role": "system" if item.role == "developer" else item.role, "content": content})
    return out


def chat_request_of(req: ResponsesRequest, messages: list[dict]) -> ChatCompletionRequest:
    """The one translation of a Responses request into the chat path's request: messages,
    sampling, and `text.format` / `tools` as `response_format` / `tools`."""
    body: dict = {"messages": messages, "temperature": req.temperature, "top_p": req.top_p,
                  "max_tokens": req.max_output_tokens or DEFAULT_CHAT_MAX_TOKENS}
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name or "response", "schema": fmt.json_schema or {}}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.tools:
        body["tools"] = req.tools
        if req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
    # `text.format` is compiled into the turn's grammar (`output_grammar`); tool calls would need
    # function_call output items, which this server does not build yet: refuse rather than ignore.
    if "tools" in body:
        raise APIError(400, "tools: tool calls are not supported by this server's Responses API yet")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise APIError(400, describe_validation_error(e)) from None


# ---- planning a turn ---------------------------------------------------------------------------
@dataclass
class TurnPlan:
    """How one call runs: its engine request, and its session (None: stateless)."""

    request: EngineRequest
    session_id: int | None
    continues: StoredResponse | None  # the response whose session this turn continues
    history: list[dict]  # the conversation before the new input (stored items of the chain)


async def output_grammar(state: ServerState, req: ResponsesRequest):
    """The compiled constraint of `text.format` (json_object / json_schema), or None for text:
    the chat path's spec reader and compiler (cached, off the event loop, 400 naming the field)."""
    if req.text is None or req.text.format is None or req.text.format.type == "text":
        return None
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True)
    return await compile_constraint(state, spec_of({"text": {"format": fmt}}))


def plan_turn(state: ServerState, store: ResponseStore, req: ResponsesRequest, owner: str | None,
              prev: StoredResponse | None, new: list[dict], chat: ChatCompletionRequest, grammar=None) -> TurnPlan:
    """Pick stateless, continue, or new session, and claim the session (no await in here, so
    two follow-ups to the same response cannot both continue its session)."""
    history = list(prev.items) if prev is not None else []
    system = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
    whole = state.prompts.conversation(system + history + new)
    params: SamplingParams = sampling_params(chat, chat.max_tokens, None, 0)
    if not req.store:
        return TurnPlan(state.validated(lambda p: p.generate(whole, params, field="input", grammar=grammar)), None, None,
                        history)
    if prev is not None and store.is_head(prev) and prev.instructions == req.instructions:
        sid = prev.session_id
        cont, eos_prefix = state.prompts.continuation(new)
        turn = SessionTurn(sid, False, False, tuple(cont), eos_prefix, owner)
        continues = prev
    else:
        sid = store.new_session_id()
        turn = SessionTurn(sid, True, False, None, 0, owner)
        continues = None
    request = state.validated(lambda p: p.generate(whole, params, session=turn, field="input", grammar=grammar))
    store.begin_turn(sid)
    return TurnPlan(request, sid, continues, history)


# ---- routes ------------------------------------------------------------------------------------
async def create_response(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    store = store_of(request)
    req = await parse_request(request, ResponsesRequest)
    state.require_ready()
    state.check_model(req.model)
    owner = api_key_of(request)
    new = input_messages(req)
    chat = chat_request_of(req, new)
    prev = None
    if req.previous_response_id is not None:
        prev = store.get(req.previous_response_id, owner)
        if prev is None:
            raise APIError(404, f"previous_response_id: no stored response {req.previous_response_id!r} (unknown, "
                                f"deleted, expired, stored with store: false, or made with another API key)")
    grammar = await output_grammar(state, req)
    plan = plan_turn(state, store, req, owner, prev, new, chat, grammar)
    tag = state.settings.response_id_tag
    rid, created = f"resp_{tag + '_' if tag else ''}{uuid.uuid4().hex[:24]}", now()
    events = ResponseEvents(rid, created, state.settings.model_name, req)
    outcome = _Outcome()
    try:
        async with state.track(ROUTE, [plan.request], plan.session_id) as group:
            if req.stream:
                return await events.stream(request, group, outcome)
            text, finish, error = [], None, None
            try:
                async for _, d in group.deltas():
                    text.append(d.text)
                    if d.finished:
                        finish, error = d.finish_reason, d.error
            except RequestTimeout:
                raise group.timeout_error() from None
            if finish == FinishReason.ERROR:
                raise APIError(503, error or "generation failed")
            outcome.set("".join(text), finish, group.usage())
            body = events.final_body(outcome)
            return web.json_response(body)
    finally:
        _finish_turn(state, store, plan, req, rid, owner, outcome, events)


@dataclass
class _Outcome:
    """What the turn produced (set only when it ended normally)."""

    text: str = ""
    finish: FinishReason | None = None
    usage: dict | None = None
    done: bool = False

    def set(self, text: str, finish: FinishReason | None, usage: dict) -> None:
        self.text, self.finish, self.usage, self.done = text, finish, usage, True


def _finish_turn(state: ServerState, store: ResponseStore, plan: TurnPlan, req: ResponsesRequest, rid: str,
                 owner: str | None, outcome: _Outcome, events: ResponseEvents) -> None:
    """Record the response and say what its session now ends with; end sessions nothing can
    continue (a failed or aborted turn, records dropped from the store)."""
    sid = plan.session_id
    if sid is None:
        return
    ok = outcome.done and outcome.finish in (FinishReason.STOP, FinishReason.STOP_STRING, FinishReason.LENGTH)
    if outcome.done and outcome.finish == FinishReason.REFUSED:
        # The session is as it was: it still ends with the response it continued (if any).
        store.end_turn(sid, plan.continues.response_id if plan.continues else None)
        session_of_record = None
    elif ok:
        store.end_turn(sid, rid)
        session_of_record = sid
    else:
        store.end_turn(sid, None)
        session_of_record = None
    if outcome.done:
        items = plan.history + input_messages(req) + [{"role": "assistant", "content": outcome.text}]
        rec = StoredResponse(rid, owner, req.instructions, items, session_of_record, events.final_body(outcome))
        for ended in store.put(rec):
            _end_session_soon(state, store, ended, owner)
    if store.orphaned(sid):
        _end_session_soon(state, store, sid, owner)


_ending: set[asyncio.Task] = set()  # end_session tasks in flight (a reference keeps each alive)


def _end_session_soon(state: ServerState, store: ResponseStore, sid: int, owner: str | None) -> None:
    store.forget_session(sid)
    task = asyncio.ensure_future(end_session(state, sid, owner))
    _ending.add(task)
    task.add_done_callback(_ending.discard)


async def end_session(state: ServerState, sid: int, owner: str | None) -> None:
    """End a session after whatever is queued on it (a free `sequence_end` turn: no model run)."""
    turn = SessionTurn(sid, False, True, (), 0, owner)
    try:
        req = state.validated(lambda p: p.generate([], SamplingParams(temperature=0, max_tokens=0), session=turn))
        async with state.track(ROUTE, [req], sid) as group:
            async for _ in group.deltas():
                pass
    except Exception as e:  # noqa: BLE001 - the engine stopped, or the session is already gone
        log.debug("ending response session %d: %s", sid, e)


def _lookup(request: web.Request) -> tuple[ResponseStore, str, StoredResponse | None]:
    store = store_of(request)
    response_id = request.match_info["response_id"]
    return store, response_id, store.get(response_id, api_key_of(request))


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"response_id: no stored response {response_id!r} (unknown, deleted, expired, stored "
                         f"with store: false, or made with another API key)")


async def get_response(request: web.Request) -> web.Response:
    _, response_id, rec = _lookup(request)
    if rec is None:
        raise _not_found(response_id)
    return web.json_response(rec.body)


async def delete_response(request: web.Request) -> web.Response:
    """Forget a response; when its session still ends with it, end the session (its KV is freed)."""
    state = get_state(request)
    store, response_id, _ = _lookup(request)
    owner = api_key_of(request)
    deleted, sid = store.delete(response_id, owner)
    if not deleted:
        raise _not_found(response_id)
    if sid is not None:
        await end_session(state, sid, owner)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


__all__ = ["create_response", "get_response", "delete_response", "make_store", "RESPONSES_KEY", "chat_request_of",
           "input_messages"]
