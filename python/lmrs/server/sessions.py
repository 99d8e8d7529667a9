"""Which API key owns each /generate session, and what the server must remember between turns.

A session created under one key cannot be read, continued or stopped with another (it answers
404, as if it did not exist). The core keeps the tokens and KV blocks; this table keeps only the
owner and whether the history ends with the model's EOS (see prompts.PromptBuilder.continuation).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmrs.server.errors import APIError


@dataclass
class SessionRecord:
    owner: str | None
    ends_with_eos: bool = True
    turns: int = 0


class SessionRegistry:
    def __init__(self):
        self._sessions: dict[int, SessionRecord] = {}

    def __contains__(self, sid: int) -> bool:
        return sid in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: int) -> SessionRecord | None:
        return self._sessions.get(sid)

    def check(self, sid: int, key: str | None) -> SessionRecord | None:
        """The session's record if `key` may use it (None if it does not exist yet)."""
        rec = self._sessions.get(sid)
        if rec is not None and rec.owner != key:
            raise APIError(404, f"session {sid} does not exist for this API key")
        return rec

    def start(self, sid: int, key: str | None) -> SessionRecord:
        rec = SessionRecord(owner=key)
        self._sessions[sid] = rec
        return rec

    def end(self, sid: int) -> None:
        self._sessions.pop(sid, None)

    def ids(self) -> list[int]:
        return sorted(self._sessions)
