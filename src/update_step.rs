//! One step's update: advance each scheduled row's computed count, publish newly full blocks
//! in the prefix cache, append the sampled tokens, and apply EOS / stop ids / max tokens /
//! session_len. Returns the per-request events of the step (plus finish events decided while
//! scheduling, such as refusals). Or, when the step failed, `fail_step`: only the requests of
//! that step end (with an error), keeping what earlier steps computed.

use crate::id_map::IdSet;
use crate::plan::UpdateResult;
use crate::scheduler::{InFlight, Scheduler};
use crate::sequence::FinishReason;

impl Scheduler {
    /// Apply the sampled token ids of the plan in flight (one per sampled row, in order).
    /// Validates first and changes nothing on error.
    pub fn update(&mut self, sampled: &[i64]) -> Result<UpdateResult, String> {
        self.update_verified(sampled, &[])
    }

    /// `update` for a plan with drafts: `counts[j]` tokens of `sampled` belong to sampled row
    /// j (1..=1 + its drafts: the accepted drafts, then the runner's own token); empty
    /// `counts` means one each. Each appended token gives one event, in order.
    pub fn update_verified(
        &mut self,
        sampled: &[i64],
        counts: &[i64],
    ) -> Result<UpdateResult, String> {
        let Some(flight) = self.in_flight.take() else {
            if sampled.is_empty() {
                return Ok(std::mem::take(&mut self.events));
            }
            return Err("update() called without a plan in flight: call schedule() first".into());
        };
        if let Err(e) = self.validate_samples(&flight, sampled, counts) {
            self.in_flight = Some(flight);
            return Err(e);
        }
        let mut out = std::mem::take(&mut self.events);
        let mut k = 0usize; // next sampled token
        let mut j = 0usize; // next sampled row
        let mut finished: Vec<(u64, usize, FinishReason)> = Vec::new();
        let mut tokens: Vec<u32> = Vec::new();
        for row in &flight.rows {
            tokens.clear();
            if row.sample {
                let c = if counts.is_empty() {
                    1
                } else {
                    counts[j] as usize
                };
                tokens.extend(sampled[k..k + c].iter().map(|&t| t as u32));
                k += c;
                j += 1;
            }
            // Aborted while in flight: its row is ignored.
            let Some(s) = self.seqs.at_if(row.slot, row.id) else {
                continue;
            };
            if s.num_computed != row.start {
                continue; // preempted or reset since it was planned
            }
            if tokens.is_empty() {
                let context_before = s
                    .num_context_tokens
                    .saturating_sub(s.num_computed)
                    .min(row.take);
                s.num_computed += row.take;
                self.counters.prompt_tokens_computed += context_before as u64;
                s.publish_full_blocks(&mut self.kv);
                let done = s.stop.max_new_tokens == 0 && s.num_computed == s.tokens.len();
                let reason = done.then_some(FinishReason::Length);
                out.push(s, -1, reason.map_or(0, |r| r as u8));
                if let Some(r) = reason {
                    finished.push((row.id, row.slot, r));
                }
                continue;
            }
            let context_before = s
                .num_context_tokens
                .saturating_sub(s.num_computed)
                .min(row.take - row.drafts);
            self.counters.prompt_tokens_computed += context_before as u64;
            let applied = self.apply_tokens(row, &tokens);
            let s = self.seqs.at(row.slot);
            // One event per appended token, with the request's count at that token.
            let n = s.tokens.len();
            let ngen = s.num_generated();
            for (i, &t) in s.tokens[n - applied.appended..].iter().enumerate() {
                let last = i + 1 == applied.appended;
                let reason = if last { applied.reason } else { None };
                out.push_at(
                    s,
                    t as i32,
                    reason.map_or(0, |r| r as u8),
                    ngen + 1 + i - applied.appended,
                );
            }
            if let Some(r) = applied.reason {
                finished.push((row.id, row.slot, r));
            }
        }
        if !finished.is_empty() {
            if finished.len() <= 8 {
                self.running
                    .retain(|slot| !finished.iter().any(|(_, f, _)| f == slot));
            } else {
                let done: IdSet<usize> = finished.iter().map(|&(_, slot, _)| slot).collect();
                self.running.retain(|slot| !done.contains(slot));
            }
            for (id, _, r) in finished {
                self.retire(id, r);
            }
        }
        Ok(out)
    }

    /// Check the samples of a plan: their count, the vocabulary, and for verified rows that
    /// the accepted tokens are a prefix of the row's drafts.
    fn validate_samples(
        &self,
        flight: &InFlight,
        sampled: &[i64],
        counts: &[i64],
    ) -> Result<(), String> {
        let n = flight.num_sampled;
        if counts.is_empty() {
            if sampled.len() != n {
                return Err(format!(
                    "update() got {} sampled ids but the plan has {n} sampled rows",
                    sampled.len()
                ));
            }
        } else {
            if counts.len() != n {
                return Err(format!(
                    "update() got {} counts but the plan has {n} sampled rows",
                    counts.len()
                ));
            }
            let total: i64 = counts.iter().sum();
            if total != sampled.len() as i64 {
                return Err(format!(
                    "update() got {} sampled ids but the counts sum to {total}",
                    sampled.len()
                ));
            }
        }
        let vocab = self.cfg.vocab_size as i64;
        if let Some((i, &t)) = sampled
            .iter()
            .enumerate()
            .find(|(_, &t)| t < 0 || t >= vocab)
        {
            return Err(format!(
                "sampled id {t} at row {i} is outside the vocabulary (size {vocab})"
            ));
        }
        if counts.is_empty() {
            return Ok(());
        }
        let (mut j, mut k) = (0usize, 0usize);
        for row in flight.rows.iter().filter(|r| r.sample) {
            let c = counts[j];
            if c < 1 || c as usize > row.drafts + 1 {
                return Err(format!(
                    "count {c} of sampled row {j} is outside 1..={}",
                    row.drafts + 1
                ));
            }
            let c = c as usize;
            if c > 1 {
                let drafts = self
                    .seqs
                    .at_if_ref(row.slot, row.id)
                    .map(|s| s.drafts.as_slice());
                if let Some(d) = drafts {
                    let ok = sampled[k..k + c - 1]
                        .iter()
                        .zip(d)
                        .all(|(&a, &b)| a == b as i64);
                    if !ok || d.len() < c - 1 {
                        return Err(format!(
                            "sampled row {j} accepts tokens that are not its drafts"
                        ));
                    }
                }
            }
            j += 1;
            k += c;
        }
        Ok(())
    }

    /// The step of the plan in flight failed (its forward pass or sampling raised): end each
    /// of its requests with `FinishReason::Error` and `message`. Nothing of that step is
    /// applied: the requests' blocks go back (a session keeps its history up to the last
    /// completed token and the blocks of what was computed, so it can continue). Requests
    /// that were not in the step are untouched. Returns the events since the last update.
    pub fn fail_step(&mut self, message: &str) -> UpdateResult {
        let mut out = std::mem::take(&mut self.events);
        let Some(flight) = self.in_flight.take() else {
            return out;
        };
        for row in &flight.rows {
            let Some(s) = self.seqs.at_if(row.slot, row.id) else {
                continue; // aborted while in flight
            };
            out.push(s, -1, FinishReason::Error as u8);
            out.errors.push((row.id, message.to_string()));
            self.running.retain(|&slot| slot != row.slot);
            self.retire(row.id, FinishReason::Error);
        }
        out
    }
}
