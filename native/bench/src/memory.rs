//! B8: resident memory per cached JID and per owned session. Each run is a
//! fresh child process (`gd_bench --b8-child jids|sessions N`) so that
//! memory freed by earlier benches cannot hide the growth.

use std::process::Command;
use std::sync::Arc;

use gd_core::config::Config;
use gd_core::mapping::Mapping;
use gd_core::metrics::Metrics;
use gd_core::store::{EmbeddedBackend, Store};

use crate::dcs::{DC1, DC2, GLOBAL};
use crate::refresh::owned_sessions;
use crate::stats::rss_bytes;
use crate::BenchError;

/// What a child measures.
#[derive(Debug, Clone, Copy)]
pub enum Subject {
    /// Entries of the mapping cache (`insert_session`, one per JID).
    Jids,
    /// Owned sessions (`OwnedState::session_opened`, one resource each).
    Sessions,
}

impl Subject {
    fn arg(self) -> &'static str {
        match self {
            Subject::Jids => "jids",
            Subject::Sessions => "sessions",
        }
    }
}

/// Bytes of RSS growth per item, measured in a child process.
pub fn per_item(subject: Subject, n: u64) -> Result<f64, BenchError> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["--b8-child", subject.arg(), &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(BenchError::msg(format!(
            "B8 child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .map_err(|e| BenchError::msg(format!("B8 child printed {text:?}: {e}")))
}

/// The child's side: fills, measures, prints bytes per item.
pub fn child(subject: &str, n: u64) -> Result<(), BenchError> {
    let per = match subject {
        "jids" => cached_jids(n)?,
        "sessions" => {
            let before = rss_bytes();
            let state = owned_sessions(n);
            let grown = rss_bytes().saturating_sub(before);
            std::hint::black_box(&state);
            grown as f64 / n as f64
        }
        other => return Err(BenchError::msg(format!("unknown B8 subject {other:?}"))),
    };
    println!("{per}");
    Ok(())
}

fn cached_jids(n: u64) -> Result<f64, BenchError> {
    let mut cache = Config::minimal(GLOBAL, DC1)?.cache;
    cache.max_jids = n.saturating_mul(2);
    cache.jid_lifetime_seconds = 3600;
    let store = Store::new(Arc::new(EmbeddedBackend::new()));
    let mapping = Mapping::new(GLOBAL, DC1, &cache, store, Arc::new(Metrics::new()));
    let before = rss_bytes();
    for i in 0..n {
        mapping.insert_session(&format!("user{i}@{GLOBAL}/res"), DC2);
    }
    mapping.run_pending_tasks();
    let grown = rss_bytes().saturating_sub(before);
    if mapping.cached_jids() < n {
        return Err(BenchError::msg(format!(
            "B8: only {} of {n} JIDs stayed cached",
            mapping.cached_jids()
        )));
    }
    Ok(grown as f64 / n as f64)
}
