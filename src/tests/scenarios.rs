use super::*;
use crate::scheduler::CoreConfig;
use crate::sequence::FinishReason;

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 13 + seed * 7) % (VOCAB - 1) + 1)
        .collect()
}

#[test]
fn continuous_batching_interleaves() {
    let mut s = new_sched(config(64, 4, 64, 8));
    let mut out = Default::default();
    add(&mut s, 1, prompt(5, 1), 10);
    add(&mut s, 2, prompt(6, 2), 10);
    let (p, r) = step(&mut s);
    collect(&mut out, &r);
    assert_eq!(p.num_rows(), 2);
    assert_eq!(p.num_prefill_tokens, 11);
    let (p, r) = step(&mut s);
    collect(&mut out, &r);
    assert_eq!(p.num_decode_tokens, 2);
    add(&mut s, 3, prompt(7, 3), 10);
    let (p, r) = step(&mut s);
    collect(&mut out, &r);
    // the new request joins the very next step, beside the two decodes
    assert_eq!(p.num_rows(), 3);
    assert_eq!(p.num_decode_rows, 2);
    assert_eq!(p.num_prefill_tokens, 7);
    assert_eq!(p.req_ids[2], 3);
    for (k, v) in run_all(&mut s, 100) {
        let e: &mut (Vec<i32>, u8) = out.entry(k).or_default();
        e.0.extend(v.0);
        e.1 = v.1;
    }
    for (id, pr) in [(1, prompt(5, 1)), (2, prompt(6, 2)), (3, prompt(7, 3))] {
        assert_eq!(out[&id], (expected(&pr, 10), FinishReason::Length as u8));
    }
    assert_eq!(s.kv.num_free(), 63);
}

#[test]
fn chunked_prefill_respects_budget_and_samples_last_chunk_only() {
    let mut s = new_sched(config(64, 4, 8, 8));
    let pr = prompt(20, 4);
    add(&mut s, 1, pr.clone(), 3);
    let mut takes = vec![];
    let mut all = vec![];
    for _ in 0..10 {
        if !s.has_unfinished() {
            break;
        }
        let (p, r) = step(&mut s);
        takes.push((p.num_tokens(), p.sample_rows.len()));
        all.extend(r.new_tokens.iter().copied().filter(|&t| t >= 0));
    }
    assert_eq!(&takes[..3], &[(8, 0), (8, 0), (4, 1)]);
    assert_eq!(all, expected(&pr, 3));
}

#[test]
fn prefix_cache_reuses_full_blocks() {
    let mut s = new_sched(config(64, 4, 64, 8));
    let pr = prompt(10, 5); // 2 full blocks + 2 tokens
    add(&mut s, 1, pr.clone(), 2);
    run_all(&mut s, 20);
    add(&mut s, 2, pr.clone(), 2);
    let (p, _) = step(&mut s);
    assert_eq!(p.num_tokens(), 2, "only the last partial block is computed");
    assert_eq!(s.counters.prefix_hit_tokens, 8);
    let out = run_all(&mut s, 20);
    assert_eq!(out[&2].0, expected(&pr, 2)[1..]);

    // a prompt that is exactly full blocks recomputes its last token only
    let pr2 = prompt(8, 6);
    add(&mut s, 3, pr2.clone(), 1);
    run_all(&mut s, 20);
    add(&mut s, 4, pr2.clone(), 1);
    let (p, _) = step(&mut s);
    assert_eq!(
        p.num_tokens(),
        4,
        "capped: the last block is recomputed for logits"
    );
    let _ = run_all(&mut s, 20);

    // switched off: everything is recomputed
    let mut cfg = config(64, 4, 64, 8);
    cfg.enable_prefix_caching = false;
    let mut s = new_sched(cfg);
    add(&mut s, 1, pr.clone(), 2);
    run_all(&mut s, 20);
    add(&mut s, 2, pr.clone(), 2);
    let (p, _) = step(&mut s);
    assert_eq!(p.num_tokens(), 10);
}

fn add_turn(
    s: &mut Scheduler,
    id: u64,
    sid: i64,
    pr: Vec<u32>,
    max_new: u32,
    start: bool,
    end: bool,
) {
    s.add(
        id,
        pr,
        SamplingParams::default(),
        stop(max_new),
        Some(sid),
        start,
        end,
    )
    .unwrap();
}

