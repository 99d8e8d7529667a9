//! Speculative decoding in the core with the fake model: n-gram drafts verified greedily give
//! the same tokens as plain decoding; rejected positions are rolled back (blocks, computed
//! count, prefix cache); stops in the middle of the accepted tokens discard the rest.

use super::*;
use crate::sequence::{FinishReason, Sequence};

fn spec_config(k: usize) -> CoreConfig {
    CoreConfig {
        num_speculative_tokens: k,
        ..config(64, 4, 64, 8)
    }
}

/// Greedy verification against the fake model: accept drafts while each equals the model's
/// next token after the one before it, then the model's own token. Returns (ids, counts).
fn verify(plan: &StepPlan) -> (Vec<i64>, Vec<i64>) {
    let (mut ids, mut counts) = (Vec::new(), Vec::new());
    let mut li = 0usize;
    for &nd in &plan.num_drafts {
        let idx = &plan.logits_indices[li..li + nd as usize + 1];
        li += idx.len();
        let mut c = 0;
        for (i, &at) in idx.iter().enumerate() {
            let target = next_token(plan.input_ids[at as usize]);
            let draft = idx.get(i + 1).map(|&n| plan.input_ids[n as usize] as i64);
            ids.push(if draft == Some(target) {
                draft.unwrap()
            } else {
                target
            });
            c += 1;
            if draft != Some(target) {
                break;
            }
        }
        counts.push(c);
    }
    (ids, counts)
}

fn spec_step(s: &mut Scheduler) -> (StepPlan, UpdateResult) {
    let plan = s.schedule().unwrap();
    s.check_plan(&plan).unwrap();
    let (ids, counts) = verify(&plan);
    let res = s.update_verified(&ids, &counts).unwrap();
    s.check_invariants().unwrap();
    (plan, res)
}

fn run_spec(s: &mut Scheduler, max_steps: usize) -> std::collections::HashMap<u64, (Vec<i32>, u8)> {
    let mut out = Default::default();
    for _ in 0..max_steps {
        if !s.has_unfinished() {
            break;
        }
        let (_, res) = spec_step(s);
        collect(&mut out, &res);
    }
    assert!(!s.has_unfinished());
    out
}

#[test]
fn drafts_give_the_plain_tokens_and_save_steps() {
    // The fake model cycles, so once a cycle is in the history the n-gram drafts are right.
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![5, 9], vec![7; 11]];
    let mut plain = new_sched(config(64, 4, 64, 8));
    let mut spec = new_sched(spec_config(4));
    for (i, p) in prompts.iter().enumerate() {
        add(&mut plain, i as u64, p.clone(), 70);
        add(&mut spec, i as u64, p.clone(), 70);
    }
    let a = run_all(&mut plain, 500);
    let b = run_spec(&mut spec, 500);
    assert_eq!(a, b);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(b[&(i as u64)].0, expected(p, 70));
    }
    let c = &spec.counters;
    assert!(c.spec_accepted_tokens > 0 && c.spec_accepted_tokens <= c.spec_draft_tokens);
    assert!(
        c.steps < plain.counters.steps,
        "{} vs {}",
        c.steps,
        plain.counters.steps
    );
    assert_eq!(spec.kv.num_used(), 0, "blocks leaked");
}

#[test]
fn rejected_drafts_roll_back_blocks_and_computed_count() {
    let mut s = new_sched(spec_config(4));
    // the prefill samples 25, so [3, 25] proposes [8, 3, 25]; the fake model says 32.
    add(&mut s, 1, vec![3, 25, 8, 3], 20);
    let (plan, _) = step(&mut s); // prefill, samples one token
    assert_eq!(plan.num_draft_tokens, 0);
    // Next decode: force drafts by hand-checking what the core proposed.
    let plan = s.schedule().unwrap();
    s.check_plan(&plan).unwrap();
    let k = plan.num_draft_tokens;
    assert!(k > 0, "a repeated token must give drafts");
    let seq = s.sequence(1).unwrap();
    let (start_tokens, start_computed) = (seq.tokens.len(), seq.num_computed);
    assert!(seq.blocks.len() >= Sequence::blocks_for(start_computed + 1 + k, 4));
    // Reject every draft: one token of the model's own.
    let own = next_token(plan.input_ids[plan.logits_indices[0] as usize]);
    let res = s.update_verified(&[own], &[1]).unwrap();
    s.check_invariants().unwrap();
    let seq = s.sequence(1).unwrap();
    assert_eq!(seq.tokens.len(), start_tokens + 1);
    assert_eq!(seq.num_computed, start_computed + 1);
    assert_eq!(seq.blocks.len(), Sequence::blocks_for(seq.num_computed, 4));
    assert!(seq.drafts.is_empty());
    assert_eq!(res.new_tokens, vec![own as i32]);
    assert_eq!(s.counters.spec_accepted_tokens, 0);
    assert_eq!(s.counters.spec_draft_tokens, k as u64);
}

