//! Plain TCP listeners (L4): a port whose bytes are not HTTP (a database,
//! TLS passed through to the backend, a raw protocol) is forwarded as it
//! is, so no port of a Service breaks when Sluice takes it over.
//!
//! ```yaml
//! tcp_listeners:
//!   - name: postgres
//!     listen: 0.0.0.0:5432
//!     upstream: db-primary.prod.svc:5432   # host:port, no scheme
//!     timeouts: { connect: 1s, idle: 1h }  # the defaults
//! ```
//!
//! The rules this module enforces:
//!
//! - **No HTTP at all.** Nothing is parsed, added or dropped; the upstream
//!   sees the client's bytes in order and the client the upstream's. There
//!   is no canary split here: every connection goes to `upstream` (in
//!   Kubernetes, the `-primary` Service, the stable pods).
//! - **Connect.** For each client connection the upstream's name is
//!   resolved and its addresses tried in order, all within
//!   `timeouts.connect`. When that fails the client's connection is closed
//!   without a byte (a FIN), counted as `outcome="connect_error"`, and the
//!   reason in `sluice_tcp_upstream_errors_total{kind}` (`resolve`,
//!   `refused`, `timeout`, `other`).
//! - **Both directions, half-close honoured.** When one side closes its
//!   sending half (FIN), the proxy shuts down its write to the other side
//!   and keeps forwarding the other direction until that one ends too.
//!   A reset or failed write on either side ends the connection
//!   (`outcome="reset"`).
//! - **Backpressure.** Each direction has one bounded buffer
//!   ([`BUFFER_BYTES`], 16 KiB: 32 KiB per connection); a side that does not read stops the proxy reading
//!   from the other, so memory never grows with a slow peer
//!   (`tokio::io::copy_bidirectional_with_sizes`).
//! - **Idle timeout.** A connection with no byte in either direction for
//!   `timeouts.idle` is closed on both sides (`outcome="idle_timeout"`).
//! - **Limits.** TCP connections have their own cap,
//!   `limits.max_tcp_connections` (default 1000, at least 1, for all TCP
//!   listeners together; read at start like every limit), apart from the
//!   HTTP clients' `limits.max_connections`: idle TCP connections (a
//!   connection pool, say) never take the places of HTTP clients, nor HTTP
//!   clients theirs. Over it, a TCP connection is closed at once without a
//!   byte (`outcome="rejected"`). TCP connections are not counted in
//!   `sluice_connections_*` (those are the HTTP clients'); they have
//!   `sluice_tcp_active_connections`.
//! - **Reload.** Unlike HTTP `listeners` (fixed at start), TCP listeners are
//!   added, removed and changed by any reload. A new address is bound
//!   *before* the new config is swapped in: if it cannot be bound the whole
//!   reload is refused, naming `tcp_listeners[i].listen`, and the old
//!   config keeps serving. A listener that keeps its address keeps its
//!   socket (no connection is refused during the reload); a changed
//!   `upstream` or timeout applies to new connections. A removed listener
//!   stops accepting; its open connections carry on to their end.
//! - **Shutdown.** The listeners stop accepting; open connections get the
//!   proxy's drain timeout to finish, then are closed
//!   (`outcome="shutdown"`).
//! - **Their own threads.** TCP listeners and their connections run on a
//!   small multi-threaded runtime of their own ([`TCP_THREADS`] threads
//!   named `sluice-tcp`), neither on the HTTP serving threads nor on the
//!   admin runtime: heavy TCP traffic cannot delay `/readyz`, `/metrics`
//!   or the config watch, and is not delayed by them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{ConfigErrors, FieldError, ValidTcpListener};
use crate::conn::{Connections, Entered, LastActivity, Watched};
use crate::metrics::tcp::{ConnectErrorKind, ListenerMetrics, Outcome, TcpMetrics};

/// The buffer of each direction of a connection.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// Worker threads of the TCP listeners' own runtime.
pub const TCP_THREADS: usize = 2;

/// What a listener's new connections are served with; replaced whole on
/// a reload that changes it.
struct Settings {
    listener: ValidTcpListener,
    metrics: ListenerMetrics,
}

