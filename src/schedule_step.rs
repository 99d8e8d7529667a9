//! One step's scheduling (vLLM v1's policy): one token budget; running sequences first (a
//! decode takes one token, an unfinished prefill continues), then waiting requests in arrival
//! order, the last one chunked to fit. Under block pressure: free cached blocks go first
//! (the pool evicts them as it hands them out), then idle sessions' blocks (LRU), then the
//! newest running sequence is preempted by recompute. A step that preempted admits nothing.

use std::collections::VecDeque;

use crate::block_hash::{hash_block, BlockHash, ROOT_HASH};
use crate::block_pool::BlockId;
use crate::plan::{Row, StepPlan};
use crate::scheduler::{InFlight, Scheduler};
use crate::sequence::{FinishReason, RequestId, SeqStatus, Sequence};

/// Outcome of trying to admit one waiting request.
enum Admission {
    /// Admitted: runs `take` tokens this step.
    Admitted(Row),
    /// Finished without running (refused, error, or nothing to compute); already reported.
    Finished,
    /// Not enough free blocks now; stays waiting and blocks the queue (FCFS).
    NoBlocks,
}

impl Scheduler {
    /// Plan the next step. Must be followed by `update` before the next `schedule`.
    pub fn schedule(&mut self) -> Result<StepPlan, String> {
        if self.in_flight.is_some() {
            return Err(
                "schedule() called twice: call update() with the previous plan's samples first"
                    .into(),
            );
        }
        let now = self.now();
        self.sessions.expire(&mut self.pool, now);
        self.next_tick();
        let bs = self.cfg.block_size;
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut rows: Vec<Row> = Vec::new();
        let mut preempted = false;

        // 1. Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let s = self.seqs.at(slot);
            let id = s.id;
            let computed = s.num_computed;
            let take = s.num_uncomputed().min(budget);
            let sample = computed + take == s.num_tokens() && s.stop.max_new_tokens > 0;
            let total = Sequence::blocks_for(computed + take, bs);
            let have = s.blocks.len();
            if total > have {
                // Not the fast path of most decode steps: the tokens need more blocks.
                if total > self.pool.num_usable() {
                    // The context outgrew the whole KV pool: end it instead of thrashing.
                    self.running.remove(i);
                    self.finish_with_event(id, FinishReason::Length, -1, None);
                    continue;
                }
                let need = total - have;
                let mut self_preempted = false;
                while self.pool.num_free() < need {
                    if self.sessions.evict_idle_blocks(&mut self.pool, need, None) > 0 {
                        continue;
                    }
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
                let new_blocks = self.pool.allocate(need).expect("checked free blocks");
                self.seqs.at_mut(slot).blocks.extend(new_blocks);
            }
            rows.push(Row {
                id,
                slot,
                start: computed,
                take,
                sample,
            });
            budget -= take;
            i += 1;
        }

        // 2. Waiting requests in arrival order, unless this step preempted.
        if !preempted {
            let mut kept: VecDeque<RequestId> = VecDeque::with_capacity(self.waiting.len());
            let mut blocked = false;
            while let Some(id) = self.waiting.pop_front() {
                if blocked || budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                    blocked = true;
                    kept.push_back(id);
                    continue;
                }
                let s = &self.seqs[&id];
                if let Some(sid) = s.session {
                    if !s.merged && self.sessions.is_busy(sid) {
                        kept.push_back(id); // its session is busy: wait, but do not block others
                        continue;
                    }
                }
                match self.try_admit(id, budget) {
                    Admission::Admitted(row) => {
                        budget -= row.take;
                        rows.push(row);
                        self.seqs.at_mut(row.slot).status = SeqStatus::Running;
                        self.running.push(row.slot);
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

        self.counters.steps += 1;
        let seqs = &self.seqs;
        let mut plan = StepPlan::build(&mut rows, bs, |slot| seqs.at(slot));
        plan.preempted_ids = std::mem::take(&mut self.preempted_since_plan);
        plan.finished_ids = std::mem::take(&mut self.finished_since_plan);
        let num_sampled = plan.sample_rows.len();
        self.in_flight = Some(InFlight { rows, num_sampled });
        Ok(plan)
    }

    /// Leading full blocks of `tokens[..limit]` that are published in the prefix cache.
    fn cached_prefix(&self, tokens: &[u32], limit: usize) -> (Vec<BlockId>, Vec<BlockHash>) {
        let bs = self.cfg.block_size;
        let mut blocks = Vec::new();
        let mut hashes = Vec::new();
        if !self.pool.caching_enabled() {
            return (blocks, hashes);
        }
        let mut parent = ROOT_HASH;
        for chunk in tokens[..limit].chunks_exact(bs) {
            let h = hash_block(parent, chunk);
            match self.pool.lookup(parent, h, chunk) {
                Some(b) => {
                    blocks.push(b);
                    hashes.push(h);
                    parent = h;
                }
                None => break,
            }
        }
        (blocks, hashes)
    }

    /// Admit waiting request `id` with `budget` tokens left, as one transaction: either it gets
    /// its blocks and a row, or nothing changes (except a refusal, which finishes it).
    fn try_admit(&mut self, id: RequestId, budget: usize) -> Admission {
        let bs = self.cfg.block_size;
        let usable = self.pool.num_usable();
        let (session, merged, seq_start, prompt_len, max_new, session_len) = {
            let s = &self.seqs[&id];
            (
                s.session,
                s.merged,
                s.sequence_start,
                s.tokens.len(),
                s.stop.max_new_tokens,
                s.stop.session_len as usize,
            )
        };
        let samples = usize::from(max_new > 0);

        // Length checks for a turn that has not started yet: refuse, leaving the session as it was.
        if !merged {
            let sid = session.expect("only session turns start unmerged");
            let hist = self.sessions.history_len(sid, seq_start);
            let total = hist + prompt_len;
            if total + samples > session_len {
                self.finish_with_event(id, FinishReason::Refused, -1, None);
                return Admission::Finished;
            }
            if total == 0 && max_new > 0 {
                let msg = "the session is empty and the prompt is empty: nothing to generate from"
                    .to_string();
                self.finish_with_event(id, FinishReason::Error, -1, Some(msg));
                return Admission::Finished;
            }
            if Sequence::blocks_for(total + samples, bs) > usable {
                let msg = format!(
                    "the context of {} tokens needs {} KV blocks but the pool has only {usable}",
                    total + samples,
                    Sequence::blocks_for(total + samples, bs)
                );
                self.finish_with_event(id, FinishReason::Error, -1, Some(msg));
                return Admission::Finished;
            }
            if seq_start {
                // Drop the old history now: the client asked for a fresh start.
                if let Some(s) = self.sessions.get(sid) {
                    if !s.tokens.is_empty() || !s.blocks.is_empty() {
                        self.sessions.remove(sid, &mut self.pool);
                    }
                }
            }
        } else {
            let s = &self.seqs[&id];
            if s.num_tokens() + samples > session_len {
                self.finish_with_event(id, FinishReason::Length, -1, None);
                return Admission::Finished;
            }
            if Sequence::blocks_for(s.num_tokens() + samples, bs) > usable {
                let msg = format!(
                    "the prompt of {} tokens needs {} KV blocks but the pool has only {usable}",
                    s.num_tokens(),
                    Sequence::blocks_for(s.num_tokens() + samples, bs)
                );
                self.finish_with_event(id, FinishReason::Error, -1, Some(msg));
                return Admission::Finished;
            }
        }

        // The candidate state: full token list, blocks already held (session pins), computed count.
        let (tokens_len, pinned_blocks, pinned_computed) = if merged {
            let s = &self.seqs[&id];
            (s.num_tokens(), s.blocks.len(), s.num_computed)
        } else {
            let sid = session.unwrap();
            match self.sessions.get(sid) {
                Some(sess) => (
                    sess.tokens.len() + prompt_len,
                    sess.blocks.len(),
                    sess.num_computed,
                ),
                None => (prompt_len, 0, 0),
            }
        };
        let tokens: Vec<u32> = if merged {
            self.seqs[&id].tokens.clone()
        } else {
            let sess_tokens = self
                .sessions
                .get(session.unwrap())
                .map_or(&[][..], |s| &s.tokens[..]);
            [sess_tokens, &self.seqs[&id].tokens[..]].concat()
        };
        debug_assert_eq!(tokens.len(), tokens_len);
        // A sampling request must compute at least its last token to get logits.
        let limit = if samples > 0 {
            tokens_len.saturating_sub(1)
        } else {
            tokens_len
        };

        let mut attempt = 0;
        loop {
            let (hits, hit_hashes, computed, held) = if pinned_blocks > 0 {
                if pinned_computed > limit {
                    // Everything was computed but the last token's logits are needed: recompute
                    // from the last block boundary (whole blocks dropped, none rewritten).
                    let c = limit / bs * bs;
                    (Vec::new(), Vec::new(), c, c / bs)
                } else {
                    (Vec::new(), Vec::new(), pinned_computed, pinned_blocks)
                }
            } else {
                let (b, h) = self.cached_prefix(&tokens, limit);
                let c = b.len() * bs;
                let n = b.len();
                (b, h, c, n)
            };
            let remaining = tokens_len - computed;
            let take = remaining.min(budget);
            let need = Sequence::blocks_for(computed + take, bs).saturating_sub(held);
            let revived = hits
                .iter()
                .filter(|&&b| self.pool.ref_count(b) == 0)
                .count();
            if self.pool.num_free() < need + revived {
                if attempt == 0 {
                    attempt += 1;
                    let exclude = if merged { None } else { session };
                    self.sessions
                        .evict_idle_blocks(&mut self.pool, need + revived, exclude);
                    continue;
                }
                return Admission::NoBlocks;
            }

            // Commit.
            let tick = self.tick;
            let now = self.now();
            if !merged {
                let sid = session.unwrap();
                let st = self
                    .sessions
                    .begin_turn(sid, id, false, &mut self.pool, tick, now);
                let s = self.seqs.get_mut(&id).unwrap();
                let prompt = std::mem::take(&mut s.tokens);
                s.tokens = st.tokens;
                s.tokens.extend(prompt);
                s.num_context_tokens = s.tokens.len();
                s.blocks = st.blocks;
                s.block_hashes = st.block_hashes;
                s.num_computed = st.num_computed;
                s.merged = true;
            }
            let s = self.seqs.get_mut(&id).unwrap();
            if !s.blocks.is_empty() {
                // Session pins: keep the blocks covering `computed` tokens.
                if s.num_computed > computed {
                    let keep_blocks = computed / bs;
                    let dropped: Vec<BlockId> = s.blocks.drain(keep_blocks..).collect();
                    self.pool.release_sequence(&dropped);
                    s.block_hashes.truncate(keep_blocks);
                    s.num_computed = computed;
                }
                self.counters.session_hit_tokens += s.num_computed as u64;
                s.num_cached_tokens = s.num_computed;
            } else {
                for &b in &hits {
                    self.pool.acquire_cached(b);
                }
                self.counters.prefix_query_tokens += tokens_len as u64;
                self.counters.prefix_hit_tokens += computed as u64;
                s.blocks = hits;
                s.block_hashes = hit_hashes;
                s.num_computed = computed;
                s.num_cached_tokens = computed;
            }
            let start = s.num_computed;
            let remaining = s.num_tokens() - start;
            if remaining == 0 {
                // Nothing to compute and nothing to sample (a session update with no new tokens).
                self.finish_with_event(id, FinishReason::Length, -1, None);
                return Admission::Finished;
            }
            let take = remaining.min(budget);
            let need = Sequence::blocks_for(start + take, bs) - s.blocks.len();
            let new_blocks = self.pool.allocate(need).expect("checked free blocks");
            let s = self.seqs.get_mut(&id).unwrap();
            s.blocks.extend(new_blocks);
            let sample = start + take == s.num_tokens() && samples > 0;
            let slot = self.seqs.slot_of(&id).expect("known request");
            return Admission::Admitted(Row {
                id,
                slot,
                start,
                take,
                sample,
            });
        }
    }
}
