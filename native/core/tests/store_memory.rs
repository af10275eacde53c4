#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Memory cost of the owned-session state: with ~1M local sessions per node
//! in mind, one session must cost well under 200 bytes. Measured with a
//! counting global allocator (this test binary only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use gd_core::store::OwnedState;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_session_costs_well_under_200_bytes() {
    const N: usize = 200_000;
    let state = OwnedState::new();
    // Pre-build the inputs so that only the state's allocations are counted.
    let jids: Vec<(String, String)> = (0..N)
        .map(|i| {
            let bare = format!("user{i:07}@example.com");
            (format!("{bare}/mobile-{:04x}", i % 65536), bare)
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    for (full, bare) in &jids {
        drop(state.session_opened(full, bare));
    }
    let per_session = (LIVE.load(Ordering::Relaxed) - before) as usize / N;
    println!("owned state: {per_session} bytes per session (requested sizes)");
    assert!(per_session < 150, "{per_session} bytes per session");
    assert_eq!(state.session_key_count(), 2 * N as u64);
    for (full, bare) in &jids {
        assert_eq!(state.session_closed(full, bare).len(), 2);
    }
    assert_eq!(state.session_key_count(), 0);
}
