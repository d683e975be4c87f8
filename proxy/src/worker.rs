//! Which serving thread the current code runs on.
//!
//! Slot 0 is the caller's runtime (in-process use: tests, the demo); slots
//! 1..=n are the dedicated per-core serving threads. Per-thread state (upstream
//! pools, metric shards) is indexed by the slot, so the request path never
//! shares a lock or a written cache line with another serving thread.

use std::cell::Cell;

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as serving thread `slot` (1-based).
pub fn set_slot(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The current thread's slot (0 outside the dedicated serving threads).
pub fn slot() -> usize {
    SLOT.with(|s| s.get())
}
