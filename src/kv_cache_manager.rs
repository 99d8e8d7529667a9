//! The KV side of the scheduler behind one boundary (vLLM's `kv_cache_manager.py`): the block
//! pool, prefix-cache lookup, the blocks idle sessions pin between turns, and the one pressure
//! policy shared by admission and the running loop: when blocks run short, idle sessions'
//! pins are released, least recently used first (their token histories stay with the session
//! table, so a session is never lost, only slower); what cannot be freed that way is the
//! scheduler's to decide (admission waits, the running loop preempts).
//!
//! The scheduler never touches the `BlockPool` directly: sequences get, publish and give back
//! their blocks through this module.

use crate::block_hash::{hash_block, BlockHash, ROOT_HASH};
use crate::block_pool::{BlockId, BlockPool};
use crate::id_map::IdMap;
use crate::sequence::SessionId;

/// The KV state an idle session keeps between turns (one reference on each block).
#[derive(Clone, Debug, Default)]
pub struct SessionPin {
    /// Blocks holding the K/V of the first `num_computed` history tokens.
    pub blocks: Vec<BlockId>,
    /// Chained hashes of the leading full, computed blocks.
    pub block_hashes: Vec<BlockHash>,
    /// Leading history tokens whose K/V are in `blocks`.
    pub num_computed: usize,
    /// Logical time of the pin (LRU order for eviction).
    pub last_used: u64,
}

/// Blocks found in the prefix cache for a token list.
#[derive(Debug, Default)]
pub struct PrefixHit {
    pub blocks: Vec<BlockId>,
    pub hashes: Vec<BlockHash>,
}

