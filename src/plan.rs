//! StepPlan: the flat arrays handed to the model runner each step, and UpdateResult: what a
//! step produced per request. Rows are the sequences scheduled this step; decode rows (one
//! query token) come first, then prefill chunks. Python turns each Vec into a numpy array.

use crate::block_pool::NULL_BLOCK;
use crate::sequence::{RequestId, Sequence};

/// One scheduled row: `take` tokens of request `id`, starting at position `start`.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub id: RequestId,
    /// Slot of the sequence in the request table.
    pub slot: usize,
    pub start: usize,
    pub take: usize,
    /// Whether this row's last token is sampled (it completes the sequence's known tokens).
    pub sample: bool,
    /// Draft tokens verified by this row (its last `drafts` query tokens; `Sequence::drafts`).
    pub drafts: usize,
}

/// Everything the runner needs for one forward pass. Every field is read by the Python model
/// runner (`runner/model_runner.py`); the sampling fields by `runner/sampler.py`.
#[derive(Clone, Debug, Default)]
pub struct StepPlan {
    /// Request id of each row (rows = scheduled sequences).
    pub req_ids: Vec<u64>,
    /// Rows with exactly one query token; they come first (attention can treat them as decodes).
    pub num_decode_rows: usize,
    /// Token ids to embed, all rows concatenated.
    pub input_ids: Vec<i32>,
    /// Position of each input token (RoPE).
    pub positions: Vec<i32>,
    /// Cumulative query lengths, rows + 1 entries; row r's tokens are [qsl[r], qsl[r+1]).
    pub query_start_loc: Vec<i32>,
    /// KV length of each row after this step (cached context + this step's tokens).
    pub seq_lens: Vec<i32>,
    /// KV slot (block_id * block_size + offset) where each input token's K/V is written.
    pub slot_mapping: Vec<i32>,
    /// rows x max_blocks block ids (padded with the null block 0); attention reads context here.
    pub block_table: Vec<i32>,
    /// Columns of `block_table`.
    pub max_blocks: usize,
    /// Longest query of any row (attention tiling).
    pub max_query_len: usize,
    /// Longest KV length of any row.
    pub max_seq_len: usize,
    /// Row index of each sampled row (a prefill chunk that does not finish its prompt samples nothing).
    pub sample_rows: Vec<i32>,
    /// Index into input tokens of each sampled row's last token: the logits to compute. A row
    /// verifying K drafts has K+1 entries (its last K+1 tokens), so with speculation this holds
    /// `sample_rows.len() + num_draft_tokens` entries, each row's in order.
    pub logits_indices: Vec<i32>,
    /// Per sampled row: draft tokens it verifies (0 for a plain row). Its drafts are its last
    /// `num_drafts` input tokens.
    pub num_drafts: Vec<i32>,
    /// Draft tokens in the plan (the sum of `num_drafts`).
    pub num_draft_tokens: usize,
    /// Per sampled row: sampling parameters (see `SamplingParams`).
    pub temperature: Vec<f32>,
    pub top_p: Vec<f32>,
    pub top_k: Vec<i32>,
    pub min_p: Vec<f32>,
    pub repetition_penalty: Vec<f32>,
    pub presence_penalty: Vec<f32>,
    pub frequency_penalty: Vec<f32>,
    /// Per sampled row: the request's seed, or -1.
    pub seeds: Vec<i64>,
    /// Per sampled row: top-N logprobs wanted, or -1.
    pub logprobs: Vec<i32>,
    /// Per sampled row: tokens generated so far (the step index of a seeded stream; min_tokens).
    pub num_generated: Vec<i32>,
    /// Per sampled row: EOS and stop ids must be masked while num_generated < min_tokens.
    pub min_tokens: Vec<i32>,
    /// Sampled rows that have a penalty: index into the sampled rows.
    pub history_rows: Vec<i32>,
    /// Offsets into `history_ids`, history_rows + 1 entries.
    pub history_offsets: Vec<i32>,
    /// All tokens (context then output) of each history row, concatenated.
    pub history_ids: Vec<i32>,
    /// Number of context tokens at the start of each history row's slice.
    pub history_context_lens: Vec<i32>,
    /// Rows of embedding requests: the runner sums their final hidden states (the engine pools
    /// the sums of all chunks into the embedding).
    pub pool_rows: Vec<i32>,
    /// Requests preempted (by recompute) since the previous plan; the runner drops their state.
    pub preempted_ids: Vec<u64>,
    /// Requests finished or aborted since the previous plan.
    pub finished_ids: Vec<u64>,
    /// Tokens of prefill rows (more than one query token) and of decode rows.
    pub num_prefill_tokens: usize,
    pub num_decode_tokens: usize,
}

