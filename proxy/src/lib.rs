//! Sluice's data plane: an L7 proxy that splits each route's requests between
//! a stable and a canary upstream by *exact* weight, answers A/B rules, and
//! records its own RED metrics per route and backend.
//!
//! The binary `sluice-proxy` is a thin wrapper over [`start`]; the demo and
//! the end-to-end tests run the same code in-process.

pub mod admin;
pub mod body;
pub mod config;
pub mod kube_source;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod split;
pub mod store;
pub mod tls;
pub mod upstream;

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
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            watch_file: None,
            drain_timeout: Duration::from_secs(30),
        }
    }
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

    /// Resolves when the data plane has stopped.
    pub fn is_finished(&self) -> bool {
        self.data_plane.is_finished()
    }
}

/// Binds both listeners and serves `config` until [`ProxyHandle::shutdown`].
pub async fn start(config: Config, options: StartOptions) -> Result<ProxyHandle, StartError> {
    let metrics = Metrics::new();
    let store = Store::new(config, metrics.clone())?;
    let routing = store.load();
    let valid = routing.valid.clone();
    drop(routing);
    let listener = TcpListener::bind(valid.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "listen",
            addr: valid.listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(valid.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin.listen",
            addr: valid.admin_listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
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
    let builder = server::connection_builder(&valid);
    let data_plane = tokio::spawn(server::run_listener(
        listener,
        state.clone(),
        builder,
        terminator.map(|t| (t, valid.header_read_timeout)),
        stop_rx.clone(),
        options.drain_timeout,
    ));
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
