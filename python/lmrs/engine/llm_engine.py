"""LLMEngine: the request lifecycle around the Rust core, one step at a time.

`add` queues a validated `EngineRequest` (made by the input processor; `add_request` does both
for callers with plain token ids) in `Core`. `step()` runs schedule -> forward + sample ->
update, turns the new tokens into text with each request's incremental detokenizer, applies
stop strings, pools embedding rows, and returns one `RequestDelta` per request that changed.
A step that fails ends only its own requests (with FinishReason.ERROR); only an unrecoverable
device error propagates (`DeviceFailure`). It is used by the offline `Engine` directly and by
the server's `AsyncEngine` from its engine thread. Only one thread may call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from lmrs import _core
from lmrs._core import FinishReason
from lmrs.engine.config import EngineConfig
from lmrs.engine.detokenizer import IncrementalDetokenizer
from lmrs.engine.errors import InvalidParameter, SessionNotOwned
from lmrs.engine.faults import FaultInjector, is_unrecoverable
from lmrs.engine.grammar_rows import GrammarRows
from lmrs.engine.input_processor import InputProcessor
from lmrs.engine.loading import EngineParts, build_engine_parts, model_display_name
from lmrs.engine.model_info import ModelInfo
from lmrs.engine.outputs import RequestDelta
from lmrs.engine.params import SamplingParams
from lmrs.engine.request import EngineRequest, SessionTurn
from lmrs.runner.plan_view import PlanView

log = logging.getLogger("lmrs.engine")

__all__ = ["LLMEngine", "RequestDelta", "DeviceFailure"]


class DeviceFailure(RuntimeError):
    """A step failed with an unrecoverable device error; the engine cannot continue."""

    def __init__(self, cause: BaseException):
        super().__init__(f"unrecoverable device error: {type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class RequestState:
    request_id: int
    params: SamplingParams
    detok: IncrementalDetokenizer | None  # None for embedding requests
    session_id: int | None = None
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    scheduled_time: float | None = None
    queue_reported: bool = False
    pooled: np.ndarray | None = None  # embedding requests: sum of the final hidden states so far
    pooled_tokens: int = 0


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
        mc = self.model_config
        self.model_info = ModelInfo(name=self.model_name, vocab_size=mc.vocab_size,
                                    eos_token_ids=tuple(mc.eos_token_ids), max_model_len=self.max_model_len,
                                    session_len=self.session_len, hidden_size=mc.hidden_size)
        self.processor = InputProcessor(self.model_info)
        self.requests: dict[int, RequestState] = {}
        self.last_step_time = 0.0
        self.num_model_steps = 0  # steps that ran at least one row
        self.num_failed_steps = 0
        self.faults = FaultInjector.from_env()
        self._unscheduled: set[int] = set()  # requests not yet in any plan (for the queue time)
        self.grammar_rows = GrammarRows()  # matchers of constrained requests, by request id
        self._eos_ids = frozenset(int(t) for t in mc.eos_token_ids)

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, prompt_token_ids, params: SamplingParams, *, session: SessionTurn | None = None) -> int:
        """Validate (the input processor) and queue a request; returns its id. Raises
        InvalidParameter (nothing queued)."""
        return self.add(self.processor.generate(list(prompt_token_ids), params, session=session))

    def add(self, req: EngineRequest) -> int:
        """Queue a validated request. Raises SessionNotOwned or InvalidParameter (from the
        core's invariant checks); nothing is queued then."""
        rid = req.request_id
        try:
            self.core.add(rid, req.prompt_ids, **req.core_kwargs())
        except PermissionError as e:
            raise SessionNotOwned(str(e)) from None
        except (ValueError, OverflowError) as e:  # OverflowError: an id beyond the core's 64-bit integers
            raise InvalidParameter("request", str(e)) from None
        params = req.params
        detok = None
        if not req.embed:
            turn = req.session
            context = list(turn.continuation_ids) if turn and turn.continuation_ids else req.prompt_ids
            detok = IncrementalDetokenizer(self.tokenizer, context, skip_special_tokens=params.skip_special_tokens,
                                           stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output)
        self.requests[rid] = RequestState(rid, params, detok, session_id=req.session.session_id if req.session else None,
                                          num_prompt_tokens=len(req.prompt_ids),
                                          logprobs=[] if params.logprobs is not None else None)
        self._unscheduled.add(rid)
        if params.logit_bias:
            self.runner.sampler.set_logit_bias(rid, params.logit_bias)
        if req.grammar is not None:
            self.grammar_rows.add(rid, req.grammar)
        return rid

    def abort_request(self, request_id: int) -> RequestDelta | None:
        """Cancel a request now; its blocks go back to the pool (or stay with its session).
        Returns its final delta (FinishReason.ABORT, the held-back text flushed), or None if
        the request is unknown or already finished."""
        if request_id not in self.requests:
            return None
        try:
            self.core.abort(request_id)
        except KeyError:
            pass
        return self._final_abort(request_id)

    def cancel_session(self, session_id: int, owner: str | None = None) -> RequestDelta | None:
        """`stop: true`: abort the session's current turn (turns queued behind it run later).
        Returns the aborted turn's final delta, or None when nothing ran. Raises SessionNotOwned."""
        try:
            rid = self.core.cancel_session(session_id, owner)
        except PermissionError as e:
            raise SessionNotOwned(str(e)) from None
        return None if rid is None else self._final_abort(rid)

    def end_session(self, session_id: int) -> bool:
        """Drop a session's history and KV blocks now; its turns end with ABORT events."""
        return self.core.end_session(session_id)

    def _final_abort(self, rid: int) -> RequestDelta | None:
        st = self.requests.pop(rid, None)
        self.grammar_rows.drop(rid)
        if st is None:
            return None
        self.runner.sampler.drop_logit_bias(rid)
        self._unscheduled.discard(rid)
        text = st.detok.flush() if st.detok is not None else ""
        st.text += text
        return RequestDelta(rid, text, [], len(st.output_ids), FinishReason.ABORT,
                            num_prompt_tokens=st.num_prompt_tokens, num_cached_tokens=st.num_cached_tokens)

    def has_unfinished(self) -> bool:
        return bool(self.requests) or self.core.has_unfinished()

    # ---- one step -------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        t0 = time.perf_counter()
        plan = self.core.schedule()
        if plan.num_rows:
            self._note_scheduled(plan)
        if len(plan.preempted_ids):
            for rid in plan.preempted_ids.tolist():  # recomputed from scratch: pool again
                st = self.requests.get(rid)
                if st is not None and st.pooled is not None:
                    st.pooled, st.pooled_tokens = None, 0
        out, step_error, masks = None, None, None
        try:
            if self.grammar_rows and plan.num_sampled:
                plan = PlanView(plan)  # read the plan's arrays once, here and in the runner
                masks = self.grammar_rows.prepare(plan)  # filled while the forward pass runs
            if plan.num_rows:
                self.num_model_steps += 1
                if self.faults:
                    self.faults.before_step(self.num_model_steps)
            out = self.runner.execute(plan, masks=masks)
            res = self.core.update(out.sampled, out.counts, out.drafts)
        except Exception as exc:  # noqa: BLE001 - classified: fail the step, or the process
            if masks is not None:
                _join_quietly(masks)
            if is_unrecoverable(exc, self.runner.device):
                raise DeviceFailure(exc) from exc
            self.num_failed_steps += 1
            step_error = f"the engine failed while running this request: {type(exc).__name__}: {exc}"
            log.error("step %d failed; its %d requests end with an error: %s", self.num_model_steps,
                      plan.num_rows, exc, exc_info=True)
            res = self.core.fail_step(step_error)
            out = None
        deltas = self._process(plan, out, res, step_failed=step_error is not None)
        self.last_step_time = time.perf_counter() - t0
        return deltas

    def _note_scheduled(self, plan) -> None:
        if not self._unscheduled:
            return
        now = time.monotonic()
        for rid in self._unscheduled.intersection(plan.req_ids.tolist()):
            st = self.requests.get(rid)
            if st is not None:
                st.scheduled_time = now
            self._unscheduled.discard(rid)

    def _pool(self, plan, out) -> None:
        """Add this step's hidden-state sums of embedding rows to their requests."""
        if out is None or out.pooled is None:
            return
        qsl = plan.query_start_loc
        req_ids = plan.req_ids
        for j, r in enumerate(plan.pool_rows.tolist()):
            st = self.requests.get(int(req_ids[r]))
            if st is None:
                continue
            st.pooled = out.pooled[j].copy() if st.pooled is None else st.pooled + out.pooled[j]
            st.pooled_tokens += int(qsl[r + 1] - qsl[r])

    def _sample_index(self, plan) -> dict[int, int]:
        req_ids = plan.req_ids
        return {int(req_ids[r]): j for j, r in enumerate(plan.sample_rows.tolist())}

    def _process(self, plan, out, res, *, step_failed: bool = False) -> list[RequestDelta]:
        deltas: list[RequestDelta] = []
        if plan.num_pool_rows:
            self._pool(plan, out)
        events = res.tolist()
        if not events:
            return deltas
        errors = dict(res.errors) if len(res.errors) else {}
        sample_index = None
        for rid, tok, reason, ngen, nctx, ncached in events:
            st = self.requests.get(rid)
            if st is None:
                continue  # aborted by the caller meanwhile
            st.num_prompt_tokens, st.num_cached_tokens = nctx, ncached
            text, new_ids, new_lp = "", [], None
            if tok >= 0:
                new_ids = [tok]
                st.output_ids.append(tok)
                if not (reason == FinishReason.STOP and tok in self._eos_ids):
                    text = st.detok.add(tok)  # the ending EOS is not text, with or without special tokens
                if self.grammar_rows and self.grammar_rows.commit(rid, tok) and reason is None:
                    self.core.finish(rid)  # the grammar is complete: end now rather than spend a step on EOS
                    reason = FinishReason.STOP
                if st.logprobs is not None and out is not None and out.sample is not None \
                        and out.sample.logprobs is not None:
                    if sample_index is None:
                        sample_index = self._sample_index(plan)
                    j = sample_index.get(rid)
                    if j is not None:
                        entry = {"token_id": tok, "logprob": float(out.sample.logprobs[j]),
                                 "top": list(zip(out.sample.top_ids[j] or [], out.sample.top_logprobs[j] or []))}
                        st.logprobs.append(entry)
                        new_lp = [entry]
            if st.detok is not None and st.detok.stopped_by is not None:
                if reason is None:
                    # a stop string ended it: free now, keep the session's history up to this token
                    # (a speculative step may have appended more after it)
                    try:
                        self.core.finish(rid, ngen)
                    except KeyError:
                        pass  # a later token of the same step already ended it in the core
                    reason = FinishReason.STOP_STRING
            if reason is not None and st.detok is not None:
                text += st.detok.flush()
            st.text += text
            d = RequestDelta(rid, text, new_ids, len(st.output_ids), reason, logprobs=new_lp,
                             num_prompt_tokens=nctx, num_cached_tokens=ncached)
            if st.scheduled_time is not None and not st.queue_reported:
                d.queue_time = st.scheduled_time - st.arrival_time
                st.queue_reported = True
            if reason is not None:
                self._unscheduled.discard(rid)
                self.grammar_rows.drop(rid)
                if reason == FinishReason.ERROR:
                    d.error = errors.get(rid) or "the request failed"
                    d.error_status = 503 if step_failed else 413
                elif st.pooled is not None:
                    d.embedding = _normalize(st.pooled / max(1, st.pooled_tokens))
                del self.requests[rid]
                self.runner.sampler.drop_logit_bias(rid)
            deltas.append(d)
        return deltas

    # ---- tensor-parallel ranks -------------------------------------------------------------------
    def check_health(self) -> None:
        """Raise RankFailure when a tensor-parallel rank has died (no-op with one rank)."""
        if self.runner.ranks is not None:
            self.runner.ranks.check()

    def close(self) -> None:
        """Stop the tensor-parallel worker ranks (no-op with one rank); the engine is unusable after."""
        if self.runner.ranks is not None:
            self.runner.ranks.close()

    # ---- stats --------------------------------------------------------------------------------
    def stats(self) -> dict:
        s = dict(self.core.stats())
        s["requests_tracked"] = len(self.requests)
        s["last_step_ms"] = round(self.last_step_time * 1000, 3)
        s["failed_steps"] = self.num_failed_steps
        # products with 8-bit activations in this process (CPU decode steps, `cpu_decode_activations="int8"`)
        s["cpu_int8_products"] = _core.cpu_gguf_int8_products()
        drafts, rows = s.get("spec_decode_num_draft_tokens", 0), s.get("spec_decode_num_drafts", 0)
        accepted = s.get("spec_decode_num_accepted_tokens", 0)
        s["spec_decode_acceptance_rate"] = round(accepted / drafts, 4) if drafts else 0.0
        s["spec_decode_accepted_tokens_per_step"] = round((accepted + rows) / rows, 4) if rows else 0.0
        return s


def _join_quietly(masks) -> None:
    """Wait for a failed step's mask fill (so no fill still holds a matcher); its errors do not matter."""
    try:
        masks.wait()
    except Exception:  # noqa: BLE001
        pass


def _normalize(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32, copy=False)
    return v / max(float(np.linalg.norm(v)), 1e-12)
