//! One step's update: advance each scheduled row's computed count, publish newly full blocks
//! in the prefix cache, append the sampled tokens, and apply EOS / stop ids / max tokens /
//! session_len. Returns the per-request events of the step (plus finish events decided while
//! scheduling, such as refusals). Or, when the step failed, `fail_step`: only the requests of
//! that step end (with an error), keeping what earlier steps computed.

use crate::id_map::IdSet;
use crate::plan::UpdateResult;
use crate::scheduler::Scheduler;
use crate::sequence::FinishReason;

impl Scheduler {
    /// Apply the sampled token ids of the plan in flight (one per sampled row, in order).
    /// Validates first and changes nothing on error.
    pub fn update(&mut self, sampled: &[i64]) -> Result<UpdateResult, String> {
        let Some(flight) = self.in_flight.take() else {
            if sampled.is_empty() {
                return Ok(std::mem::take(&mut self.events));
            }
            return Err("update() called without a plan in flight: call schedule() first".into());
        };
        if sampled.len() != flight.num_sampled {
            let n = flight.num_sampled;
            self.in_flight = Some(flight);
            return Err(format!(
                "update() got {} sampled ids but the plan has {n} sampled rows",
                sampled.len()
            ));
        }
        let vocab = self.cfg.vocab_size as i64;
        if let Some((i, &t)) = sampled
            .iter()
            .enumerate()
            .find(|(_, &t)| t < 0 || t >= vocab)
        {
            self.in_flight = Some(flight);
            return Err(format!(
                "sampled id {t} at row {i} is outside the vocabulary (size {vocab})"
            ));
        }

        let mut out = std::mem::take(&mut self.events);
        let mut k = 0usize;
        let mut finished: Vec<(u64, usize, FinishReason)> = Vec::new();
        for row in &flight.rows {
            let token = if row.sample {
                k += 1;
                Some(sampled[k - 1] as u32)
            } else {
                None
            };
            // Aborted while in flight: its row is ignored.
            let Some(s) = self.seqs.at_if(row.slot, row.id) else {
                continue;
            };
            if s.num_computed != row.start {
                continue; // preempted or reset since it was planned
            }
            let context_before = s
                .num_context_tokens
                .saturating_sub(s.num_computed)
                .min(row.take);
            s.num_computed += row.take;
            self.counters.prompt_tokens_computed += context_before as u64;
            s.publish_full_blocks(&mut self.kv);
            let reason = match token {
                Some(t) => {
                    s.tokens.push(t);
                    self.counters.generation_tokens += 1;
                    let generated = s.num_generated() as u32;
                    let is_stop_id = s.stop.stop_token_ids.contains(&t)
                        || (!s.stop.ignore_eos && self.cfg.eos_token_ids.contains(&t));
                    if is_stop_id && generated > s.stop.min_new_tokens {
                        Some(FinishReason::Stop)
                    } else if generated >= s.stop.max_new_tokens
                        || s.tokens.len() >= s.stop.session_len as usize
                    {
                        Some(FinishReason::Length)
                    } else {
                        None
                    }
                }
                None if s.stop.max_new_tokens == 0 && s.num_computed == s.tokens.len() => {
                    Some(FinishReason::Length)
                }
                None => None,
            };
            out.push(
                s,
                token.map_or(-1, |t| t as i32),
                reason.map_or(0, |r| r as u8),
            );
            if let Some(r) = reason {
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
