//! One request: its token history (context + output), how many tokens have K/V computed,
//! the KV blocks it holds, its limits and its sampling parameters.

use crate::block_hash::{hash_block, BlockHash, ROOT_HASH};
use crate::block_pool::BlockId;
use crate::kv_cache_manager::KvCacheManager;

/// Most top log-probabilities a request may ask for per token (the one limit, exported to
/// Python as `MAX_LOGPROBS`).
pub const MAX_LOGPROBS: i32 = 20;

/// Request id chosen by Python.
pub type RequestId = u64;

/// Session id chosen by the client (`-1` in the API means "no session").
pub type SessionId = i64;

/// Per-request sampling parameters, stored as plain numbers and copied into each StepPlan.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 or negative disables.
    pub top_k: i32,
    /// Drop tokens below min_p * p(top token); 0 disables.
    pub min_p: f32,
    /// Multiplicative penalty on tokens seen in context or output (1 = none).
    pub repetition_penalty: f32,
    /// Additive penalty on tokens present in the output (0 = none).
    pub presence_penalty: f32,
    /// Additive penalty per occurrence in the output (0 = none).
    pub frequency_penalty: f32,
    /// Seed of the request's own random stream; negative means unseeded.
    pub seed: i64,
    /// Number of top log-probabilities to return per token; negative means none.
    pub logprobs: i32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: -1,
            logprobs: -1,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if !self.presence_penalty.is_finite() || !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(format!(
                "presence_penalty must be in [-2, 2], got {}",
                self.presence_penalty
            ));
        }
        if !self.frequency_penalty.is_finite() || !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(format!(
                "frequency_penalty must be in [-2, 2], got {}",
                self.frequency_penalty
            ));
        }
        if self.logprobs > MAX_LOGPROBS {
            return Err(format!(
                "logprobs must be at most {MAX_LOGPROBS}, got {}",
                self.logprobs
            ));
        }
        Ok(())
    }

    /// Whether the sampler needs this request's token history (any penalty active).
    pub fn needs_history(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// When a request stops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopParams {
    /// Most new tokens; 0 means "only prefill" (update a session without generating).
    pub max_new_tokens: u32,
    /// EOS and stop ids are ignored until this many tokens were generated.
    pub min_new_tokens: u32,
    /// Extra token ids that end the request (reported as "stop").
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Most tokens the context (history + prompt + output) may hold; 0 means the core's default.
    pub session_len: u32,
}

/// Lifecycle of a request inside the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
}

/// Why a request finished: the one list of reasons, from the core to every API (each API maps
/// them to its own words once). The numeric values are what `UpdateResult` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop = 1,
    /// max_new_tokens, session_len or KV capacity reached while generating; or a request that
    /// only computes (an embedding, a session update or end) has nothing left to compute.
    Length = 2,
    /// The session turn was refused before any inference: history + prompt would reach session_len.
    Refused = 3,
    /// Aborted: the client left, cancelled (`stop: true`), or timed out.
    Abort = 4,
    /// A stop string was found by Python's detokenizer.
    StopString = 5,
    /// The request failed (it can never fit, or a step running it failed); see its message.
    Error = 6,
}

impl FinishReason {
    pub const ALL: [FinishReason; 6] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Refused,
        FinishReason::Abort,
        FinishReason::StopString,
        FinishReason::Error,
    ];

    /// The reason for a numeric value (None for 0, "still running").
    pub fn from_code(code: u8) -> Option<FinishReason> {
        Self::ALL.get((code as usize).wrapping_sub(1)).copied()
    }

    /// Lower-case name, used in statistics, metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Refused => "refused",
            FinishReason::Abort => "abort",
            FinishReason::StopString => "stop_string",
            FinishReason::Error => "error",
        }
    }
}

/// A session turn's prompt in two forms, chosen when the turn is admitted: `Sequence::tokens`
/// holds the whole conversation (used when the session has no history: new, dropped, or
/// `sequence_start`), `continuation` the tokens that extend an existing history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnPrompt {
    /// Tokens appended to an existing history.
    pub continuation: Vec<u32>,
    /// Leading tokens of `continuation` that close the previous reply with EOS; dropped when
    /// the history already ends with an EOS id (the model generated it).
    pub eos_prefix_len: usize,
}

