//! Speculative decoding in the core: n-gram (prompt-lookup) drafting for decode rows, and the
//! update of a verified row, which appends the accepted tokens (1..=K+1) in order and rolls the
//! KV state back to them.
//!
//! A decode row with K drafts becomes a query of K+1 tokens (its last token, then the drafts),
//! with slots for K+1 positions. The runner verifies the drafts against the target model and
//! returns the accepted drafts (a prefix of them) plus one token of its own. The rollback keeps
//! every invariant of a plain decode: `num_computed == tokens.len() - 1`, the blocks cover
//! exactly the computed tokens (`trim_blocks_to_computed`), and only full blocks of computed,
//! accepted tokens are published to the prefix cache. The K/V a rejected draft wrote lies past
//! `num_computed` in the sequence's last, partial block (never hashed or shared); the next
//! step's tokens overwrite it before that block can fill. Drafts live only in `Sequence::drafts`
//! for the step in flight: sessions and preemption only ever see accepted tokens.

use crate::plan::Row;
use crate::scheduler::Scheduler;
use crate::sequence::{FinishReason, RequestId, Sequence};

/// Longest and shortest n-gram (suffix of the tokens) looked up earlier in the sequence. A single
/// token (n = 1) matches too often in free text: replaying SmolLM2-135M's greedy outputs of
/// `bench_spec.py`'s prompts, n >= 2 verified 42% fewer chat steps (43 against 74 of ~330) for
/// 1.22 against 1.26 tokens a step, and on the copy workload gave 1.60 against 1.51 tokens a
/// step with fewer verified steps (95 against 107); longer minimums (3) lost tokens on both.
pub const NGRAM_MAX: usize = 3;
pub const NGRAM_MIN: usize = 2;

/// Longest pause (in decode steps) of a sequence whose drafts keep being rejected.
pub const MAX_BACKOFF: u16 = 16;

/// Prompt lookup: for n = `n_max` down to `n_min`, find the most recent earlier occurrence of
/// the last n tokens and propose up to `k` tokens that followed it. Empty when nothing matches.
pub fn propose_ngram(tokens: &[u32], n_max: usize, n_min: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || len < 2 {
        return Vec::new();
    }
    for n in (n_min.max(1)..=n_max.min(len - 1)).rev() {
        let suffix = &tokens[len - n..];
        // Candidates start at i (the match is tokens[i..i+n]) and must end before the suffix.
        for i in (0..len - n).rev() {
            if &tokens[i..i + n] == suffix {
                let from = i + n;
                let to = (from + k).min(len);
                if from < to {
                    return tokens[from..to].to_vec();
                }
            }
        }
    }
    Vec::new()
}

/// What the verification of one row produced, applied by `Scheduler::apply_tokens`.
pub(crate) struct Applied {
    /// Tokens appended (after stop conditions cut the list).
    pub appended: usize,
    pub reason: Option<FinishReason>,
}

impl Scheduler {
    /// Whether a running sequence may speculate this step (the per-step switch is applied by
    /// the caller): a decode of a generating request the runner can verify.
    pub(crate) fn may_speculate(&self, s: &Sequence) -> bool {
        self.cfg.num_speculative_tokens > 0
            && s.speculate
            && !s.embed
            && s.num_uncomputed() == 1
            && s.sampling.seed < 0
            && s.sampling.logprobs < 0
            && !s.sampling.needs_history()
            && s.num_generated() >= s.stop.min_new_tokens as usize
    }

    /// Whether speculation is on for this step: enabled, and few enough decode rows that the
    /// extra query tokens still pay (`spec_max_decode_rows`, 0 = no limit).
    pub(crate) fn speculation_on(&self) -> bool {
        let cap = self.cfg.spec_max_decode_rows;
        self.cfg.num_speculative_tokens > 0 && (cap == 0 || self.running.len() <= cap)
    }

    /// The drafts of running sequence `slot` for this step, at most `budget` tokens: n-gram
    /// lookup, cut so the accepted tokens plus the bonus cannot pass max_new_tokens or
    /// session_len. Stored in the sequence (for the plan and the update); returns their count.
    /// After a step whose drafts were all rejected the sequence pauses (`spec_skip` steps,
    /// doubling up to `MAX_BACKOFF` while rejections continue, reset by an accepted draft).
    pub(crate) fn draft_for(&mut self, slot: usize, budget: usize) -> usize {
        let k_cfg = self.cfg.num_speculative_tokens;
        let s = self.seqs.at_mut(slot);
        s.drafts.clear();
        if s.spec_skip > 0 {
            // Its last drafts were all wrong: decode plainly for a while (text that does not
            // repeat itself should not pay K extra query tokens a step).
            s.spec_skip -= 1;
            return 0;
        }
        let left_new = (s.stop.max_new_tokens as usize).saturating_sub(s.num_generated());
        let left_len = (s.stop.session_len as usize).saturating_sub(s.tokens.len());
        let k = k_cfg
            .min(budget)
            .min(left_new.saturating_sub(1))
            .min(left_len.saturating_sub(1));
        if k == 0 {
            return 0;
        }
        if self.cfg.external_drafts {
            // Placeholders (the last token) for the runner's draft model to replace.
            let last = s.tokens.last().copied().unwrap_or(0);
            s.drafts = vec![last; k];
        } else {
            s.drafts = propose_ngram(&s.tokens, NGRAM_MAX, NGRAM_MIN, k);
        }
        s.drafts.len()
    }

