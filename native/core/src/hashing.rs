//! The hash that spreads keys (senders, JIDs, store keys) over shards,
//! connections, worker slots and delivery lanes.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// foldhash with one seed per process: a handful of multiplications per
/// key where SipHash (std's default) costs a few times more, on a path
/// taken for every stanza. The seed is random so that senders chosen by
/// remote users cannot be aimed at one shard, and fixed for the life of
/// the process so that a sender keeps its shard (and its order).
pub fn key_hash(key: &str) -> u64 {
    static STATE: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(key)
}

/// `key`'s index among `n` (at least one).
pub fn index_of(key: &str, n: usize) -> usize {
    (key_hash(key) % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_within_the_process_and_in_range() {
        assert_eq!(key_hash("alice@example.com"), key_hash("alice@example.com"));
        assert_ne!(key_hash("alice@example.com"), key_hash("bob@example.com"));
        for n in [1, 2, 7, 64] {
            assert!(index_of("carol@example.com/x", n) < n);
        }
        assert_eq!(index_of("anything", 0), 0);
    }

    #[test]
    fn spreads_similar_keys() {
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[index_of(&format!("user{i}@example.com/res"), 8)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
