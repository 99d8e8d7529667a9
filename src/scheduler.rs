//! The scheduler's state and control calls: configuration, the request table, the waiting
//! queue and running list, adding, aborting, finishing and preempting requests, sessions'
//! ends, and statistics. One step's scheduling is in `schedule_step.rs`, its update in
//! `update_step.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::block_pool::BlockPool;
use crate::plan::{Row, UpdateResult};
use crate::seq_table::SeqTable;
use crate::sequence::{
    FinishReason, RequestId, SamplingParams, SeqStatus, Sequence, SessionId, StopParams,
};
use crate::session::{SessionTable, TurnState};

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
    pub pool: BlockPool,
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
            pool: BlockPool::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching),
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

    /// Queue a request. Validates everything first and changes nothing on error.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        sampling: SamplingParams,
        mut stop: StopParams,
        session: Option<SessionId>,
        sequence_start: bool,
        sequence_end: bool,
    ) -> Result<(), String> {
        if self.seqs.contains_key(&id) {
            return Err(format!("request id {id} is already in use"));
        }
        sampling.validate()?;
        let vocab = self.cfg.vocab_size;
        if let Some((i, &t)) = prompt.iter().enumerate().find(|(_, &t)| t >= vocab) {
            return Err(format!(
                "prompt token {i} has id {t}, outside the vocabulary (size {vocab})"
            ));
        }
        if let Some(&t) = stop.stop_token_ids.iter().find(|&&t| t >= vocab) {
            return Err(format!(
                "stop token id {t} is outside the vocabulary (size {vocab})"
            ));
        }
        if stop.session_len == 0 {
            stop.session_len = self.cfg.max_model_len as u32;
        } else if stop.session_len as usize > self.cfg.max_model_len {
            return Err(format!(
                "session_len {} exceeds the model's context length {}",
                stop.session_len, self.cfg.max_model_len
            ));
        }
        if session.is_none() && prompt.is_empty() && stop.max_new_tokens > 0 {
            return Err("the prompt is empty: give at least one token to generate from".into());
        }
        self.arrivals += 1;
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
            num_cached_tokens: 0,
            num_preemptions: 0,
            arrival: self.arrivals,
        };
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        self.counters.requests_added += 1;
        Ok(())
    }

    /// End a request now with `reason` (Abort: client gone or cancelled; StopString: a stop
    /// string found by Python). Its blocks return to the pool, or to its session if kept.
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

    /// End a session: abort its running and waiting requests, release its blocks.
    /// Returns whether the session existed or had requests.
    pub fn end_session(&mut self, sid: SessionId) -> bool {
        let pending: Vec<RequestId> = self
            .seqs
            .values()
            .filter(|s| s.session == Some(sid))
            .map(|s| s.id)
            .collect();
        for id in &pending {
            let _ = self.abort(*id, FinishReason::Abort);
        }
        self.sessions.remove(sid, &mut self.pool).is_some() || !pending.is_empty()
    }

    /// Remove a finished request (already out of the queues): hand its history and blocks to
    /// its session, or release them; record it for the runner and the counters.
    pub(crate) fn retire(&mut self, id: RequestId, reason: FinishReason) {
        let mut seq = self.seqs.remove(&id).expect("retire of a known request");
        if let Some(sid) = seq.session {
            if seq.merged {
                if seq.sequence_end {
                    seq.release_blocks(&mut self.pool);
                    self.sessions.remove(sid, &mut self.pool);
                } else {
                    let now = self.now();
                    let tick = self.next_tick();
                    let state = TurnState {
                        tokens: std::mem::take(&mut seq.tokens),
                        num_computed: seq.num_computed,
                        blocks: std::mem::take(&mut seq.blocks),
                        block_hashes: std::mem::take(&mut seq.block_hashes),
                    };
                    self.sessions.end_turn(sid, state, tick, now);
                }
            } else if seq.sequence_end
                && matches!(reason, FinishReason::Refused | FinishReason::Error)
            {
                // A turn that was refused before it ran but asked to end the session still
                // ends it (it was not busy, or the turn could not have been considered).
                self.sessions.remove(sid, &mut self.pool);
            }
        } else {
            seq.release_blocks(&mut self.pool);
        }
        self.finished_since_plan.push(id);
        self.counters.finished[reason as usize] += 1;
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
        seq.release_blocks(&mut self.pool);
        seq.status = SeqStatus::Waiting;
        seq.num_preemptions += 1;
        self.waiting.push_front(id);
        self.preempted_since_plan.push(id);
        self.counters.preemptions += 1;
    }

    pub(crate) fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Drop every cached hash of free blocks (for tests and for a cache flush).
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }
}