    /// The draft model's tokens for the plan in flight (`external_drafts`): `drafts` holds
    /// each drafting row's tokens in plan order, as many as the row reserved; they replace the
    /// placeholders so the update checks and appends the real ones. Changes nothing on error.
    pub fn set_drafts(&mut self, drafts: &[i64]) -> Result<(), String> {
        let Some(flight) = self.in_flight.as_ref() else {
            return Err("set_drafts() called without a plan in flight".into());
        };
        let want: usize = flight.rows.iter().map(|r| r.drafts).sum();
        if drafts.len() != want {
            return Err(format!("{} draft tokens for a plan of {want}", drafts.len()));
        }
        let vocab = self.cfg.vocab_size as i64;
        if let Some(t) = drafts.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(format!("draft token {t} is outside the vocabulary (0..{vocab})"));
        }
        let mut k = 0;
        for row in flight.rows.iter().filter(|r| r.drafts > 0) {
            let part = &drafts[k..k + row.drafts];
            k += row.drafts;
            if let Some(s) = self.seqs.at_if(row.slot, row.id) {
                if s.drafts.len() == row.drafts {
                    s.drafts = part.iter().map(|&t| t as u32).collect();
                }
            }
        }
        Ok(())
    }

    /// Keep only the first `n` generated tokens of a running request (a stop string found in
    /// the middle of a step's tokens): the computed state and blocks follow. Unknown ids and
    /// requests with no more than `n` tokens are left alone.
    pub fn truncate_generated(&mut self, id: RequestId, n: usize) {
        let Some(slot) = self.seqs.slot_of(&id) else {
            return;
        };
        let s = self.seqs.at_mut(slot);
        let keep = s.num_context_tokens + n;
        if keep == 0 || keep >= s.tokens.len() {
            return;
        }
        s.tokens.truncate(keep);
        s.num_computed = s.num_computed.min(keep - 1);
        let full = s.num_computed / self.kv.block_size();
        s.block_hashes.truncate(full);
        s.trim_blocks_to_computed(&mut self.kv);
    }

    /// Append a row's tokens in order, applying EOS / stop ids / max tokens / session_len to
    /// each: a stop in the middle discards the rest. A verified row (drafts) checks that the
    /// accepted tokens are a prefix of its drafts, then rolls back the rejected positions. The
    /// row's computed count covers its own tokens and the accepted drafts (the last appended
    /// token is uncomputed, as after a plain decode).
    pub(crate) fn apply_tokens(&mut self, row: &Row, tokens: &[u32]) -> Applied {
        let s = self.seqs.at_mut(row.slot);
        let mut appended = 0;
        let mut reason = None;
        for &t in tokens {
            s.tokens.push(t);
            appended += 1;
            let generated = s.num_generated() as u32;
            let is_stop_id = s.stop.stop_token_ids.contains(&t)
                || (!s.stop.ignore_eos && self.cfg.eos_token_ids.contains(&t));
            if is_stop_id && generated > s.stop.min_new_tokens {
                reason = Some(FinishReason::Stop);
            } else if generated >= s.stop.max_new_tokens
                || s.tokens.len() >= s.stop.session_len as usize
            {
                reason = Some(FinishReason::Length);
            }
            if reason.is_some() {
                break;
            }
        }
        // The row's own tokens, then the accepted drafts (all but the last appended token).
        s.num_computed = row.start + (row.take - row.drafts) + (appended - 1);
        s.drafts.clear();
        s.publish_full_blocks(&mut self.kv);
        if row.drafts > 0 {
            s.trim_blocks_to_computed(&mut self.kv);
            if tokens.len() == 1 {
                s.spec_backoff = (s.spec_backoff * 2).clamp(1, MAX_BACKOFF);
                s.spec_skip = s.spec_backoff;
            } else {
                s.spec_backoff = 0;
            }
            self.counters.spec_verified_rows += 1;
            self.counters.spec_draft_tokens += row.drafts as u64;
            self.counters.spec_accepted_tokens += (tokens.len() - 1) as u64;
        }
        self.counters.generation_tokens += appended as u64;
        Applied { appended, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_prefers_longest_and_latest_match() {
        // suffix [1, 2, 3] occurs at 0 (followed by 9) and at 4 (followed by 7, 8).
        let t = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3];
        assert_eq!(propose_ngram(&t, 3, 1, 2), vec![7, 8]);
        // only a 1-gram matches: the last 4 was followed by 6
        let t = [4, 6, 1, 4];
        assert_eq!(propose_ngram(&t, 3, 1, 3), vec![6, 1, 4]);
        // nothing matches
        assert!(propose_ngram(&[1, 2, 3], 3, 1, 4).is_empty());
        // k = 0, or a single token
        assert!(propose_ngram(&[1, 1], 3, 1, 0).is_empty());
        assert!(propose_ngram(&[1], 3, 1, 4).is_empty());
    }

    #[test]
    fn ngram_stops_at_the_end_of_the_tokens() {
        // [5, 5] repeats: the match at 1 is followed only by the last token
        let t = [5, 5, 5];
        assert_eq!(propose_ngram(&t, 3, 1, 4), vec![5]);
    }
}
