"""LLMEngine: the request lifecycle around the Rust core, one step at a time.

`add_request` tokenizes nothing (callers pass token ids; chat templates are applied by the caller)
and queues the request in `Core`. `step()` runs schedule -> forward + sample -> update, turns the
new tokens into text with each request's incremental detokenizer, applies stop strings, and
returns one `RequestDelta` per request that changed. It is used by the offline `Engine` directly
and by the server's `AsyncEngine` from its engine thread. Only one thread may call it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from lmrs import _core
from lmrs.engine.config import EngineConfig
from lmrs.engine.detokenizer import IncrementalDetokenizer
from lmrs.engine.loading import EngineParts, build_engine_parts, model_display_name
from lmrs.engine.params import InvalidParameter, SamplingParams

FINISH_NAMES = {
    _core.FINISH_STOP: "stop",
    _core.FINISH_LENGTH: "length",
    _core.FINISH_REFUSED: "length",
    _core.FINISH_ABORT: "abort",
    _core.FINISH_STOP_STRING: "stop",
    _core.FINISH_ERROR: "error",
}


class StepError(RuntimeError):
    """A step failed; `deltas` end the requests that were in it with an error."""

    def __init__(self, deltas, cause: Exception):
        super().__init__(f"engine step failed: {type(cause).__name__}: {cause}")
        self.deltas = deltas
        self.cause = cause


@dataclass
class RequestDelta:
    """What one step changed for one request."""

    request_id: int
    text: str  # new text since the previous delta
    token_ids: list[int]  # new token ids
    num_generated: int  # tokens generated so far
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    refused: bool = False  # the session turn was refused before inference (session full)
    logprobs: list[dict] | None = None  # new entries: {"token_id", "logprob", "top": [(id, lp), ...]}
    num_prompt_tokens: int = 0  # context tokens of the request (session history + prompt)
    num_cached_tokens: int = 0  # of which served from the prefix cache / session
    error: str | None = None
    error_status: int = 0  # HTTP status of an error: 400 invalid, 413 can never fit, 503 engine failure
    queue_time: float | None = None  # on the first delta after scheduling: seconds from arrival to the first step


@dataclass
class RequestState:
    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    session_id: int | None = None
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict] | None = None
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    error: str | None = None
    queue_reported: bool = False


class LLMEngine:
    """Core + model runner + tokenizer; not thread-safe (one driving thread)."""

    def __init__(self, config: EngineConfig | None = None, parts: EngineParts | None = None, **kwargs):
        self.config = config or EngineConfig(**kwargs)
        self.parts = parts or build_engine_parts(self.config)
        self.core = self.parts.core
        self.runner = self.parts.runner
        self.tokenizer = self.parts.loaded.tokenizer
        self.model_config = self.parts.loaded.config
        self.model_name = model_display_name(self.config, self.parts.loaded)
        self.max_model_len = self.parts.max_model_len
        self.session_len = self.parts.session_len
        self.requests: dict[int, RequestState] = {}
        self._ids = itertools.count(1)
        self.last_step_time = 0.0
        self._unscheduled: set[int] = set()  # requests not yet in any plan (for the queue time)

    # ---- requests -------------------------------------------------------------------------
    def new_request_id(self) -> int:
        return next(self._ids)

    def add_request(self, prompt_token_ids, params: SamplingParams, *, request_id: int | None = None,
                    session_id: int | None = None, sequence_start: bool = True, sequence_end: bool = False,
                    session_len: int | None = None) -> int:
        """Queue a request. Raises InvalidParameter (a ValueError) for bad input; nothing is queued then."""
        ids = [int(t) for t in prompt_token_ids]
        vocab = self.model_config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidParameter("prompt", f"token id {bad} is outside the vocabulary (size {vocab})")
        for t in params.stop_token_ids:
            if t >= vocab:
                raise InvalidParameter("stop_token_ids", f"token id {t} is outside the vocabulary (size {vocab})")
        if session_id is None or session_id < 0:
            session_id = None
            if not ids and params.max_tokens > 0:
                raise InvalidParameter("prompt", "is empty: give at least one token to generate from")
            if len(ids) + min(params.max_tokens, 1) > self.max_model_len:
                raise InvalidParameter(
                    "prompt", f"has {len(ids)} tokens, more than the context length allows "
                    f"({self.max_model_len} tokens including at least one generated token)")
        rid = request_id if request_id is not None else self.new_request_id()
        limit = min(session_len or self.session_len, self.max_model_len)
        try:
            self.core.add(rid, np.asarray(ids, dtype=np.int64), session_id=session_id,
                          sequence_start=sequence_start, sequence_end=sequence_end, session_len=limit,
                          **params.core_kwargs())
        except ValueError as e:
            raise InvalidParameter("request", str(e)) from None
        detok = IncrementalDetokenizer(self.tokenizer, ids, skip_special_tokens=params.skip_special_tokens,
                                       stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output)
        self.requests[rid] = RequestState(rid, ids, params, detok, session_id=session_id, num_prompt_tokens=len(ids),
                                          logprobs=[] if params.logprobs is not None else None)
        self._unscheduled.add(rid)
        return rid

    def abort_request(self, request_id: int) -> RequestDelta | None:
        """Cancel a request now; its blocks go back to the pool (or stay with its session).
        Returns its final delta (finish_reason "abort", the held-back text flushed), or None if
        the request is unknown or already finished."""
        st = self.requests.pop(request_id, None)
        if st is None:
            return None
        try:
            self.core.abort(request_id)
        except KeyError:
            pass
        self._unscheduled.discard(request_id)
        st.finish_reason = "abort"
        st.finished_time = time.monotonic()
        text = st.detok.flush()
        st.text += text
        return RequestDelta(request_id, text, [], len(st.output_ids), True, "abort",
                            num_prompt_tokens=st.num_prompt_tokens, num_cached_tokens=st.num_cached_tokens)

    def end_session(self, session_id: int) -> bool:
        """Drop a session's history and KV blocks (aborting its running request, if any)."""
        for rid in [r for r, st in self.requests.items() if st.session_id == session_id]:
            self.requests.pop(rid, None)
            self._unscheduled.discard(rid)
        return self.core.end_session(session_id)

    def has_unfinished(self) -> bool:
        return bool(self.requests) or self.core.has_unfinished()

    # ---- one step -------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        t0 = time.perf_counter()
        plan = self.core.schedule()
        if self._unscheduled and plan.num_rows:
            now = time.monotonic()
            for rid in self._unscheduled.intersection(plan.req_ids.tolist()):
                st = self.requests.get(rid)
                if st is not None:
                    st.scheduled_time = now
                self._unscheduled.discard(rid)
        try:
            out = self.runner.execute(plan)
        except Exception as exc:
            raise StepError(self._fail_plan(plan, exc), exc) from exc
        res = self.core.update(out.sampled)
        deltas = self._process(plan, out, res)
        self.last_step_time = time.perf_counter() - t0
        return deltas

    def _fail_plan(self, plan, exc: Exception) -> list[RequestDelta]:
        """The forward pass failed: end every request of the plan with an error and answer the
        plan so the core stays consistent."""
        deltas = []
        for rid in plan.req_ids.tolist():
            try:
                self.core.abort(rid)
            except KeyError:
                pass
            st = self.requests.pop(rid, None)
            if st is not None:
                msg = f"the engine failed while running this request: {type(exc).__name__}: {exc}"
                deltas.append(RequestDelta(rid, "", [], len(st.output_ids), True, "error", error=msg, error_status=503))
        self.core.update(np.zeros(plan.num_sampled, dtype=np.int64))
        return deltas

    def _sample_index(self, plan) -> dict[int, int]:
        req_ids = plan.req_ids
        return {int(req_ids[r]): j for j, r in enumerate(plan.sample_rows.tolist())}

    def _process(self, plan, out, res) -> list[RequestDelta]:
        deltas: list[RequestDelta] = []
        events = res.tolist()
        if not events:
            return deltas
        errors = dict(res.errors) if len(res.errors) else {}
        sample_index = None
        now = time.monotonic()
        for rid, tok, reason, ngen, nctx, ncached in events:
            st = self.requests.get(rid)
            if st is None:
                continue  # aborted by the caller meanwhile
            st.num_prompt_tokens, st.num_cached_tokens = nctx, ncached
            text, new_ids, new_lp = "", [], None
            if tok >= 0:
                new_ids = [tok]
                st.output_ids.append(tok)
                if st.first_token_time is None:
                    st.first_token_time = now
                text = st.detok.add(tok)
                if st.logprobs is not None and out.sample is not None and out.sample.logprobs is not None:
                    if sample_index is None:
                        sample_index = self._sample_index(plan)
                    j = sample_index.get(rid)
                    if j is not None:
                        entry = {"token_id": tok, "logprob": float(out.sample.logprobs[j]),
                                 "top": list(zip(out.sample.top_ids[j] or [], out.sample.top_logprobs[j] or []))}
                        st.logprobs.append(entry)
                        new_lp = [entry]
            finish = FINISH_NAMES.get(reason) if reason else None
            if st.detok.stopped_by is not None and finish is None:
                self.core.finish(rid)  # a stop string ended it: free now, keep the session's history
                finish = "stop"
            elif st.detok.stopped_by is not None:
                finish = "stop"
            if finish is not None:
                text += st.detok.flush()
            st.text += text
            d = RequestDelta(rid, text, new_ids, len(st.output_ids), finish is not None, finish,
                             refused=reason == _core.FINISH_REFUSED, logprobs=new_lp,
                             num_prompt_tokens=nctx, num_cached_tokens=ncached)
            if st.scheduled_time is not None and not st.queue_reported:
                d.queue_time = st.scheduled_time - st.arrival_time
                st.queue_reported = True
            if finish is not None:
                self._unscheduled.discard(rid)
                st.finish_reason = finish
                st.finished_time = now
                st.error = d.error = errors.get(rid)
                if d.error:
                    d.error_status = 413
                del self.requests[rid]
            deltas.append(d)
        return deltas

    # ---- embeddings and stats ---------------------------------------------------------------
    def embed(self, token_ids: list[int]) -> np.ndarray:
        """Mean-pooled, L2-normalized final hidden states of one input (float32 [hidden])."""
        if not token_ids:
            raise InvalidParameter("input", "is empty")
        if len(token_ids) > self.max_model_len:
            raise InvalidParameter("input", f"has {len(token_ids)} tokens, more than the context length "
                                            f"{self.max_model_len}")
        return self.runner.embed(token_ids)

    def stats(self) -> dict:
        s = dict(self.core.stats())
        s["requests_tracked"] = len(self.requests)
        s["last_step_ms"] = round(self.last_step_time * 1000, 3)
        return s