#[test]
fn session_second_turn_computes_only_new_tokens() {
    let mut s = new_sched(config(64, 4, 64, 8));
    add_turn(&mut s, 1, 7, prompt(9, 1), 4, true, false);
    let out = run_all(&mut s, 20);
    assert_eq!(out[&1].0.len(), 4);
    let info = s.sessions.get(7).unwrap();
    assert_eq!(info.tokens.len(), 13);
    assert_eq!(
        s.kv.pin(7).unwrap().num_computed,
        12,
        "the last sampled token is not computed yet"
    );
    let before = s.counters.prompt_tokens_computed;
    add_turn(&mut s, 2, 7, prompt(5, 2), 3, false, false);
    let (p, _) = step(&mut s);
    assert_eq!(
        p.num_tokens(),
        6,
        "the 5 new tokens and the last sampled one"
    );
    run_all(&mut s, 20);
    assert_eq!(s.counters.prompt_tokens_computed - before, 6);
    assert_eq!(s.sessions.get(7).unwrap().tokens.len(), 21);
    // sequence_start drops the history
    add_turn(&mut s, 3, 7, prompt(3, 3), 1, true, false);
    run_all(&mut s, 20);
    assert_eq!(s.sessions.get(7).unwrap().tokens.len(), 4);
    // sequence_end releases everything
    add_turn(&mut s, 4, 7, vec![], 0, false, true);
    let out = run_all(&mut s, 20);
    assert_eq!(out[&4].1, FinishReason::Length as u8);
    assert!(s.sessions.get(7).is_none());
    s.reset_prefix_cache();
    assert_eq!(s.kv.num_free(), 63);
}

#[test]
fn session_refusal_leaves_session_unchanged() {
    let mut cfg = config(64, 4, 64, 8);
    cfg.max_model_len = 20;
    let mut s = new_sched(cfg);
    add_turn(&mut s, 1, 3, prompt(10, 1), 4, true, false);
    run_all(&mut s, 20);
    let hist = s.sessions.get(3).unwrap().tokens.clone();
    add_turn(&mut s, 2, 3, prompt(6, 2), 4, false, false); // 14 + 6 = 20 -> no room
    let out = run_all(&mut s, 20);
    assert_eq!(out[&2], (vec![], FinishReason::Refused as u8));
    assert_eq!(s.sessions.get(3).unwrap().tokens, hist);
    // a turn that fits but reaches session_len while generating ends with "length"
    add_turn(&mut s, 3, 3, prompt(4, 3), 10, false, false);
    let out = run_all(&mut s, 20);
    assert_eq!(out[&3].0.len(), 2);
    assert_eq!(out[&3].1, FinishReason::Length as u8);
}

#[test]
fn concurrent_turns_of_one_session_are_serialized() {
    let mut s = new_sched(config(64, 4, 64, 8));
    add_turn(&mut s, 1, 9, prompt(4, 1), 3, true, false);
    add_turn(&mut s, 2, 9, prompt(4, 2), 3, false, false);
    add(&mut s, 3, prompt(4, 3), 3);
    let (p, _) = step(&mut s);
    assert!(p.req_ids.contains(&1) && p.req_ids.contains(&3) && !p.req_ids.contains(&2));
    let out = run_all(&mut s, 30);
    assert_eq!(out[&2].0.len(), 3);
    assert_eq!(s.sessions.get(9).unwrap().tokens.len(), 14);
}

#[test]
fn preemption_keeps_tokens_identical() {
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(9 + i, i as u32)).collect();
    let run = |num_blocks: usize| {
        let mut s = new_sched(config(num_blocks, 4, 32, 8));
        for (i, p) in prompts.iter().enumerate() {
            add(&mut s, i as u64, p.clone(), 12);
        }
        let out = run_all(&mut s, 1000);
        (out, s.counters.preemptions)
    };
    let (big, p0) = run(200);
    let (small, p1) = run(12);
    assert_eq!(p0, 0);
    assert!(p1 > 0, "the tiny pool must force preemption");
    assert_eq!(big, small);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(big[&(i as u64)].0, expected(p, 12));
    }
}

