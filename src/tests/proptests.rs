//! Property tests: random sequences of add / step / abort / stop-string finish / session end on
//! a small pool and a tiny vocabulary (so prefixes are shared), checking every invariant after
//! every operation, then liveness (everything finishes) and conservation at rest.

use proptest::prelude::*;

use crate::scheduler::{CoreConfig, Scheduler};
use crate::sequence::{FinishReason, SamplingParams, StopParams};

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
    },
    Step,
    Abort(usize),
    StopString(usize),
    EndSession(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            prop::collection::vec(1u32..TINY_VOCAB, 0..24),
            0u32..10,
            prop::option::weighted(0.4, 0i64..3),
            any::<bool>(),
            prop::bool::weighted(0.2),
            any::<bool>(),
        )
            .prop_map(|(prompt, max_new, session, start, end, ignore_eos)| Op::Add {
                prompt,
                max_new,
                session,
                start,
                end,
                ignore_eos
            }),
        6 => Just(Op::Step),
        1 => (0usize..8).prop_map(Op::Abort),
        1 => (0usize..8).prop_map(Op::StopString),
        1 => (0i64..3).prop_map(Op::EndSession),
    ]
}

fn cfg() -> impl Strategy<Value = CoreConfig> {
    (
        3usize..24,
        prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        1usize..40,
        1usize..6,
        any::<bool>(),
        6usize..64,
        0usize..3,
    )
        .prop_map(
            |(num_blocks, block_size, budget, max_seqs, caching, max_len, max_sessions)| {
                CoreConfig {
                    num_blocks,
                    block_size,
                    max_num_seqs: max_seqs,
                    max_num_batched_tokens: budget,
                    enable_prefix_caching: caching,
                    vocab_size: TINY_VOCAB,
                    eos_token_ids: vec![0],
                    max_model_len: max_len,
                    max_sessions,
                    session_idle_timeout_s: 0.0,
                }
            },
        )
}

/// Tiny fake model over a 4-token vocabulary: it emits EOS (0) now and then.
fn fake(last: i32, pos: i32) -> i64 {
    ((last * 3 + pos) % TINY_VOCAB as i32) as i64
}

fn step(s: &mut Scheduler) {
    let plan = s.schedule().unwrap();
    s.check_invariants().unwrap();
    s.check_plan(&plan).unwrap();
    let samples: Vec<i64> = plan
        .logits_indices
        .iter()
        .map(|&i| fake(plan.input_ids[i as usize], plan.positions[i as usize]))
        .collect();
    let res = s.update(&samples).unwrap();
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
                Op::Add { prompt, max_new, session, start, end, ignore_eos } => {
                    let stop = StopParams { max_new_tokens: max_new, ignore_eos, ..Default::default() };
                    let r = s.add(next_id, prompt.clone(), SamplingParams::default(), stop, session, start, end);
                    if session.is_none() && prompt.is_empty() && max_new > 0 {
                        prop_assert!(r.is_err());
                    } else {
                        prop_assert!(r.is_ok(), "{:?}", r);
                    }
                    next_id += 1;
                }
                Op::Step => step(&mut s),
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
        prop_assert_eq!(s.pool.num_free(), s.pool.num_usable());
        prop_assert_eq!(s.pool.num_free_cached(), 0);
        prop_assert!(s.sessions.is_empty());
    }
}
