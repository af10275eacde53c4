//! The datacenters this node accepts as names from remote input: the
//! store's `hosts` set as last read, the `global_distrib_addr` overrides and
//! this DC itself. A handshake's `local_host`, a frame's `target` and an
//! origin hint only create state (remote-host entries, endpoint refreshers,
//! metric series, cache entries) for these names: any other name would
//! otherwise cost memory forever, one per distinct name a peer invents.
//!
//! A DC that just joined is not in the set until the next hosts refresh;
//! [`KnownHosts::admits`] reads the store again on demand, at most once per
//! [`REREAD_AFTER`], so a flood of invented names costs one read per
//! interval and the new DC waits at most that long.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::config::Config;
use crate::store::Store;

/// Least time between two on-demand reads of `hosts`.
pub(crate) const REREAD_AFTER: Duration = Duration::from_millis(500);
pub use crate::config::valid_host_name;

pub(crate) struct KnownHosts {
    local_host: Arc<str>,
    /// Always known: the `global_distrib_addr` overrides.
    fixed: HashSet<String>,
    /// The store's `hosts` as last read.
    read: RwLock<HashSet<String>>,
    store: Store,
    /// When the store was last read on demand; held across the read so
    /// that concurrent askers share it.
    last_read: tokio::sync::Mutex<Option<Instant>>,
}

impl KnownHosts {
    pub(crate) fn new(cfg: &Config, store: Store) -> KnownHosts {
        KnownHosts {
            local_host: Arc::from(cfg.local_host.as_str()),
            fixed: cfg.global_distrib_addr.keys().cloned().collect(),
            read: RwLock::new(HashSet::new()),
            store,
            last_read: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether `name` is this DC or a known remote one. No I/O.
    pub(crate) fn contains(&self, name: &str) -> bool {
        name == &*self.local_host || self.fixed.contains(name) || self.read.read().contains(name)
    }

    /// Records the `hosts` set just read from the store.
    pub(crate) fn replace(&self, hosts: &[String]) {
        let set: HashSet<String> = hosts
            .iter()
            .filter(|h| valid_host_name(h))
            .cloned()
            .collect();
        *self.read.write() = set;
    }

    /// Whether `name` is known, reading the store's `hosts` again when it
    /// is not (a DC that just joined) and the last such read is older than
    /// [`REREAD_AFTER`]. An invalid name is refused without a read.
    pub(crate) async fn admits(&self, name: &str) -> bool {
        if self.contains(name) {
            return true;
        }
        if !valid_host_name(name) {
            return false;
        }
        let mut last = self.last_read.lock().await;
        if self.contains(name) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < REREAD_AFTER) {
            return false;
        }
        *last = Some(Instant::now());
        match self.store.hosts().await {
            Ok(list) => self.replace(&list),
            Err(e) => tracing::warn!(what = "gd_hosts_refresh_failed", error = %e),
        }
        drop(last);
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_host_name;

    #[test]
    fn dns_names_are_checked() {
        assert!(valid_host_name("dc1.example.com"));
        assert!(valid_host_name("dc1"));
        assert!(valid_host_name("dc-1.exämple.com"));
        assert!(valid_host_name(&format!("{}.com", "a".repeat(63))));
        for bad in [
            "", ".", "a..b", ".a", "a.", "a\0b", "a b", "a\nb", "a#b", "a{b}", "u@d", "a/b",
        ] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
        assert!(!valid_host_name(&format!("{}.com", "a".repeat(64))));
        let long = vec!["abcdefg"; 32].join(".");
        assert!(long.len() > 253);
        assert!(!valid_host_name(&long));
    }
}
