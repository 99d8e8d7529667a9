"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API on core sessions.

A stored response maps to a core session and the point after it (server/response_store.py). A
follow-up (`previous_response_id`) to the response its session ends with is a session turn
carrying only the new input as its continuation, so it prefills only that input (the whole
conversation rebuilt from the stored items goes along as the turn's other form, used when the core
dropped the session meanwhile). A follow-up to any other response (a branch, an older response)
starts a new session from the whole rebuilt conversation, as does a follow-up with other
instructions or tools than the session was rendered with. `store: false` runs statelessly and
keeps nothing. The output fields (`tools`, `tool_choice`, `parallel_tool_calls`, `text.format`) go
through the chat path's translation (`chat_request.prepare_chat`: the template's tools, the tool-call
parser, the grammar forcing calls); items <-> chat messages is server/responses_items.py, and the
response objects and streamed events are server/responses_stream.py.
"""

from __future__ import annotations

import asyncio
import uuid
import logging
from dataclasses import dataclass, field

from aiohttp import web
from lmrs.engine.outputs import FinishReason
from lmrs.engine.params import SamplingParams
from lmrs.engine.request import EngineRequest, SessionTurn
from lmrs.server.chat_request import ChatTranslation, prepare_chat
from lmrs.server.errors import APIError, parse_request
from lmrs.server.openai_common import DEFAULT_CHAT_MAX_TOKENS, collect_choices, now, sampling_params
from lmrs.server.protocol import ChatCompletionRequest
from lmrs.server.protocol_responses import ResponsesRequest
from lmrs.server.response_store import ResponseStore, StoredResponse
from lmrs.server.responses_items import assistant_message, check_call_outputs, input_messages
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
def output_fields(req: ResponsesRequest) -> dict:
    """The request's output fields in the body shape `chat_request.translate_chat` reads (it takes the
    Responses API's flattened tools and `text.format` as they are)."""
    body: dict = {"tools": req.tools, "tool_choice": req.tool_choice, "parallel_tool_calls": req.parallel_tool_calls}
    if req.text is not None and req.text.format is not None and req.text.format.type != "text":
        body["text"] = {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
    return body


def sampling_of(req: ResponsesRequest, *, skip_special_tokens: bool) -> SamplingParams:
    """The Responses request's sampling, through the chat path's reader."""
    chat = ChatCompletionRequest.model_validate({"messages": [], "temperature": req.temperature, "top_p": req.top_p,
                                                 "max_tokens": req.max_output_tokens or DEFAULT_CHAT_MAX_TOKENS})
    return sampling_params(chat, chat.max_tokens, None, 0, skip_special_tokens=skip_special_tokens)


# ---- planning a turn ---------------------------------------------------------------------------
@dataclass
class TurnPlan:
    """How one call runs: its engine request, and its session (None: stateless)."""

    request: EngineRequest
    session_id: int | None
    continues: StoredResponse | None  # the response whose session this turn continues
    history: list[dict]  # the conversation before the new input (stored items of the chain)
    new: list[dict]  # the new input as chat messages
    tools: list[dict] | None  # the tools the template was given (a follow-up with others starts a new session)


def plan_turn(state: ServerState, store: ResponseStore, req: ResponsesRequest, owner: str | None,
              prev: StoredResponse | None, history: list[dict], new: list[dict], chat: ChatTranslation,
              whole: list[int], grammar=None) -> TurnPlan:
    """Pick stateless, continue, or new session, and claim the session (no await in here, so
    two follow-ups to the same response cannot both continue its session). A session is continued
    only when the instructions and tools are those its history was rendered with."""
    # a tool-call parser must see the format's markers, even where they are special tokens
    params = sampling_of(req, skip_special_tokens=chat.parser is None)
    if not req.store:
        return TurnPlan(state.validated(lambda p: p.generate(whole, params, field="input", grammar=grammar)), None, None,
                        history, new, chat.tools)
    if (prev is not None and store.is_head(prev) and prev.instructions == req.instructions
            and prev.tools == chat.tools):
        sid = prev.session_id
        cont, eos_prefix = state.prompts.continuation(chat.messages[len(chat.messages) - len(new):], chat.tools)
        turn = SessionTurn(sid, False, False, tuple(cont), eos_prefix, owner)
        continues = prev
    else:
        sid = store.new_session_id()
        turn = SessionTurn(sid, True, False, None, 0, owner)
        continues = None
    request = state.validated(lambda p: p.generate(whole, params, session=turn, field="input", grammar=grammar))
    store.begin_turn(sid)
    return TurnPlan(request, sid, continues, history, new, chat.tools)


# ---- routes ------------------------------------------------------------------------------------
async def create_response(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    store = store_of(request)
    req = await parse_request(request, ResponsesRequest)
    state.require_ready()
    state.check_model(req.model)
    owner = api_key_of(request)
    prev = None
    if req.previous_response_id is not None:
        prev = store.get(req.previous_response_id, owner)
        if prev is None:
            raise APIError(404, f"previous_response_id: no stored response {req.previous_response_id!r} (unknown, "
                                f"deleted, expired, stored with store: false, or made with another API key)")
    history = list(prev.items) if prev is not None else []
    new = input_messages(req)
    check_call_outputs(history, new)
    system = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
    chat, whole, grammar = await prepare_chat(state, system + history + new, output_fields(req),
                                              lambda c: state.prompts.conversation(c.messages, c.tools))
    plan = plan_turn(state, store, req, owner, prev, history, new, chat, whole, grammar)
    tag = state.settings.response_id_tag
    rid, created = f"resp_{tag + '_' if tag else ''}{uuid.uuid4().hex[:24]}", now()
    events = ResponseEvents(rid, created, state.settings.model_name, req, chat.parser, chat.tool_names)
    outcome = _Outcome()
    try:
        async with state.track(ROUTE, [plan.request], plan.session_id) as group:
            if req.stream:
                return await events.stream(request, group, outcome)
            got = await collect_choices(group, 1)
            outcome.set(got.texts[0], got.finish[0], group.usage(), events.output_items(got.texts[0], got.finish[0]))
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
    items: list[dict] = field(default_factory=list)  # the output items (message, function_call)
    done: bool = False

    def set(self, text: str, finish: FinishReason | None, usage: dict, items: list[dict]) -> None:
        self.text, self.finish, self.usage, self.items, self.done = text, finish, usage, items, True


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
        items = plan.history + plan.new + [assistant_message(outcome.items, outcome.text)]
        rec = StoredResponse(rid, owner, req.instructions, items, session_of_record, events.final_body(outcome),
                             tools=plan.tools)
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


__all__ = ["create_response", "get_response", "delete_response", "make_store", "RESPONSES_KEY", "output_fields"]
