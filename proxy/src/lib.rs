//! Sluice's data plane: an L7 proxy that splits each route's requests between
//! a stable and a canary upstream by *exact* weight, answers A/B rules, and
//! records its own RED metrics per route and backend.
//!
//! The binary `sluice-proxy` is a thin wrapper over [`start`]; the demo and
//! the end-to-end tests run the same code in-process.
//!
//! # Structure
//!
//! A request moves through named phases, one way, each in its own module.
//! The connection's side (`accept`, then `downstream`) drives them; a later
//! phase reads an earlier one's result (`forward` takes `route`'s decision,
//! `answer` takes `forward`'s outcome), never the other way round, and the
//! record phase sits below them all. The exact import order is the table
//! under [Layers](#layers).
//!
//! ```text
//! accept        listener, TLS, HTTP/2 or HTTP/1.1, connection limits    accept, conn
//!   -> read head   HTTP/1.1: the own codec, in the connection's task      downstream::h1, http1
//!                  HTTP/2: the h2 crate, streams in the connection's task downstream::h2
//!   -> route       checks, route, A/B rules, affinity, exact split        route (routing, split, affinity)
//!   -> forward     upstream head, body, timeouts, retries, mirror copy    forward (upstream, mirror, body)
//!                  HTTP/1.1 backends: the own codec; HTTP/2: hyper        upstream::h1, upstream::h2
//!   -> answer      the client's answer, streamed back                      answer, downstream::*
//!   -> record      RED metrics, once, at the end                           record (metrics)
//! ```
//!
//! Both protocols share every phase but the reading of heads and the
//! writing of answers: a request reaches the route phase as a
//! [`route::ClientRequest`] whatever carried it, and leaves the forward
//! phase as a [`forward::Outcome`]. Below the phases: the routing table
//! ([`routing`], replaced whole by [`store`] on every valid reload, from
//! [`config`], the file format, and its validation), the rules on fields
//! and paths ([`fields`]), the HTTP/1.1 codec without I/O ([`http1`]), the
//! request body on its way upstream ([`body`]), connection supervision
//! ([`conn`]), TLS ([`tls`]) and the metric families ([`metrics`], the
//! plain TCP listeners' too). The admin listener ([`admin`]), the plain TCP
//! listeners ([`tcp`]), the Kubernetes ConfigMap source ([`kube_source`])
//! and the Gateway API translation ([`gateway`]) sit beside the request
//! path.
//!
//! # Layers
//!
//! Every module imports only modules of the lines below its own: never one
//! of its own line, never one above, so there is no import circle. Where a
//! lower module must act on a higher one it defines a trait the higher one
//! implements: the store reloads the TCP listeners through
//! [`store::TcpLayout`].
//!
//! ```text
//! accept admin                    | the listeners: HTTP (plain, TLS) and the admin API
//! downstream                      | read heads, write answers: HTTP/1.1 and HTTP/2 clients
//! answer                          | the client's answer, streamed back
//! forward                         | to a backend: retries, failover, mirror copy
//! route tcp gateway kube_source   | route and decide; TCP listeners; config sources
//! store                           | the routing table in force, reloads
//! routing                         | the routing table: routes, matches, backends
//! mirror                          | mirror copies
//! upstream                        | backend connections: the own HTTP/1.1 codec, HTTP/2
//! affinity record split tls       | sticky backends, the record phase, the exact split, TLS
//! body config conn http1          | request bodies, the config format, connections, the codec
//! grpc metrics                    | gRPC status rules, metric families
//! fields file_watch reuse worker  | field rules, file watching, buffers, thread slots
//! ```
//!
//! `proxy/tests/layers.rs` checks both: it reads every file of `src/` (its
//! code, not its comments, strings or `#[cfg(test)]` items) for
//! `crate::module` paths, and fails naming the modules and files of any
//! import circle, and any import that does not go down this table. The
//! same test holds every function of the request path's modules (the
//! phases and what they call per request) to 120 lines at most: a longer
//! one is split into named steps.

pub mod accept;
pub mod admin;
pub mod affinity;
pub mod answer;
pub mod body;
pub mod config;
pub mod conn;
pub mod downstream;
pub mod fields;
pub mod file_watch;
pub mod forward;
pub mod gateway;
pub mod grpc;
pub mod http1;
pub mod kube_source;
pub mod metrics;
pub mod mirror;
pub mod record;
pub mod reuse;
pub mod route;
pub mod routing;
pub mod split;
pub mod store;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigErrors};

