//! Admission of one waiting request, as a transaction in four parts:
//!
//! - `check`: what the request would run, and whether it may run at all. A session turn's
//!   tokens are built here, from the session's history as it is now (so a turn queued behind
//!   another sees what its predecessor left): the whole-conversation prompt when there is no
//!   history, else the continuation form, without its leading EOS when the history already
//!   ends with one. Turns that would reach `session_len` are refused, impossible requests
//!   fail; both finish here and change nothing else.
//! - `lookup`: the K/V that can be reused (the session's pinned blocks, or the prefix cache)
//!   and the blocks this step's chunk needs.
//! - `reserve`: the KV cache manager's pressure policy makes room, or the request waits.
//! - `commit`: the turn takes its history and blocks, new blocks are allocated, a row is made.
//!
//! Turns with nothing to compute (`sequence_end` without generation, or an update with no new
//! tokens) never get here: `finish_free_turn` ends them without a forward pass.

use crate::kv_cache_manager::PrefixHit;
use crate::plan::Row;
use crate::scheduler::Scheduler;
use crate::sequence::{FinishReason, RequestId, Sequence};

/// Outcome of trying to admit one waiting request.
pub(crate) enum Admission {
    /// Admitted: runs `row.take` tokens this step.
    Admitted(Row),
    /// Finished without running (refused, impossible, or nothing to compute); reported.
    Finished,
    /// Not enough free blocks now; stays waiting and blocks the queue (FCFS).
    NoBlocks,
}

/// What a request would run if admitted now (the output of `check` and `lookup`).
struct Candidate {
    /// The whole token list (a session turn: history + this turn's tokens).
    tokens: Vec<u32>,
    /// Whether the request samples (max_new_tokens > 0).
    samples: bool,
    /// Leading tokens whose K/V are reused (from the session's pin or the prefix cache).
    computed: usize,
    /// The session pin is used (else `hit`).
    use_pin: bool,
    hit: PrefixHit,
    /// Tokens computed this step, and the free blocks admission needs for them (net of the
    /// pinned blocks it gives back).
    take: usize,
    need: usize,
}

impl Scheduler {
    /// Admit waiting request `id` with `budget` tokens left: either it gets its blocks and a
    /// row, or nothing changes (except a refusal or failure, which finishes it).
    pub(crate) fn try_admit(&mut self, id: RequestId, budget: usize) -> Admission {
        let Some(tokens) = self.check(id) else {
            return Admission::Finished;
        };
        let cand = self.lookup(id, tokens, budget);
        if cand.take == 0 {
            // Nothing left to compute and nothing to sample (a prefill-only request whose
            // every token is cached).
            self.finish_with_event(id, FinishReason::Length, -1, None);
            return Admission::Finished;
        }
        let exclude = if cand.use_pin {
            self.seqs[&id].session
        } else {
            None
        };
        let reserved = if cand.use_pin {
            &[][..]
        } else {
            &cand.hit.blocks[..]
        };
        if !self.kv.make_room(cand.need, reserved, exclude) {
            return Admission::NoBlocks;
        }
        Admission::Admitted(self.commit(id, cand, budget))
    }

    /// A session turn that computes nothing: it ends the session (`sequence_end` without
    /// generation), or updates it with no new tokens.
    pub(crate) fn is_free_turn(&self, id: RequestId) -> bool {
        let s = &self.seqs[&id];
        let Some(sid) = s.session else { return false };
        if s.merged || s.stop.max_new_tokens > 0 {
            return false;
        }
        s.sequence_end || self.turn_tokens(s, self.sessions.history(sid)).is_empty()
    }

    /// End a free turn now: no seat, no tokens, no forward pass.
    pub(crate) fn finish_free_turn(&mut self, id: RequestId) {
        let s = &self.seqs[&id];
        let sid = s.session.expect("a free turn belongs to a session");
        if s.sequence_end || s.sequence_start {
            self.end_idle_history(sid);
        }
        self.finish_with_event(id, FinishReason::Length, -1, None);
    }

