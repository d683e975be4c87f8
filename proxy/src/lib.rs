//! Sluice's data plane: an L7 proxy that splits each route's requests between
//! a stable and a canary upstream by *exact* weight, answers A/B rules, and
//! records its own RED metrics per route and backend.
//!
//! The binary `sluice-proxy` is a thin wrapper over [`start`]; the demo and
//! the end-to-end tests run the same code in-process.

pub mod admin;
pub mod body;
pub mod config;
pub mod grpc;
pub mod kube_source;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod split;
pub mod store;
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
    state: Arc<server::ProxyState>,
    valid: config::ValidConfig,
    tls: Option<Arc<tls::Terminator>>,
    stop: watch::Receiver<bool>,
    drain_timeout: Duration,
}

/// Starts serving thread `worker.slot` on `addr`; returns the bound address
/// once it listens, and the thread.
fn spawn_worker(
    worker: Worker,
    addr: SocketAddr,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), std::io::Error> {
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
                let listener = match bind_reuseport(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(listener.local_addr());
                let builder = server::connection_builder(&worker.valid);
                let tls = worker.tls.map(|t| (t, worker.valid.header_read_timeout));
                server::run_listener(
                    listener,
                    worker.state,
                    builder,
                    tls,
                    worker.stop,
                    worker.drain_timeout,
                )
                .await;
            });
        })?;
    let bound = ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("serving thread ended before listening"))??;
    Ok((bound, thread))
}

/// A running proxy.
pub struct ProxyHandle {
    /// The data-plane address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The admin address actually bound.
    pub admin_addr: SocketAddr,
    pub store: Arc<Store>,
    state: Arc<server::ProxyState>,
    stop: watch::Sender<bool>,
    data_plane: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    cert_watcher: Option<tokio::task::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then returns.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let _ = self.data_plane.await;
        let _ = self.admin.await;
        for w in [self.watcher, self.cert_watcher].into_iter().flatten() {
            w.abort();
        }
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
    let bind_error = |source| StartError::Bind {
        what: "listen",
        addr: valid.listen,
        source,
    };
    let listener = if threads == 0 {
        Some(TcpListener::bind(valid.listen).await.map_err(bind_error)?)
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
    let state = Arc::new(server::ProxyState {
        store: store.clone(),
        draining: AtomicBool::new(false),
        scheme: if terminator.is_some() {
            "https"
        } else {
            "http"
        },
    });
    let (stop, stop_rx) = watch::channel(false);
    let watcher = match &options.watch_file {
        Some(path) => Some(
            store::watch_file(path.clone(), store.clone()).map_err(|source| StartError::Watch {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let cert_watcher = match &terminator {
        Some(t) => Some(
            t.watch(metrics.clone())
                .map_err(|source| StartError::Watch {
                    path: t.tls.cert_file.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let (addr, data_plane) = match listener {
        Some(listener) => {
            let addr = listener.local_addr().map_err(bind_error)?;
            let builder = server::connection_builder(&valid);
            let task = tokio::spawn(server::run_listener(
                listener,
                state.clone(),
                builder,
                terminator.map(|t| (t, valid.header_read_timeout)),
                stop_rx.clone(),
                options.drain_timeout,
            ));
            (addr, task)
        }
        None => {
            let mut addr = valid.listen;
            let mut handles = Vec::with_capacity(threads);
            for slot in 1..=threads {
                let worker = Worker {
                    slot,
                    state: state.clone(),
                    valid: valid.clone(),
                    tls: terminator.clone(),
                    stop: stop_rx.clone(),
                    drain_timeout: options.drain_timeout,
                };
                // The first thread learns the port (config port 0); the others share it.
                let (bound, handle) = match spawn_worker(worker, addr) {
                    Ok(x) => x,
                    Err(source) => {
                        let _ = stop.send(true);
                        return Err(bind_error(source));
                    }
                };
                addr = bound;
                handles.push(handle);
            }
            let task = tokio::task::spawn_blocking(move || {
                for h in handles {
                    let _ = h.join();
                }
            });
            (addr, task)
        }
    };
    let admin = tokio::spawn(admin::run_admin(admin_listener, state.clone(), stop_rx));
    tracing::info!(%addr, %admin_addr, routes = valid.routes.len(), "sluice-proxy serving");
    Ok(ProxyHandle {
        addr,
        admin_addr,
        store,
        state,
        stop,
        data_plane,
        admin,
        watcher,
        cert_watcher,
    })
}
