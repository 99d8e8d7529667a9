//! Scenario tests of the scheduler with a fake model (the next token is a function of the
//! last), and property tests that drive random operations and check every invariant.

mod proptests;
mod scenarios;
mod sessions;
mod spec;

use crate::plan::{StepPlan, UpdateResult};
use crate::scheduler::{CoreConfig, Scheduler};
use crate::sequence::{SamplingParams, StopParams};

pub(crate) const VOCAB: u32 = 50;
pub(crate) const EOS: u32 = 0;

pub(crate) fn config(
    num_blocks: usize,
    block_size: usize,
    budget: usize,
    max_seqs: usize,
) -> CoreConfig {
    CoreConfig {
        num_blocks,
        block_size,
        max_num_seqs: max_seqs,
        max_num_batched_tokens: budget,
        max_embed_tokens_with_decodes: 0,
        enable_prefix_caching: true,
        vocab_size: VOCAB,
        eos_token_ids: vec![EOS],
        max_model_len: 4096,
        max_sessions: 0,
        session_idle_timeout_s: 0.0,
        num_speculative_tokens: 0,
        spec_max_decode_rows: 0,
        external_drafts: false,
    }
}

/// The fake model: the next token depends only on the last one (never EOS unless asked).
pub(crate) fn next_token(last: i32) -> i64 {
    ((last as i64 * 7 + 3) % (VOCAB as i64 - 1)) + 1
}

/// Samples for a plan from the fake model.
pub(crate) fn fake_samples(plan: &StepPlan) -> Vec<i64> {
    plan.logits_indices
        .iter()
        .map(|&i| next_token(plan.input_ids[i as usize]))
        .collect()
}

pub(crate) fn stop(max_new: u32) -> StopParams {
    StopParams {
        max_new_tokens: max_new,
        ignore_eos: true,
        ..Default::default()
    }
}

pub(crate) fn add(s: &mut Scheduler, id: u64, prompt: Vec<u32>, max_new: u32) {
    s.add(
        id,
        prompt,
        SamplingParams::default(),
        stop(max_new),
        None,
        true,
        false,
    )
    .unwrap();
}

/// One schedule + fake forward + update, with every check.
pub(crate) fn step(s: &mut Scheduler) -> (StepPlan, UpdateResult) {
    let plan = s.schedule().unwrap();
    s.check_plan(&plan).unwrap();
    let samples = fake_samples(&plan);
    let res = s.update(&samples).unwrap();
    s.check_invariants().unwrap();
    (plan, res)
}

/// Run until nothing is left; returns each request's generated tokens and finish reason.
pub(crate) fn run_all(
    s: &mut Scheduler,
    max_steps: usize,
) -> std::collections::HashMap<u64, (Vec<i32>, u8)> {
    let mut out: std::collections::HashMap<u64, (Vec<i32>, u8)> = Default::default();
    for _ in 0..max_steps {
        if !s.has_unfinished() {
            break;
        }
        let (_, res) = step(s);
        collect(&mut out, &res);
    }
    assert!(
        !s.has_unfinished(),
        "workload did not finish in {max_steps} steps"
    );
    let (_, res) = step(s); // drain finish-only events
    collect(&mut out, &res);
    out
}

pub(crate) fn collect(
    out: &mut std::collections::HashMap<u64, (Vec<i32>, u8)>,
    res: &UpdateResult,
) {
    for i in 0..res.req_ids.len() {
        let e = out.entry(res.req_ids[i]).or_default();
        if res.new_tokens[i] >= 0 {
            e.0.push(res.new_tokens[i]);
        }
        if res.finish_reasons[i] != 0 {
            e.1 = res.finish_reasons[i];
        }
    }
}

/// Tokens the fake model produces after `prompt`.
pub(crate) fn expected(prompt: &[u32], n: usize) -> Vec<i32> {
    let mut last = *prompt.last().unwrap() as i32;
    (0..n)
        .map(|_| {
            last = next_token(last) as i32;
            last
        })
        .collect()
}

pub(crate) fn new_sched(cfg: CoreConfig) -> Scheduler {
    Scheduler::new(cfg).unwrap()
}
