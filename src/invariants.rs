//! `check_invariants()`: the properties DESIGN.md lists for the pool, the scheduler and the
//! sessions, checked after every operation by the property tests (and callable from Python).
//! Sessions: each record lists exactly its unfinished turns in arrival order, the admitted one
//! first; a record with neither history nor turns does not exist; only idle sessions pin blocks.

use crate::id_map::IdSet;

use crate::block_pool::NULL_BLOCK;
use crate::plan::StepPlan;
use crate::scheduler::Scheduler;
use crate::sequence::{SeqStatus, Sequence};

impl Scheduler {
    /// Check every structural invariant; returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let bs = self.cfg.block_size;
        let mut refs = vec![0u32; self.kv.num_blocks()];

        // Each request is in exactly one state, and the queues hold exactly the known requests.
        let waiting: IdSet<u64> = self.waiting.iter().copied().collect();
        let running: IdSet<u64> = self
            .running
            .iter()
            .map(|&slot| self.seqs.at(slot).id)
            .collect();
        if waiting.len() != self.waiting.len() || running.len() != self.running.len() {
            return Err("a request is listed twice in a queue".into());
        }
        if waiting.intersection(&running).next().is_some() {
            return Err("a request is both waiting and running".into());
        }
        if waiting.len() + running.len() != self.seqs.len() {
            return Err(format!(
                "{} requests known but {} waiting + {} running",
                self.seqs.len(),
                waiting.len(),
                running.len()
            ));
        }
        if self.running.len() > self.cfg.max_num_seqs {
            return Err(format!(
                "{} running > max_num_seqs {}",
                self.running.len(),
                self.cfg.max_num_seqs
            ));
        }
        for s in self.seqs.values() {
            let id = &s.id;
            let listed = if waiting.contains(id) {
                SeqStatus::Waiting
            } else {
                SeqStatus::Running
            };
            if s.status != listed {
                return Err(format!(
                    "request {id} has status {:?} but is listed as {listed:?}",
                    s.status
                ));
            }
            if s.num_computed > s.tokens.len() {
                return Err(format!(
                    "request {id} computed {} of {} tokens",
                    s.num_computed,
                    s.tokens.len()
                ));
            }
            if s.status == SeqStatus::Waiting && !s.blocks.is_empty() {
                return Err(format!("waiting request {id} holds blocks"));
            }
            if self.in_flight.is_none()
                && s.blocks.len() != Sequence::blocks_for(s.num_computed, bs)
            {
                return Err(format!(
                    "request {id} holds {} blocks for {} computed tokens",
                    s.blocks.len(),
                    s.num_computed
                ));
            }
            if s.block_hashes.len() > s.num_computed / bs || s.block_hashes.len() > s.blocks.len() {
                return Err(format!("request {id} has hashes for uncomputed blocks"));
            }
            if s.embed && (s.session.is_some() || s.stop.max_new_tokens > 0) {
                return Err(format!("embedding request {id} has a session or generates"));
            }
            match s.session {
                Some(sid) => {
                    let sess = self
                        .sessions
                        .get(sid)
                        .ok_or(format!("request {id}'s session {sid} is gone"))?;
                    if !sess.turns.contains(id) {
                        return Err(format!("session {sid} does not list its turn {id}"));
                    }
                    if s.merged != (sess.active == Some(*id)) {
                        return Err(format!(
                            "request {id} merged={} but session {sid} is active for {:?}",
                            s.merged, sess.active
                        ));
                    }
                }
                None if !s.merged => {
                    return Err(format!("request {id} without a session is unmerged"))
                }
                None => {}
            }
            for &b in &s.blocks {
                if b == NULL_BLOCK {
                    return Err(format!("request {id} holds the null block"));
                }
                refs[b as usize] += 1;
            }
        }
        for (sid, sess) in self.sessions.iter() {
            if sess.is_empty() {
                return Err(format!("session {sid} has neither history nor turns"));
            }
            let mut last_arrival = 0;
            for t in &sess.turns {
                let s = self
                    .seqs
                    .get(t)
                    .ok_or(format!("session {sid} lists finished turn {t}"))?;
                if s.session != Some(*sid) {
                    return Err(format!("session {sid} lists another session's request {t}"));
                }
                if s.arrival <= last_arrival {
                    return Err(format!("session {sid}'s turns are out of arrival order"));
                }
                last_arrival = s.arrival;
            }
            if let Some(a) = sess.active {
                if sess.turns.front() != Some(&a) {
                    return Err(format!("session {sid}'s running turn {a} is not its first"));
                }
                if !sess.tokens.is_empty() || self.kv.pin(*sid).is_some() {
                    return Err(format!(
                        "session {sid} is active for {a} but kept its history or pin"
                    ));
                }
            } else if let Some(p) = self.kv.pin(*sid) {
                if p.num_computed > sess.tokens.len() {
                    return Err(format!(
                        "session {sid} pins {} computed tokens of a {}-token history",
                        p.num_computed,
                        sess.tokens.len()
                    ));
                }
            }
        }
        for (sid, _) in self.kv.pins() {
            if self.sessions.get(*sid).is_none() {
                return Err(format!("a pin outlived its session {sid}"));
            }
        }
        self.kv.check_invariants(refs)
    }

    /// Check one plan against the state right after `schedule()`: budgets, and every scheduled
    /// token has a slot in a block its sequence owns, at its own position.
    pub fn check_plan(&self, plan: &StepPlan) -> Result<(), String> {
        let bs = self.cfg.block_size;
        if plan.num_tokens() > self.cfg.max_num_batched_tokens {
            return Err(format!(
                "plan has {} tokens > budget {}",
                plan.num_tokens(),
                self.cfg.max_num_batched_tokens
            ));
        }
        if plan.num_rows() > self.cfg.max_num_seqs {
            return Err("plan has more rows than max_num_seqs".into());
        }
        let ids: IdSet<u64> = plan.req_ids.iter().copied().collect();
        if ids.len() != plan.num_rows() {
            return Err("a request appears twice in one plan".into());
        }
        for r in 0..plan.num_rows() {
            let id = plan.req_ids[r];
            let s = self
                .seqs
                .get(&id)
                .ok_or(format!("planned request {id} is unknown"))?;
            if s.status != SeqStatus::Running {
                return Err(format!("planned request {id} is not running"));
            }
            let (a, b) = (
                plan.query_start_loc[r] as usize,
                plan.query_start_loc[r + 1] as usize,
            );
            if b <= a {
                return Err(format!("row {r} has no tokens"));
            }
            for t in a..b {
                let pos = plan.positions[t] as usize;
                let known = s.tokens.len();
                let want_token = if pos < known {
                    s.tokens.get(pos).copied()
                } else {
                    s.drafts.get(pos - known).copied() // a draft verified by this row
                };
                if want_token != Some(plan.input_ids[t] as u32) {
                    return Err(format!(
                        "row {r} token {t} does not match the sequence at position {pos}"
                    ));
                }
                let want = s.blocks[pos / bs] as usize * bs + pos % bs;
                if plan.slot_mapping[t] as usize != want {
                    return Err(format!(
                        "row {r} position {pos}: slot {} but the owned slot is {want}",
                        plan.slot_mapping[t]
                    ));
                }
                let owned = s.blocks[pos / bs];
                if self.kv.ref_count(owned) > 1 || self.kv.is_published(owned) {
                    return Err(format!(
                        "row {r} writes into shared or published block {owned}"
                    ));
                }
            }
            if plan.seq_lens[r] as usize != plan.positions[b - 1] as usize + 1 {
                return Err(format!("row {r} seq_len does not end at its last position"));
            }
            let nb = Sequence::blocks_for(plan.seq_lens[r] as usize, bs);
            let table = &plan.block_table[r * plan.max_blocks..r * plan.max_blocks + nb];
            if table.iter().zip(&s.blocks).any(|(&t, &o)| t as u32 != o) {
                return Err(format!("row {r}'s block table does not match its blocks"));
            }
        }
        Ok(())
    }
}
