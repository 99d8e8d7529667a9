"""Stored responses of the Responses API and the core sessions behind them.

Each stored response keeps the conversation it ends (its chain's input items and replies, without
`instructions`, which OpenAI does not carry over) and the core session that held its KV cache
right after it. A session is shared by a chain of responses; `heads` says which response the
session's history ends with now. A follow-up to the head continues the session (it sends only its
new input); a follow-up to any other response (a branch, an older response, a session whose turn
failed) starts a new session from the whole conversation rebuilt from the stored items (the prefix
cache still serves the shared prefix). When the core dropped the session meanwhile (its idle or
count limits), the turn's whole-conversation form rebuilds it: the core picks the form.

Responses are scoped to the API key that made them (another key gets 404, as for sessions). The
store is bounded: at most `max_entries` (least recently used dropped first) and, when the sessions
have an idle timeout, records idle that long expire with them. Dropping a record that is its
session's head ends the session (`end_session`, given by the route).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field

#: Sessions of the Responses API take ids from here up, away from the small ids clients choose.
RESPONSE_SESSION_BASE = 1 << 62


@dataclass
class StoredResponse:
    response_id: str
    owner: str | None  # the API key that made it (None without --api-keys)
    instructions: str | None  # this response's system text (not carried over to follow-ups)
    items: list[dict]  # the conversation up to and including this reply: chat messages ({"role", "content"},
    # assistant "tool_calls" with JSON-text arguments, "tool" messages with "tool_call_id")
    session_id: int | None  # the core session that held this response's KV right after it
    body: dict  # the response object, as GET returns it
    tools: list[dict] | None = None  # the tools the chat template was given for this response
    last_used: float = field(default_factory=time.monotonic)


class ResponseStore:
    """Response id -> StoredResponse, plus which response each session's history ends with."""

    def __init__(self, max_entries: int = 10_000, idle_timeout_s: float = 0.0):
        self.max_entries = max(1, max_entries)
        self.idle_timeout_s = idle_timeout_s
        self._records: OrderedDict[str, StoredResponse] = OrderedDict()  # least recently used first
        self._heads: dict[int, str | None] = {}  # session id -> response id (None: a turn runs or failed)
        self._session_ids = itertools.count(RESPONSE_SESSION_BASE)

    def __len__(self) -> int:
        return len(self._records)

    def new_session_id(self) -> int:
        return next(self._session_ids)

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        """The record, or None when unknown, expired, or another key's."""
        rec = self._records.get(response_id)
        if rec is None or rec.owner != owner:
            return None
        if self._expired(rec, time.monotonic()):
            return None
        rec.last_used = time.monotonic()
        self._records.move_to_end(response_id)
        return rec

    def is_head(self, rec: StoredResponse) -> bool:
        """Whether rec's session still ends with rec (so a follow-up may continue it)."""
        return rec.session_id is not None and self._heads.get(rec.session_id) == rec.response_id

    def begin_turn(self, session_id: int) -> None:
        """A turn is about to run on the session: no stored response matches it until it ends."""
        self._heads[session_id] = None

    def end_turn(self, session_id: int, response_id: str | None) -> None:
        """The turn ended: the session now ends with `response_id` (None: with no stored response)."""
        self._heads[session_id] = response_id

    def orphaned(self, session_id: int) -> bool:
        """A session that ends with no stored response (nothing can continue it)."""
        return session_id in self._heads and self._heads[session_id] is None

    def forget_session(self, session_id: int) -> None:
        self._heads.pop(session_id, None)

    def put(self, rec: StoredResponse) -> list[int]:
        """Store a record; returns the sessions to end (heads of the records dropped to make room
        or expired)."""
        self._records[rec.response_id] = rec
        self._records.move_to_end(rec.response_id)
        return self._trim()

    def delete(self, response_id: str, owner: str | None) -> tuple[bool, int | None]:
        """(deleted, the session to end: the record's session when the record was its head)."""
        rec = self.get(response_id, owner)
        if rec is None:
            return False, None
        del self._records[response_id]
        return True, self._release(rec)

    def _release(self, rec: StoredResponse) -> int | None:
        if self.is_head(rec):
            self._heads.pop(rec.session_id, None)
            return rec.session_id
        return None

    def _expired(self, rec: StoredResponse, now: float) -> bool:
        return self.idle_timeout_s > 0 and now - rec.last_used > self.idle_timeout_s

    def _trim(self) -> list[int]:
        ended = []
        now = time.monotonic()
        while self._records:
            oldest = next(iter(self._records.values()))
            if len(self._records) <= self.max_entries and not self._expired(oldest, now):
                break
            del self._records[oldest.response_id]
            sid = self._release(oldest)
            if sid is not None:
                ended.append(sid)
        return ended