#[test]
fn abort_frees_blocks_everywhere() {
    let mut s = new_sched(config(64, 4, 64, 8));
    add(&mut s, 1, prompt(9, 1), 50);
    add(&mut s, 2, prompt(9, 2), 50);
    step(&mut s);
    step(&mut s);
    assert!(s.kv.num_used() > 0);
    s.abort(1, FinishReason::Abort).unwrap();
    s.abort(2, FinishReason::Abort).unwrap();
    assert!(s.abort(2, FinishReason::Abort).is_err());
    s.check_invariants().unwrap();
    assert_eq!(s.kv.num_used(), 0);
    // abort of a waiting request
    add(&mut s, 3, prompt(4, 3), 5);
    s.abort(3, FinishReason::Abort).unwrap();
    assert!(!s.has_unfinished());
    // abort between schedule and update: the row is ignored
    add(&mut s, 4, prompt(4, 4), 5);
    let plan = s.schedule().unwrap();
    s.abort(4, FinishReason::Abort).unwrap();
    let res = s.update(&fake_samples(&plan)).unwrap();
    assert!(res.is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn request_that_can_never_fit_fails_clearly() {
    let mut s = new_sched(config(5, 4, 64, 8)); // 4 usable blocks = 16 tokens
    add(&mut s, 1, prompt(20, 1), 2);
    let (_, res) = step(&mut s);
    assert_eq!(res.finish_reasons, vec![FinishReason::Error as u8]);
    assert!(res.errors[0].1.contains("pool has only 4"));
    // one that fits but outgrows the pool while generating ends with "length"
    add(&mut s, 2, prompt(10, 2), 100);
    let out = run_all(&mut s, 100);
    assert_eq!(out[&2].1, FinishReason::Length as u8);
    assert_eq!(
        out[&2].0.len(),
        7,
        "16 KV slots: tokens 11..=16 computed, the 17th is the last sampled"
    );
}

#[test]
fn idle_session_blocks_are_evicted_but_history_survives() {
    let mut s = new_sched(config(9, 4, 64, 8)); // 8 usable blocks
    add_turn(&mut s, 1, 1, prompt(12, 1), 4, true, false);
    run_all(&mut s, 20);
    assert_eq!(s.kv.pin(1).unwrap().blocks.len(), 4);
    add(&mut s, 2, prompt(20, 2), 4); // needs 6 blocks: must take session 1's
    let out = run_all(&mut s, 40);
    assert_eq!(out[&2].0.len(), 4);
    let sess = s.sessions.get(1).unwrap();
    assert_eq!(sess.tokens.len(), 16);
    assert!(
        s.kv.pin(1).is_none(),
        "the idle session's blocks were evicted"
    );
    // the next turn recomputes what was lost and continues the same history
    add_turn(&mut s, 3, 1, prompt(3, 3), 2, false, false);
    let out = run_all(&mut s, 40);
    assert_eq!(out[&3].0.len(), 2);
    assert_eq!(s.sessions.get(1).unwrap().tokens.len(), 21);
}

#[test]
fn eos_and_stop_ids_and_min_tokens() {
    let mut s = new_sched(config(64, 4, 64, 8));
    let t = next_token(2) as u32;
    let mut st = stop(10);
    st.stop_token_ids = vec![t];
    s.add(
        1,
        vec![5, 2],
        SamplingParams::default(),
        st.clone(),
        None,
        true,
        false,
    )
    .unwrap();
    let out = run_all(&mut s, 20);
    assert_eq!(out[&1], (vec![t as i32], FinishReason::Stop as u8));
    st.min_new_tokens = 1;
    s.add(
        2,
        vec![5, 2],
        SamplingParams::default(),
        st,
        None,
        true,
        false,
    )
    .unwrap();
    let out = run_all(&mut s, 20);
    assert_eq!(
        out[&2].0.len(),
        10,
        "the stop id is ignored as the first token and never produced again"
    );
}

#[test]
fn invalid_calls_change_nothing() {
    let mut s = new_sched(config(16, 4, 64, 8));
    assert!(s
        .add(
            1,
            vec![VOCAB],
            SamplingParams::default(),
            stop(2),
            None,
            true,
            false
        )
        .is_err());
    let bad = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    assert!(s.add(1, vec![1], bad, stop(2), None, true, false).is_err());
    assert!(s
        .add(
            1,
            vec![],
            SamplingParams::default(),
            stop(2),
            None,
            true,
            false
        )
        .is_err());
    assert!(!s.has_unfinished());
    add(&mut s, 1, vec![1, 2], 3);
    assert!(s
        .add(
            1,
            vec![1],
            SamplingParams::default(),
            stop(2),
            None,
            true,
            false
        )
        .is_err());
    let plan = s.schedule().unwrap();
    assert!(s.schedule().is_err());
    assert!(s.update(&[]).is_err());
    assert!(s.update(&[VOCAB as i64]).is_err());
    assert!(s.update(&[-1]).is_err());
    s.check_invariants().unwrap();
    s.update(&fake_samples(&plan)).unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn max_num_seqs_caps_running() {
    let mut s = new_sched(config(64, 4, 64, 2));
    for i in 0..5 {
        add(&mut s, i, prompt(3, i as u32), 4);
    }
    let (p, _) = step(&mut s);
    assert_eq!(p.num_rows(), 2);
    let out = run_all(&mut s, 100);
    assert_eq!(out.len(), 5);
}

/// Timing probe (not a test of speed): `cargo test --release sched_cost -- --ignored --nocapture`.
/// 256 decoding sequences with contexts of 448..576 tokens (about 512).
#[test]
#[ignore]
fn sched_cost() {
    let n = 256;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (mut ts, mut tu) = (vec![], vec![]);
    for _ in 0..rounds {
        let mut s = new_sched(CoreConfig {
            max_model_len: 1 << 20,
            ..config(n * 40 + 1, 16, 8192, n)
        });
        for i in 0..n as u64 {
            add(&mut s, i, prompt(448, i as u32), 1 << 30);
        }
        let p = s.schedule().unwrap();
        let f = fake_samples(&p);
        s.update(&f).unwrap();
        for _ in 0..128 {
            let a = std::time::Instant::now();
            let p = s.schedule().unwrap();
            let b = std::time::Instant::now();
            let f = fake_samples(&p);
            let c = std::time::Instant::now();
            s.update(&f).unwrap();
            let d = std::time::Instant::now();
            ts.push((b - a).as_nanos());
            tu.push((d - c).as_nanos());
        }
    }
    ts.sort();
    tu.sort();
    eprintln!(
        "schedule {} us, update {} us",
        ts[ts.len() / 2] as f64 / 1e3,
        tu[tu.len() / 2] as f64 / 1e3
    );
}
