//! The Python surface: `lmrs._core.Core`, the only #[pyclass] that owns scheduling state, the
//! `StepPlan` / `UpdateResult` views it returns (`FinishReason` is in `py_finish_reason`). Python
//! refers to requests by id (u64).

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyKeyError, PyPermissionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::plan::{StepPlan, UpdateResult};
use crate::py_finish_reason::PyFinishReason;
use crate::scheduler::{AddError, CoreConfig, NewRequest, Scheduler, SessionTurn};
use crate::sequence::{FinishReason, SamplingParams, StopParams, TurnPrompt, MAX_LOGPROBS};

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// Read a 1-D sequence of non-negative integer ids from a numpy array (any int dtype) or a list.
fn extract_ids(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
        return Ok(a
            .as_slice()
            .map(|s| s.to_vec())
            .unwrap_or_else(|_| a.as_array().to_vec()));
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i32>>() {
        return Ok(a.as_array().iter().map(|&x| x as i64).collect());
    }
    obj.extract::<Vec<i64>>().map_err(|_| {
        value_err(format!(
            "{what} must be a list or 1-D integer array of token ids"
        ))
    })
}

fn to_u32_ids(v: Vec<i64>, what: &str) -> PyResult<Vec<u32>> {
    v.into_iter()
        .enumerate()
        .map(|(i, t)| {
            u32::try_from(t)
                .map_err(|_| value_err(format!("{what}[{i}] = {t} is not a valid token id")))
        })
        .collect()
}

/// The scheduling core: block pool, prefix cache, sessions, continuous-batching scheduler.
#[pyclass(module = "lmrs._core")]
pub struct Core {
    inner: Scheduler,
}

/// One step's plan. Every attribute is a fresh numpy array (copied on access), documented in
/// `src/plan.rs`; read each once per step.
#[pyclass(module = "lmrs._core", frozen, name = "StepPlan")]
pub struct PyStepPlan {
    plan: StepPlan,
}

/// What one step did per request; see `src/plan.rs`.
#[pyclass(module = "lmrs._core", frozen, name = "UpdateResult")]
pub struct PyUpdateResult {
    res: UpdateResult,
}

macro_rules! array_getters {
    ($ty:ident, $field:ident, { $($name:ident : $t:ty),* $(,)? }) => {
        #[pymethods]
        impl $ty {
            $(
                #[getter]
                fn $name<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<$t>> {
                    PyArray1::from_slice(py, &self.$field.$name)
                }
            )*
        }
    };
}

array_getters!(PyStepPlan, plan, {
    req_ids: u64, input_ids: i32, positions: i32, query_start_loc: i32, seq_lens: i32,
    slot_mapping: i32, sample_rows: i32, logits_indices: i32, temperature: f32, top_p: f32,
    top_k: i32, min_p: f32, repetition_penalty: f32, presence_penalty: f32,
    frequency_penalty: f32, seeds: i64, logprobs: i32, num_generated: i32, min_tokens: i32,
    history_rows: i32, history_offsets: i32, history_ids: i32, history_context_lens: i32,
    pool_rows: i32, preempted_ids: u64, finished_ids: u64, num_drafts: i32,
});