/// The error type bodies and exchanges carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use metrics::Metrics;
pub use store::Store;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl StartError {
    /// A data-plane address that could not be bound: `listen` (index 0)
    /// or one of `listeners`.
    fn data_plane_bind(index: usize, addr: SocketAddr, source: std::io::Error) -> Self {
        StartError::Bind {
            what: if index == 0 { "listen" } else { "listeners" },
            addr,
            source,
        }
    }
}

/// How to run a proxy besides its config.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Watch this file and reload on change.
    pub watch_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// `None`: serve on the caller's runtime (in-process use, tests, the
    /// demo). `Some(n)`: serve on `n` dedicated threads, each with its own
    /// single-threaded runtime, its own `SO_REUSEPORT` listener and its own
    /// upstream connection pools, like nginx's workers: no work stealing and
    /// no cross-thread wake-ups on the request path (the binary's default,
    /// one per core).
    pub threads: Option<usize>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            watch_file: None,
            drain_timeout: Duration::from_secs(30),
            threads: None,
        }
    }
}

/// Binds `addr` with `SO_REUSEPORT` so several threads can accept on it.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Everything a serving thread needs.
struct Worker {
    slot: usize,
    /// One state per listener, in listener order.
    states: Vec<Arc<downstream::ProxyState>>,
    valid: config::ValidConfig,
    tls: Option<Arc<tls::Terminator>>,
    stop: watch::Receiver<bool>,
    drain_timeout: Duration,
}

