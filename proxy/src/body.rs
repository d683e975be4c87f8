//! The request body on its way upstream ([`UpstreamBody`]), whoever reads
//! it from the client: the own HTTP/1.1 connection ([`ClientBody`]) or an
//! HTTP/2 stream ([`H2Incoming`]). It tells the client's faults
//! apart from everything else, so a client's fault is never a backend's:
//!
//! - A body that breaks on the client's side (a malformed chunk, a
//!   connection or stream that ends before the body does) records which
//!   fault it was ([`Progress::client_fault`]); the request path answers
//!   400 and counts it in `sluice_client_errors_total` only.
//! - A body that grows past `limits.max_request_body` ends in
//!   [`BodyTooLarge`] ([`Progress::exceeded`]): 413.
//! - [`Progress`] says when the whole body has gone upstream (the request
//!   timeout starts then) and who holds the rest up ([`Progress::stall`]):
//!   the client, when the proxy has asked it for more and waits (408 past
//!   `timeouts.idle`), or the backend, when it has stopped taking what the
//!   proxy has (504, on the backend). A pause the backend causes (it reads
//!   slowly, so the proxy reads no more from the client) is never the
//!   client's.
//! - The body can be read ahead of the upstream exchange
//!   ([`UpstreamBody::read_ahead`]), so one that breaks early never
//!   reaches a backend; what was read goes first, and a body read ahead
//!   whole can be sent again (a retry or a failover to another backend).
//!   An HTTP/2 client's body is read ahead only as far as it has already
//!   come ([`UpstreamBody::read_arrived`]): it never waits.
//! - A [`Tee`] copies the body as it streams, for a mirrored request.
//! - The client's trailers go on filtered as its head is
//!   (`crate::fields::trailer_passes`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::metrics::ClientErrorKind;

/// How a client broke its request body.
#[derive(Debug)]
pub struct ClientFault {
    pub kind: ClientErrorKind,
    /// What was wrong, for the answer and the log.
    pub detail: String,
}

impl std::fmt::Display for ClientFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ClientFault {}

/// A request body read from a client connection by the proxy's own code
/// (the HTTP/1.1 downstream); every error it gives is the client's fault.
pub trait ClientBody: Send {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>>;
    fn is_end_stream(&self) -> bool;
    fn size_hint(&self) -> SizeHint;
    /// Whether the reader took bytes from the client since it was last
    /// asked, though they made no frame yet (a chunk-size line, a trailer
    /// section on its way): the client is sending, so its pause has not
    /// begun.
    fn took_bytes(&mut self) -> bool;
}

/// Where the body comes from.
enum Source<'a> {
    /// The own HTTP/1.1 downstream's reader.
    Client(&'a mut (dyn ClientBody + 'a)),
    /// An HTTP/2 client's stream.
    H2(H2Incoming),
    /// Held whole (a mirrored copy's), or none.
    Full(Option<Bytes>),
}

/// A request body on its way upstream, watched (see the module docs).
pub struct UpstreamBody<'a> {
    source: Source<'a>,
    /// Frames read ahead of the upstream exchange, handed on first.
    ahead: VecDeque<Frame<Bytes>>,
    /// Whether `ahead` is the whole body (read ahead to its end).
    whole: bool,
    /// Frames handed on from `ahead` so far (kept when the body was read
    /// whole, so it can be sent again).
    sent_ahead: usize,
    /// The source has ended.
    ended: bool,
    /// A frame was handed on that cannot be handed on again (anything
    /// not read ahead whole).
    touched: bool,
    tee: Option<Box<Tee>>,
    /// Bytes still allowed; None: no cap.
    left: Option<u64>,
    /// Trailer names with `_` go on (the route keeps such names).
    keep_underscores: bool,
    /// None for a request with no body (it is sent from the start).
    progress: Option<Arc<BodyProgress>>,
}

/// Who holds a request body up (see [`Progress::stall`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    Client,
    Backend,
}

/// Not yet (a time in [`BodyProgress`]).
const NEVER: u64 = u64::MAX;

/// The request path's view of an [`UpstreamBody`]'s progress; a request
/// without a body costs no allocation and counts as sent from the start.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<BodyProgress>>);

