//! HTTP/2 backends, through hyper's client: one multiplexed connection per
//! backend and serving thread, driven by its own task on that thread.
//!
//! hyper's client polls a request body from that task, so the body must
//! own its source: an HTTP/2 client's body (hyper's own) is handed over
//! as it is; one read ahead whole goes as a copy of its frames (so that a
//! refused stream can be sent again, with the length hyper then declares);
//! the rest of a body the own HTTP/1.1 downstream reads from its client's
//! connection is pumped to it, frame by frame, through a small channel, by
//! the request's task.
//!
//! **An answer before the body's end** (RFC 9113 §8.1: a 413, or a whole
//! answer then `RST_STREAM(NO_ERROR)`): the pump stops at the answer's
//! head, as with an HTTP/1.1 backend, and the rest of the client's body
//! is not read (the client's connection closes after the answer, see
//! `crate::downstream::h1`). The request stream stays open, idle, while
//! the answer is relayed: resetting it at once would cut the answer too.
//! Its sender ([`Rest`]) is held by the response body and dropped with it,
//! which ends the request body in an error, so the backend gets a reset
//! stream (`CANCEL`), never a request cut short that looks whole. (hyper
//! polls the body only while the stream has window: a backend that
//! neither reads the rest nor resets the stream keeps it until it does,
//! or until the connection closes, `timeouts.upstream_idle` after its
//! last exchange.) A backend that waits for the rest of the body before
//! it ends its answer gets no more of it (it times out like with an
//! HTTP/1.1 backend); an HTTP/2 client's body, hyper's own, streams both
//! ways at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::idle::IdleMark;
use super::io::UpstreamIo;
use crate::BoxError;
use crate::body::UpstreamBody;
use crate::metrics::UpstreamErrorKind;

/// An HTTP/2 connection of one serving thread.
#[derive(Clone)]
pub(super) struct H2Conn {
    sender: http2::SendRequest<H2Body>,
    streams: Arc<Streams>,
}

/// The exchanges running on an HTTP/2 connection, and since when it has
/// had none.
pub(super) struct Streams {
    open: AtomicUsize,
    mark: IdleMark,
}

/// One exchange on an HTTP/2 connection, until its response body ends or
/// is dropped.
pub(super) struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.mark.touch();
        }
    }
}

/// A request body as hyper's client polls it.
pub(super) enum H2Body {
    /// A body that owns its source.
    Direct(UpstreamBody<'static>),
    /// Frames pumped by the request's task (see the module docs).
    Pumped {
        frames: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
        /// The pump reached the body's end.
        complete: Arc<AtomicBool>,
    },
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            H2Body::Direct(body) => Pin::new(body).poll_frame(cx),
            H2Body::Pumped { frames, complete } => match frames.poll_recv(cx) {
                Poll::Ready(None) if !complete.load(Ordering::SeqCst) => Poll::Ready(Some(Err(
                    "the request body was abandoned before its end".into(),
                ))),
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Body::Direct(body) => body.is_end_stream(),
            H2Body::Pumped { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2Body::Direct(body) => body.size_hint(),
            H2Body::Pumped { .. } => SizeHint::default(),
        }
    }
}

/// The pump's end of a pumped body's channel.
pub(super) type FrameSender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// The sender of a pumped body the pump left before its end, held until
/// the answer has been relayed (see the module docs); dropping it resets
/// the request stream.
pub(super) struct Rest {
    _sender: FrameSender,
}

/// Moves `body`'s frames into `frames` until the body ends (Ok, and the
/// sender dropped: the body's end), fails (its error; the sender dropped
/// after the error), or the receiver is gone (Ok: hyper stopped reading).
/// A pump stopped before it returns leaves the sender in `frames`.
pub(super) async fn pump(
    body: &mut UpstreamBody<'_>,
    frames: &mut Option<FrameSender>,
    complete: Arc<AtomicBool>,
) -> Result<(), BoxError> {
    loop {
        let Some(sender) = frames.as_ref() else {
            return Ok(());
        };
        let Ok(room) = sender.reserve().await else {
            return Ok(());
        };
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => {
                complete.store(true, Ordering::SeqCst);
                drop(room);
                *frames = None;
                return Ok(());
            }
            Some(Ok(frame)) => room.send(Ok(frame)),
            Some(Err(e)) => {
                room.send(Err("the request body failed".into()));
                *frames = None;
                return Err(e);
            }
        }
    }
}

/// What is left of a pump stopped before the body's end.
pub(super) fn rest(frames: Option<FrameSender>) -> Option<Rest> {
    frames.map(|sender| Rest { _sender: sender })
}

/// A pumped body and the pump's ends.
pub(super) fn pumped() -> (H2Body, FrameSender, Arc<AtomicBool>) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let complete = Arc::new(AtomicBool::new(false));
    let body = H2Body::Pumped {
        frames: rx,
        complete: complete.clone(),
    };
    (body, tx, complete)
}

