//! Chained hashing of full KV blocks for the prefix cache.
//!
//! A block's hash covers its parent's hash and its own token ids, so equal hashes mean equal
//! prefixes (up to collisions). The block pool still compares the token ids and the parent
//! hash on every hit, so a collision costs a cache miss, never a wrong answer.

/// A 64-bit chained block hash.
pub type BlockHash = u64;

/// The parent hash of a sequence's first block.
pub const ROOT_HASH: BlockHash = 0x6c6d_7273_0000_0001;

#[inline]
fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: a cheap full-avalanche 64-bit mixer.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of one full block: H(parent hash, the block's token ids).
pub fn hash_block(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = mix(parent ^ 0x9e37_79b9_7f4a_7c15);
    let mut chunks = tokens.chunks_exact(2);
    for pair in &mut chunks {
        let word = (pair[0] as u64) | ((pair[1] as u64) << 32);
        h = mix(h ^ word).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    if let [last] = chunks.remainder() {
        h = mix(h ^ (*last as u64) ^ (1u64 << 63));
    }
    mix(h ^ (tokens.len() as u64))
}

/// Hashes of every full block of `tokens` (the trailing partial block is not hashed),
/// chained from `ROOT_HASH`, limited to the first `max_blocks` blocks.
pub fn hash_full_blocks(tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<BlockHash> {
    let mut out = Vec::with_capacity((tokens.len() / block_size).min(max_blocks));
    let mut parent = ROOT_HASH;
    for block in tokens.chunks_exact(block_size).take(max_blocks) {
        parent = hash_block(parent, block);
        out.push(parent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_hash_equal() {
        let a = [1u32, 2, 3, 4, 5, 6, 7, 8];
        let b = [1u32, 2, 3, 4, 5, 6, 7, 9];
        let ha = hash_full_blocks(&a, 4, usize::MAX);
        let hb = hash_full_blocks(&b, 4, usize::MAX);
        assert_eq!(ha.len(), 2);
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
    }

    #[test]
    fn chain_depends_on_parent() {
        let blk = [5u32, 6, 7, 8];
        assert_ne!(
            hash_block(ROOT_HASH, &blk),
            hash_block(hash_block(ROOT_HASH, &blk), &blk)
        );
    }

    #[test]
    fn partial_block_is_not_hashed() {
        assert_eq!(hash_full_blocks(&[1, 2, 3], 4, usize::MAX).len(), 0);
        assert_eq!(hash_full_blocks(&[1, 2, 3, 4, 5], 4, usize::MAX).len(), 1);
        assert_eq!(hash_full_blocks(&[1, 2, 3, 4, 5, 6, 7, 8], 4, 1).len(), 1);
    }

    #[test]
    fn order_and_length_matter() {
        assert_ne!(
            hash_block(ROOT_HASH, &[1, 2]),
            hash_block(ROOT_HASH, &[2, 1])
        );
        assert_ne!(hash_block(ROOT_HASH, &[1, 0]), hash_block(ROOT_HASH, &[1]));
    }
}
