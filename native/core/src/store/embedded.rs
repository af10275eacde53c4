//! In-process backend with Redis' semantics, expiry included, for
//! one-process deployments, demos and tests (SPEC 3: "the `embedded`
//! backend implements the same trait with the same expiry semantics").
//!
//! Keys live in a fixed number of mutex-protected shards so that concurrent
//! callers rarely contend. Expired keys are invisible at once (checked on
//! every access) and are reclaimed by a background sweeper thread that walks
//! one shard per tick, so memory stays bounded even for keys nobody reads
//! again. The sweeper holds only a weak reference and stops when the last
//! clone of the backend is dropped.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Backend, Cmd, Reply, StoreError};

const SHARDS: usize = 16;
/// One shard is swept per tick: a full pass every `SHARDS * SWEEP_TICK`.
const SWEEP_TICK: Duration = Duration::from_millis(100);
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

enum Value {
    Str(String),
    Set(HashSet<String>),
    Hash(HashMap<String, String>),
}

struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        !matches!(self.expires_at, Some(t) if t <= now)
    }
}

type Shard = HashMap<String, Entry>;

struct Inner {
    shards: Vec<Mutex<Shard>>,
    /// Dropping the sender (with the last `Inner`) wakes and ends the sweeper.
    _stop_sweeper: mpsc::Sender<()>,
}

/// The embedded store. Clones share the same data.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

impl Default for EmbeddedBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedBackend {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            _stop_sweeper: tx,
        });
        let weak = Arc::downgrade(&inner);
        // A plain thread, not a tokio task: the backend may be built outside
        // a runtime (bindings, unit tests) and must still reclaim memory.
        let spawned = std::thread::Builder::new()
            .name("gd-embedded-sweep".into())
            .spawn(move || sweeper(weak, rx));
        if let Err(e) = spawned {
            // Still correct (expired keys are invisible), only unbounded.
            tracing::warn!(what = "embedded_sweeper_not_started", error = %e);
        }
        EmbeddedBackend { inner }
    }

    /// Removes every expired key now; returns how many were removed.
    pub fn sweep(&self) -> usize {
        (0..SHARDS).map(|i| sweep_shard(&self.inner, i)).sum()
    }

    /// Number of keys held, expired-but-not-yet-swept ones included.
    pub fn stored_keys(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let i = crate::hashing::index_of(key, SHARDS);
        &self.inner.shards[i]
    }

    fn run(&self, cmd: &Cmd, now: Instant) -> Reply {
        let key = cmd.key();
        let mut shard = self.shard(key).lock();
        if shard.get(key).is_some_and(|e| !e.live(now)) {
            shard.remove(key);
        }
        apply(&mut shard, cmd, now)
    }
}

fn sweeper(weak: Weak<Inner>, stop: mpsc::Receiver<()>) {
    let mut next = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(SWEEP_TICK) {
        let Some(inner) = weak.upgrade() else { return };
        sweep_shard(&inner, next);
        next = (next + 1) % SHARDS;
    }
}

fn sweep_shard(inner: &Inner, i: usize) -> usize {
    let now = Instant::now();
    let mut shard = inner.shards[i].lock();
    let before = shard.len();
    shard.retain(|_, e| e.live(now));
    before - shard.len()
}

fn deadline(now: Instant, ttl_secs: u64) -> Option<Instant> {
    now.checked_add(Duration::from_secs(ttl_secs))
}

fn set_str(shard: &mut Shard, key: &str, value: &str, ttl_secs: u64, now: Instant) -> Reply {
    if ttl_secs == 0 {
        return Reply::Error("ERR invalid expire time in 'set' command".into());
    }
    let entry = Entry {
        value: Value::Str(value.to_owned()),
        expires_at: deadline(now, ttl_secs),
    };
    shard.insert(key.to_owned(), entry);
    Reply::Ok
}

