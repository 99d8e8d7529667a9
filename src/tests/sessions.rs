//! Scenarios of the core-owned sessions (turns built at admission from the history as it is
//! then, owners, refusals that leave nothing, cancel of the current turn, free ends), failed
//! steps, and prefill-only embedding requests.

use super::*;
use crate::scheduler::{AddError, NewRequest, SessionTurn};
use crate::sequence::{FinishReason, TurnPrompt};

fn turn(
    id: u64,
    sid: i64,
    whole: Vec<u32>,
    continuation: Vec<u32>,
    eos_prefix_len: usize,
    max_new: u32,
    owner: Option<&str>,
) -> NewRequest {
    NewRequest {
        id,
        prompt: whole,
        sampling: SamplingParams::default(),
        stop: stop(max_new),
        turn: Some(SessionTurn {
            session_id: sid,
            sequence_start: false,
            sequence_end: false,
            prompt: TurnPrompt {
                continuation,
                eos_prefix_len,
            },
            owner: owner.map(str::to_owned),
        }),
        embed: false,
        speculate: true,
    }
}

fn history(s: &Scheduler, sid: i64) -> Vec<u32> {
    s.sessions.get(sid).map_or(vec![], |x| x.tokens.clone())
}

#[test]
fn a_queued_turn_is_built_from_the_history_its_predecessor_left() {
    let mut s = new_sched(config(64, 4, 64, 8));
    // Turn 1 generates 2 tokens and its last one is EOS (the stop id list makes it stop there).
    let mut r = turn(1, 5, vec![7, 8, 9], vec![], 0, 2, None);
    r.stop.ignore_eos = false;
    let eos_after = next_token(next_token(9) as i32) as u32;
    r.stop.stop_token_ids = vec![];
    s.cfg.eos_token_ids = vec![eos_after];
    s.add_request(r).unwrap();
    // Turn 2 is queued while turn 1 runs: its continuation starts with the reply's EOS (1 token).
    s.add_request(turn(
        2,
        5,
        vec![40, 41],
        vec![eos_after, 30, 31],
        1,
        1,
        None,
    ))
    .unwrap();
    run_all(&mut s, 50);
    let h = history(&s, 5);
    let t1 = [7, 8, 9, next_token(9) as u32, eos_after];
    assert_eq!(&h[..5], &t1, "turn 1 ended with EOS");
    assert_eq!(
        &h[5..7],
        &[30, 31],
        "the EOS the history already holds is not repeated"
    );
    // Turn 3 after a turn that did not end with EOS: the continuation is used whole.
    s.add_request(turn(3, 5, vec![40], vec![eos_after, 33], 1, 1, None))
        .unwrap();
    run_all(&mut s, 50);
    let h3 = history(&s, 5);
    assert_eq!(&h3[h.len()..h.len() + 2], &[eos_after, 33]);
}

#[test]
fn a_session_without_history_uses_the_whole_conversation() {
    let mut cfg = config(64, 4, 64, 8);
    cfg.max_sessions = 1;
    let mut s = new_sched(cfg);
    s.add_request(turn(1, 1, vec![5, 6, 7], vec![99 % VOCAB], 0, 1, None))
        .unwrap();
    run_all(&mut s, 20);
    assert_eq!(history(&s, 1)[..3], [5, 6, 7], "a new session: whole form");
    // Session 2 pushes session 1 out (max_sessions = 1).
    s.add_request(turn(2, 2, vec![1, 2], vec![3], 0, 1, None))
        .unwrap();
    run_all(&mut s, 20);
    s.schedule().unwrap();
    s.update(&[]).unwrap();
    assert!(s.sessions.get(1).is_none(), "session 1 was dropped");
    // A later turn of session 1 is built as a new conversation, not a continuation.
    s.add_request(turn(3, 1, vec![10, 11, 12], vec![13], 0, 1, None))
        .unwrap();
    run_all(&mut s, 20);
    assert_eq!(history(&s, 1)[..3], [10, 11, 12]);
}

#[test]
fn a_refused_first_turn_leaves_nothing() {
    let mut cfg = config(64, 4, 64, 8);
    cfg.max_model_len = 8;
    let mut s = new_sched(cfg);
    s.add_request(turn(1, 3, vec![1; 12], vec![2], 0, 2, Some("a")))
        .unwrap();
    let out = run_all(&mut s, 20);
    assert_eq!(out[&1], (vec![], FinishReason::Refused as u8));
    assert!(s.sessions.get(3).is_none(), "no record is left");
    // Another key may now create session 3, and its first turn uses the whole form.
    s.add_request(turn(2, 3, vec![4, 5], vec![6], 0, 1, Some("b")))
        .unwrap();
    run_all(&mut s, 20);
    assert_eq!(history(&s, 3)[..2], [4, 5]);
}

