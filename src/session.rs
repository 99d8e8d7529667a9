//! Sessions: lmdeploy's interactive mode. A session keeps its token history and pins its KV
//! blocks between turns, so the next turn prefills only its new tokens. While a turn runs,
//! the running sequence owns the history and blocks; when the turn ends they come back.
//! Under block pressure an idle session's blocks may be released (LRU first), but its token
//! history stays, so the next turn recomputes what was lost: a session is never lost.

use crate::id_map::IdMap;

use crate::block_hash::BlockHash;
use crate::block_pool::{BlockId, BlockPool};
use crate::sequence::{RequestId, SessionId};

/// One session's retained state.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Token history: every context and generated token of the turns so far.
    pub tokens: Vec<u32>,
    /// Leading history tokens whose K/V are held in `blocks`.
    pub num_computed: usize,
    /// Pinned blocks (one reference each); empty while a turn runs or after eviction.
    pub blocks: Vec<BlockId>,
    /// Chained hashes of the leading full, computed blocks.
    pub block_hashes: Vec<BlockHash>,
    /// The request running this session's turn, if any.
    pub active: Option<RequestId>,
    /// Logical time of last use (LRU order for eviction and dropping).
    pub last_used: u64,
    /// Seconds (core clock) of last use, for the idle timeout.
    pub last_used_at: f64,
}

/// The history and blocks a turn takes over from its session.
pub struct TurnState {
    pub tokens: Vec<u32>,
    pub num_computed: usize,
    pub blocks: Vec<BlockId>,
    pub block_hashes: Vec<BlockHash>,
}

