//! A connection to a backend, plain or TLS, and how it is dialled.

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
