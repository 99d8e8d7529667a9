//! The KV block pool: a fixed set of blocks with reference counts, an O(1) LRU free list
//! (an intrusive doubly linked list), and the prefix-cache hash map.
//!
//! A block is either free (ref count 0, linked in the free list) or in use (ref count > 0).
//! Free is not evicted: a freed full block keeps its hash and can be revived by a prefix hit
//! until `allocate` pops it from the head of the free list and drops its hash. Block 0 is the
//! null block: it pads block tables and is never handed out.

use crate::id_map::IdMap;

use crate::block_hash::BlockHash;

/// Index of a KV block in the cache tensors.
pub type BlockId = u32;

/// The placeholder block id used to pad block tables; never allocated.
pub const NULL_BLOCK: BlockId = 0;

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct BlockMeta {
    /// Number of holders (running sequences and idle sessions) of this block.
    ref_count: u32,
    /// Free-list neighbours; meaningful only while `in_free_list`.
    prev: u32,
    next: u32,
    in_free_list: bool,
    /// Set while the block is published in the prefix cache.
    hash: Option<BlockHash>,
    /// Hash of the previous block in the chain, compared on every cache hit.
    parent_hash: BlockHash,
}

/// Fixed-size pool of KV blocks with an LRU free list and a prefix-cache index.
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<BlockMeta>,
    /// `block_size` token ids per block; valid for published blocks (used to verify hits).
    tokens: Vec<u32>,
    head: u32,
    tail: u32,
    num_free: usize,
    num_free_cached: usize,
    cached: IdMap<BlockHash, BlockId>,
    caching_enabled: bool,
    /// Published blocks whose hash was dropped because the block was handed out again.
    pub evictions: u64,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (block 0 is the null block, so `num_blocks - 1` are usable).
    pub fn new(num_blocks: usize, block_size: usize, caching_enabled: bool) -> Self {
        assert!(
            num_blocks >= 2,
            "the pool needs the null block and at least one usable block"
        );
        assert!(num_blocks < NIL as usize, "too many blocks");
        assert!(block_size > 0, "block_size must be positive");
        let meta = BlockMeta {
            ref_count: 0,
            prev: NIL,
            next: NIL,
            in_free_list: false,
            hash: None,
            parent_hash: 0,
        };
        let mut pool = BlockPool {
            block_size,
            blocks: vec![meta; num_blocks],
            tokens: vec![0; num_blocks * block_size],
            head: NIL,
            tail: NIL,
            num_free: 0,
            num_free_cached: 0,
            cached: IdMap::default(),
            caching_enabled,
            evictions: 0,
        };
        for id in 1..num_blocks as u32 {
            pool.push_back(id);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total blocks including the null block.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can ever be handed out.
    pub fn num_usable(&self) -> usize {
        self.blocks.len() - 1
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn num_used(&self) -> usize {
        self.num_usable() - self.num_free
    }

    /// Free blocks that still hold a published hash (revivable by a prefix hit).
    pub fn num_free_cached(&self) -> usize {
        self.num_free_cached
    }

    pub fn caching_enabled(&self) -> bool {
        self.caching_enabled
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_count
    }

    pub fn is_published(&self, id: BlockId) -> bool {
        self.blocks[id as usize].hash.is_some()
    }

    fn push_back(&mut self, id: BlockId) {
        let tail = self.tail;
        {
            let m = &mut self.blocks[id as usize];
            debug_assert!(!m.in_free_list);
            m.in_free_list = true;
            m.prev = tail;
            m.next = NIL;
        }
        if tail == NIL {
            self.head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
        if self.blocks[id as usize].hash.is_some() {
            self.num_free_cached += 1;
        }
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let m = &self.blocks[id as usize];
            debug_assert!(m.in_free_list);
            (m.prev, m.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let m = &mut self.blocks[id as usize];
        m.in_free_list = false;
        m.prev = NIL;
        m.next = NIL;
        self.num_free -= 1;
        if m.hash.is_some() {
            self.num_free_cached -= 1;
        }
    }

    fn unpublish(&mut self, id: BlockId) {
        if let Some(h) = self.blocks[id as usize].hash.take() {
            if self.cached.get(&h) == Some(&id) {
                self.cached.remove(&h);
            }
            if self.blocks[id as usize].in_free_list {
                self.num_free_cached -= 1;
            }
        }
    }

    /// Hand out `n` blocks from the LRU end of the free list, dropping any hash they held.
    /// All or nothing: returns `None` and changes nothing when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            if self.blocks[id as usize].hash.is_some() {
                self.unpublish(id);
                self.evictions += 1;
            }
            self.blocks[id as usize].ref_count = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Drop one reference to each block, in the given order; blocks that reach zero are
    /// appended to the free list (the last ones released are evicted last).
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let m = &mut self.blocks[id as usize];
            assert!(
                id != NULL_BLOCK && m.ref_count > 0,
                "release of a block that is not in use"
            );
            m.ref_count -= 1;
            if m.ref_count == 0 {
                self.push_back(id);
            }
        }
    }

    /// Release a sequence's blocks tail first, so its most specific blocks are evicted first
    /// and the shared prefix survives longest.
    pub fn release_sequence(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            self.release(std::slice::from_ref(&id));
        }
    }

    /// A published block holding exactly `tokens` after `parent`, if any.
    pub fn lookup(&self, parent: BlockHash, hash: BlockHash, tokens: &[u32]) -> Option<BlockId> {
        if !self.caching_enabled {
            return None;
        }
        let &id = self.cached.get(&hash)?;
        let m = &self.blocks[id as usize];
        let start = id as usize * self.block_size;
        if m.parent_hash == parent && self.tokens[start..start + self.block_size] == *tokens {
            Some(id)
        } else {
            None
        }
    }

    /// Take a reference to a cached block found by `lookup` (reviving it if it was free).
    pub fn acquire_cached(&mut self, id: BlockId) {
        if self.blocks[id as usize].ref_count == 0 {
            self.unlink(id);
        }
        self.blocks[id as usize].ref_count += 1;
    }

    /// Publish a full, computed block under `hash`. Returns false when caching is off, the
    /// block is already published, or another block already holds this hash (no duplicates).
    pub fn publish(
        &mut self,
        id: BlockId,
        parent: BlockHash,
        hash: BlockHash,
        tokens: &[u32],
    ) -> bool {
        debug_assert_eq!(tokens.len(), self.block_size);
        if !self.caching_enabled
            || self.blocks[id as usize].hash.is_some()
            || self.cached.contains_key(&hash)
        {
            return false;
        }
        let start = id as usize * self.block_size;
        self.tokens[start..start + self.block_size].copy_from_slice(tokens);
        let m = &mut self.blocks[id as usize];
        m.hash = Some(hash);
        m.parent_hash = parent;
        if m.in_free_list {
            self.num_free_cached += 1;
        }
        self.cached.insert(hash, id);
        true
    }

    /// Forget every cached hash held by a free block. Returns how many were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let free_cached: Vec<BlockId> = (1..self.blocks.len() as u32)
            .filter(|&id| {
                self.blocks[id as usize].in_free_list && self.blocks[id as usize].hash.is_some()
            })
            .collect();
        for &id in &free_cached {
            self.unpublish(id);
        }
        free_cached.len()
    }

    /// Check the pool's internal consistency against the reference counts the holders expect.
    pub fn check_invariants(&self, expected_refs: &[u32]) -> Result<(), String> {
        let n = self.blocks.len();
        if expected_refs.len() != n {
            return Err("expected_refs has the wrong length".into());
        }
        let null = &self.blocks[NULL_BLOCK as usize];
        if null.in_free_list || null.ref_count != 0 || null.hash.is_some() || expected_refs[0] != 0
        {
            return Err("the null block was handed out, listed as free or published".into());
        }
        // Walk the free list: a proper list, no duplicates, only ref-0 blocks.
        let mut seen = vec![false; n];
        let mut count = 0usize;
        let mut cached = 0usize;
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            let m = &self.blocks[cur as usize];
            if seen[cur as usize] {
                return Err(format!("free list has a cycle or duplicate at block {cur}"));
            }
            seen[cur as usize] = true;
            if !m.in_free_list || m.ref_count != 0 || m.prev != prev {
                return Err(format!("free list entry {cur} is inconsistent"));
            }
            if m.hash.is_some() {
                cached += 1;
            }
            count += 1;
            prev = cur;
            cur = m.next;
        }
        if prev != self.tail {
            return Err("free list tail pointer is wrong".into());
        }
        if count != self.num_free || cached != self.num_free_cached {
            return Err(format!(
                "free counters wrong: list {count}/{cached}, counters {}/{}",
                self.num_free, self.num_free_cached
            ));
        }
        for id in 1..n {
            let m = &self.blocks[id];
            if m.ref_count != expected_refs[id] {
                return Err(format!(
                    "block {id}: ref count {} but {} holders",
                    m.ref_count, expected_refs[id]
                ));
            }
            // Partition: free iff ref 0.
            if (m.ref_count == 0) != seen[id] {
                return Err(format!(
                    "block {id}: ref count {} but in_free_list={}",
                    m.ref_count, seen[id]
                ));
            }
        }
        for (h, &id) in &self.cached {
            if self.blocks[id as usize].hash != Some(*h) {
                return Err(format!(
                    "hash map entry for block {id} does not match the block's hash"
                ));
            }
        }
        let published = self.blocks.iter().filter(|m| m.hash.is_some()).count();
        if published != self.cached.len() {
            return Err("a published block is missing from the hash map".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_hash::{hash_block, ROOT_HASH};

    fn refs(pool: &BlockPool, held: &[BlockId]) -> Vec<u32> {
        let mut r = vec![0u32; pool.num_blocks()];
        for &b in held {
            r[b as usize] += 1;
        }
        r
    }

    #[test]
    fn allocate_is_all_or_nothing() {
        let mut p = BlockPool::new(5, 4, true);
        assert_eq!(p.num_usable(), 4);
        let a = p.allocate(3).unwrap();
        assert!(!a.contains(&NULL_BLOCK));
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free(), 1);
        p.check_invariants(&refs(&p, &a)).unwrap();
        p.release_sequence(&a);
        assert_eq!(p.num_free(), 4);
        p.check_invariants(&refs(&p, &[])).unwrap();
    }

    #[test]
    fn freed_block_keeps_hash_until_reused() {
        let mut p = BlockPool::new(3, 2, true);
        let a = p.allocate(1).unwrap();
        let toks = [7u32, 8];
        let h = hash_block(ROOT_HASH, &toks);
        assert!(p.publish(a[0], ROOT_HASH, h, &toks));
        p.release(&a);
        assert_eq!(p.num_free_cached(), 1);
        // revive it
        let hit = p.lookup(ROOT_HASH, h, &toks).unwrap();
        assert_eq!(hit, a[0]);
        p.acquire_cached(hit);
        assert_eq!(p.ref_count(hit), 1);
        assert_eq!(p.num_free_cached(), 0);
        p.check_invariants(&refs(&p, &[hit])).unwrap();
        p.release(&[hit]);
        // allocate everything: the cached block is evicted when handed out
        let all = p.allocate(2).unwrap();
        assert!(p.lookup(ROOT_HASH, h, &toks).is_none());
        assert_eq!(p.evictions, 1);
        p.check_invariants(&refs(&p, &all)).unwrap();
    }

    #[test]
    fn lookup_verifies_tokens_and_parent() {
        let mut p = BlockPool::new(3, 2, true);
        let a = p.allocate(1).unwrap();
        let h = 12345;
        assert!(p.publish(a[0], ROOT_HASH, h, &[1, 2]));
        assert!(p.lookup(ROOT_HASH, h, &[1, 3]).is_none());
        assert!(p.lookup(99, h, &[1, 2]).is_none());
        assert!(p.lookup(ROOT_HASH, h, &[1, 2]).is_some());
    }

    #[test]
    fn no_duplicate_publication_and_caching_off() {
        let mut p = BlockPool::new(4, 2, true);
        let a = p.allocate(2).unwrap();
        assert!(p.publish(a[0], ROOT_HASH, 1, &[1, 2]));
        assert!(!p.publish(a[1], ROOT_HASH, 1, &[1, 2]));
        assert!(!p.publish(a[0], ROOT_HASH, 2, &[1, 2]));
        let mut q = BlockPool::new(4, 2, false);
        let b = q.allocate(1).unwrap();
        assert!(!q.publish(b[0], ROOT_HASH, 1, &[1, 2]));
        assert!(q.lookup(ROOT_HASH, 1, &[1, 2]).is_none());
    }

    #[test]
    fn lru_order_release_reverse() {
        let mut p = BlockPool::new(4, 2, true);
        let a = p.allocate(3).unwrap();
        p.release_sequence(&a);
        // the last block of the sequence is the first to be handed out again
        let b = p.allocate(1).unwrap();
        assert_eq!(b[0], a[2]);
    }

    #[test]
    fn reset_prefix_cache_drops_free_hashes() {
        let mut p = BlockPool::new(4, 2, true);
        let a = p.allocate(2).unwrap();
        p.publish(a[0], ROOT_HASH, 1, &[1, 2]);
        p.publish(a[1], 1, 2, &[3, 4]);
        p.release(&a[..1]);
        assert_eq!(p.reset_prefix_cache(), 1);
        assert!(p.is_published(a[1]));
        p.check_invariants(&refs(&p, &a[1..])).unwrap();
    }
}
