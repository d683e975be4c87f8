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
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{Protocol, UpstreamUrl};

/// A connector that always dials the backend's address.
#[derive(Clone)]
pub struct FixedConnector {
    inner: HttpConnector,
    target: Uri,
}

impl tower_service::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, _requested: Uri) -> Self::Future {
        let fut = tower_service::Service::<Uri>::call(&mut self.inner, self.target.clone());
        Box::pin(fut)
    }
}

pub type UpstreamClient = Client<FixedConnector, Incoming>;

/// Everything that shapes an upstream connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
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
    let connector = FixedConnector {
        inner: http,
        target,
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024);
    if key.protocol == Protocol::Http2 {
        builder.http2_only(true);
        builder.http2_keep_alive_interval(Some(Duration::from_secs(30)));
    }
    builder.build(connector)
}

/// Clients by [`PoolKey`], shared across routing tables.
#[derive(Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl ClientPool {
    /// The client for `key`, reusing the existing one (and its connections).
    pub fn get(&self, key: &PoolKey) -> UpstreamClient {
        let mut map = self.clients.lock().expect("pool lock");
        map.entry(key.clone())
            .or_insert_with(|| build_client(key))
            .clone()
    }

    /// Drops clients no longer used by the current table.
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut map = self.clients.lock().expect("pool lock");
        map.retain(|k, _| keep.contains(k));
    }

    pub fn len(&self) -> usize {
        self.clients.lock().expect("pool lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