#[pymethods]
impl PyStepPlan {
    /// rows x max_blocks block ids, padded with the null block 0.
    #[getter]
    fn block_table<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let rows = self.plan.num_rows();
        PyArray1::from_slice(py, &self.plan.block_table).reshape([rows, self.plan.max_blocks])
    }
    #[getter]
    fn num_rows(&self) -> usize {
        self.plan.num_rows()
    }
    #[getter]
    fn num_tokens(&self) -> usize {
        self.plan.num_tokens()
    }
    #[getter]
    fn num_decode_rows(&self) -> usize {
        self.plan.num_decode_rows
    }
    #[getter]
    fn num_sampled(&self) -> usize {
        self.plan.sample_rows.len()
    }
    /// Rows of embedding requests (their hidden states are pooled).
    #[getter]
    fn num_pool_rows(&self) -> usize {
        self.plan.pool_rows.len()
    }
    #[getter]
    fn max_query_len(&self) -> usize {
        self.plan.max_query_len
    }
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.plan.max_seq_len
    }
    #[getter]
    fn num_prefill_tokens(&self) -> usize {
        self.plan.num_prefill_tokens
    }
    #[getter]
    fn num_draft_tokens(&self) -> usize {
        self.plan.num_draft_tokens
    }
    #[getter]
    fn num_decode_tokens(&self) -> usize {
        self.plan.num_decode_tokens
    }
    /// Whether any sampled row has a non-zero temperature (False: the whole step is greedy).
    #[getter]
    fn any_random(&self) -> bool {
        self.plan.temperature.iter().any(|&t| t > 0.0)
    }
    fn __len__(&self) -> usize {
        self.plan.num_rows()
    }
    fn __repr__(&self) -> String {
        format!(
            "StepPlan(rows={}, tokens={}, decode_rows={}, sampled={}, preempted={}, finished={})",
            self.plan.num_rows(),
            self.plan.num_tokens(),
            self.plan.num_decode_rows,
            self.plan.sample_rows.len(),
            self.plan.preempted_ids.len(),
            self.plan.finished_ids.len()
        )
    }
}

array_getters!(PyUpdateResult, res, {
    req_ids: u64, new_tokens: i32, finish_reasons: u8, num_generated: i32,
    num_context_tokens: i32, num_cached_tokens: i32,
});

