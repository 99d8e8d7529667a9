"""The input processor: the one step that turns token ids and sampling parameters into a
validated `EngineRequest` (vLLM's input processor, TGI's `Validation`). Every check of a request
that can fail lives here, with one message per fault naming the field; the engine and the core
keep only cheap invariant checks. Sampling parameters validate themselves when built
(`SamplingParams`), the one logprobs limit included.
"""

from __future__ import annotations

from typing import Sequence

from lmrs.engine.errors import InvalidParameter, PromptTooLong
from lmrs.engine.model_info import ModelInfo
from lmrs.engine.params import SamplingParams
from lmrs.engine.request import EngineRequest, SessionTurn

#: the largest session id the core holds (a signed 64-bit integer)
MAX_SESSION_ID = 2**63 - 1


class InputProcessor:
    def __init__(self, info: ModelInfo):
        self.info = info

    def check_token_ids(self, ids: Sequence[int], field: str) -> list[int]:
        vocab = self.info.vocab_size
        out = []
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise InvalidParameter(field, f"token id {t!r} is outside the vocabulary (size {vocab})")
            out.append(int(t))
        return out

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, *, session: SessionTurn | None = None,
                 field: str = "prompt", grammar=None) -> EngineRequest:
        """A generation request. Without a session the prompt must be non-empty (when it
        generates) and fit the context; a session turn's length is checked against the session
        when it is admitted (an overlong turn is refused there, leaving the session as it was).
        `grammar`: a compiled `lmrs._core.Grammar` the output must follow (structured output, forced
        tool calls)."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        ids = self.check_token_ids(prompt_ids, field)
        self.check_token_ids(params.stop_token_ids, "stop_token_ids")
        if params.logit_bias:
            self.check_token_ids(list(params.logit_bias), "logit_bias")
        limit = self.info.max_model_len
        if session is None:
            if not ids and params.max_tokens > 0:
                raise InvalidParameter(field, "is empty: give at least one token to generate from")
            if len(ids) + min(params.max_tokens, 1) > limit:
                raise PromptTooLong(field, len(ids), limit, generating=params.max_tokens > 0)
        else:
            if not 0 <= session.session_id <= MAX_SESSION_ID:
                raise InvalidParameter("session_id", f"must be in [0, {MAX_SESSION_ID}] for a session turn, "
                                                     f"got {session.session_id}")
            if session.continuation_ids is not None:
                self.check_token_ids(session.continuation_ids, field)
                if not 0 <= session.eos_prefix_len <= len(session.continuation_ids):
                    raise InvalidParameter("eos_prefix_len", "must be within the continuation")
        if grammar is not None and grammar.vocab_size != self.info.vocab_size:
            raise InvalidParameter("grammar", f"was compiled for {grammar.vocab_size} tokens; the model has "
                                              f"{self.info.vocab_size}")
        return EngineRequest(ids, params, session=session, session_len=self.info.session_len, grammar=grammar)

    def embedding(self, ids: Sequence[int], field: str = "input") -> EngineRequest:
        """An embedding request: prefill only, every token's hidden state pooled."""
        ids = self.check_token_ids(ids, field)
        if not ids:
            raise InvalidParameter(field, "is empty (it tokenizes to no tokens)")
        if len(ids) > self.info.max_model_len:
            raise PromptTooLong(field, len(ids), self.info.max_model_len, generating=False)
        return EngineRequest(ids, SamplingParams(temperature=0.0, max_tokens=0), embed=True,
                             session_len=self.info.max_model_len)
