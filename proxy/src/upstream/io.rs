//! A connection to a backend, plain or TLS, and how it is dialled; why a
//! backend's TLS handshakes fail, logged at warn now and then
//! ([`TlsWarnings`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a backend.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why a connection could not be made; `Tls` maps to `kind="tls"`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp connect: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("tcp connect timed out")]
    TcpTimeout,
}

/// Dials `host:port` within `timeout`, then (with `tls`) the TLS
/// handshake within the same timeout again.
pub async fn dial(
    host: &str,
    port: u16,
    timeout: Duration,
    tls: Option<&(tokio_rustls::TlsConnector, ServerName<'static>)>,
) -> Result<UpstreamIo, ConnectError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ConnectError::TcpTimeout)?
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(UpstreamIo::Plain(tcp)),
        Some((connector, name)) => {
            let stream = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| ConnectError::TlsTimeout)?
                .map_err(ConnectError::Tls)?;
            Ok(UpstreamIo::Tls(Box::new(stream)))
        }
    }
}

/// How often one backend's TLS handshake failure of one reason is logged.
pub const TLS_WARN_EVERY: Duration = Duration::from_secs(60);

/// The most reasons one backend remembers (a backend that fails in more
/// ways than this at once is logged more often, never less).
const TLS_REASONS_KEPT: usize = 16;

/// Logs why a backend's TLS handshakes fail, at warn: the metric says only
/// `kind="tls"`, and an operator needs the reason (an unknown issuer, an
/// expired certificate, a name mismatch, no agreed ALPN protocol) at the
/// default level. At most once per reason per [`TLS_WARN_EVERY`], with how
/// many failures of that reason went unlogged since, so a backend failing
/// every handshake does not flood the log.
#[derive(Default)]
pub struct TlsWarnings {
    /// Per reason: when it was last logged, and the failures since.
    logged: std::sync::Mutex<Vec<(String, std::time::Instant, u64)>>,
}

impl TlsWarnings {
    /// Notes a failed dial of `upstream`; logs it when its reason is due.
    pub fn note(&self, upstream: &str, error: &ConnectError) {
        let reason = match error {
            ConnectError::Tls(e) => e.to_string(),
            ConnectError::TlsTimeout => "the handshake timed out".to_string(),
            ConnectError::Tcp(_) | ConnectError::TcpTimeout => return,
        };
        let now = std::time::Instant::now();
        let unlogged = {
            let mut logged = self.logged.lock().expect("tls warnings lock");
            match logged.iter_mut().find(|(r, ..)| *r == reason) {
                Some((_, at, count)) if now.duration_since(*at) < TLS_WARN_EVERY => {
                    *count += 1;
                    return;
                }
                Some((_, at, count)) => {
                    *at = now;
                    std::mem::take(count)
                }
                None => {
                    if logged.len() == TLS_REASONS_KEPT {
                        logged.remove(0);
                    }
                    logged.push((reason.clone(), now, 0));
                    0
                }
            }
        };
        tracing::warn!(
            upstream,
            %reason,
            unlogged_since_last = unlogged,
            "TLS handshake with the upstream failed (counted as kind=\"tls\"); logged at most once a minute per upstream and reason"
        );
    }
}

/// A backend's connection says nothing of bytes a TLS flush sent (see
/// `crate::conn::Sent`): backends are expected to read what they asked
/// for.
impl crate::conn::Sent for UpstreamIo {
    fn sent(&self) -> Option<u64> {
        None
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
