//! The client's side of an HTTP/1.1 connection while a request is in
//! flight: its request body as the forward phase reads it, the watch for a
//! client that goes away, and informational heads written as they come.
//!
//! All three use the connection at once (the body is read while the
//! backend may already answer, and a 103 may come at any time), so the
//! connection sits behind a lock that each of them takes only inside a
//! poll, never across a wait: the request's one task is its only user.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{ClientBody, ClientFault, Progress};
use crate::conn::poll_fill;
use crate::fields::Fields;
use crate::http1::framing::{Decoded, Decoder, Framing};
use crate::metrics::ClientErrorKind;

/// Bytes asked of the socket per read.
pub(super) const READ_SIZE: usize = 4096;
/// Bytes asked per head read once the connection has sent a request with
/// a body: a head and a small body sent together (a 4 KiB POST) then come
/// in one read, not two. Connections that send only bodiless requests
/// keep the smaller room while idle.
pub(super) const BODY_READ_SIZE: usize = 8192;
/// Bytes asked per read while a long request body streams.
const LARGE_READ: usize = 64 * 1024;

/// The connection to the client and what was read from it.
pub(super) struct Inbound<S> {
    pub io: S,
    /// Bytes from the client not yet consumed.
    pub buf: BytesMut,
    /// The client has closed its side (a half-close after pipelined
    /// requests): the requests already read are answered, then the
    /// connection closes.
    pub read_closed: bool,
    /// Informational heads the socket did not take at once; they go
    /// before the final head.
    pub interim: Vec<u8>,
}

/// Writes what of `out` the socket takes now, without waiting; the rest
/// stays in `out`.
pub(super) fn write_now<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while !out.is_empty() {
        match Pin::new(&mut *io).poll_write(&mut cx, out) {
            Poll::Ready(Ok(n)) if n > 0 => {
                out.drain(..n);
            }
            _ => break,
        }
    }
    let _ = Pin::new(io).poll_flush(&mut cx);
}

/// The `100 Continue` an HTTP/1.1 client that sent `Expect: 100-continue`
/// waits for before its body; written when the body is first read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request body read from the client's connection, by its framing.
pub(super) struct BodyReader<'c, S> {
    inbound: &'c Mutex<Inbound<S>>,
    decoder: Decoder,
    /// What is left to write of `100 Continue`.
    continue_left: &'static [u8],
    /// Bytes were read since [`ClientBody::took_bytes`] last asked.
    took: bool,
}

impl<'c, S> BodyReader<'c, S> {
    pub fn new(inbound: &'c Mutex<Inbound<S>>, framing: Framing, expect_continue: bool) -> Self {
        let decoder = Decoder::new(framing, true);
        let continue_left = if expect_continue && !decoder.is_done() {
            CONTINUE
        } else {
            b""
        };
        Self {
            inbound,
            decoder,
            continue_left,
            took: false,
        }
    }
}