/// What the request path knows of an [`UpstreamBody`] on its way.
pub struct BodyProgress {
    start: Instant,
    /// Since when (ms from `start`) the proxy has waited on the client for
    /// more of the body; [`NEVER`] while it is not waiting.
    waiting_ms: AtomicU64,
    /// When the upstream side last asked for more of the body; [`NEVER`]
    /// before it first did.
    asked_ms: AtomicU64,
    done: AtomicBool,
    exceeded: AtomicBool,
    /// 0, or 1 + the [`ClientErrorKind`] the client's body broke with.
    client_fault: AtomicU8,
    sent: tokio::sync::Notify,
}

impl Progress {
    /// Resolves once the whole body has gone upstream.
    pub async fn sent(&self) {
        if let Some(p) = &self.0 {
            loop {
                let notified = p.sent.notified();
                if p.done.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }

    pub fn is_sent(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|p| p.done.load(Ordering::SeqCst))
    }

    /// Who has held the body up for `limit` or more, if anyone (never once
    /// it has all gone): the client, when the proxy has waited on it that
    /// long; else the backend, when it has taken nothing of the body for
    /// that long since it first asked for it.
    pub fn stall(&self, limit: Duration) -> Option<Stall> {
        let p = self.0.as_ref()?;
        if p.done.load(Ordering::SeqCst) {
            return None;
        }
        let now = p.start.elapsed().as_millis() as u64;
        let limit = limit.as_millis() as u64;
        let waiting = p.waiting_ms.load(Ordering::SeqCst);
        if waiting != NEVER {
            return (now.saturating_sub(waiting) >= limit).then_some(Stall::Client);
        }
        let asked = p.asked_ms.load(Ordering::SeqCst);
        (asked != NEVER && now.saturating_sub(asked) >= limit).then_some(Stall::Backend)
    }

    /// The body grew past `limits.max_request_body`.
    pub fn exceeded(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|p| p.exceeded.load(Ordering::SeqCst))
    }

    /// How the body broke on the client's side, if it did.
    pub fn client_fault(&self) -> Option<ClientErrorKind> {
        let code = self.0.as_ref()?.client_fault.load(Ordering::SeqCst);
        ClientErrorKind::ALL
            .into_iter()
            .find(|kind| *kind as u8 + 1 == code)
    }

    /// Whether there is a body at all.
    pub fn has_body(&self) -> bool {
        self.0.is_some()
    }
}