/// One request's scheduling state.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub id: RequestId,
    /// Context (session history + this turn's prompt) followed by generated tokens. Until a
    /// session request is admitted it holds only the turn's prompt.
    pub tokens: Vec<u32>,
    /// Number of leading tokens that are context (not generated by this request).
    pub num_context_tokens: usize,
    /// Leading tokens whose K/V are in `blocks`.
    pub num_computed: usize,
    /// KV blocks in position order; covers exactly ceil(num_computed / block_size) blocks at rest.
    pub blocks: Vec<BlockId>,
    /// Chained hashes of the leading full, computed blocks (published or not).
    pub block_hashes: Vec<BlockHash>,
    pub sampling: SamplingParams,
    pub stop: StopParams,
    pub status: SeqStatus,
    pub session: Option<SessionId>,
    pub sequence_start: bool,
    pub sequence_end: bool,
    /// Whether the session history was merged in (done once, at first admission); always
    /// true for a request without a session.
    pub merged: bool,
    /// A session turn's continuation form, used at admission when the session has a history.
    pub turn: TurnPrompt,
    /// An embedding request: prefill only, every token computed (no prefix-cache reuse), the
    /// final hidden states of its rows pooled by the runner.
    pub embed: bool,
    /// May speculate (the runner can verify drafts for it; see `spec_decode.rs`).
    pub speculate: bool,
    /// Draft tokens of the step in flight (empty otherwise); never part of `tokens`.
    pub drafts: Vec<u32>,
    /// Decode steps to run without drafts after drafts were all rejected, and the length of
    /// the next such pause (doubling while drafts keep failing; see `spec_decode.rs`).
    pub spec_skip: u16,
    pub spec_backoff: u16,
    /// Context tokens found in the prefix cache or the session at admission (not recomputed).
    pub num_cached_tokens: usize,
    pub num_preemptions: u32,
    /// Arrival order, for FCFS.
    pub arrival: u64,
}

impl Sequence {
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.num_context_tokens
    }

    /// Tokens still to compute before the next sample.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Blocks needed to hold the first `n` tokens.
    #[inline]
    pub fn blocks_for(n: usize, block_size: usize) -> usize {
        debug_assert!(block_size.is_power_of_two());
        (n + block_size - 1) >> block_size.trailing_zeros()
    }

    /// Publish every full, computed block not yet hashed, chaining from the last known hash.
    pub fn publish_full_blocks(&mut self, kv: &mut KvCacheManager) {
        let bs = kv.block_size();
        let full = self.num_computed >> bs.trailing_zeros();
        while self.block_hashes.len() < full {
            let i = self.block_hashes.len();
            let parent = if i == 0 {
                ROOT_HASH
            } else {
                self.block_hashes[i - 1]
            };
            let toks = &self.tokens[i * bs..(i + 1) * bs];
            let h = hash_block(parent, toks);
            kv.publish(self.blocks[i], parent, h, toks);
            self.block_hashes.push(h);
        }
    }

    /// Give back the blocks beyond those holding the computed tokens (blocks allocated for a
    /// step whose results were not applied).
    pub fn trim_blocks_to_computed(&mut self, kv: &mut KvCacheManager) {
        let keep = Self::blocks_for(self.num_computed, kv.block_size());
        if self.blocks.len() > keep {
            let extra: Vec<BlockId> = self.blocks.drain(keep..).collect();
            kv.release(&extra);
        }
    }

    /// Give every block back to the pool and forget the computed state (tokens are kept).
    pub fn release_blocks(&mut self, kv: &mut KvCacheManager) {
        kv.release(&self.blocks);
        self.blocks.clear();
        self.block_hashes.clear();
        self.num_computed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_out_of_range() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..ok.clone()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..ok.clone()
            },
            SamplingParams {
                top_p: 0.0,
                ..ok.clone()
            },
            SamplingParams {
                top_p: 1.5,
                ..ok.clone()
            },
            SamplingParams {
                min_p: -1.0,
                ..ok.clone()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..ok.clone()
            },
            SamplingParams {
                presence_penalty: 3.0,
                ..ok.clone()
            },
            SamplingParams {
                frequency_penalty: -2.5,
                ..ok.clone()
            },
            SamplingParams {
                logprobs: MAX_LOGPROBS + 1,
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?} should be invalid");
        }
    }

    #[test]
    fn publish_full_blocks_chains() {
        let mut kv = KvCacheManager::new(8, 2, true);
        let mut s = Sequence {
            id: 1,
            tokens: vec![1, 2, 3, 4, 5],
            num_context_tokens: 5,
            num_computed: 5,
            blocks: kv.allocate(3).unwrap(),
            block_hashes: vec![],
            sampling: SamplingParams::default(),
            stop: StopParams::default(),
            status: SeqStatus::Running,
            session: None,
            sequence_start: true,
            sequence_end: false,
            merged: true,
            turn: TurnPrompt::default(),
            embed: false,
            speculate: true,
            drafts: vec![],
            spec_skip: 0,
            spec_backoff: 0,
            num_cached_tokens: 0,
            num_preemptions: 0,
            arrival: 0,
        };
        s.publish_full_blocks(&mut kv);
        assert_eq!(s.block_hashes.len(), 2);
        assert!(kv.is_published(s.blocks[0]) && kv.is_published(s.blocks[1]));
        assert!(!kv.is_published(s.blocks[2]));
        assert_eq!(
            s.block_hashes[1],
            hash_block(hash_block(ROOT_HASH, &[1, 2]), &[3, 4])
        );
        s.num_computed = 3;
        s.trim_blocks_to_computed(&mut kv);
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(kv.num_free(), 5);
        s.release_blocks(&mut kv);
        assert_eq!(kv.num_free(), 7);
        assert_eq!(kv.num_free_cached(), 2);
    }
}