impl StepPlan {
    pub fn num_rows(&self) -> usize {
        self.req_ids.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Build the arrays from scheduled rows; `seq_of` resolves a request id.
    pub fn build<'a>(
        rows: &mut Vec<Row>,
        block_size: usize,
        seq_of: impl Fn(usize) -> &'a Sequence,
    ) -> StepPlan {
        // Decode rows first (stable), so the runner can slice them off.
        rows.sort_by_key(|r| r.take != 1);
        let n_rows = rows.len();
        let n_tokens: usize = rows.iter().map(|r| r.take).sum();
        let mut p = StepPlan {
            req_ids: Vec::with_capacity(n_rows),
            input_ids: Vec::with_capacity(n_tokens),
            positions: Vec::with_capacity(n_tokens),
            query_start_loc: Vec::with_capacity(n_rows + 1),
            seq_lens: Vec::with_capacity(n_rows),
            slot_mapping: Vec::with_capacity(n_tokens),
            ..Default::default()
        };
        let n_sampled = rows.iter().filter(|r| r.sample).count();
        p.sample_rows.reserve_exact(n_sampled);
        p.logits_indices.reserve_exact(n_sampled);
        p.num_drafts.reserve_exact(n_sampled);
        p.temperature.reserve_exact(n_sampled);
        p.top_p.reserve_exact(n_sampled);
        p.top_k.reserve_exact(n_sampled);
        p.min_p.reserve_exact(n_sampled);
        p.repetition_penalty.reserve_exact(n_sampled);
        p.presence_penalty.reserve_exact(n_sampled);
        p.frequency_penalty.reserve_exact(n_sampled);
        p.seeds.reserve_exact(n_sampled);
        p.logprobs.reserve_exact(n_sampled);
        p.num_generated.reserve_exact(n_sampled);
        p.min_tokens.reserve_exact(n_sampled);
        p.num_decode_rows = rows.iter().take_while(|r| r.take == 1).count();
        p.max_blocks = rows
            .iter()
            .map(|r| Sequence::blocks_for(r.start + r.take, block_size))
            .max()
            .unwrap_or(0);
        p.block_table = vec![NULL_BLOCK as i32; n_rows * p.max_blocks];
        p.query_start_loc.push(0);
        debug_assert!(block_size.is_power_of_two());
        let shift = block_size.trailing_zeros();
        let mask = block_size - 1;
        for (ri, r) in rows.iter().enumerate() {
            let s = seq_of(r.slot);
            p.req_ids.push(r.id);
            let end = r.start + r.take;
            let known = s.tokens.len();
            for pos in r.start..end {
                let t = if pos < known {
                    s.tokens[pos]
                } else {
                    s.drafts[pos - known]
                };
                p.input_ids.push(t as i32);
                p.positions.push(pos as i32);
                let blk = s.blocks[pos >> shift] as usize;
                p.slot_mapping.push(((blk << shift) | (pos & mask)) as i32);
            }
            p.query_start_loc.push(p.input_ids.len() as i32);
            p.seq_lens.push(end as i32);
            p.max_query_len = p.max_query_len.max(r.take);
            p.max_seq_len = p.max_seq_len.max(end);
            let nb = Sequence::blocks_for(end, block_size);
            let row = &mut p.block_table[ri * p.max_blocks..ri * p.max_blocks + nb];
            for (dst, &b) in row.iter_mut().zip(&s.blocks[..nb]) {
                *dst = b as i32;
            }
            if s.embed {
                p.pool_rows.push(ri as i32);
            }
            if r.take == 1 {
                p.num_decode_tokens += 1;
            } else {
                p.num_prefill_tokens += r.take;
            }
            if r.sample {
                let k = p.sample_rows.len() as i32;
                p.sample_rows.push(ri as i32);
                let last = p.input_ids.len() as i32 - 1;
                p.logits_indices.extend(last - r.drafts as i32..=last);
                p.num_drafts.push(r.drafts as i32);
                p.num_draft_tokens += r.drafts;
                let sp = &s.sampling;
                p.temperature.push(sp.temperature);
                p.top_p.push(sp.top_p);
                p.top_k.push(sp.top_k);
                p.min_p.push(sp.min_p);
                p.repetition_penalty.push(sp.repetition_penalty);
                p.presence_penalty.push(sp.presence_penalty);
                p.frequency_penalty.push(sp.frequency_penalty);
                p.seeds.push(sp.seed);
                p.logprobs.push(sp.logprobs);
                p.num_generated.push(s.num_generated() as i32);
                p.min_tokens.push(s.stop.min_new_tokens as i32);
                if sp.needs_history() {
                    if p.history_offsets.is_empty() {
                        p.history_offsets.push(0);
                    }
                    p.history_rows.push(k);
                    p.history_ids.extend(s.tokens.iter().map(|&t| t as i32));
                    p.history_offsets.push(p.history_ids.len() as i32);
                    p.history_context_lens.push(s.num_context_tokens as i32);
                }
            }
        }
        if p.history_offsets.is_empty() {
            p.history_offsets.push(0);
        }
        p
    }
}

/// What one step (or control events since the last step) did to each request.
#[derive(Clone, Debug, Default)]
pub struct UpdateResult {
    /// Request of each event.
    pub req_ids: Vec<u64>,
    /// The token generated this step, or -1 (finish-only event, or a prefill chunk).
    pub new_tokens: Vec<i32>,
    /// 0 while running, else a `FinishReason` value.
    pub finish_reasons: Vec<u8>,
    /// Tokens generated by the request so far.
    pub num_generated: Vec<i32>,
    /// Context tokens of the request (session history + prompt), for usage reporting.
    pub num_context_tokens: Vec<i32>,
    /// Context tokens served from the prefix cache or the session instead of computed.
    pub num_cached_tokens: Vec<i32>,
    /// Messages of requests finished with `FinishReason::Error`.
    pub errors: Vec<(u64, String)>,
}

impl UpdateResult {
    pub fn push(&mut self, s: &Sequence, token: i32, reason: u8) {
        self.push_at(s, token, reason, s.num_generated());
    }

    /// `push` with the request's generated count at this event (one of several tokens of a step).
    pub fn push_at(&mut self, s: &Sequence, token: i32, reason: u8, num_generated: usize) {
        self.req_ids.push(s.id);
        self.new_tokens.push(token);
        self.finish_reasons.push(reason);
        self.num_generated.push(num_generated as i32);
        self.num_context_tokens.push(s.num_context_tokens as i32);
        self.num_cached_tokens.push(s.num_cached_tokens as i32);
    }

    pub fn is_empty(&self) -> bool {
        self.req_ids.is_empty()
    }
}