/// Block pool + prefix cache + session pins, with the eviction policy.
pub struct KvCacheManager {
    pool: BlockPool,
    pins: IdMap<SessionId, SessionPin>,
    /// Idle sessions' pins released under block pressure since the core started.
    pub num_pin_evictions: u64,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        KvCacheManager {
            pool: BlockPool::new(num_blocks, block_size, enable_prefix_caching),
            pins: IdMap::default(),
            num_pin_evictions: 0,
        }
    }

    // ---- gauges -------------------------------------------------------------------------
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }
    /// Total blocks, the null block included.
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }
    pub fn num_usable(&self) -> usize {
        self.pool.num_usable()
    }
    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }
    pub fn num_used(&self) -> usize {
        self.pool.num_used()
    }
    /// Free blocks that still hold a prefix-cache hash.
    pub fn num_free_cached(&self) -> usize {
        self.pool.num_free_cached()
    }
    /// Published blocks whose hash was dropped when the pool handed them out again.
    pub fn num_cache_evictions(&self) -> u64 {
        self.pool.evictions
    }
    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.pool.ref_count(id)
    }
    pub fn is_published(&self, id: BlockId) -> bool {
        self.pool.is_published(id)
    }
    /// Blocks pinned by idle sessions.
    pub fn num_pinned_blocks(&self) -> usize {
        self.pins.values().map(|p| p.blocks.len()).sum()
    }
    pub fn pin(&self, sid: SessionId) -> Option<&SessionPin> {
        self.pins.get(&sid)
    }
    pub fn pins(&self) -> impl Iterator<Item = (&SessionId, &SessionPin)> {
        self.pins.iter()
    }

    // ---- prefix cache -------------------------------------------------------------------
    /// Leading full blocks of `tokens[..limit]` published in the prefix cache.
    pub fn cached_prefix(&self, tokens: &[u32], limit: usize) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if !self.pool.caching_enabled() {
            return hit;
        }
        let mut parent = ROOT_HASH;
        for chunk in tokens[..limit].chunks_exact(self.pool.block_size()) {
            let h = hash_block(parent, chunk);
            match self.pool.lookup(parent, h, chunk) {
                Some(b) => {
                    hit.blocks.push(b);
                    hit.hashes.push(h);
                    parent = h;
                }
                None => break,
            }
        }
        hit
    }

    /// Take a reference on each block of a prefix hit (reviving free ones).
    pub fn acquire_hit(&mut self, hit: &PrefixHit) {
        for &b in &hit.blocks {
            self.pool.acquire_cached(b);
        }
    }

    /// Blocks of a hit that are free now (acquiring them takes them out of the free list).
    pub fn num_free_in(&self, blocks: &[BlockId]) -> usize {
        blocks
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == 0)
            .count()
    }

    /// Publish a full, computed block (see `BlockPool::publish`).
    pub fn publish(&mut self, id: BlockId, parent: BlockHash, hash: BlockHash, tokens: &[u32]) {
        self.pool.publish(id, parent, hash, tokens);
    }

    /// Forget every cached hash held by a free block. Returns how many were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }

    // ---- allocation and the pressure policy ---------------------------------------------
    /// Make `need` blocks free beyond the free blocks in `reserved` (prefix hits about to be
    /// acquired), releasing idle sessions' pins least recently used first, never the pin of
    /// `exclude`. Returns whether there is room; pins are released only as far as needed.
    pub fn make_room(
        &mut self,
        need: usize,
        reserved: &[BlockId],
        exclude: Option<SessionId>,
    ) -> bool {
        loop {
            let want = need + self.num_free_in(reserved);
            if self.pool.num_free() >= want {
                return true;
            }
            let victim = self
                .pins
                .iter()
                .filter(|(&sid, p)| Some(sid) != exclude && !p.blocks.is_empty())
                .min_by_key(|(_, p)| p.last_used)
                .map(|(&sid, _)| sid);
            match victim {
                Some(sid) => {
                    self.release_pin(sid);
                    self.num_pin_evictions += 1;
                }
                None => return false,
            }
        }
    }

    /// `n` new blocks, all or nothing (call `make_room` first to apply the pressure policy).
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        self.pool.allocate(n)
    }

    /// Give a sequence's blocks back, tail first (the most specific blocks are evicted first).
    pub fn release(&mut self, blocks: &[BlockId]) {
        self.pool.release_sequence(blocks);
    }

    // ---- session pins -------------------------------------------------------------------
    /// An idle session keeps `blocks` (the K/V of its first `num_computed` history tokens).
    pub fn pin_session(&mut self, sid: SessionId, pin: SessionPin) {
        debug_assert!(
            !self.pins.contains_key(&sid),
            "session {sid} is pinned twice"
        );
        if pin.blocks.is_empty() {
            return;
        }
        self.pins.insert(sid, pin);
    }

    /// A turn takes its session's pin (an empty one when nothing is pinned or it was evicted).
    pub fn take_pin(&mut self, sid: SessionId) -> SessionPin {
        self.pins.remove(&sid).unwrap_or_default()
    }

    /// Release a session's pinned blocks (the session ended or was dropped, or under pressure).
    pub fn release_pin(&mut self, sid: SessionId) {
        if let Some(p) = self.pins.remove(&sid) {
            self.pool.release_sequence(&p.blocks);
        }
    }

    /// Check the pool against the references held by sequences (`seq_refs`) plus the pins.
    pub fn check_invariants(&self, mut seq_refs: Vec<u32>) -> Result<(), String> {
        let bs = self.pool.block_size();
        for (sid, p) in &self.pins {
            if p.blocks.is_empty() {
                return Err(format!("session {sid} has an empty pin"));
            }
            if p.blocks.len() != p.num_computed.div_ceil(bs) {
                return Err(format!(
                    "session {sid} pins {} blocks for {} computed tokens",
                    p.blocks.len(),
                    p.num_computed
                ));
            }
            if p.block_hashes.len() > p.num_computed / bs {
                return Err(format!("session {sid} has hashes for uncomputed blocks"));
            }
            for &b in &p.blocks {
                seq_refs[b as usize] += 1;
            }
        }
        self.pool.check_invariants(&seq_refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_of(kv: &mut KvCacheManager, n: usize, tick: u64) -> SessionPin {
        SessionPin {
            blocks: kv.allocate(n).unwrap(),
            block_hashes: vec![],
            num_computed: n * kv.block_size(),
            last_used: tick,
        }
    }

    #[test]
    fn make_room_releases_lru_pins_only_as_needed() {
        let mut kv = KvCacheManager::new(7, 2, true); // 6 usable
        let a = pin_of(&mut kv, 2, 10);
        let b = pin_of(&mut kv, 2, 5);
        kv.pin_session(1, a);
        kv.pin_session(2, b);
        assert_eq!(kv.num_free(), 2);
        assert!(kv.make_room(2, &[], None));
        assert_eq!(kv.num_pinned_blocks(), 4, "enough room: nothing released");
        assert!(kv.make_room(3, &[], None));
        assert!(kv.pin(2).is_none(), "session 2 was least recently used");
        assert!(kv.pin(1).is_some());
        assert!(!kv.make_room(7, &[], Some(1)), "the excluded pin stays");
        assert!(kv.pin(1).is_some());
        assert_eq!(kv.num_pin_evictions, 1);
        kv.check_invariants(vec![0; kv.num_blocks()]).unwrap();
    }

    #[test]
    fn reserved_free_hits_count_against_the_room() {
        let mut kv = KvCacheManager::new(5, 2, true); // 4 usable
        let blocks = kv.allocate(1).unwrap();
        kv.publish(
            blocks[0],
            ROOT_HASH,
            hash_block(ROOT_HASH, &[1, 2]),
            &[1, 2],
        );
        kv.release(&blocks);
        let hit = kv.cached_prefix(&[1, 2, 3], 3);
        assert_eq!(hit.blocks, blocks);
        assert_eq!(kv.num_free_in(&hit.blocks), 1);
        // 4 free, one of them is the hit: 3 left for new blocks
        assert!(kv.make_room(3, &hit.blocks, None));
        assert!(!kv.make_room(4, &hit.blocks, None));
        kv.acquire_hit(&hit);
        assert_eq!(kv.num_free(), 3);
        kv.release(&hit.blocks);
        kv.check_invariants(vec![0; kv.num_blocks()]).unwrap();
    }
}
