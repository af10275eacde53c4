//! The Runtime: one node of one datacenter, owning its tokio runtime, store,
//! mapping, metrics and background tasks.
