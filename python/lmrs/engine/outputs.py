"""Results: what one engine step changed for one request (`RequestDelta`, streamed to the server),
and what the offline `Engine` returns per request (`RequestOutput`) and per generated sequence
(`CompletionOutput`). Why a request ended is always a `FinishReason` (the core's one enum)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmrs._core import FinishReason

__all__ = ["FinishReason", "RequestDelta", "CompletionOutput", "RequestOutput", "OFFLINE_FINISH"]


@dataclass
class RequestDelta:
    """What one step changed for one request."""

    request_id: int
    text: str  # new text since the previous delta
    token_ids: list[int]  # new token ids
    num_generated: int  # tokens generated so far
    finish_reason: FinishReason | None = None  # set on the request's last delta
    logprobs: list[dict] | None = None  # new entries: {"token_id", "logprob", "top": [(id, lp), ...]}
    num_prompt_tokens: int = 0  # context tokens of the request (session history + prompt)
    num_cached_tokens: int = 0  # of which served from the prefix cache / session
    error: str | None = None  # why a request finished with FinishReason.ERROR
    error_status: int = 0  # HTTP status of an error: 400 invalid, 413 can never fit, 503 a failed step
    queue_time: float | None = None  # on the first delta after scheduling: seconds from arrival to the first step
    embedding: np.ndarray | None = None  # an embedding request's result (float32 [hidden], unit norm)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def refused(self) -> bool:
        """A session turn refused before inference (the session would overflow)."""
        return self.finish_reason == FinishReason.REFUSED


#: The offline API's words for each reason (RequestOutput.finish_reason).
OFFLINE_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.REFUSED: "length",
    FinishReason.ABORT: "abort",
    FinishReason.ERROR: "error",
}


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort" or "error"
    logprobs: list[dict] | None = None  # per token: {"token_id", "logprob", "top": [(id, logprob), ...]}
    stop_reason: str | int | None = None  # the stop string or stop token that ended it


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache or the session
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # arrival, first_token, finished times (s)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason
