//! Property tests: random sequences of add (plain, session turns with two prompt forms and
//! owners, embeddings) / step / failed step / abort / stop-string finish / cancel / session
//! end on a small pool and a tiny vocabulary (so prefixes are shared), checking every
//! invariant after every operation, then liveness (everything finishes) and conservation at
//! rest.

use proptest::prelude::*;

use crate::scheduler::{AddError, CoreConfig, NewRequest, Scheduler, SessionTurn};
use crate::sequence::{FinishReason, SamplingParams, StopParams, TurnPrompt};

const TINY_VOCAB: u32 = 4;

#[derive(Clone, Debug)]
enum Op {
    Add {
        prompt: Vec<u32>,
        max_new: u32,
        session: Option<i64>,
        start: bool,
        end: bool,
        ignore_eos: bool,
        continuation: Vec<u32>,
        eos_prefix: usize,
        owner: Option<u8>,
    },
    Embed(Vec<u32>),
    Step,
    FailStep,
    Abort(usize),
    StopString(usize),
    Cancel(i64, Option<u8>),
    EndSession(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            (
                prop::collection::vec(1u32..TINY_VOCAB, 0..24),
                0u32..10,
                prop::option::weighted(0.4, 0i64..3),
                any::<bool>(),
                prop::bool::weighted(0.2),
                any::<bool>(),
            ),
            (
                prop::collection::vec(0u32..TINY_VOCAB, 0..8),
                0usize..3,
                prop::option::weighted(0.3, 0u8..2),
            ),
        )
            .prop_map(|((prompt, max_new, session, start, end, ignore_eos), (continuation, eos, owner))| {
                let eos_prefix = eos.min(continuation.len());
                Op::Add { prompt, max_new, session, start, end, ignore_eos, continuation, eos_prefix, owner }
            }),
        1 => prop::collection::vec(1u32..TINY_VOCAB, 0..20).prop_map(Op::Embed),
        6 => Just(Op::Step),
        1 => Just(Op::FailStep),
        1 => (0usize..8).prop_map(Op::Abort),
        1 => (0usize..8).prop_map(Op::StopString),
        1 => (0i64..3, prop::option::weighted(0.3, 0u8..2)).prop_map(|(s, o)| Op::Cancel(s, o)),
        1 => (0i64..3).prop_map(Op::EndSession),
    ]
}

fn cfg() -> impl Strategy<Value = CoreConfig> {
    (
        (
            3usize..24,
            prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
            1usize..40,
            1usize..6,
        ),
        (any::<bool>(), 6usize..64, 0usize..3, 0usize..6),
        (0usize..4, 0usize..3),
    )
        .prop_map(
            |(
                (num_blocks, block_size, budget, max_seqs),
                (caching, max_len, max_sessions, embed_cap),
                (spec_k, spec_rows),
            )| {
                CoreConfig {
                    num_blocks,
                    block_size,
                    max_num_seqs: max_seqs,
                    max_num_batched_tokens: budget,
                    max_embed_tokens_with_decodes: embed_cap,
                    enable_prefix_caching: caching,
                    vocab_size: TINY_VOCAB,
                    eos_token_ids: vec![0],
                    max_model_len: max_len,
                    max_sessions,
                    session_idle_timeout_s: 0.0,
                    num_speculative_tokens: spec_k,
                    spec_max_decode_rows: spec_rows,
                    external_drafts: false,
                }
            },
        )
}

/// Tiny fake model over a 4-token vocabulary: it emits EOS (0) now and then.
fn fake(last: i32, pos: i32) -> i64 {
    ((last * 3 + pos) % TINY_VOCAB as i32) as i64
}

fn owner_name(o: Option<u8>) -> Option<String> {
    o.map(|k| format!("key-{k}"))
}

/// Schedule a step and fail it: only the step's requests end, each with an error.
fn fail_step(s: &mut Scheduler) {
    let plan = s.schedule().unwrap();
    s.check_invariants().unwrap();
    s.check_plan(&plan).unwrap();
    let res = s.fail_step("injected");
    for id in &plan.req_ids {
        let i = res.req_ids.iter().position(|r| r == id);
        assert!(i.is_some_and(|i| res.finish_reasons[i] == FinishReason::Error as u8));
        assert!(s.sequence(*id).is_none(), "a failed request is gone");
    }
}

fn step(s: &mut Scheduler) {
    let plan = s.schedule().unwrap();
    s.check_invariants().unwrap();
    s.check_plan(&plan).unwrap();
    for &r in &plan.pool_rows {
        assert!(s.sequence(plan.req_ids[r as usize]).unwrap().embed);
    }
    // Greedy verification of drafts against the fake model (a plain row has one position).
    let (mut samples, mut counts) = (Vec::new(), Vec::new());
    let mut li = 0usize;
    for &nd in &plan.num_drafts {
        let idx = &plan.logits_indices[li..li + nd as usize + 1];
        li += idx.len();
        let mut c = 0;
        for (i, &at) in idx.iter().enumerate() {
            let at = at as usize;
            let target = fake(plan.input_ids[at], plan.positions[at]);
            let draft = idx.get(i + 1).map(|&n| plan.input_ids[n as usize] as i64);
            samples.push(target);
            c += 1;
            if draft != Some(target) {
                break;
            }
        }
        counts.push(c);
    }
    let res = s.update_verified(&samples, &counts).unwrap();
    for (i, &r) in res.finish_reasons.iter().enumerate() {
        if r == FinishReason::Error as u8 {
            assert!(res.errors.iter().any(|(id, _)| *id == res.req_ids[i]));
        }
    }
}

/// 400 cases by default; `LMRS_PROPTEST_CASES=N` for a longer run.
fn cases() -> u32 {
    std::env::var("LMRS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn live_ids(s: &Scheduler) -> Vec<u64> {
    let mut v: Vec<u64> = s.seqs.keys().copied().collect();
    v.sort_unstable();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_invariants_and_finish(cfg in cfg(), ops in prop::collection::vec(op(), 1..80)) {
        let mut s = Scheduler::new(cfg).unwrap();
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Add { prompt, max_new, session, start, end, ignore_eos, continuation, eos_prefix, owner } => {
                    let stop = StopParams { max_new_tokens: max_new, ignore_eos, ..Default::default() };
                    let owner = owner_name(owner);
                    let not_owner = session.is_some_and(|sid| s.sessions.check_owner(sid, owner.as_deref()).is_err());
                    let turn = session.map(|session_id| SessionTurn {
                        session_id,
                        sequence_start: start,
                        sequence_end: end,
                        prompt: TurnPrompt { continuation, eos_prefix_len: eos_prefix },
                        owner,
                    });
                    let r = s.add_request(NewRequest {
                        id: next_id, prompt: prompt.clone(), sampling: SamplingParams::default(), stop, turn, embed: false, speculate: true,
                    });
                    if session.is_none() && prompt.is_empty() && max_new > 0 {
                        prop_assert!(matches!(r, Err(AddError::Invalid(_))));
                    } else if not_owner {
                        prop_assert!(matches!(r, Err(AddError::NotOwner(_))), "{:?}", r);
                        prop_assert!(s.sequence(next_id).is_none());
                    } else {
                        prop_assert!(r.is_ok(), "{:?}", r);
                    }
                    next_id += 1;
                }
                Op::Embed(prompt) => {
                    let stop = StopParams { max_new_tokens: 0, ..Default::default() };
                    let r = s.add_request(NewRequest {
                        id: next_id, prompt: prompt.clone(), sampling: SamplingParams::default(), stop, turn: None, embed: true, speculate: false,
                    });
                    prop_assert_eq!(r.is_ok(), !prompt.is_empty());
                    next_id += 1;
                }
                Op::Step => step(&mut s),
                Op::FailStep => fail_step(&mut s),
                Op::Cancel(sid, owner) => {
                    let owner = owner_name(owner);
                    let current = s.sessions.current_turn(sid);
                    let allowed = s.sessions.check_owner(sid, owner.as_deref()).is_ok();
                    let r = s.cancel_session(sid, owner.as_deref());
                    if allowed {
                        prop_assert_eq!(r, Ok(current));
                        if let Some(id) = current {
                            prop_assert!(s.sequence(id).is_none());
                        }
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Op::Abort(k) | Op::StopString(k) => {
                    let ids = live_ids(&s);
                    if !ids.is_empty() {
                        let reason = if matches!(op, Op::Abort(_)) { FinishReason::Abort } else { FinishReason::StopString };
                        s.abort(ids[k % ids.len()], reason).unwrap();
                    }
                }
                Op::EndSession(sid) => { s.end_session(sid); }
            }
            s.check_invariants().unwrap();
        }
        // Liveness: every request finishes.
        let mut steps = 0;
        while s.has_unfinished() {
            step(&mut s);
            steps += 1;
            prop_assert!(steps < 5000, "workload did not finish");
        }
        step(&mut s);
        // Conservation at rest: with every session ended and the cache reset, all blocks are free.
        for sid in 0..3 {
            s.end_session(sid);
        }
        s.reset_prefix_cache();
        s.check_invariants().unwrap();
        prop_assert_eq!(s.kv.num_free(), s.kv.num_usable());
        prop_assert_eq!(s.kv.num_free_cached(), 0);
        prop_assert!(s.sessions.is_empty());
    }
}