/// session id -> retained state, with count and idle-time limits.
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

    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    /// Whether another request is running a turn of this session.
    pub fn is_busy(&self, sid: SessionId) -> bool {
        self.sessions.get(&sid).is_some_and(|s| s.active.is_some())
    }

    /// History length a new turn would start from (0 for a new session or sequence_start).
    pub fn history_len(&self, sid: SessionId, sequence_start: bool) -> usize {
        if sequence_start {
            0
        } else {
            self.sessions.get(&sid).map_or(0, |s| s.tokens.len())
        }
    }

    /// Start a turn: create the session if needed, drop its history on `sequence_start`, and
    /// hand its history and blocks to the request `req`.
    pub fn begin_turn(
        &mut self,
        sid: SessionId,
        req: RequestId,
        sequence_start: bool,
        pool: &mut BlockPool,
        tick: u64,
        now: f64,
    ) -> TurnState {
        let s = self.sessions.entry(sid).or_default();
        debug_assert!(s.active.is_none());
        if sequence_start {
            pool.release_sequence(&s.blocks);
            *s = Session::default();
        }
        s.active = Some(req);
        s.last_used = tick;
        s.last_used_at = now;
        TurnState {
            tokens: std::mem::take(&mut s.tokens),
            num_computed: std::mem::take(&mut s.num_computed),
            blocks: std::mem::take(&mut s.blocks),
            block_hashes: std::mem::take(&mut s.block_hashes),
        }
    }

    /// End a turn that keeps the session: the history and blocks come back to it.
    pub fn end_turn(&mut self, sid: SessionId, state: TurnState, tick: u64, now: f64) {
        let s = self.sessions.entry(sid).or_default();
        s.tokens = state.tokens;
        s.num_computed = state.num_computed;
        s.blocks = state.blocks;
        s.block_hashes = state.block_hashes;
        s.active = None;
        s.last_used = tick;
        s.last_used_at = now;
    }

    /// Remove a session and release its blocks. Returns the request running its turn, if any
    /// (the caller must abort it), or None.
    pub fn remove(&mut self, sid: SessionId, pool: &mut BlockPool) -> Option<Option<RequestId>> {
        let s = self.sessions.remove(&sid)?;
        pool.release_sequence(&s.blocks);
        Some(s.active)
    }

    /// Release idle sessions' blocks, least recently used first, until `pool` has `needed`
    /// free blocks or no idle session holds blocks. Histories are kept. Returns blocks released.
    /// `exclude` names a session about to be used, whose blocks must stay.
    pub fn evict_idle_blocks(
        &mut self,
        pool: &mut BlockPool,
        needed: usize,
        exclude: Option<SessionId>,
    ) -> usize {
        if pool.num_free() >= needed {
            return 0;
        }
        let mut idle: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .filter(|(&sid, s)| s.active.is_none() && !s.blocks.is_empty() && Some(sid) != exclude)
            .map(|(&sid, s)| (s.last_used, sid))
            .collect();
        idle.sort_unstable();
        let before = pool.num_free();
        for (_, sid) in idle {
            if pool.num_free() >= needed {
                break;
            }
            let s = self.sessions.get_mut(&sid).expect("listed session exists");
            pool.release_sequence(&s.blocks);
            s.blocks.clear();
            s.block_hashes.clear();
            s.num_computed = 0;
        }
        pool.num_free() - before
    }

    /// Drop idle sessions past the idle timeout, then the least recently used idle ones while
    /// over `max_sessions`. Returns the dropped ids.
    pub fn expire(&mut self, pool: &mut BlockPool, now: f64) -> Vec<SessionId> {
        let mut dropped = Vec::new();
        if self.idle_timeout_s > 0.0 {
            let timeout = self.idle_timeout_s;
            let old: Vec<SessionId> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.active.is_none() && now - s.last_used_at > timeout)
                .map(|(&sid, _)| sid)
                .collect();
            dropped.extend(old);
        }
        for sid in &dropped {
            self.remove(*sid, pool);
        }
        if self.max_sessions > 0 && self.sessions.len() > self.max_sessions {
            let mut idle: Vec<(u64, SessionId)> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.active.is_none())
                .map(|(&sid, s)| (s.last_used, sid))
                .collect();
            idle.sort_unstable();
            let excess = self.sessions.len() - self.max_sessions;
            for &(_, sid) in idle.iter().take(excess) {
                self.remove(sid, pool);
                dropped.push(sid);
            }
        }
        self.num_dropped += dropped.len() as u64;
        dropped
    }

    /// Blocks pinned by idle sessions.
    pub fn num_pinned_blocks(&self) -> usize {
        self.sessions.values().map(|s| s.blocks.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_round_trip_and_start_drops_history() {
        let mut pool = BlockPool::new(8, 2, true);
        let mut t = SessionTable::new(0, 0.0);
        let st = t.begin_turn(5, 100, true, &mut pool, 1, 0.0);
        assert!(st.tokens.is_empty());
        assert!(t.is_busy(5));
        let blocks = pool.allocate(2).unwrap();
        t.end_turn(
            5,
            TurnState {
                tokens: vec![1, 2, 3],
                num_computed: 3,
                blocks,
                block_hashes: vec![],
            },
            2,
            0.0,
        );
        assert!(!t.is_busy(5));
        assert_eq!(t.history_len(5, false), 3);
        assert_eq!(t.history_len(5, true), 0);
        assert_eq!(t.num_pinned_blocks(), 2);
        let st = t.begin_turn(5, 101, false, &mut pool, 3, 0.0);
        assert_eq!(st.tokens, vec![1, 2, 3]);
        t.end_turn(5, st, 4, 0.0);
        let st = t.begin_turn(5, 102, true, &mut pool, 5, 0.0);
        assert!(st.tokens.is_empty() && st.blocks.is_empty());
        assert_eq!(pool.num_free(), 7);
    }

    #[test]
    fn eviction_keeps_history_lru_first() {
        let mut pool = BlockPool::new(5, 2, true);
        let mut t = SessionTable::new(0, 0.0);
        for (sid, tick) in [(1, 10u64), (2, 5u64)] {
            let st = t.begin_turn(sid, sid as u64, true, &mut pool, tick, 0.0);
            drop(st);
            let b = pool.allocate(2).unwrap();
            t.end_turn(
                sid,
                TurnState {
                    tokens: vec![9; 4],
                    num_computed: 4,
                    blocks: b,
                    block_hashes: vec![],
                },
                tick,
                0.0,
            );
        }
        assert_eq!(pool.num_free(), 0);
        assert_eq!(t.evict_idle_blocks(&mut pool, 1, None), 2);
        // session 2 was least recently used
        assert!(t.get(2).unwrap().blocks.is_empty());
        assert_eq!(t.get(2).unwrap().tokens.len(), 4);
        assert_eq!(t.get(1).unwrap().blocks.len(), 2);
    }

    #[test]
    fn expire_by_time_and_count() {
        let mut pool = BlockPool::new(5, 2, true);
        let mut t = SessionTable::new(2, 10.0);
        for (sid, at) in [(1, 0.0), (2, 5.0), (3, 8.0)] {
            let st = t.begin_turn(sid, sid as u64, true, &mut pool, sid as u64, at);
            t.end_turn(sid, st, sid as u64, at);
        }
        let d = t.expire(&mut pool, 12.0);
        assert_eq!(d, vec![1]);
        assert_eq!(t.len(), 2);
        t.max_sessions = 1;
        let d = t.expire(&mut pool, 12.0);
        assert_eq!(d, vec![2]);
        assert_eq!(t.num_dropped, 2);
    }
}