/// Starts serving thread `worker.slot` on `addrs` (every listener); returns
/// the bound addresses once it listens, and the thread.
fn spawn_worker(
    worker: Worker,
    addrs: Vec<SocketAddr>,
) -> Result<(Vec<SocketAddr>, std::thread::JoinHandle<()>), std::io::Error> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("sluice-worker-{}", worker.slot))
        .spawn(move || {
            crate::worker::set_slot(worker.slot);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut listeners = Vec::with_capacity(addrs.len());
                for addr in &addrs {
                    match bind_reuseport(*addr) {
                        Ok(l) => listeners.push(l),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let bound: std::io::Result<Vec<SocketAddr>> =
                    listeners.iter().map(TcpListener::local_addr).collect();
                let _ = ready_tx.send(bound);
                let mut tasks = Vec::new();
                for (i, (listener, state)) in listeners.into_iter().zip(worker.states).enumerate() {
                    // TLS terminates on the main listener only.
                    let tls = (i == 0).then(|| worker.tls.clone()).flatten();
                    let serving = serving(state, &worker.valid, tls);
                    tasks.push(tokio::spawn(accept::run_listener(
                        listener,
                        serving,
                        worker.stop.clone(),
                        worker.drain_timeout,
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    let bound = ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("serving thread ended before listening"))??;
    Ok((bound, thread))
}

/// What a listener's connections are served with.
fn serving(
    state: Arc<downstream::ProxyState>,
    valid: &config::ValidConfig,
    tls: Option<Arc<tls::Terminator>>,
) -> accept::Serving {
    accept::Serving {
        state,
        h2: downstream::h2::builder(valid),
        tls,
        limits: accept::conn_limits(valid),
    }
}

/// A running proxy.
pub struct ProxyHandle {
    /// The data-plane address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The extra listeners' bound addresses, in config order.
    pub listener_addrs: Vec<SocketAddr>,
    /// The admin address actually bound.
    pub admin_addr: SocketAddr,
    pub store: Arc<Store>,
    state: Arc<downstream::ProxyState>,
    stop: watch::Sender<bool>,
    /// The admin listener stops only after the data plane has drained.
    admin_stop: watch::Sender<bool>,
    data_plane: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    cert_watcher: Option<tokio::task::JoinHandle<()>>,
    /// Looks at the upstream `ca_file`s in use now and then.
    ca_poller: tokio::task::JoinHandle<()>,
    tcp: Arc<tcp::TcpListeners>,
    drain_timeout: Duration,
}

impl ProxyHandle {
    /// Starts failing `/readyz` (load balancers stop sending) while every
    /// listener keeps serving.
    pub fn begin_drain(&self) {
        self.state.draining.store(true, Ordering::Relaxed);
    }

    /// Resolves, with what happened, if a background watcher (the config
    /// file's, the certificates') ever stops. It should not: a proxy whose
    /// watcher is gone would silently ignore every later change, so the
    /// binary drains and exits non-zero for its supervisor to restart it.
    pub async fn watcher_stopped(&mut self) -> String {
        async fn ended(handle: &mut Option<tokio::task::JoinHandle<()>>, what: &str) -> String {
            match handle {
                Some(h) => match h.await {
                    Ok(()) => format!("the {what} watcher stopped"),
                    Err(e) => format!("the {what} watcher failed: {e}"),
                },
                None => std::future::pending().await,
            }
        }
        let (config, certs) = (&mut self.watcher, &mut self.cert_watcher);
        tokio::select! {
            why = ended(config, "config file") => why,
            why = ended(certs, "certificate") => why,
        }
    }

    /// The address a plain TCP listener (`tcp_listeners`) is bound to now,
    /// by name (useful with port 0; follows reloads).
    pub fn tcp_listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.tcp
            .addrs()
            .into_iter()
            .find_map(|(n, a)| (n == name).then_some(a))
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then stops the admin listener and returns.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let data_plane = self.data_plane;
        tokio::join!(
            async {
                let _ = data_plane.await;
            },
            self.tcp.shutdown(self.drain_timeout)
        );
        let _ = self.admin_stop.send(true);
        let _ = self.admin.await;
        for w in [self.watcher, self.cert_watcher].into_iter().flatten() {
            w.abort();
        }
        self.ca_poller.abort();
    }
}

/// Binds both listeners and serves `config` until [`ProxyHandle::shutdown`].
pub async fn start(config: Config, options: StartOptions) -> Result<ProxyHandle, StartError> {
    let threads = options.threads.unwrap_or(0);
    let metrics = Metrics::with_threads(threads);
    let store = Store::with_threads(config, metrics.clone(), threads)?;
    let routing = store.load();
    let valid = routing.valid.clone();
    drop(routing);
    let all_addrs: Vec<SocketAddr> = std::iter::once(valid.listen)
        .chain(valid.listeners.iter().map(|(_, a)| *a))
        .collect();
    let listeners = if threads == 0 {
        Some(bind_all(&all_addrs).await?)
    } else {
        None
    };
    let admin_listener = TcpListener::bind(valid.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin.listen",
            addr: valid.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound listener has an address");
    let terminator = match &valid.tls {
        Some(tls) => Some(tls::Terminator::new(tls.clone()).map_err(|e| {
            let (path, message) = e.split_once(": ").unwrap_or(("tls", e.as_str()));
            StartError::Config(ConfigErrors::single(path, message))
        })?),
        None => None,
    };
    if let Some(t) = &terminator {
        metrics.set_tls_expiry(t.not_after());
    }
    let shared = SharedState {
        store: store.clone(),
        draining: Arc::new(AtomicBool::new(false)),
        capacity: conn::Capacity::new(valid.max_connections, metrics.clone()),
        tunnels: Arc::new(conn::Connections::default()),
        tls: terminator.is_some(),
    };
    let states: Vec<Arc<downstream::ProxyState>> =
        (0..all_addrs.len()).map(|l| shared.state_for(l)).collect();
    let state = shared.state_for(0);
    let (stop, stop_rx) = watch::channel(false);
    let (watcher, cert_watcher) = start_watchers(&options, &store, terminator.as_ref(), &metrics)?;
    let serve_on = ServeOn {
        states,
        valid: &valid,
        tls: terminator.as_ref(),
        stop: &stop_rx,
        drain_timeout: options.drain_timeout,
    };
    let (bound_addrs, data_plane) = match listeners {
        Some(listeners) => serve_in_process(serve_on, listeners)?,
        None => serve_on_threads(serve_on, &all_addrs, threads).inspect_err(|_| {
            let _ = stop.send(true);
        })?,
    };
    let tcp_listeners = tcp::TcpListeners::new(metrics.tcp.clone(), valid.max_tcp_connections);
    if let Err(e) = store.attach_tcp(tcp_listeners.clone(), |l| tcp_listeners.start(l)) {
        let _ = stop.send(true);
        return Err(StartError::Bind {
            what: "tcp_listeners",
            addr: e.addr,
            source: e.source,
        });
    }
    let addr = bound_addrs[0];
    let listener_addrs = bound_addrs[1..].to_vec();
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    drop(stop_rx);
    let admin = tokio::spawn(admin::run_admin(
        admin_listener,
        state.clone(),
        accept::conn_limits(&valid),
        admin_stop_rx,
    ));
    tracing::info!(%addr, %admin_addr, routes = valid.routes.len(), "sluice-proxy serving");
    let ca_poller = tokio::spawn(store::poll_upstream_cas(store.clone()));
    Ok(ProxyHandle {
        addr,
        listener_addrs,
        admin_addr,
        store,
        state,
        stop,
        admin_stop,
        data_plane,
        admin,
        watcher,
        cert_watcher,
        ca_poller,
        tcp: tcp_listeners,
        drain_timeout: options.drain_timeout,
    })
}

/// Binds every data-plane address (`listen`, then `listeners`) on the
/// caller's runtime.
async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut bound = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::data_plane_bind(i, *addr, source))?;
        bound.push(l);
    }
    Ok(bound)
}

/// What every listener's [`downstream::ProxyState`] shares.
struct SharedState {
    store: Arc<Store>,
    draining: Arc<AtomicBool>,
    capacity: Arc<conn::Capacity>,
    tunnels: Arc<conn::Connections>,
    /// Whether the main listener terminates TLS.
    tls: bool,
}

impl SharedState {
    /// The state of listener `listener` (0: `listen`).
    fn state_for(&self, listener: usize) -> Arc<downstream::ProxyState> {
        Arc::new(downstream::ProxyState {
            store: self.store.clone(),
            draining: self.draining.clone(),
            listener,
            scheme: if self.tls && listener == 0 {
                "https"
            } else {
                "http"
            },
            capacity: self.capacity.clone(),
            tunnels: self.tunnels.clone(),
        })
    }
}

/// The config file's watcher (with `--watch`) and the certificates'
/// (with TLS).
type Watchers = (
    Option<tokio::task::JoinHandle<()>>,
    Option<tokio::task::JoinHandle<()>>,
);

fn start_watchers(
    options: &StartOptions,
    store: &Arc<Store>,
    terminator: Option<&Arc<tls::Terminator>>,
    metrics: &Arc<Metrics>,
) -> Result<Watchers, StartError> {
    let watcher = match &options.watch_file {
        Some(path) => Some(
            store::watch_file(path.clone(), store.clone()).map_err(|source| StartError::Watch {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let cert_watcher = match terminator {
        Some(t) => Some(
            t.watch(metrics.clone())
                .map_err(|source| StartError::Watch {
                    path: t.tls.cert_file.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    Ok((watcher, cert_watcher))
}

/// What the data plane serves with, whichever runtime it runs on.
struct ServeOn<'a> {
    /// One state per listener, in listener order.
    states: Vec<Arc<downstream::ProxyState>>,
    valid: &'a config::ValidConfig,
    tls: Option<&'a Arc<tls::Terminator>>,
    stop: &'a watch::Receiver<bool>,
    drain_timeout: Duration,
}

/// The data plane: its bound addresses, and the task that ends when every
/// listener has stopped.
type DataPlane = (Vec<SocketAddr>, tokio::task::JoinHandle<()>);

/// Serves `listeners` on the caller's runtime.
fn serve_in_process(on: ServeOn<'_>, listeners: Vec<TcpListener>) -> Result<DataPlane, StartError> {
    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for (i, (listener, state)) in listeners.into_iter().zip(on.states).enumerate() {
        bound.push(listener.local_addr().map_err(|source| StartError::Bind {
            what: "listen",
            addr: on.valid.listen,
            source,
        })?);
        let tls = (i == 0).then(|| on.tls.cloned()).flatten();
        tasks.push(tokio::spawn(accept::run_listener(
            listener,
            serving(state, on.valid, tls),
            on.stop.clone(),
            on.drain_timeout,
        )));
    }
    let task = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok((bound, task))
}

/// Serves `addrs` on `threads` dedicated threads sharing each port
/// (`SO_REUSEPORT`). On an error some threads may serve already: the
/// caller stops them.
fn serve_on_threads(
    on: ServeOn<'_>,
    all_addrs: &[SocketAddr],
    threads: usize,
) -> Result<DataPlane, StartError> {
    // The serving threads share each port with SO_REUSEPORT, which
    // would also let a second proxy on the same port silently take
    // part of the traffic with its own weights. A plain bind first
    // fails when anything already listens there.
    for (i, addr) in all_addrs.iter().enumerate() {
        if addr.port() != 0
            && let Err(source) = std::net::TcpListener::bind(addr)
        {
            return Err(StartError::data_plane_bind(
                i,
                *addr,
                std::io::Error::new(
                    source.kind(),
                    format!(
                        "{source} (is another sluice-proxy or server already listening there?)"
                    ),
                ),
            ));
        }
    }
    let mut addrs = all_addrs.to_vec();
    let mut handles = Vec::with_capacity(threads);
    for slot in 1..=threads {
        let worker = Worker {
            slot,
            states: on.states.clone(),
            valid: on.valid.clone(),
            tls: on.tls.cloned(),
            stop: on.stop.clone(),
            drain_timeout: on.drain_timeout,
        };
        // The first thread learns the ports (config port 0); the others share them.
        let (bound, handle) =
            spawn_worker(worker, addrs.clone()).map_err(|source| StartError::Bind {
                what: "listen",
                addr: on.valid.listen,
                source,
            })?;
        addrs = bound;
        handles.push(handle);
    }
    let task = tokio::task::spawn_blocking(move || {
        for h in handles {
            let _ = h.join();
        }
    });
    Ok((addrs, task))
}
