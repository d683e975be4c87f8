//! The clients' side of the proxy: one module per protocol, each reading
//! its requests' heads (phase 2), running the shared phases on them
//! (`crate::route`, `crate::forward`, `crate::answer`, `crate::record`)
//! and streaming the answers back.
//!
//! - [`h1`]: every HTTP/1.1 (and 1.0) connection, plain or TLS, with the
//!   proxy's own codec (`crate::http1`), in the connection's own task.
//! - [`h2`]: HTTP/2 connections (prior knowledge, or ALPN `h2` over TLS),
//!   on the `h2` crate, each stream a future polled in the connection's task.

pub mod h1;
pub mod h2;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::conn::{Capacity, Connections};
use crate::store::Store;

/// State shared by every connection of one listener.
pub struct ProxyState {
    pub store: Arc<Store>,
    /// Set while draining: `/readyz` fails so load balancers stop sending.
    /// Shared by every listener's state.
    pub draining: Arc<AtomicBool>,
    /// Which listener this state serves (0: `listen`, 1 + i: `listeners[i]`).
    pub listener: usize,
    /// `https` when the listener terminates TLS.
    pub scheme: &'static str,
    /// Open client connections of the whole process (shared by every
    /// listener and thread).
    pub capacity: Arc<Capacity>,
    /// Upgraded connections (WebSocket and other tunnels) of the whole
    /// process: a drain waits for them as for requests, then cuts them.
    pub tunnels: Arc<Connections>,
}

impl ProxyState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// [`crate::route::check`], a refusal counted in
    /// `sluice_refused_requests_total` (an `OPTIONS *` answered 200 is no
    /// refusal).
    pub fn check(
        &self,
        req: &crate::route::ClientRequest<'_>,
    ) -> Result<(), crate::route::Refusal> {
        crate::route::check(req).inspect_err(|refusal| {
            if !refusal.status.is_success() {
                self.store.metrics().record_refused(refusal.status.as_u16());
            }
        })
    }
}
