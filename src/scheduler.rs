//! The scheduler's state and control calls: configuration, the request table, the waiting
//! queue and running list, adding (validated, owner-checked), aborting, cancelling a
//! session's current turn, ending sessions, retiring and preempting requests, statistics.
//! One step's scheduling is in `schedule_step.rs` (admission in `admission.rs`), its update
//! in `update_step.rs`. The KV side is behind `kv_cache_manager.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::kv_cache_manager::{KvCacheManager, SessionPin};
use crate::plan::{Row, UpdateResult};
use crate::seq_table::SeqTable;
use crate::sequence::{
    FinishReason, RequestId, SamplingParams, SeqStatus, Sequence, SessionId, StopParams, TurnPrompt,
};
use crate::session::{NotOwner, SessionTable};
/// Static configuration of a `Core`.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// KV blocks in the pool, the null block included.
    pub num_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most sequences running at once (lmdeploy's --instance-num).
    pub max_num_seqs: usize,
    /// Most tokens computed in one step (decodes + prefill chunks).
    pub max_num_batched_tokens: usize,
    /// Most embedding (prefill-only) tokens in a step that also runs generating requests, so a
    /// large embeddings call cannot stall their streams (0: no separate limit). Alone, embedding
    /// requests use the whole budget.
    pub max_embed_tokens_with_decodes: usize,
    pub enable_prefix_caching: bool,
    /// Token ids must be below this.
    pub vocab_size: u32,
    /// End-of-sequence ids (finish reason "stop" unless ignore_eos).
    pub eos_token_ids: Vec<u32>,
    /// The model's context length: the default and the cap of a request's session_len.
    pub max_model_len: usize,
    /// Most sessions kept (0 = no limit); least recently used idle ones are dropped beyond it.
    pub max_sessions: usize,
    /// Idle sessions are dropped after this many seconds (0 = never).
    pub session_idle_timeout_s: f64,
    /// Speculative decoding: most draft tokens verified per decode row and step (0 = off).
    pub num_speculative_tokens: usize,
    /// Speculation is off in a step with more running sequences than this (0 = no limit).
    pub spec_max_decode_rows: usize,
    /// The runner's draft model proposes the drafts: the core reserves K positions a row with
    /// placeholder tokens and takes the real drafts with the update (`set_drafts`).
    pub external_drafts: bool,
}

/// Cumulative counters (never reset), reported by `stats()`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub steps: u64,
    /// Context tokens whose K/V were computed (prefill work actually done).
    pub prompt_tokens_computed: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Context tokens looked up in the prefix cache at admission, and those found.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// Context tokens reused from a session's pinned blocks.
    pub session_hit_tokens: u64,
    pub preemptions: u64,
    pub requests_added: u64,
    /// Speculative decoding: rows verified, draft tokens proposed, drafts accepted.
    pub spec_verified_rows: u64,
    pub spec_draft_tokens: u64,
    pub spec_accepted_tokens: u64,
    /// Finished requests by reason (index = FinishReason value).
    pub finished: [u64; 7],
}

/// The rows of the plan being executed, kept until `update`.
pub(crate) struct InFlight {
    pub rows: Vec<Row>,
    pub num_sampled: usize,
}

/// All scheduling state: block pool, requests, queues and sessions.
pub struct Scheduler {
    pub cfg: CoreConfig,
    pub kv: KvCacheManager,
    pub sessions: SessionTable,
    pub(crate) seqs: SeqTable,
    pub(crate) waiting: VecDeque<RequestId>,
    /// Slots (in `seqs`) of the running sequences, oldest first.
    pub(crate) running: Vec<usize>,
    pub(crate) in_flight: Option<InFlight>,
    /// Finish events decided outside `update` (refusals, errors at admission), reported by the next update.
    pub(crate) events: UpdateResult,
    pub(crate) preempted_since_plan: Vec<RequestId>,
    pub(crate) finished_since_plan: Vec<RequestId>,
    pub counters: Counters,
    /// Embedding requests not finished (the embedding share of a step applies only with some).
    pub(crate) num_embed: usize,
    pub(crate) tick: u64,
    arrivals: u64,
    clock: Instant,
}