impl BodyProgress {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            waiting_ms: AtomicU64::new(NEVER),
            asked_ms: AtomicU64::new(NEVER),
            done: AtomicBool::new(false),
            exceeded: AtomicBool::new(false),
            client_fault: AtomicU8::new(0),
            sent: tokio::sync::Notify::new(),
        })
    }

    fn mark_done(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.sent.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The proxy asked the client for more and has to wait.
    fn wait_on_client(&self) {
        if self.waiting_ms.load(Ordering::SeqCst) == NEVER {
            self.waiting_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// The client gave what the proxy asked for (or ended).
    fn client_answered(&self) {
        self.waiting_ms.store(NEVER, Ordering::SeqCst);
    }

    /// The upstream side asked for more of the body.
    fn note_asked(&self) {
        self.asked_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    fn fault(&self, kind: ClientErrorKind) {
        self.client_fault.store(kind as u8 + 1, Ordering::SeqCst);
    }
}

impl<'a> UpstreamBody<'a> {
    fn with_source(source: Source<'a>, has_body: bool, cap: Option<u64>) -> (Self, Progress) {
        let progress = has_body.then(BodyProgress::new);
        let body = Self {
            source,
            ahead: VecDeque::new(),
            whole: false,
            sent_ahead: 0,
            ended: !has_body,
            touched: false,
            tee: None,
            left: cap,
            keep_underscores: false,
            progress: progress.clone(),
        };
        (body, Progress(progress))
    }

    /// The body the own HTTP/1.1 downstream reads; `cap` is
    /// `limits.max_request_body`.
    pub fn client(reader: &'a mut (dyn ClientBody + 'a), cap: Option<u64>) -> (Self, Progress) {
        let has_body = !reader.is_end_stream();
        Self::with_source(Source::Client(reader), has_body, cap)
    }

    /// An HTTP/2 client's body, as the HTTP/2 downstream reads it.
    pub fn h2(incoming: H2Incoming, cap: Option<u64>) -> (Self, Progress) {
        let has_body = !incoming.is_end_stream();
        Self::with_source(Source::H2(incoming), has_body, cap)
    }

    /// A body held whole (None or empty: no body).
    pub fn full(bytes: Option<Bytes>) -> Self {
        let bytes = bytes.filter(|b| !b.is_empty());
        Self {
            ended: bytes.is_none(),
            source: Source::Full(bytes),
            ahead: VecDeque::new(),
            whole: false,
            sent_ahead: 0,
            touched: false,
            tee: None,
            left: None,
            keep_underscores: false,
            progress: None,
        }
    }

    /// A request with nothing in it.
    pub fn empty() -> Self {
        Self::full(None)
    }

    /// Passes trailer names with `_` on (a route that keeps such names).
    pub fn keep_underscore_names(&mut self) {
        self.keep_underscores = true;
    }

    /// Copies the body for a mirrored request as it streams (the body
    /// must not have been handed on yet).
    pub fn tee(&mut self, mut tee: Tee) {
        for frame in &self.ahead {
            tee.frame(frame);
        }
        if self.whole || self.ended {
            tee.end();
        }
        self.tee = Some(Box::new(tee));
    }

    /// Reads the body ahead of the upstream exchange until it ends or
    /// `limit` bytes have come (see the module docs). Err: the body failed
    /// (too large, or broken by the client: see [`Progress`]).
    pub async fn read_ahead(&mut self, limit: usize) -> Result<(), BoxError> {
        let mut gathered = 0;
        while gathered < limit && !self.ended {
            match std::future::poll_fn(|cx| self.poll_source(cx)).await {
                Some(Ok(frame)) => {
                    gathered += frame.data_ref().map_or(0, Bytes::len);
                    self.ahead.push_back(frame);
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        self.whole = self.ended;
        Ok(())
    }

    /// Reads ahead what of the body has already come, without waiting for
    /// more, until it ends or `limit` bytes have come: an HTTP/2 client's
    /// body, which must not be held back (a client may wait for the
    /// answer's head before it sends more), but which, when it came whole
    /// with its head, can then be sent again. Err: the body failed.
    ///
    /// What came is copied into one buffer: however many frames a client
    /// splits it into (16,384 frames of one byte), a stream holds its bytes
    /// and no more, and no read buffer of the connection's. Once `limit` is
    /// reached one more frame already there is taken, so that an empty
    /// `END_STREAM` frame or trailers after exactly `limit` bytes still
    /// make the body whole: at most `limit` plus a frame (16 KiB) is held.
    pub async fn read_arrived(&mut self, limit: usize) -> Result<(), BoxError> {
        let mut data = bytes::BytesMut::new();
        let mut trailers = Vec::new();
        let mut last = false;
        while !self.ended && !last {
            last = data.len() >= limit;
            match std::future::poll_fn(|cx| Poll::Ready(self.poll_source(cx))).await {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(frame) => trailers.push(frame),
                },
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => {}
                Poll::Pending => {
                    // Nothing is asked of the client yet: the exchange
                    // asks, and starts the client's clock, as it streams.
                    if let Some(p) = &self.progress {
                        p.client_answered();
                    }
                    break;
                }
            }
        }
        if !data.is_empty() {
            self.ahead.push_back(Frame::data(data.freeze()));
        }
        self.ahead.extend(trailers);
        self.whole = self.ended;
        Ok(())
    }

    /// Whether the body, as far as it was handed on, can be sent again:
    /// nothing of it was taken beyond what was read ahead whole (or there
    /// is none). [`UpstreamBody::rewind`] makes it so.
    pub fn can_resend(&self) -> bool {
        !self.touched
    }

    /// A copy of a body read ahead whole, from where it stands, to hand
    /// to a sender that takes its body away (hyper's HTTP/2 client): this
    /// one stays, to be sent again if the backend refuses the stream.
    /// None for a body not read ahead whole. The copy has no tee or
    /// progress of its own: both ended when the body was read.
    pub fn copy_whole(&self) -> Option<UpstreamBody<'static>> {
        self.whole.then(|| UpstreamBody {
            source: Source::Full(None),
            ahead: self
                .ahead
                .iter()
                .skip(self.sent_ahead)
                .map(clone_frame)
                .collect(),
            whole: true,
            sent_ahead: 0,
            ended: true,
            touched: false,
            tee: None,
            left: None,
            keep_underscores: self.keep_underscores,
            progress: None,
        })
    }

    /// Starts the body over (see [`UpstreamBody::can_resend`]).
    pub fn rewind(&mut self) {
        self.sent_ahead = 0;
    }

    /// Whether the client's body has been read to its end.
    pub fn is_complete(&self) -> bool {
        self.ended
    }

    /// The body with the client reader's lifetime gone, when it does not
    /// read from one (an HTTP/2 client's, a whole one); else itself back.
    pub fn into_static(self) -> Result<UpstreamBody<'static>, Self> {
        let source = match self.source {
            Source::Client(reader) => {
                return Err(Self {
                    source: Source::Client(reader),
                    ..self
                });
            }
            Source::H2(incoming) => Source::H2(incoming),
            Source::Full(bytes) => Source::Full(bytes),
        };
        Ok(UpstreamBody {
            source,
            ahead: self.ahead,
            whole: self.whole,
            sent_ahead: self.sent_ahead,
            ended: self.ended,
            touched: self.touched,
            tee: self.tee,
            left: self.left,
            keep_underscores: self.keep_underscores,
            progress: self.progress,
        })
    }

    /// The next frame of the source, watched (see the module docs).
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled: Poll<Option<Result<Frame<Bytes>, ClientFault>>> = match &mut self.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Client(reader) => reader.poll_frame(cx),
            Source::H2(incoming) => Pin::new(incoming).poll_frame(cx).map(|polled| {
                polled.map(|frame| {
                    let frame = frame.map_err(|e| ClientFault {
                        kind: client_fault_kind(&e),
                        detail: innermost_cause(&e),
                    })?;
                    // HTTP/1.x's bound on a trailer section, as on a head.
                    if frame
                        .trailers_ref()
                        .is_some_and(|t| t.len() > crate::fields::MAX_FIELDS)
                    {
                        return Err(ClientFault {
                            kind: ClientErrorKind::MalformedBody,
                            detail: format!(
                                "the trailer section has more than {} fields",
                                crate::fields::MAX_FIELDS
                            ),
                        });
                    }
                    Ok(frame)
                })
            }),
        };
        let Poll::Ready(polled) = polled else {
            if let Some(p) = &self.progress {
                if let Source::Client(reader) = &mut self.source
                    && reader.took_bytes()
                {
                    p.client_answered();
                }
                p.wait_on_client();
            }
            return Poll::Pending;
        };
        if let Some(p) = &self.progress {
            p.client_answered();
        }
        let source_done = match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Client(reader) => reader.is_end_stream(),
            Source::H2(incoming) => incoming.is_end_stream(),
        };
        match polled {
            Some(Ok(frame)) => {
                let frame = match frame.into_trailers() {
                    Ok(trailers) => Frame::trailers(self.filter(trailers)),
                    Err(frame) => frame,
                };
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(left) = &mut self.left {
                    if len > *left {
                        if let Some(p) = &self.progress {
                            p.exceeded.store(true, Ordering::SeqCst);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *left -= len;
                }
                if let Some(tee) = &mut self.tee {
                    tee.frame(&frame);
                }
                if source_done || frame.is_trailers() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(fault)) => {
                if let Some(p) = &self.progress {
                    p.fault(fault.kind);
                }
                Poll::Ready(Some(Err(Box::new(fault))))
            }
            None => {
                self.finish();
                Poll::Ready(None)
            }
        }
    }

    /// The client's trailers that go on (see the module docs).
    fn filter(&self, trailers: http::HeaderMap) -> http::HeaderMap {
        let mut kept = http::HeaderMap::with_capacity(trailers.len());
        for (name, value) in &trailers {
            if crate::fields::trailer_passes(name.as_str().as_bytes(), self.keep_underscores) {
                kept.append(name, value.clone());
            }
        }
        kept
    }

    fn finish(&mut self) {
        self.ended = true;
        if let Some(tee) = &mut self.tee {
            tee.end();
        }
        if let Some(p) = &self.progress {
            p.mark_done();
        }
    }
}

/// The message of the error at the end of `error`'s source chain (what
/// went wrong, without the layers it passed through).
pub fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// How an HTTP/2 client's request body failed: the stream ended early
/// (reset by the client, lost with its connection), or what it sent is
/// not a valid body (a length that disagrees with its `content-length`,
/// for which the proxy resets the stream).
fn client_fault_kind(error: &h2::Error) -> ClientErrorKind {
    match error.reason() {
        Some(h2::Reason::PROTOCOL_ERROR) if !error.is_remote() => ClientErrorKind::MalformedBody,
        // The client broke HTTP/2's rules (a flow-control overflow, its
        // own PROTOCOL_ERROR), seen first while its body was read ahead.
        Some(reason) if is_protocol_error(reason) => ClientErrorKind::Protocol,
        _ => ClientErrorKind::IncompleteBody,
    }
}

/// A reset or GOAWAY code that says the protocol broke, rather than that
/// the client let a stream go (`CANCEL`, `NO_ERROR`, `REFUSED_STREAM`,
/// `INTERNAL_ERROR`, and `STREAM_CLOSED`, which libcurl sends when its
/// timeout ends a request: a canary that hangs until such clients give up
/// must still count).
pub(crate) fn is_protocol_error(reason: h2::Reason) -> bool {
    [
        h2::Reason::PROTOCOL_ERROR,
        h2::Reason::FLOW_CONTROL_ERROR,
        h2::Reason::SETTINGS_TIMEOUT,
        h2::Reason::FRAME_SIZE_ERROR,
        h2::Reason::COMPRESSION_ERROR,
        h2::Reason::ENHANCE_YOUR_CALM,
    ]
    .contains(&reason)
}

/// An HTTP/2 client's request body as the request path reads it: data as
/// it comes (the client gets its window back as it is read), then
/// trailers.
pub struct H2Incoming {
    recv: h2::RecvStream,
    /// What `content-length` says is still to come ([`NO_LENGTH`]: no
    /// `content-length`; not an `Option`, which would take 8 bytes more of
    /// every request body).
    left: u64,
    data_done: bool,
    /// The client's `expect: 100-continue`, told when the body is first
    /// read.
    expecting: Option<Arc<Continue>>,
}

impl H2Incoming {
    pub fn new(recv: h2::RecvStream, declared: Option<u64>) -> Self {
        Self {
            recv,
            left: declared.unwrap_or(NO_LENGTH),
            data_done: false,
            expecting: None,
        }
    }

    /// A body whose client waits for `100 Continue`: `expecting` is told
    /// when the body is first read.
    pub fn expecting(mut self, expecting: Arc<Continue>) -> Self {
        self.expecting = Some(expecting);
        self
    }
}

/// [`H2Incoming`]'s length when its request has no `content-length` (a
/// length this large could never come).
const NO_LENGTH: u64 = u64::MAX;

/// An HTTP/2 client's `expect: 100-continue`: set when its body is first
/// read (by whichever task reads it: a backend connection's, for an HTTP/2
/// backend), so that the stream's own task sends `100 Continue`, as an
/// HTTP/1.1 client gets it.
#[derive(Default)]
pub struct Continue {
    asked: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Continue {
    fn ask(&self) {
        self.asked.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// True once, when the body has been first read; until then `cx` is
    /// woken when it is.
    pub fn poll_asked(&self, cx: &mut Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.asked.swap(false, Ordering::SeqCst)
    }
}

impl Body for H2Incoming {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if let Some(expecting) = this.expecting.take() {
            expecting.ask();
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if this.left != NO_LENGTH {
                        this.left = this.left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            NO_LENGTH => SizeHint::default(),
            left => SizeHint::with_exact(left),
        }
    }
}

/// The error of a body that grew past its cap.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than limits.max_request_body")]
pub struct BodyTooLarge;

impl Body for UpstreamBody<'_> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(p) = &this.progress {
            p.note_asked();
        }
        if this.sent_ahead < this.ahead.len() {
            let frame = if this.whole {
                this.sent_ahead += 1;
                clone_frame(&this.ahead[this.sent_ahead - 1])
            } else {
                this.touched = true;
                this.ahead.pop_front().expect("checked")
            };
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.whole {
            return Poll::Ready(None);
        }
        this.touched = true;
        this.poll_source(cx)
    }

    fn is_end_stream(&self) -> bool {
        if self.whole {
            return self.sent_ahead >= self.ahead.len();
        }
        self.ahead.is_empty() && self.ended
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .ahead
            .iter()
            .skip(if self.whole { self.sent_ahead } else { 0 })
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        if self.whole || self.ended {
            return SizeHint::with_exact(queued);
        }
        let rest = match &self.source {
            Source::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Client(reader) => reader.size_hint(),
            Source::H2(incoming) => incoming.size_hint(),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + queued);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + queued);
        }
        hint
    }
}

