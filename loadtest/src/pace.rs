//! Sub-millisecond pacing for the open loop.
//!
//! tokio's timer wheel has a resolution of one millisecond: a sleep ends on
//! the first tick at or after its deadline. For an open loop at tens of
//! thousands of requests per second that is too coarse twice over. Every
//! measured latency gains up to a millisecond of the generator's own
//! rounding, and the connections' staggered schedules collapse onto the same
//! tick, so the load arrives as one burst per millisecond instead of at an
//! even pace. A burst makes the last requests in it queue behind the first,
//! at the proxy and at the generator, and a proxy is then measured on the
//! bursts the generator made.
//!
//! On Linux the [`Pacer`] ends each wait within [`QUANTUM`] after its
//! deadline: one `timerfd` (a kernel high-resolution timer) armed for the
//! earliest deadline, rounded up to a multiple of the quantum, and read
//! through the runtime's own event loop, with one driver task that wakes
//! every wait that is due each time it fires. The rounding bounds the
//! firings to one per quantum however high the rate: each firing costs two
//! system calls and a timer interrupt, and reprogramming a timer is dear in a
//! virtual machine. Elsewhere it falls back to tokio's timer.

use std::time::Instant;

/// A wait ends at most this long after its deadline (on Linux).
#[cfg(target_os = "linux")]
const QUANTUM: std::time::Duration = std::time::Duration::from_micros(100);

/// Shared by the connections of one open-loop run.
pub(crate) struct Pacer {
    #[cfg(target_os = "linux")]
    inner: linux::Timer,
}

impl Pacer {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            inner: linux::Timer::new(),
        }
    }

    /// Returns at `deadline` (at once when it has passed).
    pub(crate) async fn until(&self, deadline: Instant) {
        #[cfg(target_os = "linux")]
        self.inner.until(deadline).await;
        #[cfg(not(target_os = "linux"))]
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cmp::Ordering as CmpOrdering;
    use std::collections::BinaryHeap;
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};
    use std::time::{Duration, Instant};

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::unix::AsyncFd;
    use tokio::task::JoinHandle;

    /// A wait: its deadline and the task to wake. Ordered so that the heap's
    /// top is the earliest deadline.
    struct Wait {
        deadline: Instant,
        waker: Waker,
    }

    impl PartialEq for Wait {
        fn eq(&self, other: &Self) -> bool {
            self.deadline == other.deadline
        }
    }
    impl Eq for Wait {}
    impl PartialOrd for Wait {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Wait {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            other.deadline.cmp(&self.deadline)
        }
    }

    #[derive(Default)]
    struct Waits {
        heap: BinaryHeap<Wait>,
        /// The deadline the timerfd is armed for, if any.
        armed: Option<Instant>,
    }

    struct Shared {
        /// `None` when no timerfd could be made (then waits use tokio's timer).
        fd: Option<AsyncFd<OwnedFd>>,
        waits: Mutex<Waits>,
        /// Where the quantum grid starts.
        origin: Instant,
    }

    /// Arms the timer for `deadline`; a deadline already passed fires at
    /// once (a zero value would disarm it instead).
    fn arm(fd: &AsyncFd<OwnedFd>, deadline: Instant) {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            },
        };
        // Arming a valid timerfd with a valid value cannot fail.
        let _ = timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec);
    }

    pub(super) struct Timer {
        shared: Arc<Shared>,
        driver: Option<JoinHandle<()>>,
    }

    /// `deadline` rounded up to the quantum grid that starts at `origin`,
    /// so that waits due within one quantum share one firing.
    fn slot(origin: Instant, deadline: Instant) -> Instant {
        let q = super::QUANTUM.as_nanos();
        let since = deadline.saturating_duration_since(origin).as_nanos();
        let rounded = since.div_ceil(q) * q;
        origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }

    impl Timer {
        pub(super) fn new() -> Self {
            // `AsyncFd::new` is deprecated because a type's `as_raw_fd` may
            // change or close under the registration; an `OwnedFd` held by
            // the `AsyncFd` cannot, and its replacement (`register`) is an
            // `unsafe fn`, which this workspace forbids.
            #[allow(deprecated)]
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )
            .ok()
            .and_then(|fd| AsyncFd::new(fd).ok());
            let shared = Arc::new(Shared {
                fd,
                waits: Mutex::new(Waits::default()),
                origin: Instant::now(),
            });
            let driver = shared
                .fd
                .is_some()
                .then(|| tokio::spawn(drive(shared.clone())));
            Self { shared, driver }
        }

        pub(super) async fn until(&self, deadline: Instant) {
            let Some(fd) = &self.shared.fd else {
                tokio::time::sleep_until(deadline.into()).await;
                return;
            };
            std::future::poll_fn(|cx| {
                if Instant::now() >= deadline {
                    return Poll::Ready(());
                }
                let mut waits = self.shared.waits.lock().expect("pacer lock");
                waits.heap.push(Wait {
                    deadline,
                    waker: cx.waker().clone(),
                });
                let at = slot(self.shared.origin, deadline);
                if waits.armed.is_none_or(|armed| at < armed) {
                    waits.armed = Some(at);
                    arm(fd, at);
                }
                Poll::Pending
            })
            .await
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            if let Some(driver) = self.driver.take() {
                driver.abort();
            }
        }
    }

    /// Each time the timer fires: wake every wait that is due, then arm the
    /// timer for the earliest one left.
    async fn drive(shared: Arc<Shared>) {
        let fd = shared.fd.as_ref().expect("driven only with a timerfd");
        let mut expirations = [0u8; 8];
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            // Reading clears the expiration count; WouldBlock means a
            // spurious readiness, which `try_io` clears.
            if ready
                .try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?))
                .is_err()
            {
                continue;
            }
            let mut due = Vec::new();
            {
                let mut waits = shared.waits.lock().expect("pacer lock");
                let now = Instant::now();
                while waits.heap.peek().is_some_and(|w| w.deadline <= now) {
                    due.push(waits.heap.pop().expect("peeked").waker);
                }
                waits.armed = waits.heap.peek().map(|w| slot(shared.origin, w.deadline));
                if let Some(at) = waits.armed {
                    arm(fd, at);
                }
            }
            for waker in due {
                waker.wake();
            }
        }
    }
}
