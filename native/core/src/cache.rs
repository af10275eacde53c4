//! A bounded concurrent map with CLOCK (second chance) eviction, behind the
//! mapping caches.
//!
//! A read is one hash, one shard read lock, one probe and, the first time
//! an entry is read after the clock hand passed it, one store to its flag.
//! An entry is its key, its value and that flag, in one array per shard,
//! found through a table of 32-bit positions. Eviction happens in the
//! writer, under the shard's write lock, so the bound holds at all times
//! and nothing is left for a background task.
//!
//! General-purpose caches (moka, before this) keep an access-order queue,
//! a frequency sketch and read buffers: about 300 bytes of RSS per entry
//! and a third of a cached lookup's time, for a hit rate the mapping does
//! not need (entries are few per user and expire on their own).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use parking_lot::RwLock;

/// Entries per shard below which a cache takes no further shard.
const SHARD_TARGET: u64 = 4096;

/// At most 2^6 shards: their index is 6 bits of the hash.
const SHARD_BITS: u32 = 6;
const MAX_SHARDS: u64 = 1 << SHARD_BITS;

/// Where the shard index starts in the hash: right below the 7 top bits
/// hashbrown keeps as each entry's tag (and far above the bits that choose
/// a bucket), so that the keys of one shard do not all share tag bits.
const SHARD_SHIFT: u32 = 64 - 7 - SHARD_BITS;

/// A map from string keys to `V`, holding at most `capacity` entries.
pub(crate) struct ClockCache<V> {
    shards: Box<[Padded<RwLock<Shard<V>>>]>,
    /// foldhash rather than SipHash: keys are short strings hashed on every
    /// route(). Seeded per process: keys come from remote users, who must
    /// not be able to aim them at one bucket.
    hasher: RandomState,
    /// Shard count minus one (a power of two minus one).
    mask: usize,
}

/// A shard alone on its cache lines: taking a read lock writes the lock
/// word, which must not slow down the readers of neighbouring shards.
#[repr(align(128))]
struct Padded<T>(T);

struct Shard<V> {
    /// Positions in `entries`, by the hash of their key.
    index: HashTable<u32>,
    /// Grown as needed up to `cap`; not preallocated, as `max_jids` may be
    /// far above what a node ever caches.
    entries: Vec<Entry<V>>,
    /// The next entry the clock hand looks at when the shard is full.
    hand: usize,
    /// At most `u32::MAX`, so that positions fit the index.
    cap: usize,
}

struct Entry<V> {
    key: Box<str>,
    value: V,
    /// Read since the hand last passed: spared by the next sweep.
    referenced: AtomicBool,
}

impl<V> ClockCache<V> {
    /// A cache of at most `capacity` entries; 0 caches nothing.
    pub(crate) fn new(capacity: u64) -> ClockCache<V> {
        let wanted = (capacity / SHARD_TARGET).clamp(1, MAX_SHARDS);
        // Rounded down to a power of two, so that a shard is never smaller
        // than SHARD_TARGET when there is more than one.
        let count = 1u64 << wanted.ilog2();
        // Split so that the shards' bounds sum to `capacity` exactly (unless
        // above u32::MAX each, which no node reaches).
        let (share, rest) = (capacity / count, capacity % count);
        let shards = (0..count)
            .map(|i| {
                let cap = share + u64::from(i < rest);
                Padded(RwLock::new(Shard {
                    index: HashTable::new(),
                    entries: Vec::new(),
                    hand: 0,
                    cap: usize::try_from(cap.min(u64::from(u32::MAX))).unwrap_or(usize::MAX),
                }))
            })
            .collect();
        ClockCache {
            shards,
            hasher: RandomState::default(),
            mask: usize::try_from(count - 1).unwrap_or(0),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard<V>> {
        &self.shards[(hash >> SHARD_SHIFT) as usize & self.mask].0
    }

    /// `key`'s value, marking the entry as recently used.
    pub(crate) fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash).read();
        let &pos = shard
            .index
            .find(hash, |&p| *shard.entries[p as usize].key == *key)?;
        let entry = &shard.entries[pos as usize];
        // Written only when clear: a store on every hit would bounce the
        // entry's cache line between the cores reading it.
        if !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        Some(entry.value.clone())
    }

    /// Sets `key`'s value. When its shard is full, another entry makes
    /// room: the first the clock hand finds for which `is_dead` holds (an
    /// expired one) or that was not read since the hand last passed.
    pub(crate) fn insert(&self, key: &str, value: V, is_dead: impl Fn(&V) -> bool) {
        self.upsert(key, value, |_| false, is_dead);
    }