impl Scheduler {
    pub fn new(cfg: CoreConfig) -> Result<Self, String> {
        if !cfg.block_size.is_power_of_two() || cfg.block_size > 4096 {
            return Err(format!(
                "block_size must be a power of two up to 4096 (e.g. 16 or 32), got {}",
                cfg.block_size
            ));
        }
        if cfg.num_blocks < 2 {
            return Err(format!(
                "num_blocks must be at least 2 (the null block and one usable), got {}",
                cfg.num_blocks
            ));
        }
        if cfg.max_num_seqs == 0 {
            return Err("max_num_seqs must be at least 1".into());
        }
        if cfg.max_num_batched_tokens == 0 {
            return Err("max_num_batched_tokens must be at least 1".into());
        }
        if cfg.vocab_size == 0 {
            return Err("vocab_size must be positive".into());
        }
        if cfg.max_model_len < 2 {
            return Err("max_model_len must be at least 2".into());
        }
        if let Some(&e) = cfg.eos_token_ids.iter().find(|&&e| e >= cfg.vocab_size) {
            return Err(format!(
                "eos token id {e} is outside the vocabulary (size {})",
                cfg.vocab_size
            ));
        }
        Ok(Scheduler {
            kv: KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching),
            sessions: SessionTable::new(cfg.max_sessions, cfg.session_idle_timeout_s),
            cfg,
            seqs: SeqTable::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            in_flight: None,
            events: UpdateResult::default(),
            preempted_since_plan: Vec::new(),
            finished_since_plan: Vec::new(),
            counters: Counters::default(),
            num_embed: 0,
            tick: 0,
            arrivals: 0,
            clock: Instant::now(),
        })
    }

    /// Seconds since the core was created.
    pub fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    pub fn sequence(&self, id: RequestId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Queue a request without a session owner or continuation form (tests and tools): a
    /// session turn's prompt is appended to the history as it is.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        sampling: SamplingParams,
        stop: StopParams,
        session: Option<SessionId>,
        sequence_start: bool,
        sequence_end: bool,
    ) -> Result<(), String> {
        let turn = session.map(|session_id| SessionTurn {
            session_id,
            sequence_start,
            sequence_end,
            prompt: TurnPrompt {
                continuation: prompt.clone(),
                eos_prefix_len: 0,
            },
            owner: None,
        });
        self.add_request(NewRequest {
            id,
            prompt,
            sampling,
            stop,
            turn,
            embed: false,
            speculate: true,
        })
        .map_err(|e| e.to_string())
    }

    /// Queue a request. Validates everything first and changes nothing on error. A session
    /// turn queues behind the session's unfinished turns (creating the session record).
    pub fn add_request(&mut self, req: NewRequest) -> Result<(), AddError> {
        let NewRequest {
            id,
            prompt,
            sampling,
            mut stop,
            turn,
            embed,
            speculate,
        } = req;
        let invalid = |m: String| Err(AddError::Invalid(m));
        if self.seqs.contains_key(&id) {
            return invalid(format!("request id {id} is already in use"));
        }
        sampling.validate().map_err(AddError::Invalid)?;
        let vocab = self.cfg.vocab_size;
        let outside = |ids: &[u32]| {
            ids.iter()
                .enumerate()
                .find(|(_, &t)| t >= vocab)
                .map(|(i, &t)| (i, t))
        };
        if let Some((i, t)) = outside(&prompt) {
            return invalid(format!(
                "prompt token {i} has id {t}, outside the vocabulary (size {vocab})"
            ));
        }
        if let Some(t) = turn.as_ref().and_then(|t| outside(&t.prompt.continuation)) {
            return invalid(format!(
                "continuation token {} has id {}, outside the vocabulary (size {vocab})",
                t.0, t.1
            ));
        }
        if let Some(&t) = stop.stop_token_ids.iter().find(|&&t| t >= vocab) {
            return invalid(format!(
                "stop token id {t} is outside the vocabulary (size {vocab})"
            ));
        }
        if stop.session_len == 0 {
            stop.session_len = self.cfg.max_model_len as u32;
        } else if stop.session_len as usize > self.cfg.max_model_len {
            return invalid(format!(
                "session_len {} exceeds the model's context length {}",
                stop.session_len, self.cfg.max_model_len
            ));
        }
        if turn.is_none() && prompt.is_empty() && (stop.max_new_tokens > 0 || embed) {
            return invalid("the prompt is empty: give at least one token to generate from".into());
        }
        if embed && (turn.is_some() || stop.max_new_tokens > 0) {
            return invalid("an embedding request has no session and generates nothing".into());
        }
        if let Some(t) = &turn {
            if t.prompt.eos_prefix_len > t.prompt.continuation.len() {
                return invalid("eos_prefix_len is longer than the continuation".into());
            }
            self.sessions
                .check_owner(t.session_id, t.owner.as_deref())
                .map_err(AddError::NotOwner)?;
        }
        self.arrivals += 1;
        let (session, sequence_start, sequence_end, turn_prompt) = match turn {
            Some(t) => {
                self.sessions
                    .enqueue_turn(t.session_id, id, t.owner.as_deref());
                (
                    Some(t.session_id),
                    t.sequence_start,
                    t.sequence_end,
                    t.prompt,
                )
            }
            None => (None, true, false, TurnPrompt::default()),
        };
        let seq = Sequence {
            id,
            num_context_tokens: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            sampling,
            stop,
            status: SeqStatus::Waiting,
            session,
            sequence_start,
            sequence_end,
            merged: session.is_none(),
            turn: turn_prompt,
            embed,
            speculate,
            drafts: Vec::new(),
            spec_skip: 0,
            spec_backoff: 0,
            num_cached_tokens: 0,
            num_preemptions: 0,
            arrival: self.arrivals,
        };
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        self.num_embed += usize::from(embed);
        self.counters.requests_added += 1;
        Ok(())
    }

    /// End a request now with `reason` (Abort: client gone, cancelled or timed out;
    /// StopString: a stop string found by Python). Its blocks return to the pool, or to its
    /// session if kept. Python reports the request's end itself (no event is queued).
    pub fn abort(&mut self, id: RequestId, reason: FinishReason) -> Result<(), String> {
        let status = match self.seqs.get(&id) {
            Some(s) => s.status,
            None => {
                return Err(format!(
                    "unknown request id {id} (finished, aborted or never added)"
                ))
            }
        };
        match status {
            SeqStatus::Waiting => self.waiting.retain(|&w| w != id),
            SeqStatus::Running => {
                let slot = self.seqs.slot_of(&id).expect("known request");
                self.running.retain(|&r| r != slot);
            }
        }
        self.retire(id, reason);
        Ok(())
    }

    /// `stop: true`: abort the session's current turn (the running one, or the first waiting
    /// one); the turns queued behind it run afterwards. Returns the aborted request, if any.
    pub fn cancel_session(
        &mut self,
        sid: SessionId,
        owner: Option<&str>,
    ) -> Result<Option<RequestId>, NotOwner> {
        self.sessions.check_owner(sid, owner)?;
        let Some(id) = self.sessions.current_turn(sid) else {
            return Ok(None);
        };
        self.abort(id, FinishReason::Abort)
            .expect("a session's turn is a known request");
        Ok(Some(id))
    }

    /// End a session now: abort its turns (reported as Abort events by the next update),
    /// release its pinned blocks, forget its history. Returns whether it existed.
    pub fn end_session(&mut self, sid: SessionId) -> bool {
        let Some(sess) = self.sessions.get(sid) else {
            return false;
        };
        let turns: Vec<RequestId> = sess.turns.iter().copied().collect();
        for id in turns {
            let status = self.seqs[&id].status;
            match status {
                SeqStatus::Waiting => self.waiting.retain(|&w| w != id),
                SeqStatus::Running => {
                    let slot = self.seqs.slot_of(&id).expect("known request");
                    self.running.retain(|&r| r != slot);
                }
            }
            self.finish_with_event(id, FinishReason::Abort, -1, None);
        }
        self.kv.release_pin(sid);
        self.sessions.remove(sid);
        true
    }

    /// Remove a finished request (already out of the queues): hand its history and blocks to
    /// its session, or release them; record it for the runner and the counters.
    pub(crate) fn retire(&mut self, id: RequestId, reason: FinishReason) {
        let mut seq = self.seqs.remove(&id).expect("retire of a known request");
        self.num_embed -= usize::from(seq.embed);
        match seq.session {
            Some(sid) if seq.merged => {
                let tick = self.next_tick();
                let now = self.now();
                if seq.sequence_end {
                    // The turn ends the session (also when it was aborted or failed).
                    seq.release_blocks(&mut self.kv);
                    self.sessions.end_turn(sid, id, None, tick, now);
                } else {
                    // The session keeps the history up to the last completed token and the
                    // blocks holding what was computed.
                    seq.trim_blocks_to_computed(&mut self.kv);
                    self.kv.pin_session(
                        sid,
                        SessionPin {
                            blocks: std::mem::take(&mut seq.blocks),
                            block_hashes: std::mem::take(&mut seq.block_hashes),
                            num_computed: seq.num_computed,
                            last_used: tick,
                        },
                    );
                    self.sessions.end_turn(
                        sid,
                        id,
                        Some(std::mem::take(&mut seq.tokens)),
                        tick,
                        now,
                    );
                }
            }
            Some(sid) => {
                // A turn that never ran. Refused or impossible with sequence_end: the session
                // still ends (the client asked for it). Aborted: the session is left as it was.
                self.sessions.forget_turn(sid, id);
                if seq.sequence_end && matches!(reason, FinishReason::Refused | FinishReason::Error)
                {
                    self.end_idle_history(sid);
                }
            }
            None => seq.release_blocks(&mut self.kv),
        }
        self.finished_since_plan.push(id);
        self.counters.finished[reason as usize] += 1;
    }

    /// Drop the history and pinned blocks of a session no turn is running.
    pub(crate) fn end_idle_history(&mut self, sid: SessionId) {
        if self.sessions.get(sid).is_some_and(|s| s.active.is_none()) {
            self.kv.release_pin(sid);
            self.sessions.end_history(sid);
        }
    }

    /// Finish a request during scheduling or update and report it with the next update.
    pub(crate) fn finish_with_event(
        &mut self,
        id: RequestId,
        reason: FinishReason,
        token: i32,
        error: Option<String>,
    ) {
        if let Some(s) = self.seqs.get(&id) {
            self.events.push(s, token, reason as u8);
        }
        if let Some(msg) = error {
            self.events.errors.push((id, msg));
        }
        self.retire(id, reason);
    }

    /// Preempt a running request by recompute: free its blocks (they keep their hashes),
    /// keep its tokens, and put it at the front of the waiting queue.
    pub(crate) fn preempt(&mut self, slot: usize) {
        self.running.retain(|&r| r != slot);
        let seq = self.seqs.at_mut(slot);
        let id = seq.id;
        seq.release_blocks(&mut self.kv);
        seq.status = SeqStatus::Waiting;
        seq.num_preemptions += 1;
        self.waiting.push_front(id);
        self.preempted_since_plan.push(id);
        self.counters.preemptions += 1;
    }

    /// Drop idle sessions past the idle timeout or over the count limit.
    pub(crate) fn expire_sessions(&mut self) {
        let now = self.now();
        for sid in self.sessions.expired(now) {
            self.kv.release_pin(sid);
            self.sessions.remove(sid);
            self.sessions.num_dropped += 1;
        }
    }

    pub(crate) fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Drop every cached hash of free blocks (for tests and for a cache flush).
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.kv.reset_prefix_cache()
    }
}

/// A session turn's part of a request.
#[derive(Clone, Debug)]
pub struct SessionTurn {
    pub session_id: SessionId,
    /// Drop the session's history first.
    pub sequence_start: bool,
    /// End the session after this turn (with nothing to generate: at once, without compute).
    pub sequence_end: bool,
    /// The continuation form of the prompt (used when the session has a history).
    pub prompt: TurnPrompt,
    /// The API key of the client; a session may only be used by the key that created it.
    pub owner: Option<String>,
}

/// Everything `add_request` needs.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub id: RequestId,
    /// The prompt; for a session turn the whole-conversation form (used without a history).
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopParams,
    pub turn: Option<SessionTurn>,
    pub embed: bool,
    /// The runner can verify drafts for it (false for grammar-constrained or logit-biased
    /// requests, whose masks apply to one position a step).
    pub speculate: bool,
}

/// Why `add_request` refused a request (nothing changed).
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// A parameter is invalid (the message names it).
    Invalid(String),
    /// The session belongs to another API key.
    NotOwner(NotOwner),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Invalid(m) => f.write_str(m),
            AddError::NotOwner(e) => e.fmt(f),
        }
    }
}