#[pymethods]
impl PyUpdateResult {
    /// [(request id, message)] for requests that finished with reason ERROR.
    #[getter]
    fn errors(&self) -> Vec<(u64, String)> {
        self.res.errors.clone()
    }
    fn __len__(&self) -> usize {
        self.res.req_ids.len()
    }
    /// The events as a list of tuples (id, token, FinishReason or None, generated, context,
    /// cached), the cheapest way to iterate them in Python.
    #[allow(clippy::type_complexity)]
    fn tolist(&self) -> Vec<(u64, i32, Option<PyFinishReason>, i32, i32, i32)> {
        let r = &self.res;
        (0..r.req_ids.len())
            .map(|i| {
                (
                    r.req_ids[i],
                    r.new_tokens[i],
                    FinishReason::from_code(r.finish_reasons[i]).map(Into::into),
                    r.num_generated[i],
                    r.num_context_tokens[i],
                    r.num_cached_tokens[i],
                )
            })
            .collect()
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (num_blocks, *, vocab_size, block_size=16, max_num_seqs=256,
        max_num_batched_tokens=2048, max_embed_tokens_with_decodes=0, eos_token_ids=vec![],
        max_model_len=8192, enable_prefix_caching=true, max_sessions=0,
        session_idle_timeout_s=0.0, num_speculative_tokens=0, spec_max_decode_rows=0,
        external_drafts=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        num_blocks: usize,
        vocab_size: u32,
        block_size: usize,
        max_num_seqs: usize,
        max_num_batched_tokens: usize,
        max_embed_tokens_with_decodes: usize,
        eos_token_ids: Vec<u32>,
        max_model_len: usize,
        enable_prefix_caching: bool,
        max_sessions: usize,
        session_idle_timeout_s: f64,
        num_speculative_tokens: usize,
        spec_max_decode_rows: usize,
        external_drafts: bool,
    ) -> PyResult<Self> {
        let cfg = CoreConfig {
            num_blocks,
            block_size,
            max_num_seqs,
            max_num_batched_tokens,
            max_embed_tokens_with_decodes,
            enable_prefix_caching,
            vocab_size,
            eos_token_ids,
            max_model_len,
            max_sessions,
            session_idle_timeout_s,
            num_speculative_tokens,
            spec_max_decode_rows,
            external_drafts,
        };
        Ok(Core {
            inner: Scheduler::new(cfg).map_err(value_err)?,
        })
    }

    /// Queue request `request_id`. Without a session, `prompt_ids` is the prompt. A session
    /// turn (`session_id` >= 0) gives its prompt in two forms, chosen when the turn is admitted:
    /// `prompt_ids` (the whole conversation, used when the session has no history: new,
    /// dropped, or `sequence_start`) and `continuation_ids` (appended to an existing history,
    /// without its first `eos_prefix_len` tokens when the history ends with EOS); without
    /// `continuation_ids` the prompt is appended as it is. `owner`: the API key; a session
    /// may only be used by the key that created it (PermissionError otherwise). `embed`: a
    /// prefill-only embedding request. Raises ValueError for invalid input (nothing queued).
    #[pyo3(signature = (request_id, prompt_ids, *, max_new_tokens=16, min_new_tokens=0,
        stop_token_ids=vec![], ignore_eos=false, session_len=0, temperature=0.0, top_p=1.0,
        top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
        seed=None, logprobs=None, session_id=None, sequence_start=true, sequence_end=false,
        continuation_ids=None, eos_prefix_len=0, owner=None, embed=false, speculate=true))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        request_id: u64,
        prompt_ids: &Bound<'_, PyAny>,
        max_new_tokens: u32,
        min_new_tokens: u32,
        stop_token_ids: Vec<i64>,
        ignore_eos: bool,
        session_len: u32,
        temperature: f32,
        top_p: f32,
        top_k: i32,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<i64>,
        logprobs: Option<i32>,
        session_id: Option<i64>,
        sequence_start: bool,
        sequence_end: bool,
        continuation_ids: Option<&Bound<'_, PyAny>>,
        eos_prefix_len: usize,
        owner: Option<String>,
        embed: bool,
        speculate: bool,
    ) -> PyResult<()> {
        let prompt = to_u32_ids(extract_ids(prompt_ids, "prompt_ids")?, "prompt_ids")?;
        let stop_ids = to_u32_ids(stop_token_ids, "stop_token_ids")?;
        if let Some(l) = logprobs {
            if !(0..=MAX_LOGPROBS).contains(&l) {
                return Err(value_err(format!(
                    "logprobs must be in [0, {MAX_LOGPROBS}], got {l}"
                )));
            }
        }
        let sampling = SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed: seed.map_or(-1, |s| s & i64::MAX),
            logprobs: logprobs.unwrap_or(-1),
        };
        let stop = StopParams {
            max_new_tokens,
            min_new_tokens,
            stop_token_ids: stop_ids,
            ignore_eos,
            session_len,
        };
        let turn = match session_id {
            Some(sid) if sid >= 0 => {
                let continuation = match continuation_ids {
                    Some(c) => to_u32_ids(extract_ids(c, "continuation_ids")?, "continuation_ids")?,
                    None => prompt.clone(),
                };
                Some(SessionTurn {
                    session_id: sid,
                    sequence_start,
                    sequence_end,
                    prompt: TurnPrompt {
                        continuation,
                        eos_prefix_len,
                    },
                    owner,
                })
            }
            _ => None,
        };
        let req = NewRequest {
            id: request_id,
            prompt,
            sampling,
            stop,
            turn,
            embed,
            speculate,
        };
        self.inner.add_request(req).map_err(|e| match e {
            AddError::Invalid(m) => value_err(m),
            AddError::NotOwner(n) => PyPermissionError::new_err(n.to_string()),
        })
    }

    /// Plan the next step (releases the GIL while scheduling).
    fn schedule(&mut self, py: Python<'_>) -> PyResult<PyStepPlan> {
        let inner = &mut self.inner;
        let plan = py
            .detach(|| inner.schedule())
            .map_err(PyRuntimeError::new_err)?;
        Ok(PyStepPlan { plan })
    }

    /// Apply the sampled ids (one per sampled row of the last plan, in order). With drafts in
    /// the plan, `counts[j]` ids belong to sampled row j: its accepted drafts, then the
    /// runner's own token (one event per token). `drafts` (with `external_drafts`): the
    /// draft model's tokens of the plan, replacing the placeholders, each row's in order.
    #[pyo3(signature = (sampled, counts=None, drafts=None))]
    fn update(
        &mut self,
        py: Python<'_>,
        sampled: &Bound<'_, PyAny>,
        counts: Option<&Bound<'_, PyAny>>,
        drafts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyUpdateResult> {
        if let Some(d) = drafts {
            let d = extract_ids(d, "drafts")?;
            self.inner.set_drafts(&d).map_err(value_err)?;
        }
        let ids = extract_ids(sampled, "sampled")?;
        let counts = match counts {
            Some(c) => extract_ids(c, "counts")?,
            None => Vec::new(),
        };
        let inner = &mut self.inner;
        let res = py
            .detach(|| inner.update_verified(&ids, &counts))
            .map_err(value_err)?;
        Ok(PyUpdateResult { res })
    }

    /// The plan in flight failed (forward pass or sampling raised): end only its requests with
    /// FinishReason.ERROR and `message`; sessions keep their history up to the last completed
    /// token. Returns the events since the last update (those error events included).
    fn fail_step(&mut self, message: &str) -> PyUpdateResult {
        PyUpdateResult {
            res: self.inner.fail_step(message),
        }
    }

    /// Abort a waiting or running request (client gone, cancel, timeout): its blocks go back to
    /// the pool, or stay with its session.
    fn abort(&mut self, request_id: u64) -> PyResult<()> {
        self.inner
            .abort(request_id, FinishReason::Abort)
            .map_err(PyKeyError::new_err)
    }

    /// Finish a request because Python found one of its stop strings. `num_generated`: the
    /// output tokens to keep (a step that appended several tokens past the stop drops the
    /// rest, so a session's history ends at the stop); None keeps them all.
    #[pyo3(signature = (request_id, num_generated=None))]
    fn finish(&mut self, request_id: u64, num_generated: Option<usize>) -> PyResult<()> {
        if let Some(n) = num_generated {
            self.inner.truncate_generated(request_id, n);
        }
        self.inner
            .abort(request_id, FinishReason::StopString)
            .map_err(PyKeyError::new_err)
    }

    /// `stop: true`: abort the session's current turn (running, or the first waiting); the
    /// turns queued behind it run afterwards. Returns the aborted request id, or None.
    /// PermissionError when the session belongs to another API key.
    #[pyo3(signature = (session_id, owner=None))]
    fn cancel_session(&mut self, session_id: i64, owner: Option<&str>) -> PyResult<Option<u64>> {
        self.inner
            .cancel_session(session_id, owner)
            .map_err(|e| PyPermissionError::new_err(e.to_string()))
    }

    /// End a session now: abort its turns (reported as ABORT events by the next update),
    /// release its blocks, forget its history. Returns whether it existed.
    fn end_session(&mut self, session_id: i64) -> bool {
        self.inner.end_session(session_id)
    }

    fn has_unfinished(&self) -> bool {
        self.inner.has_unfinished()
    }

    fn reset_prefix_cache(&mut self) -> usize {
        self.inner.reset_prefix_cache()
    }

    /// Raise RuntimeError if any internal invariant is broken (used by tests).
    fn check_invariants(&self) -> PyResult<()> {
        self.inner
            .check_invariants()
            .map_err(PyRuntimeError::new_err)
    }

    /// Counters and gauges: blocks (total/free/used/cached), prefix cache, queues, sessions.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let c = &s.counters;
        let d = PyDict::new(py);
        d.set_item("num_blocks", s.kv.num_usable())?;
        d.set_item("block_size", s.cfg.block_size)?;
        d.set_item("blocks_free", s.kv.num_free())?;
        d.set_item("blocks_used", s.kv.num_used())?;
        d.set_item("blocks_cached", s.kv.num_free_cached())?;
        d.set_item("blocks_pinned_by_sessions", s.kv.num_pinned_blocks())?;
        d.set_item("session_pin_evictions", s.kv.num_pin_evictions)?;
        d.set_item("running", s.num_running())?;
        d.set_item("waiting", s.num_waiting())?;
        d.set_item("sessions", s.sessions.len())?;
        d.set_item("sessions_dropped", s.sessions.num_dropped)?;
        d.set_item("steps", c.steps)?;
        d.set_item("prompt_tokens_computed", c.prompt_tokens_computed)?;
        d.set_item("generation_tokens", c.generation_tokens)?;
        d.set_item("prefix_query_tokens", c.prefix_query_tokens)?;
        d.set_item("prefix_hit_tokens", c.prefix_hit_tokens)?;
        d.set_item("session_hit_tokens", c.session_hit_tokens)?;
        d.set_item("prefix_cache_evictions", s.kv.num_cache_evictions())?;
        d.set_item("preemptions", c.preemptions)?;
        d.set_item("requests_added", c.requests_added)?;
        d.set_item("spec_decode_num_drafts", c.spec_verified_rows)?;
        d.set_item("spec_decode_num_draft_tokens", c.spec_draft_tokens)?;
        d.set_item("spec_decode_num_accepted_tokens", c.spec_accepted_tokens)?;
        for r in FinishReason::ALL {
            d.set_item(format!("finished_{}", r.label()), c.finished[r as usize])?;
        }
        Ok(d)
    }

    /// State of one request, or None when it is not (or no longer) known.
    fn request_info<'py>(
        &self,
        py: Python<'py>,
        request_id: u64,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(s) = self.inner.sequence(request_id) else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("status", format!("{:?}", s.status).to_lowercase())?;
        d.set_item("num_tokens", s.num_tokens())?;
        d.set_item("num_context_tokens", s.num_context_tokens)?;
        d.set_item("num_computed", s.num_computed)?;
        d.set_item("num_cached_tokens", s.num_cached_tokens)?;
        d.set_item("num_generated", s.num_generated())?;
        d.set_item("num_blocks", s.blocks.len())?;
        d.set_item("num_preemptions", s.num_preemptions)?;
        d.set_item("session_id", s.session)?;
        d.set_item("token_ids", s.tokens.clone())?;
        Ok(Some(d))
    }

    /// State of one session, or None.
    fn session_info<'py>(
        &self,
        py: Python<'py>,
        session_id: i64,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(s) = self.inner.sessions.get(session_id) else {
            return Ok(None);
        };
        let pin = self.inner.kv.pin(session_id);
        let d = PyDict::new(py);
        d.set_item("history_len", s.tokens.len())?;
        d.set_item("num_computed", pin.map_or(0, |p| p.num_computed))?;
        d.set_item("num_blocks", pin.map_or(0, |p| p.blocks.len()))?;
        d.set_item("busy", s.active.is_some())?;
        d.set_item("turns", s.turns.iter().copied().collect::<Vec<u64>>())?;
        d.set_item("running_turn", s.active)?;
        d.set_item("owner", s.owner.clone())?;
        d.set_item(
            "ends_with_eos",
            s.tokens
                .last()
                .is_some_and(|t| self.inner.cfg.eos_token_ids.contains(t)),
        )?;
        d.set_item("token_ids", s.tokens.clone())?;
        Ok(Some(d))
    }

    /// Ids of the sessions currently kept.
    fn session_ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.inner.sessions.iter().map(|(&k, _)| k).collect();
        v.sort_unstable();
        v
    }

    #[getter]
    fn block_size(&self) -> usize {
        self.inner.cfg.block_size
    }
    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.cfg.num_blocks
    }
    #[getter]
    fn max_model_len(&self) -> usize {
        self.inner.cfg.max_model_len
    }
    #[getter]
    fn num_waiting(&self) -> usize {
        self.inner.num_waiting()
    }
    #[getter]
    fn num_running(&self) -> usize {
        self.inner.num_running()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_class::<PyStepPlan>()?;
    m.add_class::<PyUpdateResult>()?;
    m.add_class::<PyFinishReason>()?;
    m.add("MAX_LOGPROBS", MAX_LOGPROBS)?;
    Ok(())
}
