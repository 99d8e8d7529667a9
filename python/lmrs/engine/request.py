"""EngineRequest: one request as the input processor hands it to the engine (validated, with
its id), and the one request-id counter of the process."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from lmrs.engine.params import SamplingParams

_request_ids = itertools.count(1)


def next_request_id() -> int:
    """A new request id, unique in the process (every engine and route draws from here)."""
    return next(_request_ids)


@dataclass(frozen=True)
class SessionTurn:
    """A request's part in a session (lmdeploy's interactive mode). The core owns the session:
    it decides when the turn is admitted whether the history exists, and picks the prompt form."""

    session_id: int
    sequence_start: bool = True  # drop the session's history first
    sequence_end: bool = False  # end the session after this turn
    # tokens appended to an existing history (None: the prompt is appended as it is)
    continuation_ids: tuple[int, ...] | None = None
    eos_prefix_len: int = 0  # leading continuation tokens dropped when the history ends with EOS
    owner: str | None = None  # the API key; only it may use the session


@dataclass
class EngineRequest:
    """A validated request. `prompt_ids` is the whole prompt (for a session turn: the whole
    conversation, used when the session has no history)."""

    prompt_ids: list[int]
    params: SamplingParams
    session: SessionTurn | None = None
    embed: bool = False  # prefill only: the mean-pooled final hidden states are the result
    session_len: int = 0  # most tokens the context may hold (0: the model's context length)
    # the output constraint: a compiled `lmrs._core.Grammar` (None: free text); the engine gives the
    # request its own matcher, so the n choices of a call share the grammar but not the state
    grammar: Any = None
    request_id: int = field(default_factory=next_request_id)

    def core_kwargs(self) -> dict:
        """Keyword arguments of `Core.add` (after the request id and prompt)."""
        kw = self.params.core_kwargs()
        t = self.session
        # Drafts are verified only for rows the runner can check several positions of at once:
        # not under a grammar or a logit_bias (applied to one position a step). A session turn
        # with stop strings does not speculate either: a stop string found before the last token
        # of a step whose later token ended the request could not trim the session's history.
        speculate = self.grammar is None and not self.params.logit_bias and not (t is not None and self.params.stop)
        kw.update(session_len=self.session_len, embed=self.embed, speculate=speculate)
        if t is not None:
            kw.update(session_id=t.session_id, sequence_start=t.sequence_start, sequence_end=t.sequence_end,
                      eos_prefix_len=t.eos_prefix_len, owner=t.owner)
            if t.continuation_ids is not None:
                kw["continuation_ids"] = list(t.continuation_ids)
        return kw
