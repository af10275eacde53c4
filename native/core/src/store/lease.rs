//! Lease mode (`redis.ownership = "lease"`, docs/REDIS.md "Lease mode").
//!
//! A node's stamp in `<local_host>#{nodes}` is its lease: refreshing it (and
//! the per-node sets) is all a pass writes, whatever the number of
//! sessions. Session keys hold `<local_host>{<node>}` ([`keys::lease_value`])
//! with a long safety TTL, are written at login and deleted at logout, and
//! are listed in the node's `<local_host>#<node>#{sessions}` set so that a
//! survivor can delete them when the node dies.
//!
//! Two halves live here: the writes ([`Store`] methods: open, close,
//! re-write after a lost lease, sweep a node's sessions) and the lookups'
//! view of the leases ([`Leases`]: each DC's `#{nodes}` hash read at most
//! once per `lease_check_interval`, so a lookup costs no extra round trip).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use super::{
    check_replies, count_cas, keys, ttl_secs, Cmd, NodeId, RefreshCount, Reply, Store, StoreError,
    BATCH,
};

/// What [`Store::sweep_sessions`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Members of the node's `{sessions}` set read.
    pub scanned: u64,
    /// Session keys deleted (those still holding the node's value).
    pub deleted: u64,
    /// The node's lease came back during the sweep: it stopped there.
    pub aborted: bool,
}

/// Whether the sweep of a node's sessions may go on: for a dead node, only
/// while it stays out of `#{nodes}`; for this node's own reconciliation,
/// always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepGuard {
    /// The node was pruned as dead: stop if its field reappears.
    WhileAbsent,
    /// This node cleaning its own leftovers.
    Own,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// A user logged in here (lease mode): `SET k <local_host>{<node>} EX
    /// safety_ttl` per key (newest login wins), and the keys added to the
    /// node's `{sessions}` set (whose TTL the same pipeline sets).
    pub async fn open_sessions_lease(
        &self,
        keys: &[String],
        me: &NodeId,
        safety_ttl: Duration,
    ) -> Result<(), StoreError> {
        let value = keys::lease_value(&me.local_host, &me.node);
        for chunk in keys.chunks(BATCH) {
            let mut cmds: Vec<Cmd> = chunk
                .iter()
                .map(|k| Cmd::SetEx {
                    key: k.clone(),
                    value: value.clone(),
                    ttl_secs: ttl_secs(safety_ttl),
                })
                .collect();
            push_set_adds(&mut cmds, me, chunk, safety_ttl);
            check_replies(&self.exec(&cmds).await?)?;
        }
        Ok(())
    }

    /// Re-writes keys only where they are still this node's or gone (the
    /// refresh script with the node's value) and lists them in its set
    /// again: after the node lost its lease (a store that lost its data, a
    /// pause longer than `expire_after`), never otherwise.
    pub async fn rewrite_sessions_lease(
        &self,
        keys: &[String],
        me: &NodeId,
        safety_ttl: Duration,
    ) -> Result<RefreshCount, StoreError> {
        let value = keys::lease_value(&me.local_host, &me.node);
        let mut count = RefreshCount::default();
        for chunk in keys.chunks(BATCH) {
            let mut cmds: Vec<Cmd> = chunk
                .iter()
                .map(|k| Cmd::RefreshIfOurs {
                    key: k.clone(),
                    value: value.clone(),
                    ttl_secs: ttl_secs(safety_ttl),
                })
                .collect();
            push_set_adds(&mut cmds, me, chunk, safety_ttl);
            let replies = self.exec(&cmds).await?;
            check_replies(&replies)?;
            let c = count_cas(chunk, &replies)?;
            count.written += c.written;
            count.foreign += c.foreign;
        }
        Ok(count)
    }

    /// A session closed here (lease mode): delete each key where it still
    /// holds this node's value, and drop it from the node's set. Returns
    /// how many keys were deleted.
    pub async fn delete_sessions_lease(
        &self,
        keys: &[String],
        me: &NodeId,
    ) -> Result<u64, StoreError> {
        let value = keys::lease_value(&me.local_host, &me.node);
        let mut deleted = 0;
        for chunk in keys.chunks(BATCH) {
            let mut cmds: Vec<Cmd> = chunk
                .iter()
                .map(|k| Cmd::DeleteIfOurs {
                    key: k.clone(),
                    value: value.clone(),
                })
                .collect();
            cmds.push(Cmd::SRem {
                key: keys::sessions(&me.local_host, &me.node),
                members: chunk.to_vec(),
            });
            let replies = self.exec(&cmds).await?;
            check_replies(&replies)?;
            deleted += count_cas(chunk, &replies)?.written;
        }
        Ok(deleted)
    }

    /// Deletes the session keys listed in `host`/`node`'s `{sessions}` set
    /// that still hold that node's value, except those `keep` names, in
    /// batches of [`BATCH`]: `SSCAN` (with `HGETALL <host>#{nodes}` in the
    /// same pipeline for [`SweepGuard::WhileAbsent`]), then the delete
    /// script per key and one `SREM`. A dead node's set is deleted at the
    /// end. Every command names one key: proxy-safe, no `KEYS`/`SCAN`.
    pub async fn sweep_sessions(
        &self,
        host: &str,
        node: &str,
        guard: SweepGuard,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Sweep, StoreError> {
        let set = keys::sessions(host, node);
        let value = keys::lease_value(host, node);
        let mut cursor = "0".to_owned();
        let mut sweep = Sweep::default();
        loop {
            let mut cmds = vec![Cmd::SScan {
                key: set.clone(),
                cursor: cursor.clone(),
                count: BATCH as u32,
            }];
            if guard == SweepGuard::WhileAbsent {
                cmds.push(Cmd::HGetAll {
                    key: keys::nodes(host),
                });
            }
            let replies = self.exec(&cmds).await?;
            check_replies(&replies)?;
            if let Some(Reply::Pairs(nodes)) = replies.get(1) {
                if nodes.iter().any(|(n, _)| n == node) {
                    sweep.aborted = true;
                    return Ok(sweep);
                }
            }
            let (next, members) = match replies.into_iter().next() {
                Some(Reply::Scan { cursor, members }) => (cursor, members),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "SSCAN {set}: unexpected reply {other:?}"
                    )))
                }
            };
            sweep.scanned += members.len() as u64;
            let gone: Vec<String> = members.into_iter().filter(|m| !keep(m)).collect();
            if !gone.is_empty() {
                let mut cmds: Vec<Cmd> = gone
                    .iter()
                    .map(|k| Cmd::DeleteIfOurs {
                        key: k.clone(),
                        value: value.clone(),
                    })
                    .collect();
                cmds.push(Cmd::SRem {
                    key: set.clone(),
                    members: gone.clone(),
                });
                let replies = self.exec(&cmds).await?;
                check_replies(&replies)?;
                sweep.deleted += count_cas(&gone, &replies)?.written;
            }
            cursor = next;
            if cursor == "0" {
                break;
            }
        }
        if guard == SweepGuard::WhileAbsent {
            check_replies(&self.exec(&[Cmd::Del { key: set }]).await?)?;
        }
        Ok(sweep)
    }
}

