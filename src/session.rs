//! Sessions: lmdeploy's interactive mode. The session table is the one record of a session:
//! its token history (whether it ends with EOS is read from it), the API key that owns it, its
//! unfinished turns in arrival order (the first one runs, the others wait behind it), and the
//! times used for LRU dropping and the idle timeout. The K/V blocks an idle session keeps
//! between turns are pinned in the `KvCacheManager`; while a turn runs, the running sequence
//! holds the history and the blocks, and gives them back when it ends.
//!
//! A record exists while the session has a history or unfinished turns: a first turn that is
//! refused or aborted before it ran leaves nothing behind.

use std::collections::VecDeque;

use crate::id_map::IdMap;
use crate::sequence::{RequestId, SessionId};

/// One session's state.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Token history: every context and generated token of the turns so far (empty while a
    /// turn runs: the running sequence holds it).
    pub tokens: Vec<u32>,
    /// The API key that created the session (None without API keys); others cannot use it.
    pub owner: Option<String>,
    /// Unfinished turns in arrival order; the first one is the current turn.
    pub turns: VecDeque<RequestId>,
    /// The current turn once admitted (it holds the history and the blocks).
    pub active: Option<RequestId>,
    /// Logical time of last use (LRU order for dropping).
    pub last_used: u64,
    /// Seconds (core clock) of last use, for the idle timeout.
    pub last_used_at: f64,
}

impl Session {
    /// Neither history nor unfinished turns: nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.turns.is_empty() && self.active.is_none()
    }

    /// No turn running or waiting.
    pub fn is_idle(&self) -> bool {
        self.turns.is_empty() && self.active.is_none()
    }
}

/// Why a request may not use a session.
#[derive(Debug, PartialEq, Eq)]
pub struct NotOwner(pub SessionId);

impl std::fmt::Display for NotOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {} does not exist for this API key", self.0)
    }
}

/// session id -> session, with count and idle-time limits.
pub struct SessionTable {
    sessions: IdMap<SessionId, Session>,
    /// Most sessions kept; beyond it the least recently used idle ones are dropped (0 = no limit).
    pub max_sessions: usize,
    /// Idle sessions older than this many seconds are dropped (0 = never).
    pub idle_timeout_s: f64,
    /// Sessions dropped by the count or idle limits since the core started.
    pub num_dropped: u64,
}

impl SessionTable {
    pub fn new(max_sessions: usize, idle_timeout_s: f64) -> Self {
        SessionTable {
            sessions: IdMap::default(),
            max_sessions,
            idle_timeout_s,
            num_dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, sid: SessionId) -> Option<&Session> {
        self.sessions.get(&sid)
    }

    pub fn get_mut(&mut self, sid: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&sid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    /// May `owner` use session `sid`? (Yes when it does not exist: it would be created.)
    pub fn check_owner(&self, sid: SessionId, owner: Option<&str>) -> Result<(), NotOwner> {
        match self.sessions.get(&sid) {
            Some(s) if s.owner.as_deref() != owner => Err(NotOwner(sid)),
            _ => Ok(()),
        }
    }

    /// Queue turn `req` behind the session's unfinished turns, creating the session if needed.
    /// The owner must have been checked.
    pub fn enqueue_turn(&mut self, sid: SessionId, req: RequestId, owner: Option<&str>) {
        let s = self.sessions.entry(sid).or_insert_with(|| Session {
            owner: owner.map(str::to_owned),
            ..Session::default()
        });
        s.turns.push_back(req);
    }

    /// Whether `req` is the session's current turn and nothing runs yet (it may be admitted).
    pub fn is_next_turn(&self, sid: SessionId, req: RequestId) -> bool {
        self.sessions
            .get(&sid)
            .is_some_and(|s| s.active.is_none() && s.turns.front() == Some(&req))
    }

    /// The session's current turn (running, or the first one waiting).
    pub fn current_turn(&self, sid: SessionId) -> Option<RequestId> {
        self.sessions
            .get(&sid)
            .and_then(|s| s.turns.front().copied())
    }

    /// The history a turn would continue (empty for a new session).
    pub fn history(&self, sid: SessionId) -> &[u32] {
        self.sessions.get(&sid).map_or(&[][..], |s| &s.tokens[..])
    }

    /// Admit the current turn `req`: it takes the history (dropped first on `sequence_start`).
    pub fn begin_turn(
        &mut self,
        sid: SessionId,
        req: RequestId,
        sequence_start: bool,
        tick: u64,
        now: f64,
    ) -> Vec<u32> {
        let s = self
            .sessions
            .get_mut(&sid)
            .expect("a queued turn's session exists");
        debug_assert!(s.active.is_none() && s.turns.front() == Some(&req));
        if sequence_start {
            s.tokens.clear();
        }
        s.active = Some(req);
        s.last_used = tick;
        s.last_used_at = now;
        std::mem::take(&mut s.tokens)
    }

    /// The admitted turn `req` ended: the history comes back, or (`None`: it ended the
    /// session with `sequence_end`) the history is dropped. Turns queued behind it stay.
    pub fn end_turn(
        &mut self,
        sid: SessionId,
        req: RequestId,
        history: Option<Vec<u32>>,
        tick: u64,
        now: f64,
    ) {
        let s = self
            .sessions
            .get_mut(&sid)
            .expect("a running turn's session exists");
        debug_assert_eq!(s.active, Some(req));
        s.tokens = history.unwrap_or_default();
        s.active = None;
        s.turns.retain(|&t| t != req);
        s.last_used = tick;
        s.last_used_at = now;
        self.drop_if_empty(sid);
    }

    /// A turn that never ran (refused, aborted, or with nothing to compute) leaves the queue.
    pub fn forget_turn(&mut self, sid: SessionId, req: RequestId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            debug_assert_ne!(s.active, Some(req));
            s.turns.retain(|&t| t != req);
        }
        self.drop_if_empty(sid);
    }

    /// Drop an idle session's history (`sequence_end` of a turn that did not run); the record
    /// goes unless turns still wait. The caller releases its pin.
    pub fn end_history(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            debug_assert!(s.active.is_none());
            s.tokens.clear();
        }
        self.drop_if_empty(sid);
    }