    /// The tokens a turn adds to `history`: the whole conversation when there is none, else
    /// the continuation, without its leading EOS when the history already ends with one.
    fn turn_tokens<'a>(&self, s: &'a Sequence, history: &[u32]) -> &'a [u32] {
        if s.sequence_start || history.is_empty() {
            return &s.tokens;
        }
        let ends_with_eos = history
            .last()
            .is_some_and(|t| self.cfg.eos_token_ids.contains(t));
        let skip = if ends_with_eos {
            s.turn.eos_prefix_len
        } else {
            0
        };
        &s.turn.continuation[skip..]
    }

    /// Length and capacity checks; returns the request's whole token list, or None when it
    /// was finished here (refused, or it can never run).
    fn check(&mut self, id: RequestId) -> Option<Vec<u32>> {
        let s = &self.seqs[&id];
        let samples = usize::from(s.stop.max_new_tokens > 0);
        let session_len = s.stop.session_len as usize;
        let usable = self.kv.num_usable();
        let bs = self.cfg.block_size;
        let tokens = match s.session {
            Some(sid) if !s.merged => {
                let history = if s.sequence_start {
                    &[][..]
                } else {
                    self.sessions.history(sid)
                };
                let new = self.turn_tokens(s, history);
                [history, new].concat()
            }
            _ => s.tokens.clone(),
        };
        let total = tokens.len();
        let unmerged = !s.merged;
        if total + samples > session_len {
            // A turn that has not started is refused and leaves the session as it was; a
            // request already running (preempted) ends with "length".
            let reason = if unmerged {
                FinishReason::Refused
            } else {
                FinishReason::Length
            };
            self.finish_with_event(id, reason, -1, None);
            return None;
        }
        if total == 0 && samples > 0 {
            let msg = "the session is empty and the prompt is empty: nothing to generate from";
            self.finish_with_event(id, FinishReason::Error, -1, Some(msg.into()));
            return None;
        }
        let blocks = Sequence::blocks_for(total + samples, bs);
        if blocks > usable {
            let msg = format!(
                "the context of {} tokens needs {blocks} KV blocks but the pool has only {usable}",
                total + samples
            );
            self.finish_with_event(id, FinishReason::Error, -1, Some(msg));
            return None;
        }
        Some(tokens)
    }

    /// The K/V the request can reuse and what this step's chunk needs.
    fn lookup(&self, id: RequestId, tokens: Vec<u32>, budget: usize) -> Candidate {
        let bs = self.cfg.block_size;
        let s = &self.seqs[&id];
        let samples = s.stop.max_new_tokens > 0;
        // A sampling request computes at least its last token (for its logits); an embedding
        // computes every token (the runner pools their hidden states).
        let limit = if s.embed {
            0
        } else if samples {
            tokens.len() - 1
        } else {
            tokens.len()
        };
        let pin = match s.session {
            Some(sid) if !s.merged && !s.sequence_start => self.kv.pin(sid),
            _ => None,
        };
        // `held`: blocks kept; `dropped`: pinned blocks given back at commit (before allocating).
        let (use_pin, hit, computed, held, dropped) = match pin {
            Some(p) => {
                // A pin covering the last token when its logits are needed: recompute from
                // the last block boundary (whole blocks dropped, none rewritten).
                let c = if p.num_computed > limit {
                    limit / bs * bs
                } else {
                    p.num_computed
                };
                let held = c.div_ceil(bs);
                (true, PrefixHit::default(), c, held, p.blocks.len() - held)
            }
            None => {
                let hit = self.kv.cached_prefix(&tokens, limit);
                let c = hit.blocks.len() * bs;
                let n = hit.blocks.len();
                (false, hit, c, n, 0)
            }
        };
        let take = (tokens.len() - computed).min(budget);
        let need = Sequence::blocks_for(computed + take, bs)
            .saturating_sub(held)
            .saturating_sub(dropped);
        Candidate {
            tokens,
            samples,
            computed,
            use_pin,
            hit,
            take,
            need,
        }
    }

    /// Commit an admission whose room was reserved.
    fn commit(&mut self, id: RequestId, cand: Candidate, budget: usize) -> Row {
        let bs = self.cfg.block_size;
        let Candidate {
            tokens,
            samples,
            computed,
            use_pin,
            hit,
            ..
        } = cand;
        if !use_pin {
            self.kv.acquire_hit(&hit);
        }
        let (session, merged, sequence_start) = {
            let s = &self.seqs[&id];
            (s.session, s.merged, s.sequence_start)
        };
        let tick = self.tick;
        let now = self.now();
        let pin = match session {
            Some(sid) if !merged => {
                if sequence_start {
                    self.kv.release_pin(sid);
                }
                let history = self.sessions.begin_turn(sid, id, sequence_start, tick, now);
                debug_assert_eq!(&tokens[..history.len()], &history[..]);
                use_pin.then(|| self.kv.take_pin(sid))
            }
            _ => None,
        };
        let s = self.seqs.get_mut(&id).expect("known request");
        if !s.merged {
            s.tokens = tokens;
            s.num_context_tokens = s.tokens.len();
            s.merged = true;
            s.turn = Default::default();
        }
        match pin {
            Some(p) => {
                s.blocks = p.blocks;
                s.block_hashes = p.block_hashes;
                s.num_computed = p.num_computed;
                if s.num_computed > computed {
                    // Keep the blocks covering `computed` tokens.
                    let keep = computed / bs;
                    let dropped: Vec<_> = s.blocks.drain(keep..).collect();
                    s.block_hashes.truncate(keep);
                    s.num_computed = computed;
                    self.kv.release(&dropped);
                }
                self.counters.session_hit_tokens += computed as u64;
            }
            None => {
                self.counters.prefix_query_tokens += s.tokens.len() as u64;
                self.counters.prefix_hit_tokens += computed as u64;
                s.blocks = hit.blocks;
                s.block_hashes = hit.hashes;
                s.num_computed = computed;
            }
        }
        let s = self.seqs.get_mut(&id).expect("known request");
        s.num_cached_tokens = computed;
        let start = s.num_computed;
        let take = (s.num_tokens() - start).min(budget);
        let need = Sequence::blocks_for(start + take, bs) - s.blocks.len();
        let new_blocks = self.kv.allocate(need).expect("room was reserved");
        let slot = self.seqs.slot_of(&id).expect("known request");
        let s = self.seqs.at_mut(slot);
        s.blocks.extend(new_blocks);
        Row {
            id,
            slot,
            start,
            take,
            sample: start + take == s.num_tokens() && samples,
            drafts: 0,
        }
    }
}