/// One accepting listener.
struct Running {
    /// The address as configured (port 0 stays 0).
    listen: SocketAddr,
    bound: SocketAddr,
    name: String,
    settings: Arc<ArcSwap<Settings>>,
    /// Flipped to stop accepting.
    stop: watch::Sender<bool>,
}

/// What every connection of every TCP listener shares.
struct Shared {
    metrics: TcpMetrics,
    capacity: Arc<Capacity>,
    connections: Connections,
    /// Flipped when the drain timeout has run out: connections still open
    /// are closed.
    cut: watch::Sender<bool>,
}

/// The TCP listeners of a proxy, reconciled with each config.
pub struct TcpListeners {
    running: Mutex<Vec<Running>>,
    shared: Arc<Shared>,
    /// The runtime every listener and connection runs on, started with
    /// the first listener (a proxy without TCP listeners starts no thread
    /// for them); shut down (in the background, so this may be dropped
    /// inside another runtime) when the listeners are dropped.
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
}

impl Drop for TcpListeners {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The cap of open TCP connections (`limits.max_tcp_connections`).
struct Capacity {
    open: AtomicUsize,
    max: usize,
}

/// One place of [`Capacity`], given back when dropped.
struct Place(Arc<Capacity>);

impl Capacity {
    fn try_open(self: &Arc<Self>) -> Option<Place> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reload's listeners, with every new address already bound; see
/// [`TcpListeners::prepare`] and [`TcpListeners::commit`].
pub struct Prepared(Vec<Planned>);

enum Planned {
    /// Keeps `running[index]`'s socket.
    Keep {
        index: usize,
        listener: ValidTcpListener,
    },
    New {
        socket: std::net::TcpListener,
        listener: ValidTcpListener,
    },
}

/// Why a listener could not be bound: its index and address.
#[derive(Debug)]
pub struct BindError {
    pub index: usize,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

// === impl TcpLayout for TcpListeners ===

/// How a reload of the store reaches the listeners (the store sits below
/// this module and knows them only by this trait).
impl crate::store::TcpLayout for TcpListeners {
    fn stage(
        &self,
        listeners: &[ValidTcpListener],
    ) -> Result<crate::store::Staged<'_>, ConfigErrors> {
        let prepared = self.prepare(listeners)?;
        Ok(Box::new(move || self.commit(prepared)))
    }

    fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.addrs()
    }
}

// === impl TcpListeners ===

impl TcpListeners {
    /// No listener yet, and at most `max_connections` open connections
    /// for all of them; they will be served on a runtime of their own
    /// ([`TCP_THREADS`] threads). See [`crate::Store::attach_tcp`].
    pub fn new(metrics: TcpMetrics, max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            running: Mutex::new(Vec::new()),
            shared: Arc::new(Shared {
                metrics,
                capacity: Arc::new(Capacity {
                    open: AtomicUsize::new(0),
                    max: max_connections,
                }),
                connections: Connections::default(),
                cut: watch::channel(false).0,
            }),
            runtime: std::sync::OnceLock::new(),
        })
    }

    /// The listeners' runtime, started on first use.
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(TCP_THREADS)
                .thread_name("sluice-tcp")
                .enable_all()
                .build()
                .expect("the TCP listeners' runtime")
        })
    }

    /// Binds and serves `listeners` (the first config).
    pub fn start(&self, listeners: &[ValidTcpListener]) -> Result<(), BindError> {
        let prepared = self.bind(listeners)?;
        self.commit(prepared);
        Ok(())
    }

    /// Binds what `listeners` needs that is not bound yet; changes nothing
    /// that serves. Errors name `tcp_listeners[i].listen`.
    pub fn prepare(&self, listeners: &[ValidTcpListener]) -> Result<Prepared, ConfigErrors> {
        self.bind(listeners).map_err(|e| {
            ConfigErrors(vec![FieldError {
                path: format!("tcp_listeners[{}].listen", e.index),
                message: format!("cannot listen on {}: {}", e.addr, e.source),
            }])
        })
    }

    fn bind(&self, listeners: &[ValidTcpListener]) -> Result<Prepared, BindError> {
        let running = self.running.lock().expect("tcp listeners");
        let mut claimed = vec![false; running.len()];
        let mut plan = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.iter().enumerate() {
            // Port 0 means "any port": only the same listener keeps it.
            let same = running.iter().enumerate().position(|(j, r)| {
                !claimed[j] && r.listen == l.listen && (l.listen.port() != 0 || r.name == l.name)
            });
            match same {
                Some(index) => {
                    claimed[index] = true;
                    plan.push(Planned::Keep {
                        index,
                        listener: l.clone(),
                    });
                }
                None => {
                    let socket = std::net::TcpListener::bind(l.listen)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s))
                        .map_err(|source| BindError {
                            index: i,
                            addr: l.listen,
                            source,
                        })?;
                    plan.push(Planned::New {
                        socket,
                        listener: l.clone(),
                    });
                }
            }
        }
        Ok(Prepared(plan))
    }

    /// Serves what [`TcpListeners::prepare`] bound, updates the listeners
    /// kept, and stops the ones the config no longer has.
    pub fn commit(&self, prepared: Prepared) {
        let mut running = self.running.lock().expect("tcp listeners");
        let mut old: Vec<Option<Running>> = running.drain(..).map(Some).collect();
        for planned in prepared.0 {
            match planned {
                Planned::Keep { index, listener } => {
                    let mut r = old[index].take().expect("claimed once");
                    let current = r.settings.load();
                    if current.listener != listener {
                        tracing::info!(listener = %listener.name, upstream = %listener.upstream, "tcp listener changed");
                        r.name = listener.name.clone();
                        r.settings.store(Arc::new(self.settings(listener)));
                    }
                    running.push(r);
                }
                Planned::New { socket, listener } => {
                    running.push(self.serve(socket, listener));
                }
            }
        }
        for r in old.into_iter().flatten() {
            tracing::info!(listener = %r.name, addr = %r.bound, "tcp listener removed");
            let _ = r.stop.send(true);
        }
    }

    fn settings(&self, listener: ValidTcpListener) -> Settings {
        let metrics = self
            .shared
            .metrics
            .listener(&listener.name, &listener.upstream.to_string());
        Settings { listener, metrics }
    }

    fn serve(&self, socket: std::net::TcpListener, listener: ValidTcpListener) -> Running {
        let bound = socket.local_addr().unwrap_or(listener.listen);
        let (stop, stop_rx) = watch::channel(false);
        let running = Running {
            listen: listener.listen,
            bound,
            name: listener.name.clone(),
            settings: Arc::new(ArcSwap::from_pointee(self.settings(listener))),
            stop,
        };
        tracing::info!(listener = %running.name, addr = %bound, "tcp listener serving");
        let shared = self.shared.clone();
        let settings = running.settings.clone();
        self.runtime()
            .spawn(accept_loop(socket, settings, shared, stop_rx));
        running
    }

    /// The listeners serving now: (name, bound address), in config order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .lock()
            .expect("tcp listeners")
            .iter()
            .map(|r| (r.name.clone(), r.bound))
            .collect()
    }

    /// Stops accepting, waits up to `drain_timeout` for open connections
    /// to end, then closes the rest.
    pub async fn shutdown(&self, drain_timeout: Duration) {
        for r in self.running.lock().expect("tcp listeners").drain(..) {
            let _ = r.stop.send(true);
        }
        self.shared.connections.drain(drain_timeout).await;
        let _ = self.shared.cut.send(true);
        // The cut connections' tasks run on this module's runtime, which
        // is dropped with the listeners: give them a moment to close and
        // count themselves (`outcome="shutdown"`) before it can go.
        self.shared.connections.settle(CUT_SETTLE).await;
    }
}

/// How long [`TcpListeners::shutdown`] waits for cut connections to end.
const CUT_SETTLE: Duration = Duration::from_secs(2);

// === accept ===