#[test]
fn sessions_belong_to_the_key_that_created_them() {
    let mut s = new_sched(config(64, 4, 64, 8));
    s.add_request(turn(1, 9, vec![1, 2], vec![3], 0, 2, Some("a")))
        .unwrap();
    // Queued, not run yet: the session exists already and belongs to "a".
    let r = s.add_request(turn(2, 9, vec![1], vec![1], 0, 1, Some("b")));
    assert!(matches!(r, Err(AddError::NotOwner(_))));
    assert!(s.sequence(2).is_none());
    assert!(s.cancel_session(9, Some("b")).is_err());
    assert!(s.cancel_session(9, None).is_err());
    run_all(&mut s, 20);
    assert!(s
        .add_request(turn(3, 9, vec![1], vec![1], 0, 1, None))
        .is_err());
    s.add_request(turn(4, 9, vec![1], vec![1], 0, 1, Some("a")))
        .unwrap();
    run_all(&mut s, 20);
}

#[test]
fn cancel_aborts_the_running_turn_and_the_queued_one_runs_after() {
    let mut s = new_sched(config(64, 4, 64, 8));
    s.add_request(turn(1, 4, vec![1, 2, 3], vec![], 0, 200, None))
        .unwrap();
    step(&mut s);
    step(&mut s);
    s.add_request(turn(2, 4, vec![5], vec![5, 6], 0, 5, None))
        .unwrap();
    step(&mut s);
    assert_eq!(s.cancel_session(4, None), Ok(Some(1)));
    let hist = history(&s, 4);
    assert_eq!(
        hist.len(),
        3 + 3,
        "the cancelled turn keeps what it generated"
    );
    let out = run_all(&mut s, 50);
    assert_eq!(out[&2].0.len(), 5, "the queued turn ran afterwards");
    // A waiting turn leaving (its client gone) does not touch the running one.
    s.add_request(turn(3, 4, vec![1], vec![7], 0, 20, None))
        .unwrap();
    s.add_request(turn(4, 4, vec![1], vec![8], 0, 3, None))
        .unwrap();
    let before = history(&s, 4).len();
    step(&mut s);
    s.abort(4, FinishReason::Abort).unwrap();
    run_all(&mut s, 50);
    assert_eq!(
        history(&s, 4).len(),
        before + 1 + 20,
        "turn 3 ran to its end"
    );
    assert_eq!(
        s.cancel_session(4, None),
        Ok(None),
        "nothing left to cancel"
    );
}

#[test]
fn ending_a_session_computes_nothing() {
    let mut s = new_sched(config(64, 4, 64, 8));
    s.add_request(turn(1, 6, vec![1, 2, 3, 4, 5], vec![], 0, 3, None))
        .unwrap();
    run_all(&mut s, 20);
    let before = s.counters.prompt_tokens_computed;
    let mut end = turn(2, 6, vec![9, 9], vec![9, 9], 0, 0, None);
    end.turn.as_mut().unwrap().sequence_end = true;
    s.add_request(end).unwrap();
    let (plan, res) = step(&mut s);
    assert_eq!(plan.num_rows(), 0, "no forward pass");
    assert_eq!(res.finish_reasons, vec![FinishReason::Length as u8]);
    assert_eq!(s.counters.prompt_tokens_computed, before);
    assert!(s.sessions.get(6).is_none());
    s.reset_prefix_cache();
    assert_eq!(s.kv.num_free(), s.kv.num_usable());
    // An update with nothing new computes nothing either, and keeps the session.
    s.add_request(turn(3, 6, vec![1, 2], vec![], 0, 1, None))
        .unwrap();
    run_all(&mut s, 20);
    let before = s.counters.prompt_tokens_computed;
    s.add_request(turn(4, 6, vec![], vec![], 0, 0, None))
        .unwrap();
    let (plan, _) = step(&mut s);
    assert_eq!(plan.num_rows(), 0);
    assert_eq!(s.counters.prompt_tokens_computed, before);
    assert_eq!(history(&s, 6).len(), 3);
}

