//! global_distrib core: the rules of global distribution of one XMPP domain
//! over several datacenters, with no knowledge of Erlang or C.
//!
//! The flow through the crate:
//!
//! ```text
//! host ──> binding ──> runtime::Runtime
//!            route(): jid ──> mapping (cache ──> store) ──> decision
//!            forward: transport outgoing pool ──> frame codec ──> TCP/TLS
//!            receive: transport listener ──> frame codec ──> origin hint ──> deliver
//!          bounce, metrics, refreshers: background tasks owned by the Runtime
//! ```
//!
//! Imports point down only (`tests/layers.rs` checks it): `runtime` →
//! `transport::listener` → `routing` (owns `bounce`) → `transport::outgoing`
//! → `transport::conn` → `transport::queue` → `envelope` → `jid`, `credits`. The
//! transport gives stanzas it cannot deliver back on a channel the router
//! drains; it never calls routing or bounce.

// Functions that cannot take a stanza hand the `Envelope` back by value in
// their `Err` so the caller can route it elsewhere; boxing it would cost an
// allocation per hand-back on the hot path.
#![allow(clippy::result_large_err)]

pub mod bounce;
mod cache;
pub mod config;
pub mod credits;
pub mod envelope;
pub mod hashing;
pub mod jid;
pub mod mapping;
pub mod metrics;
pub mod routing;
pub mod runtime;
pub mod store;
pub mod transport;

/// Version of the core crate, reported by both bindings.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
