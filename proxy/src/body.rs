//! The response body the proxy streams back, which records the request's
//! metrics exactly once: when the body ends, fails, or is dropped by a client
//! that went away; and [`InFlight`], which records a client that went away
//! before there was a response at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::{BackendMetrics, Classification, Series, UpstreamErrorKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status the proxy counts for a client that left while it was still
/// waiting for the upstream's response head (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request on its way to the upstream. Dropped before [`InFlight::answered`]
/// (the client went away and hyper dropped the request's future), it
/// records `code="499",classification="failure"` with the time so far: a
/// canary that hangs until its callers give up is counted, not invisible.
/// It is not an upstream error (`sluice_upstream_errors_total` is untouched).
pub struct InFlight {
    series: Option<Arc<Series>>,
    start: Instant,
}

impl InFlight {
    pub fn new(series: Arc<Series>, start: Instant) -> Self {
        Self {
            series: Some(series),
            start,
        }
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
/// that pauses too long gets 408), and whether it grew past
/// `limits.max_request_body` (it then ends in an error and the request
/// path answers 413).
pub struct UpstreamBody {
    /// None: no body (a retried request without one), or `full`.
    inner: Option<hyper::body::Incoming>,
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
}

/// What the request path knows of an [`UpstreamBody`] on its way.
pub struct BodyProgress {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicBool,
    exceeded: std::sync::atomic::AtomicBool,
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
                sent: tokio::sync::Notify::new(),
            })
        });
        (
            Self {
                inner: Some(inner),
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
                if let Some(p) = &this.progress {
                    p.mark_done();
                }
                if let Some(tee) = &mut this.tee {
                    tee.end();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(i) => i.is_end_stream(),
            None => self.full.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Some(i) => i.size_hint(),
            None => {
                http_body::SizeHint::with_exact(self.full.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
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