fn fault(kind: ClientErrorKind, detail: impl Into<String>) -> ClientFault {
    ClientFault {
        kind,
        detail: detail.into(),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientBody for BodyReader<'_, S> {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
        let mut inbound = self.inbound.lock().expect("inbound lock");
        let inbound = &mut *inbound;
        while !self.continue_left.is_empty() {
            match Pin::new(&mut inbound.io).poll_write(cx, self.continue_left) {
                Poll::Ready(Ok(n)) if n > 0 => self.continue_left = &self.continue_left[n..],
                Poll::Ready(_) => {
                    return Poll::Ready(Some(Err(fault(
                        ClientErrorKind::IncompleteBody,
                        "the connection failed before the body",
                    ))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match self.decoder.decode(&mut inbound.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => {
                    return Poll::Ready(Some(Err(fault(ClientErrorKind::MalformedBody, e.0))));
                }
            }
            let size = match self.decoder.remaining() {
                Some(n) if n > READ_SIZE as u64 => n.min(LARGE_READ as u64) as usize,
                _ => READ_SIZE,
            };
            match std::task::ready!(poll_fill(&mut inbound.io, &mut inbound.buf, size, cx)) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(fault(
                        ClientErrorKind::IncompleteBody,
                        "the connection closed before the end of the body",
                    ))));
                }
                Ok(_) => self.took = true,
                Err(e) => {
                    return Poll::Ready(Some(Err(fault(
                        ClientErrorKind::IncompleteBody,
                        format!("reading the body: {e}"),
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
    fn took_bytes(&mut self) -> bool {
        std::mem::take(&mut self.took)
    }
}

/// Resolves when the client closes its connection (or it fails) while a
/// request waits for its answer, once its body has all been read; bytes it
/// sends meanwhile (a pipelined request) are kept, up to `limit`. The end
/// of its input after pipelined requests (more are buffered, or this one
/// was sent before the previous answer) is a half-close, not a client
/// gone: `read_closed` is set, and the requests already read are
/// answered. A lone request's client that closes is gone (a 499): nothing
/// on the wire tells a half-close from a close, and nginx reads it so too.
/// Never the client's fault (None; see `crate::forward::forward`).
pub(super) async fn gone<S: AsyncRead + Unpin>(
    inbound: &Mutex<Inbound<S>>,
    progress: &Progress,
    limit: usize,
    pipelined: bool,
) -> Option<ClientErrorKind> {
    progress.sent().await;
    std::future::poll_fn(|cx| {
        let mut inbound = inbound.lock().expect("inbound lock");
        let inbound = &mut *inbound;
        loop {
            if inbound.buf.len() >= limit || inbound.read_closed {
                // Enough pipelined bytes to look at later, or no more to
                // come: read no more.
                return Poll::Pending;
            }
            match std::task::ready!(poll_fill(&mut inbound.io, &mut inbound.buf, READ_SIZE, cx)) {
                Ok(0) if inbound.buf.is_empty() && !pipelined => return Poll::Ready(None),
                Ok(0) => inbound.read_closed = true,
                Ok(_) => {}
                Err(_) => return Poll::Ready(None),
            }
        }
    })
    .await
}

/// Bytes of informational heads held for a client that does not take them;
/// later heads are dropped until it does (they are hints: a client may do
/// without them).
const MAX_HELD_INTERIM: usize = 16 * 1024;

/// Writes an informational response head (103 Early Hints) for an
/// HTTP/1.1 client as it comes: its status and fields, less the hop-by-hop
/// ones and any length. What the socket does not take at once goes with
/// the final head, up to [`MAX_HELD_INTERIM`] bytes.
pub(super) fn interim<S: AsyncWrite + Unpin>(
    inbound: &Mutex<Inbound<S>>,
    status: StatusCode,
    fields: &dyn Fields,
) {
    use crate::answer::ResponseField;
    let mut inbound = inbound.lock().expect("inbound lock");
    let inbound = &mut *inbound;
    write_now(&mut inbound.io, &mut inbound.interim);
    if inbound.interim.len() > MAX_HELD_INTERIM {
        return;
    }
    crate::http1::write::status_line(&mut inbound.interim, status);
    crate::answer::each_passed_field(fields, true, &mut |kind, name, value| {
        if kind != ResponseField::ContentLength {
            crate::http1::write::field(&mut inbound.interim, name, value);
        }
    });
    inbound.interim.extend_from_slice(b"\r\n");
    write_now(&mut inbound.io, &mut inbound.interim);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend's informational heads for a client that never reads: once
    /// the kernel's buffers are full, the proxy holds at most
    /// [`MAX_HELD_INTERIM`] bytes of them (and one head past it).
    #[tokio::test]
    async fn heads_held_for_a_client_that_does_not_read_are_capped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let inbound = Mutex::new(Inbound {
            io: server,
            buf: BytesMut::new(),
            read_closed: false,
            interim: Vec::new(),
        });
        let mut fields = http::HeaderMap::new();
        fields.insert("link", "</s.css>; rel=preload".parse().unwrap());
        let hints = StatusCode::from_u16(103).unwrap();
        // About 9 MB of heads, more than the kernel buffers for a peer
        // that does not read.
        for _ in 0..200_000 {
            interim(&inbound, hints, &fields);
        }
        let held = inbound.lock().unwrap().interim.len();
        assert!(
            held > 0 && held <= MAX_HELD_INTERIM + 128,
            "{held} bytes held"
        );
        drop(client);
    }
}
