//! When a connection was last used, on the process's millisecond clock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A moment on the process's millisecond clock, kept atomically.
pub struct IdleMark(AtomicU64);

impl IdleMark {
    pub fn now_ms() -> u64 {
        Self::ms_at(Instant::now())
    }

    /// `at` on the clock's milliseconds.
    pub fn ms_at(at: Instant) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn now() -> Self {
        Self(AtomicU64::new(Self::now_ms()))
    }

    pub fn touch(&self) {
        self.0.store(Self::now_ms(), Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let since = self.0.load(Ordering::Relaxed);
        Duration::from_millis(Self::now_ms().saturating_sub(since))
    }
}
