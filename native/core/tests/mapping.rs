//! Recipient lookup (SPEC 5) and its caches (SPEC 4), against an in-test
//! backend that answers `GET` from a map and counts the calls, so each test
//! can tell what came from the cache and what from the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gd_core::config::CacheConfig;
use gd_core::jid::Jid;
use gd_core::mapping::{Location, Mapping};
use gd_core::metrics::{names, Metrics};
use gd_core::store::{Backend, Cmd, Reply, Store, StoreError};

const GLOBAL: &str = "example.com";
const LOCAL: &str = "dc1.example.com";
const DC2: &str = "dc2.example.com";
const DC3: &str = "dc3.example.com";

/// A store that only knows `GET`, counts the GETs, and can be made to fail.
#[derive(Default)]
struct CountingBackend {
    data: Mutex<HashMap<String, String>>,
    gets: AtomicUsize,
    failing: AtomicBool,
    /// Run once inside the next GET: something that happens while a lookup
    /// waits for the store.
    during_get: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl CountingBackend {
    fn put(&self, key: &str, value: &str) {
        self.data
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Backend for CountingBackend {
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test backend is down".into()));
        }
        if let Some(hook) = self.during_get.lock().unwrap().take() {
            hook();
        }
        let data = self.data.lock().unwrap();
        Ok(cmds
            .iter()
            .map(|cmd| match cmd {
                Cmd::Get { key } => {
                    self.gets.fetch_add(1, Ordering::SeqCst);
                    data.get(key).cloned().map_or(Reply::Nil, Reply::Str)
                }
                other => Reply::Error(format!("unsupported in test: {other:?}")),
            })
            .collect())
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

fn cache_config(cache_missed: bool) -> CacheConfig {
    CacheConfig {
        cache_missed,
        domain_lifetime_seconds: 600,
        jid_lifetime_seconds: 600,
        max_jids: 10_000,
    }
}

struct Fixture {
    backend: Arc<CountingBackend>,
    metrics: Arc<Metrics>,
    mapping: Mapping,
}

fn fixture_with(cache: CacheConfig) -> Fixture {
    let backend = Arc::new(CountingBackend::default());
    let metrics = Arc::new(Metrics::new());
    let store = Store::new(backend.clone());
    let mapping = Mapping::new(GLOBAL, LOCAL, &cache, store, metrics.clone());
    Fixture {
        backend,
        metrics,
        mapping,
    }
}

fn fixture() -> Fixture {
    fixture_with(cache_config(true))
}

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn remote(host: &str) -> Location {
    Location::Remote(Arc::from(host))
}

impl Fixture {
    async fn lookup(&self, to: &str) -> Location {
        self.mapping.lookup(&jid(to)).await.unwrap()
    }
    fn cached(&self, to: &str) -> Option<Location> {
        self.mapping.lookup_cached(&jid(to))
    }
}

#[tokio::test]
async fn rule1_domain_only_local_or_global_host_is_local() {
    let f = fixture();
    // Even a (bogus) store entry for these domains does not matter.
    f.backend.put(GLOBAL, DC2);
    f.backend.put(LOCAL, DC2);
    for to in [GLOBAL, LOCAL, "example.com/admin", "DC1.Example.com."] {
        assert_eq!(f.lookup(to).await, Location::Local, "{to}");
        assert_eq!(f.cached(to), Some(Location::Local), "{to}");
    }
    assert_eq!(f.backend.gets(), 0);
}

#[tokio::test]
async fn rule2_domain_only_other_domain_uses_the_domain_mapping() {
    let f = fixture();
    f.backend.put("muc.example.com", DC2);
    f.backend.put("conference.example.com", LOCAL);
    assert_eq!(f.cached("muc.example.com"), None);
    assert_eq!(f.lookup("muc.example.com").await, remote(DC2));
    // A store value naming this DC means local.
    assert_eq!(f.lookup("conference.example.com").await, Location::Local);
    assert_eq!(f.lookup("pubsub.example.com").await, Location::Unknown);
    assert_eq!(f.backend.gets(), 3);
    // Now all three come from the domain cache.
    assert_eq!(f.cached("muc.example.com"), Some(remote(DC2)));
    assert_eq!(f.cached("conference.example.com"), Some(Location::Local));
    assert_eq!(f.cached("pubsub.example.com"), Some(Location::Unknown));
    assert_eq!(f.lookup("muc.example.com/room").await, remote(DC2));
    assert_eq!(f.backend.gets(), 3);
}

#[tokio::test]
async fn rule3_user_at_local_host_is_local() {
    let f = fixture();
    f.backend.put("alice@dc1.example.com/r", DC2);
    f.backend.put("alice@dc1.example.com", DC2);
    f.backend.put(LOCAL, DC2);
    assert_eq!(f.lookup("alice@dc1.example.com/r").await, Location::Local);
    assert_eq!(f.cached("alice@dc1.example.com"), Some(Location::Local));
    assert_eq!(f.backend.gets(), 0);
}

#[tokio::test]
async fn rule4_user_at_global_host_full_then_bare_mapping() {
    let f = fixture();
    f.backend.put("alice@example.com/phone", DC2);
    f.backend.put("alice@example.com", DC3);
    // The full JID wins over the bare one.
    assert_eq!(f.lookup("alice@example.com/phone").await, remote(DC2));
    assert_eq!(f.backend.gets(), 1);
    // Another resource falls back to the bare JID.
    assert_eq!(f.lookup("Alice@Example.com/tablet").await, remote(DC3));
    assert_eq!(f.backend.gets(), 3);
    // A bare recipient is one key.
    let f2 = fixture();
    f2.backend.put("bob@example.com", LOCAL);
    assert_eq!(f2.lookup("bob@example.com").await, Location::Local);
    assert_eq!(f2.backend.gets(), 1);
    // A user's domain mapping is not consulted for global_host users.
    let f3 = fixture();
    f3.backend.put(GLOBAL, DC2);
    assert_eq!(f3.lookup("carol@example.com/x").await, Location::Unknown);
}

#[tokio::test]
async fn rule5_user_at_other_domain_uses_the_domain_mapping() {
    let f = fixture();
    f.backend.put("muc.example.com", DC2);
    // JID keys are not consulted for other domains.
    f.backend.put("room@muc.example.com/nick", DC3);
    f.backend.put("room@muc.example.com", DC3);
    assert_eq!(f.lookup("room@muc.example.com/nick").await, remote(DC2));
    assert_eq!(f.backend.gets(), 1);
    assert_eq!(f.cached("other@muc.example.com"), Some(remote(DC2)));
    assert_eq!(f.lookup("bob@unknown.org").await, Location::Unknown);
}

#[tokio::test]
async fn rule6_nothing_found_is_unknown() {
    let f = fixture();
    assert_eq!(f.lookup("nobody@example.com/x").await, Location::Unknown);
    // Full, then bare.
    assert_eq!(f.backend.gets(), 2);
}

#[test]
fn same_user_guard() {
    let a1 = jid("alice@example.com/one");
    assert!(Mapping::is_same_user(&a1, &jid("alice@example.com/two")));
    assert!(Mapping::is_same_user(&a1, &jid("Alice@example.com")));
    assert!(!Mapping::is_same_user(&a1, &jid("bob@example.com/one")));
    assert!(!Mapping::is_same_user(
        &a1,
        &jid("alice@dc2.example.com/one")
    ));
}

#[tokio::test]
async fn cache_missed_on_caches_negative_lookups() {
    let f = fixture_with(cache_config(true));
    for _ in 0..5 {
        assert_eq!(f.lookup("ghost@example.com/r").await, Location::Unknown);
    }
    assert_eq!(f.backend.gets(), 2);
    assert_eq!(f.cached("ghost@example.com/r"), Some(Location::Unknown));
    // A login writes through the cache: the cached miss is replaced.
    f.mapping.insert_session("ghost@example.com/r", DC2);
    assert_eq!(f.lookup("ghost@example.com/r").await, remote(DC2));
    assert_eq!(f.backend.gets(), 2);
}

#[tokio::test]
async fn cache_missed_off_asks_the_store_every_time() {
    let f = fixture_with(cache_config(false));
    for _ in 0..5 {
        assert_eq!(f.lookup("ghost@example.com/r").await, Location::Unknown);
    }
    assert_eq!(f.backend.gets(), 10);
    assert_eq!(f.cached("ghost@example.com/r"), None);
    // Hits are still cached.
    f.backend.put("alice@example.com", DC2);
    assert_eq!(f.lookup("alice@example.com").await, remote(DC2));
    assert_eq!(f.lookup("alice@example.com").await, remote(DC2));
    assert_eq!(f.backend.gets(), 11);
    assert_eq!(f.cached("alice@example.com"), Some(remote(DC2)));
}

#[tokio::test]
async fn max_jids_bounds_the_jid_cache() {
    let f = fixture_with(CacheConfig {
        max_jids: 100,
        ..cache_config(true)
    });
    for i in 0..2_000 {
        f.mapping
            .insert_session(&format!("u{i}@example.com/r"), DC2);
    }
    f.mapping.run_pending_tasks();
    let n = f.mapping.cached_jids();
    assert!(n > 0 && n <= 100, "{n} entries cached, bound 100");
}

#[tokio::test]
async fn entries_expire_after_their_lifetime() {
    let f = fixture_with(CacheConfig {
        jid_lifetime_seconds: 1,
        domain_lifetime_seconds: 1,
        ..cache_config(true)
    });
    f.mapping.insert_session("alice@example.com/r", DC2);
    f.mapping.insert_domain("muc.example.com", DC2);
    assert_eq!(f.cached("alice@example.com/r"), Some(remote(DC2)));
    assert_eq!(f.cached("muc.example.com"), Some(remote(DC2)));
    let expired = support::wait_until(Duration::from_secs(10), || {
        f.cached("alice@example.com/r").is_none() && f.cached("muc.example.com").is_none()
    })
    .await;
    assert!(expired, "cache entries outlived their 1 s lifetime");
    // Then the store is asked again.
    f.backend.put("alice@example.com/r", DC3);
    assert_eq!(f.lookup("alice@example.com/r").await, remote(DC3));
    assert_eq!(f.backend.gets(), 1);
}

#[tokio::test]
async fn sessions_and_domains_written_and_removed_through_the_cache() {
    let f = fixture();
    f.backend.put("alice@example.com/r", DC3);
    f.mapping.insert_session("alice@example.com/r", DC2);
    assert_eq!(f.lookup("alice@example.com/r").await, remote(DC2));
    assert_eq!(f.backend.gets(), 0);
    // Bounce clears the recipient so the store is re-read.
    f.mapping.remove_jid("alice@example.com/r");
    assert_eq!(f.cached("alice@example.com/r"), None);
    assert_eq!(f.lookup("alice@example.com/r").await, remote(DC3));
    assert_eq!(f.backend.gets(), 1);

    f.mapping.insert_domain("muc.example.com", LOCAL);
    assert_eq!(f.lookup("room@muc.example.com").await, Location::Local);
    f.mapping.remove_domain("muc.example.com");
    assert_eq!(f.cached("room@muc.example.com"), None);
    assert_eq!(f.lookup("room@muc.example.com").await, Location::Unknown);
    assert_eq!(f.backend.gets(), 2);
}

#[tokio::test]
async fn a_session_opened_during_a_lookup_is_not_overwritten() {
    for stored in [None, Some(DC3)] {
        let f = fixture();
        if let Some(host) = stored {
            f.backend.put("alice@example.com", host);
        }
        let mapping = f.mapping.clone();
        *f.backend.during_get.lock().unwrap() = Some(Box::new(move || {
            mapping.insert_session("alice@example.com", LOCAL);
        }));
        // This lookup returns what the store said...
        let first = f.lookup("alice@example.com").await;
        assert_eq!(first, stored.map_or(Location::Unknown, remote));
        // ...but the cache keeps the newer session.
        assert_eq!(f.cached("alice@example.com"), Some(Location::Local));
    }
}

#[tokio::test]
async fn origin_hint_only_for_unknown_senders() {
    let f = fixture();
    // Unknown sender: full and bare learn the origin, without store I/O.
    assert!(f
        .mapping
        .insert_origin_hint(&jid("alice@example.com/r"), DC2));
    assert_eq!(f.cached("alice@example.com/r"), Some(remote(DC2)));
    assert_eq!(f.cached("alice@example.com"), Some(remote(DC2)));
    // Known sender: the mapping stays.
    assert!(!f
        .mapping
        .insert_origin_hint(&jid("alice@example.com/r"), DC3));
    assert_eq!(f.cached("alice@example.com/r"), Some(remote(DC2)));
    // A new session of a user whose bare JID is known: only the full JID
    // is hinted.
    assert!(f
        .mapping
        .insert_origin_hint(&jid("alice@example.com/other"), DC3));
    assert_eq!(f.cached("alice@example.com/other"), Some(remote(DC3)));
    assert_eq!(f.cached("alice@example.com"), Some(remote(DC2)));
    // A cached miss is "unknown": the hint fills it (scenario 6).
    assert_eq!(f.lookup("bob@example.com/r").await, Location::Unknown);
    assert!(f.mapping.insert_origin_hint(&jid("bob@example.com/r"), DC2));
    assert_eq!(f.lookup("bob@example.com/r").await, remote(DC2));
    // Senders looked up by domain, and hints naming this DC, are ignored.
    assert!(!f.mapping.insert_origin_hint(&jid("carol@other.org/r"), DC2));
    assert!(!f.mapping.insert_origin_hint(&jid("muc.example.com"), DC2));
    assert!(!f
        .mapping
        .insert_origin_hint(&jid("dave@example.com/r"), LOCAL));
    assert_eq!(f.cached("dave@example.com/r"), None);
    assert_eq!(f.backend.gets(), 2);
}

#[tokio::test]
async fn store_errors_propagate_and_are_not_cached() {
    let f = fixture();
    f.backend.put("alice@example.com", DC2);
    f.backend.put("muc.example.com", DC2);
    f.backend.failing.store(true, Ordering::SeqCst);
    let err = f.mapping.lookup(&jid("alice@example.com/r")).await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    let err = f.mapping.lookup(&jid("muc.example.com")).await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    // Rules that need no store still answer.
    assert_eq!(f.lookup("bob@dc1.example.com").await, Location::Local);
    assert_eq!(f.cached("alice@example.com/r"), None);
    f.backend.failing.store(false, Ordering::SeqCst);
    assert_eq!(f.lookup("alice@example.com/r").await, remote(DC2));
}

#[tokio::test]
async fn lookups_are_counted_in_metrics() {
    let f = fixture();
    f.backend.put("alice@example.com", DC2);
    f.lookup("alice@example.com/r").await; // store: full + bare
    f.lookup("alice@example.com/r").await; // cache
    f.lookup(LOCAL).await; // rule 1
    assert_eq!(f.cached("alice@example.com/r"), Some(remote(DC2))); // cache
    assert_eq!(f.cached("zed@example.com/r"), None); // not an answer
    f.lookup("zed@example.com/r").await; // store
    let snap = f.metrics.snapshot();
    assert_eq!(snap.counter(names::MAPPING_FETCHES), Some(5));
    assert_eq!(snap.counter(names::MAPPING_CACHE_MISSES), Some(2));
    assert_eq!(snap.histogram(names::MAPPING_FETCH_TIME).unwrap().count, 5);
    assert_eq!(f.backend.gets(), 4);
}