#[test]
fn accepted_tokens_that_are_not_the_drafts_are_refused() {
    let mut s = new_sched(spec_config(4));
    add(&mut s, 1, vec![3, 25, 8, 3], 20);
    step(&mut s);
    let plan = s.schedule().unwrap();
    let k = plan.num_draft_tokens;
    assert!(k >= 1);
    let wrong = (plan.input_ids[plan.logits_indices[1] as usize] as i64 + 1) % VOCAB as i64;
    let e = s.update_verified(&[wrong, 1], &[2]).unwrap_err();
    assert!(e.contains("not its drafts"), "{e}");
    let e = s
        .update_verified(&vec![1; k + 2], &[k as i64 + 2])
        .unwrap_err();
    assert!(e.contains("outside"), "{e}");
    // The plan is still in flight and can be applied correctly.
    let (ids, counts) = verify(&plan);
    s.update_verified(&ids, &counts).unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn a_stop_in_the_middle_discards_the_rest() {
    let mut s = new_sched(spec_config(4));
    let prompt = vec![1, 2, 3];
    let gen = expected(&prompt, 40);
    // Stop at the first token of the cycle's second lap, which an accepted draft produces.
    let stop_tok = gen[20] as u32;
    let first = gen.iter().position(|&t| t as u32 == stop_tok).unwrap();
    s.add(
        9,
        prompt.clone(),
        SamplingParams::default(),
        StopParams {
            max_new_tokens: 40,
            stop_token_ids: vec![stop_tok],
            ..Default::default()
        },
        None,
        true,
        false,
    )
    .unwrap();
    let out = run_spec(&mut s, 200);
    assert_eq!(out[&9].0, gen[..=first].to_vec());
    assert_eq!(out[&9].1, FinishReason::Stop as u8);
    assert_eq!(s.kv.num_used(), 0);
}

#[test]
fn max_tokens_caps_the_drafts() {
    let mut s = new_sched(spec_config(8));
    add(&mut s, 4, vec![7; 9], 3);
    let out = run_spec(&mut s, 50);
    assert_eq!(out[&4].0, expected(&[7; 9], 3));
    assert_eq!(out[&4].1, FinishReason::Length as u8);
}

#[test]
fn speculation_is_off_above_the_decode_row_threshold() {
    let mut s = new_sched(CoreConfig {
        spec_max_decode_rows: 1,
        ..spec_config(4)
    });
    add(&mut s, 1, vec![7; 9], 10);
    add(&mut s, 2, vec![7; 9], 10);
    spec_step(&mut s);
    let (plan, _) = spec_step(&mut s);
    assert_eq!(plan.num_draft_tokens, 0, "two running > threshold 1");
}

#[test]
fn truncate_generated_rolls_back_to_the_stop() {
    let mut s = new_sched(spec_config(4));
    add(&mut s, 1, vec![7; 9], 30);
    for _ in 0..6 {
        spec_step(&mut s);
    }
    let n = s.sequence(1).unwrap().num_generated();
    assert!(n >= 3);
    s.truncate_generated(1, 2);
    s.check_invariants().unwrap();
    let seq = s.sequence(1).unwrap();
    assert_eq!(seq.num_generated(), 2);
    assert_eq!(seq.num_computed, seq.tokens.len() - 1);
    s.abort(1, FinishReason::StopString).unwrap();
    assert_eq!(s.kv.num_used(), 0);
}

/// With `external_drafts` the core reserves placeholder drafts; the runner's tokens given by
/// `set_drafts` replace them: right guesses are accepted, the output equals plain decoding.
#[test]
fn external_drafts_replace_the_placeholders() {
    let mut s = new_sched(CoreConfig {
        external_drafts: true,
        ..spec_config(3)
    });
    add(&mut s, 1, vec![5; 6], 12);
    let mut out = Default::default();
    let mut accepted_rows = 0;
    while s.has_unfinished() {
        let mut plan = s.schedule().unwrap();
        let mut drafts = Vec::new();
        let mut li = 0usize;
        for &nd in &plan.num_drafts {
            let last = plan.input_ids[plan.logits_indices[li] as usize];
            let mut t = last as i64;
            for i in 0..nd as usize {
                t = next_token(t as i32); // a perfect draft model
                plan.input_ids[plan.logits_indices[li + 1 + i] as usize] = t as i32;
                drafts.push(t);
            }
            li += nd as usize + 1;
        }
        assert!(s.set_drafts(&drafts[..drafts.len().saturating_sub(1)]).is_err() || drafts.is_empty());
        s.set_drafts(&drafts).unwrap();
        s.check_plan(&plan).unwrap();
        let (ids, counts) = verify(&plan);
        accepted_rows += counts.iter().filter(|&&c| c > 1).count();
        let res = s.update_verified(&ids, &counts).unwrap();
        s.check_invariants().unwrap();
        collect(&mut out, &res);
    }
    assert_eq!(out[&1].0, expected(&[5; 6], 12));
    assert!(accepted_rows > 0, "the real drafts were verified and accepted");
}
