//! Upstream clients: one pooled hyper client per backend.
//!
//! Each client dials one fixed address whatever the request URI says, so the
//! request can carry the client's original authority (Host is preserved for
//! HTTP/1 and HTTP/2 upstreams alike) while the pool still belongs to the
//! backend. Clients are kept in a [`ClientPool`] keyed by everything that
//! shapes a connection, so a reload that keeps a backend keeps its warm
//! connections.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;

use crate::config::{Protocol, UpstreamUrl};
use crate::tls::{ConnectError, UpstreamIo, UpstreamTlsKey};

/// A connector that always dials the backend's address, then (for https
/// upstreams) runs a verified TLS handshake.
#[derive(Clone)]
pub struct FixedConnector {
    inner: HttpConnector,
    target: Uri,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    handshake_timeout: Duration,
}

impl tower_service::Service<Uri> for FixedConnector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx)
            .map_err(|e| ConnectError::Tcp(Box::new(e)))
    }

    fn call(&mut self, _requested: Uri) -> Self::Future {
        let tcp = tower_service::Service::<Uri>::call(&mut self.inner, self.target.clone());
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = tcp.await.map_err(|e| ConnectError::Tcp(Box::new(e)))?;
            match tls {
                None => Ok(UpstreamIo::Plain(tcp)),
                Some((connector, name)) => {
                    let handshake = connector.connect(name, tcp.into_inner());
                    let stream = tokio::time::timeout(timeout, handshake)
                        .await
                        .map_err(|_| ConnectError::TlsTimeout)?
                        .map_err(ConnectError::Tls)?;
                    Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}

pub type UpstreamClient = Client<FixedConnector, crate::body::UpstreamBody>;

/// Everything that shapes an upstream connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<UpstreamTlsKey>,
}

fn build_client(key: &PoolKey) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let target: Uri = format!("http://{}", key.url.authority())
        .parse()
        .expect("validated upstream authority");
    let tls = key.tls.as_ref().map(|t| {
        let config =
            crate::tls::client_config(t, key.protocol == Protocol::Http2).unwrap_or_else(|e| {
                // Checked before the table was built; a file broken since then
                // makes every handshake fail (502, kind="tls"): fail closed.
                tracing::error!(error = %e, "upstream TLS settings unusable; every handshake to this upstream fails");
                crate::tls::fail_closed_config(key.protocol == Protocol::Http2)
            });
        let name = ServerName::try_from(t.server_name.clone()).expect("validated server name");
        (tokio_rustls::TlsConnector::from(config), name)
    });
    let connector = FixedConnector {
        inner: http,
        target,
        tls,
        handshake_timeout: key.connect_timeout,
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(1024);
    if key.protocol == Protocol::Http2 {
        builder.http2_only(true);
        builder.http2_keep_alive_interval(Some(Duration::from_secs(30)));
    }
    builder.build(connector)
}

/// One client per serving thread for a backend, so that each thread's
/// requests use connections driven by that same thread (no cross-thread
/// wake-ups on the hot path).
#[derive(Clone)]
pub struct BackendClients(Arc<[UpstreamClient]>);

impl BackendClients {
    /// The client of the current serving thread.
    pub fn current(&self) -> &UpstreamClient {
        &self.0[crate::worker::slot() % self.0.len()]
    }
}

/// Clients by [`PoolKey`], shared across routing tables.
pub struct ClientPool {
    slots: usize,
    clients: Mutex<HashMap<PoolKey, BackendClients>>,
}

impl Default for ClientPool {
    fn default() -> Self {
        Self::new(0)
    }
}

impl ClientPool {
    /// A pool for `threads` dedicated serving threads (0: the caller's runtime only).
    pub fn new(threads: usize) -> Self {
        Self {
            slots: threads + 1,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The clients for `key`, reusing the existing ones (and their connections).
    pub fn get(&self, key: &PoolKey) -> BackendClients {
        let mut map = self.clients.lock().expect("pool lock");
        map.entry(key.clone())
            .or_insert_with(|| BackendClients((0..self.slots).map(|_| build_client(key)).collect()))
            .clone()
    }

    /// Drops clients no longer used by the current table.
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut map = self.clients.lock().expect("pool lock");
        map.retain(|k, _| keep.contains(k));
    }
}