fn push_set_adds(cmds: &mut Vec<Cmd>, me: &NodeId, members: &[String], ttl: Duration) {
    let set = keys::sessions(&me.local_host, &me.node);
    cmds.push(Cmd::SAdd {
        key: set.clone(),
        members: members.to_vec(),
    });
    cmds.push(Cmd::Expire {
        key: set,
        ttl_secs: ttl_secs(ttl),
    });
}

/// A node's lease as a lookup sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Stamped within `expire_after`.
    Live,
    /// Stamped, but longer ago than `expire_after`: the node is dead.
    Lapsed,
    /// Not in `<host>#{nodes}`: pruned as dead, or evicted.
    Absent,
}

/// An absent node is believed absent only through a view at most this old:
/// a node that has just started stamps itself before writing any session,
/// so a view this recent that lacks it is the truth (docs/REDIS.md).
const ABSENT_RECHECK_MS: u64 = 100;

/// One DC's `#{nodes}` hash as last read.
struct View {
    stamps: HashMap<String, u64>,
    read_at: Instant,
}

/// The leases of every DC a lookup met a lease-mode value of, each read with
/// one `HGETALL <host>#{nodes}` at most once per `interval` (and an absent
/// node re-checked after [`ABSENT_RECHECK_MS`]): O(DCs) store reads per
/// interval, whatever the lookups.
pub struct Leases {
    store: Store,
    expire_after_secs: u64,
    interval_ms: u64,
    views: RwLock<HashMap<Box<str>, Arc<View>>>,
    /// Hosts whose view is being read: others use the old view meanwhile.
    reading: Mutex<HashSet<Box<str>>>,
}

impl Leases {
    pub fn new(store: Store, expire_after: Duration, interval: Duration) -> Leases {
        Leases {
            store,
            expire_after_secs: expire_after.as_secs(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            views: RwLock::new(HashMap::new()),
            reading: Mutex::new(HashSet::new()),
        }
    }

    fn state_in(&self, view: &View, node: &str, now_unix: u64) -> LeaseState {
        match view.stamps.get(node) {
            None => LeaseState::Absent,
            Some(s) if now_unix.saturating_sub(*s) > self.expire_after_secs => LeaseState::Lapsed,
            Some(_) => LeaseState::Live,
        }
    }

    /// The state from the view in memory, if it is recent enough to tell;
    /// `None`: [`Leases::state`] must read the store.
    pub fn state_cached(&self, host: &str, node: &str) -> Option<LeaseState> {
        let view = self.views.read().get(host).cloned()?;
        let age = u64::try_from(view.read_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let state = self.state_in(&view, node, unix_now());
        let fresh = match state {
            LeaseState::Absent => age < ABSENT_RECHECK_MS.min(self.interval_ms),
            _ => age < self.interval_ms,
        };
        (fresh || self.reading.lock().contains(host)).then_some(state)
    }

    /// The state of `node`'s lease at `host`, reading `<host>#{nodes}` when
    /// the view in memory is too old. A failed read falls back on the old
    /// view when there is one.
    pub async fn state(&self, host: &str, node: &str) -> Result<LeaseState, StoreError> {
        if let Some(s) = self.state_cached(host, node) {
            return Ok(s);
        }
        self.reading.lock().insert(host.into());
        let read = self.store.node_stamps(host).await;
        self.reading.lock().remove(host);
        let view = match read {
            Ok(stamps) => {
                let view = Arc::new(View {
                    stamps: stamps
                        .into_iter()
                        .filter_map(|(n, s)| Some((n, s?)))
                        .collect(),
                    read_at: Instant::now(),
                });
                self.views.write().insert(host.into(), view.clone());
                view
            }
            Err(e) => match self.views.read().get(host).cloned() {
                Some(old) => old,
                None => return Err(e),
            },
        };
        Ok(self.state_in(&view, node, unix_now()))
    }

    /// Forgets every view (tests; a lookup after this reads the store).
    pub fn forget(&self) {
        self.views.write().clear();
    }
}
