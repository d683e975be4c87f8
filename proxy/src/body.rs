//! The response body the proxy streams back, which records the request's
//! metrics exactly once: when the body ends, fails, or is dropped by a client
//! that went away; [`InFlight`], which records a client that went away
//! before there was a response at all; and [`UpstreamBody`], the request
//! body on its way upstream, which tells the client's faults apart from
//! the backend's.
//!
//! A client's fault is never a backend's: when the request body breaks on
//! the client's side (a malformed chunk, a connection that ends before the
//! body does, a body paused too long) the request is counted in
//! `sluice_client_errors_total{route,kind}` only, never in
//! `sluice_requests_total` or `sluice_upstream_errors_total`, and a client
//! that leaves before its body has gone upstream is such a fault too, not
//! a 499 on the backend.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::{
    BackendMetrics, Classification, ClientErrorKind, ClientErrors, Series, UpstreamErrorKind,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status the proxy counts for a client that left while it was still
/// waiting for the upstream's response head (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request on its way to the upstream. Dropped before [`InFlight::answered`]
/// (the client went away and hyper dropped the request's future), it
/// records `code="499",classification="failure"` with the time so far: a
/// canary that hangs until its callers give up is counted, not invisible.
/// It is not an upstream error (`sluice_upstream_errors_total` is untouched).
/// A client that went away before its request body had all gone upstream
/// is the client's own fault: `sluice_client_errors_total{kind=
/// "incomplete_body"}`, nothing on the backend.
pub struct InFlight {
    series: Option<Arc<Series>>,
    start: Instant,
    /// The request body's progress and the route's client-error counters
    /// (requests with a body).
    body: Option<(Progress, ClientErrors)>,
}

impl InFlight {
    pub fn new(series: Arc<Series>, start: Instant) -> Self {
        Self {
            series: Some(series),
            start,
            body: None,
        }
    }

    /// Watches the request's body: a client that leaves before it has
    /// gone upstream is counted in `errors`, not on the backend.
    pub fn with_body(mut self, progress: &Progress, errors: &ClientErrors) -> Self {
        if progress.0.is_some() {
            self.body = Some((progress.clone(), errors.clone()));
        }
        self
    }

    /// The request's outcome is counted elsewhere (a limit the proxy
    /// answered itself).
    pub fn answered_elsewhere(mut self) {
        self.series = None;
    }

    /// The request failed by its client's fault: counted as `kind` in the
    /// route's client errors, nothing on the backend.
    pub fn client_failed(mut self, errors: &ClientErrors, kind: ClientErrorKind) {
        self.series = None;
        errors.record(kind);
    }

    /// The request has an answer (from the upstream or the proxy): the
    /// [`Recorder`] that counts it when its body ends, on the backend's
    /// `errors`, giving back the route's `permit` then. Its code is set
    /// once the answer's status is known.
    pub fn answered(mut self, errors: BackendMetrics, permit: crate::routing::Permit) -> Recorder {
        Recorder {
            series: self.series.take().expect("answered once"),
            errors,
            code: 0,
            start: self.start,
            grpc: None,
            permit: Some(permit),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(series) = self.series.take() {
            if let Some((progress, errors)) = &self.body
                && !progress.is_sent()
            {
                errors.record(ClientErrorKind::IncompleteBody);
                return;
            }
            series.record(
                CLIENT_CLOSED_REQUEST,
                Classification::Failure,
                self.start.elapsed(),
            );
        }
    }
}

/// How a gRPC response is judged: the route's failure codes and the
/// `grpc-status` seen so far (head of a trailers-only response, or trailers).
#[derive(Clone, Copy, Debug)]
pub struct GrpcJudge {
    pub failure_codes: crate::grpc::Codes,
    pub status: Option<u32>,
}

/// A request body on its way upstream, watched: when it has been sent
/// (the request timeout starts then), when its last chunk came (a client
/// that pauses too long gets 408), whether it grew past
/// `limits.max_request_body` (it then ends in an error and the request
/// path answers 413), and whether it broke on the client's side
/// ([`Progress::client_fault`]).
pub struct UpstreamBody {
    /// None: no body (a retried request without one), or `full`.
    inner: Option<hyper::body::Incoming>,
    /// Frames read ahead of the upstream exchange ([`UpstreamBody::read_ahead`]),
    /// handed on first.
    ahead: std::collections::VecDeque<Frame<Bytes>>,
    /// `inner` has ended (during the read-ahead).
    inner_ended: bool,
    /// A body held whole (a mirrored copy's).
    full: Option<Bytes>,
    /// Copies the body for a mirrored request.
    tee: Option<Box<crate::mirror::Tee>>,
    /// Bytes still allowed; None: no cap.
    left: Option<u64>,
    /// None for a request with no body (it is sent from the start).
    progress: Option<Arc<BodyProgress>>,
}

/// The request path's view of an [`UpstreamBody`]'s progress; a request
/// without a body costs no allocation and counts as sent from the start.
#[derive(Clone)]
pub struct Progress(Option<Arc<BodyProgress>>);

impl Progress {
    /// Resolves once the whole body has gone upstream.
    pub async fn sent(&self) {
        if let Some(p) = &self.0 {
            p.sent().await;
        }
    }

