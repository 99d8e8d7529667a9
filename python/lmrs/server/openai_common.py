"""What the OpenAI chat and completions routes share: sampling parameters from a request, the
finish-reason mapping, running a call's choices to their end (`collect_choices`), error chunks, and
logprob formatting. Running the n choices of a call
(each its own request in the continuous batch) is `RequestGroup`'s job (server/requests.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmrs.engine.outputs import FinishReason, RequestDelta
from lmrs.engine.params import InvalidParameter, SamplingParams
from lmrs.server.errors import APIError, error_body
from lmrs.server.requests import RequestTimeout

if TYPE_CHECKING:
    from lmrs.server.requests import RequestGroup

DEFAULT_CHAT_MAX_TOKENS = 512

#: The OpenAI routes' words for each reason.
OPENAI_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.ABORT: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.REFUSED: "length",
    FinishReason.ERROR: "error",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def openai_finish(reason: FinishReason | None) -> str | None:
    return None if reason is None else OPENAI_FINISH[reason]


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def sampling_params(req, max_tokens: int, logprobs: int | None, choice: int, *,
                    skip_special_tokens: bool | None = None) -> SamplingParams:
    if skip_special_tokens is None:
        skip_special_tokens = req.skip_special_tokens
    seed = None if req.seed is None else (req.seed + choice) & 0x7FFF_FFFF_FFFF_FFFF
    try:
        return SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=max(0, req.top_k), min_p=req.min_p,
                              repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                              frequency_penalty=req.frequency_penalty, max_tokens=max_tokens,
                              min_tokens=min(req.min_tokens, max_tokens), stop=stop_list(req.stop),
                              ignore_eos=req.ignore_eos, seed=seed, logprobs=logprobs,
                              skip_special_tokens=skip_special_tokens,
                              logit_bias=logit_bias_ids(req.logit_bias))
    except InvalidParameter as e:
        raise APIError(400, str(e)) from None


def logit_bias_ids(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's logit_bias (token ids as JSON object keys) with integer ids; the range and
    vocabulary checks are SamplingParams' and the input processor's."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.isascii() or not key.isdigit():
            raise APIError(400, f"logit_bias: keys must be token ids (non-negative integers as strings), got {key!r}")
        out[int(key)] = value
    return out


def raise_for_error(d: RequestDelta) -> None:
    if d.finish_reason == FinishReason.ERROR:
        raise APIError(d.error_status or 503, d.error or "generation failed")


@dataclass
class Choices:
    """The choices of a call run to its end (not streamed), by choice index."""

    texts: list[str]  # each choice's whole text
    logprobs: list[list[dict]]  # each choice's logprob entries (empty without logprobs)
    finish: list[FinishReason | None]  # each choice's finish reason


async def collect_choices(group: "RequestGroup", count: int) -> Choices:
    """Run a call's `count` choices to their end; an engine error is raised as its APIError, the
    request timeout as the group's timeout error."""
    texts: list[list[str]] = [[] for _ in range(count)]
    lps: list[list[dict]] = [[] for _ in range(count)]
    finish: list[FinishReason | None] = [None] * count
    try:
        async for i, d in group.deltas():
            raise_for_error(d)
            texts[i].append(d.text)
            if d.logprobs:
                lps[i].extend(d.logprobs)
            if d.finished:
                finish[i] = d.finish_reason
    except RequestTimeout:
        raise group.timeout_error() from None
    return Choices(["".join(t) for t in texts], lps, finish)


def error_event(message: str, status: int = 503) -> dict:
    """The SSE event that reports a stream's failure (before `data: [DONE]`)."""
    return error_body(status, message)


def token_text(tok, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tok, entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    content = []
    for e in entries:
        t = token_text(tok, e["token_id"])
        content.append({"token": t, "logprob": e["logprob"], "bytes": list(t.encode()),
                        "top_logprobs": [{"token": token_text(tok, i), "logprob": lp,
                                          "bytes": list(token_text(tok, i).encode())} for i, lp in e["top"]]})
    return {"content": content}


def completion_logprobs(tok, entries: list[dict] | None, offset: int) -> dict | None:
    if entries is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        t = token_text(tok, e["token_id"])
        offsets.append(offset)
        offset += len(t)
        tokens.append(t)
        lps.append(e["logprob"])
        tops.append({token_text(tok, i): lp for i, lp in e["top"]} or None)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


__all__ = ["collect_choices", "Choices", "sampling_params", "new_id", "now", "openai_finish", "raise_for_error",
           "error_event", "chat_logprobs", "completion_logprobs", "DEFAULT_CHAT_MAX_TOKENS", "OPENAI_FINISH"]
