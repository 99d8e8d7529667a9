//! One step's scheduling (vLLM v1's policy): one token budget; running sequences first (a
//! decode takes one token, an unfinished prefill continues), then waiting requests in arrival
//! order, the last one chunked to fit (admission: `admission.rs`). Under block pressure the
//! KV cache manager's policy applies first (free cached blocks are evicted as the pool hands
//! them out, then idle sessions' pins, LRU); what it cannot free is taken from the newest
//! running sequence, preempted by recompute. A step that preempted admits nothing.

use std::collections::VecDeque;

use crate::admission::Admission;
use crate::plan::{Row, StepPlan};
use crate::scheduler::{InFlight, Scheduler};
use crate::sequence::{FinishReason, RequestId, SeqStatus, Sequence};

impl Scheduler {
    /// Plan the next step. Must be followed by `update` (or `fail_step`) before the next
    /// `schedule`.
    pub fn schedule(&mut self) -> Result<StepPlan, String> {
        if self.in_flight.is_some() {
            return Err(
                "schedule() called twice: call update() with the previous plan's samples first"
                    .into(),
            );
        }
        self.expire_sessions();
        self.next_tick();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut embed_budget = self.embed_budget();
        let mut rows: Vec<Row> = Vec::new();
        let preempted = self.schedule_running(&mut rows, &mut budget, &mut embed_budget);
        if !preempted {
            self.schedule_waiting(&mut rows, &mut budget, &mut embed_budget);
        }
        self.counters.steps += 1;
        let seqs = &self.seqs;
        let mut plan = StepPlan::build(&mut rows, self.cfg.block_size, |slot| seqs.at(slot));
        plan.preempted_ids = std::mem::take(&mut self.preempted_since_plan);
        plan.finished_ids = std::mem::take(&mut self.finished_since_plan);
        let num_sampled = plan.sample_rows.len();
        self.in_flight = Some(InFlight { rows, num_sampled });
        Ok(plan)
    }

    /// Tokens embedding requests may take this step: the whole budget when no generating request
    /// runs, else `max_embed_tokens_with_decodes` (when set).
    fn embed_budget(&self) -> usize {
        let cap = self.cfg.max_embed_tokens_with_decodes;
        if cap == 0 || self.num_embed == 0 {
            return usize::MAX;
        }
        let generating = self.running.iter().any(|&slot| !self.seqs.at(slot).embed);
        if generating {
            cap
        } else {
            usize::MAX
        }
    }

    /// Running sequences, oldest first: each gets its next tokens and the blocks they need.
    /// Returns whether a sequence was preempted.
    fn schedule_running(
        &mut self,
        rows: &mut Vec<Row>,
        budget: &mut usize,
        embed_budget: &mut usize,
    ) -> bool {
        let bs = self.cfg.block_size;
        let mut preempted = false;
        let spec_on = self.speculation_on();
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let slot = self.running[i];
            let s = self.seqs.at(slot);
            let id = s.id;
            let computed = s.num_computed;
            let embed = s.embed;
            let mut take = s.num_uncomputed().min(*budget);
            if embed {
                take = take.min(*embed_budget);
                if take == 0 {
                    i += 1; // its share of this step is used up: it continues next step
                    continue;
                }
            }
            let sample = computed + take == s.num_tokens() && s.stop.max_new_tokens > 0;
            let mut drafts = 0;
            if spec_on && take == 1 && sample && *budget > 1 && self.may_speculate(s) {
                drafts = self.draft_for(slot, *budget - 1);
            }
            let s = self.seqs.at(slot);
            let have = s.blocks.len();
            if drafts > 0 {
                // The drafts' positions take blocks only when they are free (never preempt or
                // drop a session's pin for a guess).
                let total = Sequence::blocks_for(computed + take + drafts, bs);
                if total > have && total - have > self.kv.num_free() {
                    self.seqs.at_mut(slot).drafts.clear();
                    drafts = 0;
                }
            }
            let take = take + drafts;
            let total = Sequence::blocks_for(computed + take, bs);
            if total > have {
                // Not the fast path of most decode steps: the tokens need more blocks.
                if total > self.kv.num_usable() {
                    // The context outgrew the whole KV pool: end it instead of thrashing.
                    self.running.remove(i);
                    self.finish_with_event(id, FinishReason::Length, -1, None);
                    continue;
                }
                let need = total - have;
                let mut self_preempted = false;
                while !self.kv.make_room(need, &[], None) {
                    let victim = *self.running.last().expect("running is not empty");
                    preempted = true;
                    self.preempt(victim);
                    if victim == slot {
                        self_preempted = true;
                        break;
                    }
                }
                if self_preempted {
                    break; // it was the last running sequence
                }
                let new_blocks = self.kv.allocate(need).expect("room was made");
                self.seqs.at_mut(slot).blocks.extend(new_blocks);
            }
            rows.push(Row {
                id,
                slot,
                start: computed,
                take,
                sample,
                drafts,
            });
            *budget -= take;
            if embed {
                *embed_budget -= take;
            }
            i += 1;
        }
        preempted
    }

    /// Waiting requests in arrival order. A session turn waits for the turns before it (without
    /// blocking others); a turn with nothing to compute finishes at once, without a seat or
    /// tokens; the first request that cannot get its blocks blocks the rest (FCFS).
    fn schedule_waiting(
        &mut self,
        rows: &mut Vec<Row>,
        budget: &mut usize,
        embed_budget: &mut usize,
    ) {
        let mut kept: VecDeque<RequestId> = VecDeque::with_capacity(self.waiting.len());
        let mut blocked = false;
        while let Some(id) = self.waiting.pop_front() {
            let s = &self.seqs[&id];
            if let Some(sid) = s.session {
                if !s.merged {
                    if !self.sessions.is_next_turn(sid, id) {
                        kept.push_back(id);
                        continue;
                    }
                    if self.is_free_turn(id) {
                        self.finish_free_turn(id);
                        continue;
                    }
                }
            }
            if blocked || *budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                blocked = true;
                kept.push_back(id);
                continue;
            }
            let embed = s.embed;
            let limit = if embed {
                (*budget).min(*embed_budget)
            } else {
                *budget
            };
            if limit == 0 {
                kept.push_back(id); // embeddings' share of this step is used up
                continue;
            }
            match self.try_admit(id, limit) {
                Admission::Admitted(row) => {
                    *budget -= row.take;
                    if embed {
                        *embed_budget -= row.take;
                    }
                    self.seqs.at_mut(row.slot).status = SeqStatus::Running;
                    self.running.push(row.slot);
                    rows.push(row);
                }
                Admission::Finished => {}
                Admission::NoBlocks => {
                    blocked = true;
                    kept.push_back(id);
                }
            }
        }
        self.waiting = kept;
    }
}