async fn accept_loop(
    socket: std::net::TcpListener,
    settings: Arc<ArcSwap<Settings>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %settings.load().listener.name, error = %e, "tcp listener cannot serve");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = crate::conn::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let settings = settings.load_full();
                    let Some(place) = shared.capacity.try_open() else {
                        tracing::debug!(listener = %settings.listener.name, %peer, "tcp connection over limits.max_tcp_connections; closed");
                        settings.metrics.record_outcome(Outcome::Rejected);
                        drop(stream);
                        continue;
                    };
                    let entered = shared.connections.enter(None);
                    let cut = shared.cut.subscribe();
                    tokio::spawn(serve_connection(stream, peer, settings, (entered, place), cut));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

// === one connection ===

/// Decrements the active gauge however the connection's task ends.
struct Active(prometheus_client::metrics::gauge::Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    settings: Arc<Settings>,
    _entered: (Entered, Place),
    mut cut: watch::Receiver<bool>,
) {
    settings.metrics.active.inc();
    let _active = Active(settings.metrics.active.clone());
    let outcome = tokio::select! {
        outcome = forward(client, &settings) => outcome,
        _ = crate::conn::stopped(&mut cut) => Outcome::Shutdown,
    };
    tracing::debug!(listener = %settings.listener.name, %peer, outcome = outcome.as_str(), "tcp connection ended");
    settings.metrics.record_outcome(outcome);
}

async fn forward(client: TcpStream, settings: &Settings) -> Outcome {
    let l = &settings.listener;
    let upstream = match connect(l).await {
        Ok(s) => s,
        Err((kind, why)) => {
            tracing::debug!(listener = %l.name, upstream = %l.upstream, kind = kind.as_str(), error = %why, "tcp upstream connect failed");
            settings.metrics.record_connect_error(kind);
            return Outcome::ConnectError;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let activity = LastActivity::new();
    let written = |counter: &Counter| Some(counter.clone());
    let mut client = Watched::new(
        client,
        activity.clone(),
        written(&settings.metrics.to_client),
    );
    let mut upstream = Watched::new(
        upstream,
        activity.clone(),
        written(&settings.metrics.to_upstream),
    );
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        BUFFER_BYTES,
        BUFFER_BYTES,
    );
    tokio::select! {
        // The copy first: bytes already waiting count before the limit.
        biased;
        result = copy => match result {
            Ok(_) => Outcome::Closed,
            Err(e) => {
                tracing::debug!(listener = %l.name, error = %e, "tcp connection failed");
                Outcome::Reset
            }
        },
        _ = activity.idle_for(l.idle_timeout) => Outcome::IdleTimeout,
    }
}

/// Resolves and connects within the connect timeout, trying each address.
async fn connect(l: &ValidTcpListener) -> Result<TcpStream, (ConnectErrorKind, String)> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((l.upstream.host.as_str(), l.upstream.port))
            .await
            .map_err(|e| (ConnectErrorKind::Resolve, e.to_string()))?;
        let mut last = (
            ConnectErrorKind::Resolve,
            "the name resolved to no address".to_string(),
        );
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = (ConnectErrorKind::Refused, format!("{addr}: {e}"));
                }
                Err(e) => last = (ConnectErrorKind::Other, format!("{addr}: {e}")),
            }
        }
        Err(last)
    };
    match tokio::time::timeout(l.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err((
            ConnectErrorKind::Timeout,
            format!("no connection within {:?}", l.connect_timeout),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::TcpUpstream;

    #[test]
    fn upstreams_are_host_and_port_without_scheme() {
        let u = TcpUpstream::parse("DB-Primary.prod.svc:5432").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("db-primary.prod.svc", 5432));
        assert_eq!(u.to_string(), "db-primary.prod.svc:5432");
        let v6 = TcpUpstream::parse("[::1]:6379").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 6379));
        assert_eq!(v6.to_string(), "[::1]:6379");
        for (text, expected) in [
            ("tcp://db:5432", "has a scheme"),
            ("db", "has no port"),
            ("db:0", "is not a port"),
            ("db:70000", "is not a port"),
            (":5432", "is not a host name"),
            ("::1:5432", "in brackets"),
            ("[::1:5432", "closing"),
            ("[zz]:1", "is not an IPv6 address"),
            ("d b:1", "is not a host name"),
        ] {
            let err = TcpUpstream::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