impl H2Conn {
    /// Whether the connection may carry another stream.
    pub(super) fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// Flow-control windows for backends' answers: a stream may have 512 KiB
/// in flight (as clients' bodies do), the connection 16 MiB. An answer is read from the backend
/// only as fast as its client takes it, so a client that stops reading
/// holds its stream's window; with hyper's defaults (2 MiB a stream, 5
/// MiB the connection) three such clients held the whole connection's
/// window, and every other answer on it stopped (and, past
/// `timeouts.answer_idle`, was charged to the backend). Now it takes 32.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A new HTTP/2 connection over `io`, driven by a task of its own on this
/// thread, closed after `idle_timeout` without a stream.
pub(super) async fn handshake(
    io: UpstreamIo,
    idle_timeout: Duration,
) -> Result<H2Conn, hyper::Error> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let (sender, conn) = builder.handshake(TokioIo::new(io)).await?;
    let streams = Arc::new(Streams {
        open: AtomicUsize::new(0),
        mark: IdleMark::now(),
    });
    let watched = streams.clone();
    // Idle while no exchange runs; requests that hold the sender of a
    // connection closed meanwhile dial a new one.
    drive(conn, idle_timeout, move || {
        if watched.open.load(Ordering::Relaxed) == 0 {
            watched.mark.idle_for()
        } else {
            Duration::ZERO
        }
    });
    Ok(H2Conn { sender, streams })
}

/// Drives an upstream connection on its own task (on this thread) until
/// it ends, or until `idle_for` reaches `idle_timeout`: dropping it then
/// closes it, and its sender in the pool reads as closed. One timer per
/// connection, none per request.
fn drive<C, E>(conn: C, idle_timeout: Duration, idle_for: impl Fn() -> Duration + Send + 'static)
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        tokio::pin!(conn);
        let mut ticks = tokio::time::interval(crate::conn::check_every(idle_timeout));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return;
                }
                _ = ticks.tick() => {
                    if idle_for() >= idle_timeout {
                        return;
                    }
                }
            }
        }
    });
}

/// How an exchange on an HTTP/2 connection missed.
pub(super) enum Miss {
    /// hyper handed the request back: it never left.
    Unsent(hyper::Error),
    /// The request may have reached the backend; how it was turned away
    /// or cut (see [`Turned`]).
    Sent { error: hyper::Error, turned: Turned },
    /// The request body failed while it was pumped.
    Body(BoxError),
}

/// One exchange on `conn`: the response (and the stream's guard), or how
/// it missed.
pub(super) async fn send(
    conn: H2Conn,
    req: http::Request<H2Body>,
) -> Result<(http::Response<hyper::body::Incoming>, StreamGuard), Miss> {
    let H2Conn {
        mut sender,
        streams,
    } = conn;
    let guard = StreamGuard::new(&streams);
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, guard)),
        Err(mut e) => {
            let handed_back = e.take_message().is_some();
            let error = e.into_error();
            if handed_back {
                return Err(Miss::Unsent(error));
            }
            let turned = Turned::of(&error);
            Err(Miss::Sent { error, turned })
        }
    }
}

/// How an HTTP/2 backend turned a stream away or cut it.
pub(super) struct Turned {
    /// Reset with `REFUSED_STREAM`, which promises the backend did no
    /// work (RFC 9113 §8.7): safe to send anywhere again.
    pub refused: bool,
    /// Cut by the backend's GOAWAY, which promises the same. The `h2`
    /// library gives a stream the backend's GOAWAY error only when its
    /// identifier is above the GOAWAY's last stream identifier (which RFC
    /// 9113 §6.8 says was not processed) or when it could not be opened
    /// after the GOAWAY; a stream at or below it that the connection's
    /// close cut is a broken pipe, never resent.
    pub cut: bool,
    /// The backend reset the stream or closed the connection (`reset`);
    /// otherwise the exchange broke HTTP/2's rules (`protocol`).
    pub kind: UpstreamErrorKind,
}

impl Turned {
    fn of(error: &hyper::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(error);
        let (mut h2, mut io) = (None, false);
        while let Some(s) = source {
            if let Some(e) = s.downcast_ref::<h2::Error>() {
                h2 = Some(e);
                break;
            }
            io |= s.is::<std::io::Error>();
            source = s.source();
        }
        // The backend's RST_STREAM or GOAWAY, or the connection's end
        // (hyper gives an I/O error of `h2`'s as its own).
        let closed = match h2 {
            Some(h2) => h2.is_remote() || h2.is_io(),
            None => io || error.is_canceled() || error.is_closed() || error.is_incomplete_message(),
        };
        Self {
            refused: h2.is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM)),
            cut: h2.is_some_and(|h2| h2.is_go_away() && h2.is_remote()),
            // A backend that stopped answering keep-alive PINGs is a
            // timeout, not a broken rule.
            kind: if error.is_timeout() {
                UpstreamErrorKind::Timeout
            } else if closed {
                UpstreamErrorKind::Reset
            } else {
                UpstreamErrorKind::Protocol
            },
        }
    }
}