    pub fn is_sent(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.is_sent())
    }

    /// Time since the last chunk (or the start); zero once sent.
    pub fn idle_for(&self) -> std::time::Duration {
        match &self.0 {
            Some(p) if !p.is_sent() => p.idle_for(),
            _ => std::time::Duration::ZERO,
        }
    }

    pub fn exceeded(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.exceeded())
    }

    /// How the body broke on the client's side, if it did.
    pub fn client_fault(&self) -> Option<ClientErrorKind> {
        let code = self
            .0
            .as_ref()?
            .client_fault
            .load(std::sync::atomic::Ordering::SeqCst);
        ClientErrorKind::ALL
            .into_iter()
            .find(|kind| *kind as u8 + 1 == code)
    }
}

/// What the request path knows of an [`UpstreamBody`] on its way.
pub struct BodyProgress {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicBool,
    exceeded: std::sync::atomic::AtomicBool,
    /// 0, or 1 + the [`ClientErrorKind`] the client's body broke with.
    client_fault: std::sync::atomic::AtomicU8,
    sent: tokio::sync::Notify,
}

impl BodyProgress {
    fn mark_done(&self) {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.sent.notify_waiters();
        }
    }

    /// Resolves once the whole body has gone upstream.
    pub async fn sent(&self) {
        loop {
            let notified = self.sent.notified();
            if self.is_sent() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_sent(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Time since the last chunk (or the start).
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::SeqCst);
        let now = self.start.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(last))
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl UpstreamBody {
    pub fn new(inner: hyper::body::Incoming, cap: Option<u64>) -> (Self, Progress) {
        let progress = (!inner.is_end_stream()).then(|| {
            Arc::new(BodyProgress {
                start: Instant::now(),
                last_ms: std::sync::atomic::AtomicU64::new(0),
                done: std::sync::atomic::AtomicBool::new(false),
                exceeded: std::sync::atomic::AtomicBool::new(false),
                client_fault: std::sync::atomic::AtomicU8::new(0),
                sent: tokio::sync::Notify::new(),
            })
        });
        (
            Self {
                inner: Some(inner),
                ahead: std::collections::VecDeque::new(),
                inner_ended: false,
                full: None,
                tee: None,
                left: cap,
                progress: progress.clone(),
            },
            Progress(progress),
        )
    }

    /// A request body with nothing in it.
    pub fn empty() -> Self {
        Self::full(None)
    }

    /// A body held whole (None or empty: no body).
    pub fn full(bytes: Option<Bytes>) -> Self {
        Self {
            inner: None,
            ahead: std::collections::VecDeque::new(),
            inner_ended: false,
            full: bytes.filter(|b| !b.is_empty()),
            tee: None,
            left: None,
            progress: None,
        }
    }

    /// Copies the body for a mirrored request as it streams (the body must
    /// not have ended yet).
    pub fn tee(&mut self, tee: crate::mirror::Tee) {
        self.tee = Some(Box::new(tee));
    }

    /// Reads the body ahead of the upstream exchange until it ends or
    /// `limit` bytes have come, so that a body that breaks within its
    /// first `limit` bytes (a bad chunk-size line, a client that closes
    /// before its declared length) never reaches a backend. What was read
    /// goes upstream first. Err: the body failed (too large, or broken by
    /// the client: see [`Progress::client_fault`]).
    pub async fn read_ahead(&mut self, limit: usize) -> Result<(), BoxError> {
        let mut gathered = 0;
        while gathered < limit && !self.inner_ended && self.inner.is_some() {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                Some(Ok(frame)) => {
                    gathered += frame.data_ref().map_or(0, Bytes::len);
                    self.ahead.push_back(frame);
                }
                Some(Err(e)) => return Err(e),
                None => self.inner_ended = true,
            }
        }
        Ok(())
    }

    /// The next frame of `inner`, watched (see the type's docs).
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if this.inner_ended {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.full.take().map(|b| Ok(Frame::data(b))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(tee) = &mut this.tee {
                    tee.frame(&frame);
                    if this.inner.as_ref().is_none_or(|i| i.is_end_stream()) {
                        tee.end();
                    }
                }
                let Some(p) = &this.progress else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                p.last_ms.store(
                    p.start.elapsed().as_millis() as u64,
                    std::sync::atomic::Ordering::SeqCst,
                );
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(left) = &mut this.left {
                    if len > *left {
                        p.exceeded.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *left -= len;
                }
                if this.inner.as_ref().is_none_or(|i| i.is_end_stream()) {
                    p.mark_done();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.inner_ended = true;
                if let Some(p) = &this.progress {
                    p.mark_done();
                }
                if let Some(tee) = &mut this.tee {
                    tee.end();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // Everything `inner` reports is the client's side: its
                // connection or stream, and the framing of what it sent.
                if let Some(p) = &this.progress {
                    p.client_fault.store(
                        client_fault_kind(&e) as u8 + 1,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a client's request body failed, from hyper's error: the
/// connection or stream ended early (an EOF before the declared length or
/// the last chunk, a reset stream, a broken connection), or what it sent
/// is not a valid body.
fn client_fault_kind(error: &hyper::Error) -> ClientErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => ClientErrorKind::IncompleteBody,
                _ => ClientErrorKind::MalformedBody,
            };
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // A stream the proxy reset for a protocol error is a malformed
            // body (its length disagrees with its content-length, say); a
            // stream the client reset, or lost with its connection, was
            // cut short.
            return if h2.reason() == Some(h2::Reason::PROTOCOL_ERROR) && !h2.is_remote() {
                ClientErrorKind::MalformedBody
            } else {
                ClientErrorKind::IncompleteBody
            };
        }
        source = e.source();
    }
    // hyper's "connection error": the body was cut by its connection's end.
    ClientErrorKind::IncompleteBody
}

/// The error of a body that grew past its cap.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than limits.max_request_body")]
pub struct BodyTooLarge;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        if !self.ahead.is_empty() {
            return false;
        }
        match &self.inner {
            Some(_) if self.inner_ended => true,
            Some(i) => i.is_end_stream(),
            None => self.full.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = match &self.inner {
            Some(_) if self.inner_ended => http_body::SizeHint::with_exact(0),
            Some(i) => i.size_hint(),
            None => {
                http_body::SizeHint::with_exact(self.full.as_ref().map_or(0, |b| b.len() as u64))
            }
        };
        if self.ahead.is_empty() {
            return rest;
        }
        // What was read ahead comes before the rest.
        let ahead: u64 = self
            .ahead
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

/// What to record when the response is over.
pub struct Recorder {
    pub series: Arc<Series>,
    pub errors: BackendMetrics,
    pub code: u16,
    pub start: Instant,
    /// Set for gRPC responses.
    pub grpc: Option<GrpcJudge>,
    /// The route's in-flight place, given back when the response ends.
    pub permit: Option<crate::routing::Permit>,
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The last frame was sent.
    Complete,
    /// The upstream reset or closed before the end.
    UpstreamFailed,
    /// The client went away (the body was dropped unfinished).
    ClientLeft,
}

impl Recorder {
    fn finish(self, end: End) {
        let failed = self.code >= 500
            || match end {
                End::UpstreamFailed => true,
                // The upstream had answered; the client chose to leave.
                End::ClientLeft => false,
                // A gRPC stream that ends without a status is UNKNOWN to clients.
                End::Complete => self.grpc.is_some_and(|g| {
                    g.failure_codes
                        .contains(g.status.unwrap_or(crate::grpc::UNKNOWN))
                }),
            };
        let class = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        self.series.record(self.code, class, self.start.elapsed());
    }
}

pub struct MeteredBody {
    inner: Inner,
    recorder: Option<Recorder>,
}

/// The bodies the proxy answers with (an enum, not a boxed trait object:
/// no allocation per response).
enum Inner {
    Upstream(crate::upstream::Pooled),
    Text(http_body_util::Full<Bytes>),
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Text(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Text(b) => b.size_hint(),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Text(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }
}

impl MeteredBody {
    /// An upstream's response body.
    pub fn new(body: crate::upstream::Pooled, recorder: Option<Recorder>) -> Self {
        Self::from_inner(Inner::Upstream(body), recorder)
    }

    fn from_inner(inner: Inner, recorder: Option<Recorder>) -> Self {
        let mut this = Self { inner, recorder };
        // An empty body may never be polled; record now so the count is
        // visible as soon as the client has the response.
        if this.inner.is_end_stream() {
            this.finish(End::Complete);
        }
        this
    }

    /// A short text body, e.g. for errors the proxy answers itself.
    pub fn text(text: impl Into<String>, recorder: Option<Recorder>) -> Self {
        Self::from_inner(
            Inner::Text(http_body_util::Full::new(Bytes::from(text.into()))),
            recorder,
        )
    }

    fn finish(&mut self, end: End) {
        if let Some(r) = self.recorder.take() {
            r.finish(end);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(End::Complete),
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = &self.recorder {
                    r.errors.record_upstream_error(UpstreamErrorKind::Reset);
                }
                self.finish(End::UpstreamFailed);
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(judge) = self.recorder.as_mut().and_then(|r| r.grpc.as_mut())
                    && let Some(status) = crate::grpc::status(trailers)
                {
                    judge.status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.finish(End::Complete);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish(End::ClientLeft);
    }
}