    /// Remove a session record (its turns must be gone).
    pub fn remove(&mut self, sid: SessionId) -> Option<Session> {
        self.sessions.remove(&sid)
    }

    fn drop_if_empty(&mut self, sid: SessionId) {
        if self.sessions.get(&sid).is_some_and(Session::is_empty) {
            self.sessions.remove(&sid);
        }
    }

    /// Idle sessions to drop now: past the idle timeout, then the least recently used idle ones
    /// while over `max_sessions`. The caller removes them (and releases their pins).
    pub fn expired(&self, now: f64) -> Vec<SessionId> {
        let mut dropped = Vec::new();
        if self.idle_timeout_s > 0.0 {
            let timeout = self.idle_timeout_s;
            dropped.extend(
                self.sessions
                    .iter()
                    .filter(|(_, s)| s.is_idle() && now - s.last_used_at > timeout)
                    .map(|(&sid, _)| sid),
            );
        }
        let remaining = self.sessions.len() - dropped.len();
        if self.max_sessions > 0 && remaining > self.max_sessions {
            let mut idle: Vec<(u64, SessionId)> = self
                .sessions
                .iter()
                .filter(|(sid, s)| s.is_idle() && !dropped.contains(sid))
                .map(|(&sid, s)| (s.last_used, sid))
                .collect();
            idle.sort_unstable();
            dropped.extend(
                idle.iter()
                    .take(remaining - self.max_sessions)
                    .map(|&(_, sid)| sid),
            );
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_run_in_order_and_the_history_round_trips() {
        let mut t = SessionTable::new(0, 0.0);
        t.enqueue_turn(5, 100, None);
        t.enqueue_turn(5, 101, None);
        assert!(t.is_next_turn(5, 100) && !t.is_next_turn(5, 101));
        let h = t.begin_turn(5, 100, true, 1, 0.0);
        assert!(h.is_empty());
        assert!(!t.is_next_turn(5, 101), "the first turn runs");
        t.end_turn(5, 100, Some(vec![1, 2, 3]), 2, 0.0);
        assert_eq!(t.history(5), &[1, 2, 3]);
        assert!(t.is_next_turn(5, 101));
        let h = t.begin_turn(5, 101, false, 3, 0.0);
        assert_eq!(h, vec![1, 2, 3]);
        t.end_turn(5, 101, Some(h), 4, 0.0);
        assert!(t.get(5).unwrap().is_idle());
    }

    #[test]
    fn a_turn_that_never_ran_creates_nothing() {
        let mut t = SessionTable::new(0, 0.0);
        t.enqueue_turn(7, 1, Some("a"));
        assert_eq!(t.check_owner(7, Some("b")), Err(NotOwner(7)));
        t.forget_turn(7, 1);
        assert!(t.get(7).is_none());
        assert!(t.check_owner(7, Some("b")).is_ok());
    }

    #[test]
    fn expire_by_time_and_count() {
        let mut t = SessionTable::new(2, 10.0);
        for (sid, at) in [(1, 0.0), (2, 5.0), (3, 8.0)] {
            t.enqueue_turn(sid, sid as u64, None);
            let h = t.begin_turn(sid, sid as u64, true, sid as u64, at);
            t.end_turn(sid, sid as u64, Some([h, vec![9]].concat()), sid as u64, at);
        }
        assert_eq!(t.expired(12.0), vec![1]);
        t.remove(1);
        t.max_sessions = 1;
        assert_eq!(t.expired(12.0), vec![2]);
    }
}