/// Applies one command to a shard whose entry for the key, if any, is live.
fn apply(shard: &mut Shard, cmd: &Cmd, now: Instant) -> Reply {
    match cmd {
        Cmd::Get { key } => match shard.get(key).map(|e| &e.value) {
            None => Reply::Nil,
            Some(Value::Str(v)) => Reply::Str(v.clone()),
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::SetEx {
            key,
            value,
            ttl_secs,
        } => set_str(shard, key, value, *ttl_secs, now),
        Cmd::RefreshIfOurs {
            key,
            value,
            ttl_secs,
        } => match shard.get(key).map(|e| &e.value) {
            None => bool_reply(set_str(shard, key, value, *ttl_secs, now) == Reply::Ok),
            Some(Value::Str(v)) if v == value => {
                bool_reply(set_str(shard, key, value, *ttl_secs, now) == Reply::Ok)
            }
            Some(Value::Str(_)) => Reply::Int(0),
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::DeleteIfOurs { key, value } => match shard.get(key).map(|e| &e.value) {
            Some(Value::Str(v)) if v == value => bool_reply(shard.remove(key).is_some()),
            Some(Value::Str(_)) | None => Reply::Int(0),
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::Del { key } => bool_reply(shard.remove(key).is_some()),
        Cmd::Expire { key, ttl_secs } => match shard.get_mut(key) {
            None => Reply::Int(0),
            // Like Redis: a non-positive TTL deletes the key.
            Some(_) if *ttl_secs == 0 => bool_reply(shard.remove(key).is_some()),
            Some(e) => {
                e.expires_at = deadline(now, *ttl_secs);
                Reply::Int(1)
            }
        },
        Cmd::SAdd { key, members } => sadd(shard, key, members),
        Cmd::SRem { key, members } => srem(shard, key, members),
        Cmd::SMembers { key } => match shard.get(key).map(|e| &e.value) {
            None => Reply::List(Vec::new()),
            Some(Value::Set(s)) => Reply::List(s.iter().cloned().collect()),
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::HSet { key, field, value } => hset(shard, key, field, value),
        Cmd::HDel { key, field } => hdel(shard, key, field),
        Cmd::HGetAll { key } => match shard.get(key).map(|e| &e.value) {
            None => Reply::Pairs(Vec::new()),
            Some(Value::Hash(h)) => {
                Reply::Pairs(h.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
            }
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::SScan { key, cursor, count } => match shard.get(key).map(|e| &e.value) {
            None => Reply::Scan {
                cursor: "0".into(),
                members: Vec::new(),
            },
            Some(Value::Set(s)) => sscan(s, cursor, *count),
            Some(_) => Reply::Error(WRONGTYPE.into()),
        },
        Cmd::Ttl { key } => match shard.get(key).map(|e| e.expires_at) {
            None => Reply::Int(-2),
            Some(None) => Reply::Int(-1),
            // Redis rounds to the nearest second.
            Some(Some(t)) => {
                let left = t.saturating_duration_since(now).as_millis() + 500;
                Reply::Int(i64::try_from(left / 1000).unwrap_or(i64::MAX))
            }
        },
    }
}

fn bool_reply(b: bool) -> Reply {
    Reply::Int(i64::from(b))
}

fn empty_args(cmd: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{cmd}' command"))
}

fn sadd(shard: &mut Shard, key: &str, members: &[String]) -> Reply {
    if members.is_empty() {
        return empty_args("sadd");
    }
    // A new key has no TTL; an existing one keeps its TTL (Redis semantics).
    let entry = shard.entry(key.to_owned()).or_insert_with(|| Entry {
        value: Value::Set(HashSet::new()),
        expires_at: None,
    });
    let Value::Set(set) = &mut entry.value else {
        return Reply::Error(WRONGTYPE.into());
    };
    let added = members.iter().filter(|m| set.insert((*m).clone())).count();
    Reply::Int(added as i64)
}

fn srem(shard: &mut Shard, key: &str, members: &[String]) -> Reply {
    if members.is_empty() {
        return empty_args("srem");
    }
    let MapEntry::Occupied(mut occ) = shard.entry(key.to_owned()) else {
        return Reply::Int(0);
    };
    let Value::Set(set) = &mut occ.get_mut().value else {
        return Reply::Error(WRONGTYPE.into());
    };
    let removed = members.iter().filter(|m| set.remove(m.as_str())).count();
    if set.is_empty() {
        occ.remove();
    }
    Reply::Int(removed as i64)
}

/// One batch of members in sorted order after the cursor (`>` + the last
/// member returned): every member present throughout the scan is returned
/// exactly once, as Redis promises at least once.
fn sscan(set: &HashSet<String>, cursor: &str, count: u32) -> Reply {
    let after = cursor.strip_prefix('>');
    let mut next: Vec<&String> = set
        .iter()
        .filter(|m| after.is_none_or(|a| m.as_str() > a))
        .collect();
    let count = (count as usize).max(1);
    let more = next.len() > count;
    if more {
        next.select_nth_unstable(count - 1);
        next.truncate(count);
    }
    next.sort();
    let cursor = match next.last() {
        Some(last) if more => format!(">{last}"),
        _ => "0".to_owned(),
    };
    Reply::Scan {
        cursor,
        members: next.into_iter().cloned().collect(),
    }
}

fn hset(shard: &mut Shard, key: &str, field: &str, value: &str) -> Reply {
    let entry = shard.entry(key.to_owned()).or_insert_with(|| Entry {
        value: Value::Hash(HashMap::new()),
        expires_at: None,
    });
    let Value::Hash(hash) = &mut entry.value else {
        return Reply::Error(WRONGTYPE.into());
    };
    bool_reply(hash.insert(field.to_owned(), value.to_owned()).is_none())
}

fn hdel(shard: &mut Shard, key: &str, field: &str) -> Reply {
    let MapEntry::Occupied(mut occ) = shard.entry(key.to_owned()) else {
        return Reply::Int(0);
    };
    let Value::Hash(hash) = &mut occ.get_mut().value else {
        return Reply::Error(WRONGTYPE.into());
    };
    let removed = hash.remove(field).is_some();
    if hash.is_empty() {
        occ.remove();
    }
    bool_reply(removed)
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        let now = Instant::now();
        Ok(cmds.iter().map(|c| self.run(c, now)).collect())
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

impl EmbeddedBackend {
    /// Remaining time to live of `key` (`None`: absent or no TTL), for tests
    /// and diagnostics, like Redis' `PTTL`.
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let shard = self.shard(key).lock();
        let e = shard.get(key).filter(|e| e.live(now))?;
        e.expires_at.map(|t| t.saturating_duration_since(now))
    }
}
