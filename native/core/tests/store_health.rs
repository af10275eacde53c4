//! Store health (issue 12, item 5) against a real `redis-server` frozen with
//! SIGSTOP: `session_opened` says when its write is pending, the health
//! check says `down` and the errors are counted by kind, the refresh lag
//! grows; after SIGCONT the pending opens are written and the health is
//! `ok` again, every gauge back at zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use gd_core::runtime::SessionWrite;
use gd_core::store::redis::RedisBackend;
use gd_core::store::{Backend, ErrorKind, HealthReport, HealthStatus};
use support::dc::{self, jid};
use support::redis::RedisServer;
use support::wait_for;

const WAIT: Duration = Duration::from_secs(15);
const P: &str = "global.mod_global_distrib.";

fn health(dc: &dc::Dc) -> HealthReport {
    dc.rt.block_on(dc.rt.store_health())
}

fn gauge(dc: &dc::Dc, name: &str) -> i64 {
    dc.rt
        .metrics()
        .snapshot()
        .gauge(&format!("{P}{name}"))
        .unwrap_or_else(|| panic!("gauge {name} registered"))
}

fn counter(dc: &dc::Dc, name: &str) -> u64 {
    dc.rt
        .metrics()
        .snapshot()
        .counter(&format!("{P}{name}"))
        .unwrap_or_else(|| panic!("counter {name} registered"))
}

#[test]
fn a_stalled_redis_shows_in_health_and_metrics_then_recovers() {
    let redis = RedisServer::start();
    let mut cfg = dc::redis_config(1, &redis.url());
    cfg.redis.timeout_ms = 300;
    cfg.redis.expire_after = 10;
    cfg.redis.refresh_after = 1;
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(&cfg.redis).unwrap());
    let dc1 = dc::start(cfg, backend);

    let opened = dc1
        .rt
        .block_on(dc1.rt.session_opened(&jid("alice@example.com/a")));
    assert_eq!(opened, SessionWrite::Confirmed);
    let h = health(&dc1);
    assert_eq!(h.status, HealthStatus::Ok, "{h:?}");
    assert_eq!(h.backend, "redis");
    assert_eq!(h.pending_opens, 0);
    assert!(h.last_refresh_age_secs.is_some(), "{h:?}");
    assert!(h.errors.values().all(|n| *n == 0), "{h:?}");
    for kind in ErrorKind::ALL {
        assert_eq!(counter(&dc1, &format!("store.errors.{}", kind.as_str())), 0);
    }

    redis.pause();
    let opened = dc1
        .rt
        .block_on(dc1.rt.session_opened(&jid("carol@example.com/c")));
    assert_eq!(opened, SessionWrite::Pending);
    let h = health(&dc1);
    eprintln!("Redis stalled: {}", h.to_json());
    assert_eq!(h.status, HealthStatus::Down, "{h:?}");
    assert!(!h.reachable);
    assert_eq!(h.pending_opens, 2, "carol's full and bare JID");
    assert!(h.errors["timeout"] >= 1, "{h:?}");
    let last = h.last_error.expect("a last error");
    assert!(
        matches!(last.kind, ErrorKind::Timeout | ErrorKind::Down),
        "{last:?}"
    );
    assert!(counter(&dc1, "store.errors.timeout") >= 1);
    assert_eq!(gauge(&dc1, "store.pending_opens"), 2);
    // Passes fail while it is stalled: keys are left unrefreshed and the
    // refresh falls behind refresh_after (1 s).
    assert!(wait_for(WAIT, || gauge(&dc1, "store.refresh.lag") >= 1
        && gauge(&dc1, "store.refresh.unrefreshed") > 0));
    let h = health(&dc1);
    assert!(h.refresh_lag_secs >= 1, "{h:?}");
    assert!(counter(&dc1, "store.errors.down") >= 1, "{h:?}");

    redis.resume();
    assert!(
        wait_for(WAIT, || {
            let h = health(&dc1);
            h.status == HealthStatus::Ok && h.pending_opens == 0
        }),
        "{:?}",
        health(&dc1)
    );
    assert!(wait_for(WAIT, || gauge(&dc1, "store.pending_opens") == 0
        && gauge(&dc1, "store.refresh.lag") == 0
        && gauge(&dc1, "store.refresh.unrefreshed") == 0));
    let mut raw = redis.client();
    assert_eq!(
        raw.cmd(&["GET", "carol@example.com/c"]).unwrap().bulk(),
        Some(dc::host(1))
    );
    let passes = dc1
        .rt
        .metrics()
        .snapshot()
        .histogram(&format!("{P}store.refresh.pass_time"))
        .map(|h| h.count)
        .unwrap();
    assert!(passes >= 2, "{passes}");
    // The errors stay counted; the last one is still reported, with its age.
    let h = health(&dc1);
    assert!(h.errors["timeout"] >= 1);
    assert!(h.last_error.is_some());
    assert_eq!(
        dc1.rt
            .block_on(dc1.rt.session_opened(&jid("dave@example.com/d"))),
        SessionWrite::Confirmed
    );
}

#[test]
fn the_embedded_store_is_always_healthy() {
    let dc1 = dc::start(
        dc::config(1),
        Arc::new(gd_core::store::EmbeddedBackend::new()),
    );
    assert_eq!(
        dc1.rt
            .block_on(dc1.rt.session_opened(&jid("alice@example.com/a"))),
        SessionWrite::Confirmed
    );
    let h = health(&dc1);
    assert_eq!(h.status, HealthStatus::Ok);
    assert_eq!(h.backend, "embedded");
    let json: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["pending_opens"], 0);
    assert_eq!(json["last_error"], serde_json::Value::Null);
    assert_eq!(json["errors"]["timeout"], 0);
}
