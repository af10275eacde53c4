//! Utilities shared by the integration tests: real servers started on free
//! ports, certificates generated per test, a fault-injecting TCP proxy.
//! Each test binary uses a different subset, hence `dead_code` is allowed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod dc;
pub mod faultproxy;
pub mod redis;
pub mod redis_cluster;
pub mod redis_variants;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
/// Tests wait for conditions, never for a fixed time.
pub async fn wait_until<F: FnMut() -> bool>(deadline: Duration, mut cond: F) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Blocking twin of [`wait_until`] for tests that drive runtimes from a
/// plain thread.
pub fn wait_for<F: FnMut() -> bool>(deadline: Duration, mut cond: F) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads (and drops) until the peer closes `s`; true if it did within
/// `within` (a reset counts as closed).
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
