//! Phase 1 of every request: its connection is accepted, counted against
//! `limits.max_connections`, given TLS (on the main listener, when
//! configured), and handed to the protocol it speaks: over TLS, HTTP/2
//! when the client said so in the handshake (ALPN `h2`; RFC 9113 §3.3:
//! HTTP/2 over TLS is negotiated so, never sniffed), else HTTP/1.1; over
//! plain TCP, HTTP/2 when it sends the HTTP/2 connection preface (prior
//! knowledge), else HTTP/1.1 ([`crate::downstream`]). The TLS
//! handshake and the first bytes must come within
//! `limits.header_read_timeout`. On shutdown the listener stops accepting
//! and the connections drain (`crate::conn`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ValidConfig;
use crate::conn::{ConnLimits, Connections, Counted, Entered, Rewind, Sent, stopped};
use crate::downstream::ProxyState;
use crate::forward::Client;

/// The HTTP/2 connection preface's start.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The per-connection time limits of `valid`.
pub fn conn_limits(valid: &ValidConfig) -> ConnLimits {
    ConnLimits {
        header_read_timeout: valid.header_read_timeout,
        idle_timeout: valid.idle_timeout,
    }
}

/// What a listener's connections are served with.
pub struct Serving {
    pub state: Arc<ProxyState>,
    pub h2: crate::downstream::h2::Settings,
    pub tls: Option<Arc<crate::tls::Terminator>>,
    pub limits: ConnLimits,
}

/// Accepts connections until `shutdown` flips, then drains.
pub async fn run_listener(
    listener: TcpListener,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let connections = Connections::default();
    let serving = Arc::new(serving);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over limits.max_connections: closed at once, counted.
                    let Some(opened) = serving.state.capacity.try_open() else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let entered = connections.enter(Some(opened));
                    let serving = serving.clone();
                    // Apart: a plain connection's task keeps no room for a
                    // TLS handshake.
                    if let Some(terminator) = serving.tls.clone() {
                        tokio::spawn(serve_tls(stream, peer, terminator, serving, entered));
                    } else {
                        tokio::spawn(dispatch(stream, peer, serving, entered, Instant::now(), Speaks::Either));
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(timeout = ?drain_timeout, "draining in-flight requests");
    let deadline = tokio::time::Instant::now() + drain_timeout;
    connections.drain(drain_timeout).await;
    // Then the tunnels, within what is left of the same timeout; the ones
    // still open after it are cut when this serving thread ends.
    serving
        .state
        .tunnels
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
}

/// One accepted connection on a TLS listener: the handshake, then its
/// protocol.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    terminator: Arc<crate::tls::Terminator>,
    serving: Arc<Serving>,
    entered: Entered,
) {
    let opened = Instant::now();
    let acceptor = terminator.acceptor();
    let limits = serving.limits;
    match tokio::time::timeout(
        limits.header_read_timeout,
        acceptor.accept(Counted::new(stream)),
    )
    .await
    {
        Ok(Ok(tls)) => {
            let speaks = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Speaks::Http2,
                _ => Speaks::Http1,
            };
            dispatch(tls, peer, serving, entered, opened, speaks).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// What a connection speaks, as far as its handshake says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// TLS with ALPN `h2`.
    Http2,
    /// TLS without it: HTTP/1.1 only (an HTTP/2 preface is then a request
    /// line of HTTP/2.0, answered 505).
    Http1,
    /// Plain TCP: HTTP/2 with its preface first, or HTTP/1.1.
    Either,
}

/// Hands a connection to HTTP/2 or HTTP/1.1 (see [`Speaks`]).
async fn dispatch<S>(
    mut io: S,
    peer: SocketAddr,
    serving: Arc<Serving>,
    entered: Entered,
    opened: Instant,
    speaks: Speaks,
) where
    S: AsyncRead + AsyncWrite + Sent + crate::conn::Reset + Unpin + Send + 'static,
{
    let state = serving.state.clone();
    let client = Client::new(peer, state.scheme);
    let h2 = speaks == Speaks::Http2;
    let first = if h2 {
        Some(BytesMut::new())
    } else {
        let deadline = opened + serving.limits.header_read_timeout;
        first_bytes(&mut io, deadline).await
    };
    let Some(first) = first else {
        return;
    };
    if h2 || (speaks == Speaks::Either && first.starts_with(H2_PREFACE)) {
        let io = Rewind::new(io, first.freeze());
        // Boxed: an HTTP/1.1 connection's task keeps no room for it.
        let serve =
            crate::downstream::h2::serve(io, client, state, &serving.h2, entered, serving.limits);
        Box::pin(serve).await;
    } else {
        crate::downstream::h1::serve(io, first, client, state, entered, serving.limits, opened)
            .await;
    }
}

/// Reads until the first bytes tell HTTP/2's preface from anything else
/// (None: the client closed or said too little before `deadline`).
async fn first_bytes<S: AsyncRead + Unpin>(io: &mut S, deadline: Instant) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if !buf.is_empty() && (buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len()) {
            return Some(buf);
        }
        let read = tokio::io::AsyncReadExt::read_buf(io, &mut buf);
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) => {
                tracing::debug!("no request in time; closing");
                return None;
            }
        }
    }
}