    /// [`ClockCache::insert`], except that a present value for which `keep`
    /// holds stays.
    pub(crate) fn upsert(
        &self,
        key: &str,
        value: V,
        keep: impl FnOnce(&V) -> bool,
        is_dead: impl Fn(&V) -> bool,
    ) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).write();
        let Shard {
            index,
            entries,
            hand,
            cap,
        } = &mut *shard;
        if let Some(&pos) = index.find(hash, |&p| *entries[p as usize].key == *key) {
            let entry = &mut entries[pos as usize];
            if !keep(&entry.value) {
                entry.value = value;
            }
            *entry.referenced.get_mut() = true;
            return;
        }
        if *cap == 0 {
            return;
        }
        // A new entry starts unreferenced: unless read before the hand
        // comes round, it goes then, so one-off keys do not outlive the
        // entries in use.
        let entry = Entry {
            key: Box::from(key),
            value,
            referenced: AtomicBool::new(false),
        };
        let pos = if entries.len() < *cap {
            if entries.len() == entries.capacity() {
                // Doubling, but never past the bound.
                let more = entries.len().max(4).min(*cap - entries.len());
                entries.reserve_exact(more);
            }
            entries.push(entry);
            entries.len() - 1
        } else {
            let victim = sweep(entries, hand, is_dead);
            let victim_hash = self.hash(&entries[victim].key);
            if let Ok(slot) = index.find_entry(victim_hash, |&p| p as usize == victim) {
                slot.remove();
            }
            entries[victim] = entry;
            victim
        };
        index.insert_unique(hash, pos as u32, |&p| self.hash(&entries[p as usize].key));
    }

    /// Forgets `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).write();
        let Shard {
            index,
            entries,
            hand,
            ..
        } = &mut *shard;
        let Ok(slot) = index.find_entry(hash, |&p| *entries[p as usize].key == *key) else {
            return;
        };
        let pos = slot.remove().0 as usize;
        entries.swap_remove(pos);
        if let Some(moved) = entries.get(pos) {
            // The last entry filled the hole: its index slot follows it.
            let from = entries.len() as u32;
            if let Some(p) = index.find_mut(self.hash(&moved.key), |&p| p == from) {
                *p = pos as u32;
            }
        }
        if *hand >= entries.len() {
            *hand = 0;
        }
    }

    /// Number of entries, exact.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().entries.len()).sum()
    }
}

/// Moves the clock hand to the next victim of a full, non-empty shard,
/// clearing the flags of the referenced entries it passes. Ends within one
/// turn and one entry: by then every flag is clear.
fn sweep<V>(entries: &mut [Entry<V>], hand: &mut usize, is_dead: impl Fn(&V) -> bool) -> usize {
    loop {
        let at = if *hand < entries.len() { *hand } else { 0 };
        *hand = at + 1;
        let entry = &mut entries[at];
        if is_dead(&entry.value) || !std::mem::take(entry.referenced.get_mut()) {
            return at;
        }
    }
}