#[test]
fn a_failed_step_fails_only_its_requests_and_sessions_continue() {
    let mut s = new_sched(config(64, 4, 64, 8));
    s.add_request(turn(1, 2, vec![1, 2, 3], vec![], 0, 10, None))
        .unwrap();
    add(&mut s, 2, vec![4, 5, 6], 10);
    step(&mut s);
    step(&mut s); // two tokens each
    let plan = s.schedule().unwrap();
    add(&mut s, 3, vec![7; 40], 4); // arrives while the step runs: not part of it
    assert!(plan.req_ids.contains(&1) && plan.req_ids.contains(&2));
    let used_before = s.kv.num_used();
    let res = s.fail_step("boom");
    s.check_invariants().unwrap();
    assert_eq!(res.errors.len(), plan.num_rows());
    assert!(res.errors.iter().all(|(_, m)| m == "boom"));
    assert!(
        s.kv.num_used() < used_before,
        "the failed requests' blocks are back"
    );
    // The session keeps its history up to the last completed token: prompt + 2 tokens.
    let h = history(&s, 2);
    assert_eq!(h.len(), 5);
    assert_eq!(s.kv.pin(2).unwrap().num_computed, 4);
    // Requests not in the step are untouched and the session continues.
    s.add_request(turn(4, 2, vec![], vec![9], 0, 2, None))
        .unwrap();
    let out = run_all(&mut s, 50);
    assert_eq!(out[&3].0.len(), 4);
    assert_eq!(out[&4].0.len(), 2);
    assert_eq!(history(&s, 2).len(), 5 + 1 + 2);
}

#[test]
fn embeddings_are_chunked_prefills_without_cache_reuse() {
    let mut s = new_sched(config(64, 4, 8, 8));
    let p: Vec<u32> = (0..20).map(|i| i % (VOCAB - 1) + 1).collect();
    add(&mut s, 1, p.clone(), 30); // a decode running beside
    step(&mut s);
    step(&mut s);
    step(&mut s);
    let embed = |id| NewRequest {
        id,
        prompt: p.clone(),
        sampling: SamplingParams::default(),
        stop: stop(0),
        turn: None,
        embed: true,
        speculate: false,
    };
    s.add_request(embed(2)).unwrap();
    let mut pooled_tokens = 0;
    let mut done = None;
    for _ in 0..10 {
        let (plan, res) = step(&mut s);
        assert!(plan.num_tokens() <= 8);
        for &r in &plan.pool_rows {
            let r = r as usize;
            assert_eq!(plan.req_ids[r], 2);
            pooled_tokens += plan.query_start_loc[r + 1] - plan.query_start_loc[r];
        }
        assert!(plan.req_ids.contains(&1), "the decode runs in every step");
        if let Some(i) = res.req_ids.iter().position(|&r| r == 2) {
            if res.finish_reasons[i] != 0 {
                done = Some(res.finish_reasons[i]);
                break;
            }
        }
    }
    assert_eq!(done, Some(FinishReason::Length as u8));
    assert_eq!(pooled_tokens, 20, "every token pooled once");
    // The same input again is computed in full (hidden states are needed), not served from cache.
    s.add_request(embed(3)).unwrap();
    let hits = s.counters.prefix_hit_tokens;
    run_all(&mut s, 50);
    assert_eq!(s.counters.prefix_hit_tokens, hits);
    assert!(s
        .add_request(NewRequest {
            stop: stop(1),
            ..embed(4)
        })
        .is_err());
}

#[test]
fn embeddings_take_a_share_of_a_step_that_also_decodes() {
    let mut cfg = config(64, 4, 16, 8);
    cfg.max_embed_tokens_with_decodes = 4;
    let mut s = new_sched(cfg);
    let p: Vec<u32> = (0..24).map(|i| i % (VOCAB - 1) + 1).collect();
    let embed = |id, n: usize| NewRequest {
        id,
        prompt: p[..n].to_vec(),
        sampling: SamplingParams::default(),
        stop: stop(0),
        turn: None,
        embed: true,
        speculate: false,
    };
    // Alone, an embedding uses the whole budget.
    s.add_request(embed(1, 24)).unwrap();
    let (plan, _) = step(&mut s);
    assert_eq!(plan.num_tokens(), 16);
    run_all(&mut s, 20);
    // Beside a decoding request, embeddings get at most 4 tokens a step; the decode runs each step.
    add(&mut s, 2, vec![1, 2, 3], 20);
    step(&mut s);
    s.add_request(embed(3, 10)).unwrap();
    s.add_request(embed(4, 10)).unwrap();
    let mut steps = 0;
    while s.sequence(3).is_some() || s.sequence(4).is_some() {
        let (plan, _) = step(&mut s);
        let pooled: i32 = plan
            .pool_rows
            .iter()
            .map(|&r| plan.query_start_loc[r as usize + 1] - plan.query_start_loc[r as usize])
            .sum();
        assert!(pooled <= 4, "{pooled} embedding tokens in one step");
        assert!(plan.req_ids.contains(&2));
        steps += 1;
    }
    assert_eq!(steps, 5, "20 embedding tokens at 4 a step");
}