/// A copy of a frame (data shares its bytes).
fn clone_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match frame.data_ref() {
        Some(data) => Frame::data(data.clone()),
        None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
    }
}

/// Copies a request body as it streams (for a mirrored request), up to a
/// limit; the copy goes to its receiver when the body ends.
pub struct Tee {
    buf: BytesMut,
    limit: u64,
    over: bool,
    done: Option<tokio::sync::oneshot::Sender<Option<Bytes>>>,
}

/// The body of a copy: none, or the one a [`Tee`] will hand over (None
/// in it: the body grew past the limit).
pub enum CopyBody {
    Empty,
    Pending(tokio::sync::oneshot::Receiver<Option<Bytes>>),
}

impl Tee {
    pub fn new(limit: u64) -> (Self, CopyBody) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Self {
                buf: BytesMut::new(),
                limit,
                over: false,
                done: Some(tx),
            },
            CopyBody::Pending(rx),
        )
    }

    fn frame(&mut self, frame: &Frame<Bytes>) {
        if self.over {
            return;
        }
        if let Some(data) = frame.data_ref() {
            if (self.buf.len() + data.len()) as u64 > self.limit {
                self.over = true;
                self.buf = BytesMut::new();
            } else {
                self.buf.extend_from_slice(data);
            }
        }
    }

    /// The body ended: the copy may go (None: it grew past the limit).
    fn end(&mut self) {
        if let Some(tx) = self.done.take() {
            let body = (!self.over).then(|| std::mem::take(&mut self.buf).freeze());
            let _ = tx.send(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client body of fixed frames, then an optional fault.
    struct Frames(VecDeque<Result<Bytes, ClientErrorKind>>);

    impl ClientBody for Frames {
        fn poll_frame(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
            Poll::Ready(self.0.pop_front().map(|f| match f {
                Ok(data) => Ok(Frame::data(data)),
                Err(kind) => Err(ClientFault {
                    kind,
                    detail: "broken".into(),
                }),
            }))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }

        fn took_bytes(&mut self) -> bool {
            false
        }
    }

    async fn collect(body: &mut UpstreamBody<'_>) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            if let Some(d) = frame?.data_ref() {
                out.extend_from_slice(d);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_body_read_ahead_whole_can_be_sent_twice() {
        let mut frames = Frames(VecDeque::from([
            Ok(Bytes::from("ab")),
            Ok(Bytes::from("cd")),
        ]));
        let (mut body, progress) = UpstreamBody::client(&mut frames, None);
        body.read_ahead(1024).await.unwrap();
        assert!(progress.is_sent() && body.can_resend());
        assert_eq!(collect(&mut body).await.unwrap(), b"abcd");
        body.rewind();
        assert_eq!(collect(&mut body).await.unwrap(), b"abcd");
    }

    #[tokio::test]
    async fn a_body_read_ahead_in_part_cannot_be_sent_again_once_streamed() {
        let mut frames = Frames(VecDeque::from([
            Ok(Bytes::from("ab")),
            Ok(Bytes::from("cd")),
        ]));
        let (mut body, progress) = UpstreamBody::client(&mut frames, None);
        body.read_ahead(1).await.unwrap();
        assert!(!progress.is_sent() && body.can_resend());
        assert_eq!(collect(&mut body).await.unwrap(), b"abcd");
        assert!(!body.can_resend() && progress.is_sent());
    }

    #[tokio::test]
    async fn client_faults_and_caps_are_told_apart() {
        let mut frames = Frames(VecDeque::from([
            Ok(Bytes::from("ab")),
            Err(ClientErrorKind::MalformedBody),
        ]));
        let (mut body, progress) = UpstreamBody::client(&mut frames, None);
        assert!(collect(&mut body).await.is_err());
        assert_eq!(
            progress.client_fault(),
            Some(ClientErrorKind::MalformedBody)
        );
        assert!(!progress.exceeded());
        let mut frames = Frames(VecDeque::from([Ok(Bytes::from("abc"))]));
        let (mut body, progress) = UpstreamBody::client(&mut frames, Some(2));
        assert!(collect(&mut body).await.is_err());
        assert!(progress.exceeded() && progress.client_fault().is_none());
    }

    #[tokio::test]
    async fn a_tee_copies_what_was_read_ahead_and_the_rest() {
        let mut frames = Frames(VecDeque::from([
            Ok(Bytes::from("ab")),
            Ok(Bytes::from("cd")),
        ]));
        let (mut body, _) = UpstreamBody::client(&mut frames, None);
        body.read_ahead(1).await.unwrap();
        let (tee, copy) = Tee::new(100);
        body.tee(tee);
        collect(&mut body).await.unwrap();
        let CopyBody::Pending(rx) = copy else {
            panic!("a copy is pending")
        };
        assert_eq!(rx.await.unwrap().unwrap(), Bytes::from("abcd"));
    }
}