#[cfg(test)]
impl<V> ClockCache<V> {
    fn caps(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.0.read().cap).collect()
    }

    /// Panics unless every shard is within its bound, every entry is found
    /// through the index at its own position in its own shard, and the
    /// index holds nothing else.
    fn debug_check(&self) {
        for (i, shard) in self.shards.iter().enumerate() {
            let s = shard.0.read();
            assert!(s.entries.len() <= s.cap, "shard {i} over its bound");
            assert_eq!(s.index.len(), s.entries.len(), "shard {i}");
            assert!(s.hand <= s.entries.len(), "shard {i}: hand out of range");
            for &p in s.index.iter() {
                let entry = s.entries.get(p as usize).expect("index slot past the end");
                let hash = self.hash(&entry.key);
                assert_eq!((hash >> SHARD_SHIFT) as usize & self.mask, i, "wrong shard");
                assert_eq!(
                    s.index.find(hash, |&q| q == p),
                    Some(&p),
                    "slot not under its hash"
                );
            }
            for (p, entry) in s.entries.iter().enumerate() {
                let found = s.index.find(self.hash(&entry.key), |&q| {
                    *s.entries[q as usize].key == *entry.key
                });
                assert_eq!(found, Some(&(p as u32)), "{:?} not found", entry.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn alive(_: &u64) -> bool {
        false
    }

    #[test]
    fn shard_bounds_sum_to_the_capacity() {
        for capacity in [0, 1, 3, 4095, 8192, 10_000, 100_003, 1 << 20, 123_456_789] {
            let cache = ClockCache::<u64>::new(capacity);
            let caps = cache.caps();
            assert!(caps.len().is_power_of_two() && caps.len() <= 64);
            assert_eq!(caps.iter().sum::<usize>() as u64, capacity, "{capacity}");
        }
        assert_eq!(ClockCache::<u64>::new(3).caps().len(), 1);
        assert_eq!(ClockCache::<u64>::new(10_000).caps().len(), 2);
        assert_eq!(ClockCache::<u64>::new(u64::MAX).caps().len(), 64);
    }

    #[test]
    fn the_bound_is_exact() {
        for capacity in [1u64, 3, 1000, 10_000] {
            let cache = ClockCache::new(capacity);
            for i in 0..capacity * 10 {
                cache.insert(&format!("u{i}@example.com"), i, alive);
                assert!(cache.len() as u64 <= capacity);
                if i % 7 == 0 {
                    cache.get(&format!("u{}@example.com", i / 2));
                }
            }
            assert_eq!(cache.len() as u64, capacity);
            cache.debug_check();
            let last = capacity * 10 - 1;
            assert_eq!(cache.get(&format!("u{last}@example.com")), Some(last));
        }
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = ClockCache::new(0);
        cache.insert("a", 1u64, alive);
        cache.upsert("b", 2, |_| true, alive);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.len(), 0);
        cache.invalidate("a");
        cache.debug_check();
    }

    #[test]
    fn a_read_entry_survives_one_sweep() {
        let cache = ClockCache::new(3);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            cache.insert(k, i as u64, alive);
        }
        assert_eq!(cache.get("a"), Some(0));
        cache.insert("d", 3, alive);
        assert_eq!(cache.get("b"), None, "the first unread entry goes");
        assert_eq!(cache.get("a"), Some(0));
        assert_eq!(cache.get("c"), Some(2));
        // a was spared once and its flag cleared, then read again; c was
        // read since too: the hand takes the new entry d, unread.
        cache.insert("e", 4, alive);
        assert_eq!(cache.get("d"), None);
        assert_eq!(cache.len(), 3);
        cache.debug_check();
    }

    #[test]
    fn dead_entries_go_first() {
        let cache = ClockCache::new(4);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache.insert(k, i as u64, alive);
            cache.get(k);
        }
        // All read: without the predicate the hand would clear every flag
        // and take a.
        cache.insert("e", 4, |&v| v == 2);
        assert_eq!(cache.get("c"), None);
        for k in ["a", "b", "d", "e"] {
            assert!(cache.get(k).is_some(), "{k}");
        }
        cache.debug_check();
    }

    #[test]
    fn insert_replaces_and_upsert_keeps_when_told() {
        let cache = ClockCache::new(10);
        cache.insert("a", 1u64, alive);
        cache.insert("a", 2, alive);
        assert_eq!(cache.get("a"), Some(2));
        cache.upsert("a", 3, |&old| old == 2, alive);
        assert_eq!(cache.get("a"), Some(2));
        cache.upsert("a", 4, |&old| old == 0, alive);
        assert_eq!(cache.get("a"), Some(4));
        cache.upsert("b", 5, |_| true, alive);
        assert_eq!(cache.get("b"), Some(5));
        assert_eq!(cache.len(), 2);
        cache.debug_check();
    }

    #[test]
    fn invalidate_keeps_the_index_consistent() {
        let mut rng = StdRng::seed_from_u64(7);
        let cache = ClockCache::new(20_000);
        let mut model = HashMap::new();
        for i in 0..10_000u64 {
            let key = format!("user{i}@example.com/r");
            cache.insert(&key, i, alive);
            model.insert(key, i);
        }
        let keys: Vec<String> = model.keys().cloned().collect();
        for key in &keys {
            if rng.gen_bool(0.5) {
                cache.invalidate(key);
                model.remove(key);
            }
        }
        cache.invalidate("never@example.com");
        cache.debug_check();
        assert_eq!(cache.len(), model.len());
        for key in &keys {
            assert_eq!(cache.get(key), model.get(key).copied(), "{key}");
        }
        // Full again, then evicting over the holes.
        for i in 0..30_000u64 {
            cache.insert(&format!("more{i}"), i, alive);
        }
        assert_eq!(cache.len(), 20_000);
        cache.debug_check();
    }

    #[test]
    fn concurrent_use_keeps_the_invariants() {
        let cache = ClockCache::new(10_000);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let cache = &cache;
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(t);
                    for _ in 0..50_000 {
                        let k = format!("u{}", rng.gen_range(0..30_000u64));
                        match rng.gen_range(0..10) {
                            0..=3 => cache.insert(&k, t, |&v| v == 3),
                            4 => cache.invalidate(&k),
                            5 => cache.upsert(&k, t, |&old| old < t, alive),
                            _ => {
                                cache.get(&k);
                            }
                        }
                    }
                });
            }
        });
        cache.debug_check();
        assert!(cache.len() <= 10_000);
    }
}
