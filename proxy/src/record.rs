//! The last phase of a request: its RED metrics, recorded exactly once, in
//! one place, whatever protocol carried it.
//!
//! - [`InFlight`] is a request on its way to a backend. Dropped before it
//!   has an answer (the client went away while waiting), it records
//!   `code="499",classification="failure"` on that backend with the time
//!   so far: a canary that hangs until its callers give up is counted, not
//!   invisible. A client that went away before its request body had all
//!   gone upstream is the client's own fault instead:
//!   `sluice_client_errors_total{kind="incomplete_body"}`, nothing on the
//!   backend; and so is one that went away before anything of its request
//!   was written to the backend (`kind="left_before_sent"`: the proxy was
//!   still dialling, or held the whole body read ahead), since the backend
//!   had nothing to answer yet.
//! - [`Recorder`] is what an answer records when its body ends: the code
//!   the client got, success or failure, the whole duration.
//! - [`MeteredBody`] carries the answer's body to the client and calls its
//!   recorder when the body ends, fails (the upstream broke it: a failure
//!   and an upstream error of kind `reset`; but when the request body had
//!   failed first, broken by the client or past `limits.max_request_body`,
//!   the backend's answer was cut for it: counted as that client error or
//!   as a `body_too_large` rejection, nothing on the backend), or is
//!   dropped unfinished (the client left: counted as what it was, the
//!   upstream had answered).
//! - A backend that pauses its answer's body longer than the route's
//!   `timeouts.answer_idle` ([`MeteredBody::stall_limit`]) has the body
//!   cut there, as a failure and an upstream error of kind `timeout` on
//!   it: the client's connection closes (HTTP/1.1) or its stream is
//!   reset (HTTP/2), instead of both waiting for as long as the backend
//!   holds its socket open. Only the time the proxy waits on the backend
//!   counts: the limit starts at the first wait after a part of the body
//!   came, so a slow client's reading is never charged to the backend.
//!   While the request's body is still on its way (an answer that began
//!   first: a gRPC bidirectional stream, whose server may wait for the
//!   client's next message), a pause past the limit is the client's
//!   pacing, and judged again a limit later, unless the backend has taken
//!   nothing of the body for the limit either: then both ways are stuck
//!   on it, and the answer is cut.
//! - [`Permit`] is a request's place among its route's requests in flight,
//!   given back when its answer is recorded.
//!
//! A client's fault is never a backend's: a request that failed by its
//! client ([`InFlight::client_failed`]) is counted in
//! `sluice_client_errors_total{route,kind}` only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

use crate::BoxError;
use crate::body::Progress;
use crate::metrics::{
    BackendMetrics, Classification, ClientErrorKind, ClientErrors, Series, UpstreamErrorKind,
};

/// The status the proxy counts for a client that left while it was still
/// waiting for the upstream's response head (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request's place among its route's requests in flight; given back
/// when dropped.
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// A place among `in_flight`'s requests, or None when `max` are taken.
    pub fn take(in_flight: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(in_flight.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request on its way to a backend (see the module docs).
pub struct InFlight<'w> {
    series: Option<Arc<Series>>,
    start: Instant,
    /// The request body's watch (requests with a body).
    body: Option<BodyWatch>,
    /// Set once anything of the request may have reached the backend, and
    /// the route's client-error counters.
    written: (&'w AtomicBool, &'w ClientErrors),
}

impl<'w> InFlight<'w> {
    /// `written` is set by the upstream side once anything of the request
    /// may have reached the backend.
    pub fn new(
        series: Arc<Series>,
        start: Instant,
        written: &'w AtomicBool,
        errors: &'w ClientErrors,
    ) -> Self {
        Self {
            series: Some(series),
            start,
            body: None,
            written: (written, errors),
        }
    }

    /// Watches the request's body: a client that leaves before it has
    /// gone upstream is counted in `errors`, not on the backend, and so is
    /// a body that fails after the answer began (in `errors`, or in
    /// `too_large` past the cap).
    pub fn with_body(
        mut self,
        progress: &Progress,
        errors: &ClientErrors,
        too_large: &Counter,
    ) -> Self {
        if progress.has_body() {
            self.body = Some(BodyWatch {
                progress: progress.clone(),
                errors: errors.clone(),
                too_large: too_large.clone(),
            });
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
    /// `errors`, giving back `permit` then. Its code is set once the
    /// answer's status is known.
    pub fn answered(mut self, errors: BackendMetrics, permit: Option<Permit>) -> Recorder {
        Recorder {
            series: self.series.take().expect("answered once"),
            errors,
            code: 0,
            start: self.start,
            grpc: None,
            permit,
            body: self.body.take(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(series) = self.series.take() {
            if let Some(watch) = &self.body
                && !watch.progress.is_sent()
            {
                watch.errors.record(ClientErrorKind::IncompleteBody);
                return;
            }
            let (written, errors) = &self.written;
            if !written.load(Ordering::SeqCst) {
                errors.record(ClientErrorKind::LeftBeforeSent);
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

/// A request body's progress, and where its failures are counted when
/// they are the client's doing.
pub struct BodyWatch {
    progress: Progress,
    errors: ClientErrors,
    too_large: Counter,
}

impl BodyWatch {
    /// Counts the body's failure if it was the client's doing (broken, or
    /// past the cap); whether it was.
    fn count_clients_doing(&self) -> bool {
        if self.progress.exceeded() {
            self.too_large.inc();
            return true;
        }
        match self.progress.client_fault() {
            Some(kind) => {
                self.errors.record(kind);
                true
            }
            None => false,
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

/// What to record when the answer is over.
pub struct Recorder {
    pub series: Arc<Series>,
    pub errors: BackendMetrics,
    pub code: u16,
    pub start: Instant,
    /// Set for gRPC responses.
    pub grpc: Option<GrpcJudge>,
    /// The route's in-flight place, given back when the answer ends.
    pub permit: Option<Permit>,
    /// The request body's watch: a body that failed first is why an
    /// answer broke off.
    pub body: Option<BodyWatch>,
}

/// How an answer's body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The last frame was sent.
    Complete,
    /// The upstream reset or closed before the end.
    UpstreamFailed,
    /// The upstream's body broke HTTP/1.1's framing.
    UpstreamMalformed,
    /// The upstream paused its body longer than the route allows.
    UpstreamStalled,
    /// The client went away (the body was dropped unfinished).
    ClientLeft,
}

impl End {
    /// The upstream broke the body off: its fault, unless the request's
    /// body had failed first.
    fn upstream_broke(self) -> bool {
        matches!(
            self,
            End::UpstreamFailed | End::UpstreamMalformed | End::UpstreamStalled
        )
    }
}

impl Recorder {
    /// Records an answer that has no body to wait for (the proxy's own,
    /// or one the client will never get: a failover's first attempt).
    pub fn record_now(self) {
        self.finish(End::Complete);
    }

    fn finish(self, end: End) {
        if end.upstream_broke() {
            if self
                .body
                .as_ref()
                .is_some_and(BodyWatch::count_clients_doing)
            {
                return;
            }
            self.errors.record_upstream_error(match end {
                End::UpstreamMalformed => UpstreamErrorKind::Protocol,
                End::UpstreamStalled => UpstreamErrorKind::Timeout,
                _ => UpstreamErrorKind::Reset,
            });
        }
        // A client that left chose to (the upstream had answered); a gRPC
        // stream that ends without a status is UNKNOWN to clients.
        let failed = self.code >= 500
            || end.upstream_broke()
            || (end == End::Complete
                && self.grpc.is_some_and(|g| {
                    g.failure_codes
                        .contains(g.status.unwrap_or(crate::grpc::UNKNOWN))
                }));
        let class = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        self.series.record(self.code, class, self.start.elapsed());
    }
}

/// An answer's body on its way to the client, which records the request
/// when it ends (see the module docs).
pub struct MeteredBody<B> {
    inner: Inner<B>,
    recorder: Option<Recorder>,
    /// The backend's longest pause in the body (see the module docs).
    stall: Option<Stall>,
}

/// The watch on a backend's pauses in its answer's body.
struct Stall {
    limit: Duration,
    /// When the current wait runs out (None: not waiting). Set at the
    /// first wait after a part came.
    deadline: Option<tokio::time::Instant>,
    /// Made at the body's first wait (boxed: only for a body that makes
    /// the proxy wait at all), and moved only when it wakes before the
    /// current deadline: a wait costs a clock read, not a timer update.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A backend paused its answer's body longer than `timeouts.answer_idle`.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent no part of its answer's body for {0:?}")]
pub struct AnswerStalled(pub Duration);

/// The bodies the proxy answers with (an enum, not a boxed trait object:
/// no allocation per response).
enum Inner<B> {
    Upstream(B),
    Text(http_body_util::Full<Bytes>),
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> MeteredBody<B> {
    /// An upstream's response body.
    pub fn new(body: B, recorder: Option<Recorder>) -> Self {
        Self::from_inner(Inner::Upstream(body), recorder)
    }

    /// A short text body, e.g. for answers the proxy makes itself.
    pub fn text(text: impl Into<String>, recorder: Option<Recorder>) -> Self {
        Self::from_inner(
            Inner::Text(http_body_util::Full::new(Bytes::from(text.into()))),
            recorder,
        )
    }

    fn from_inner(inner: Inner<B>, recorder: Option<Recorder>) -> Self {
        let mut this = Self {
            inner,
            recorder,
            stall: None,
        };
        // An empty body may never be polled; record now so the count is
        // visible as soon as the client has the response.
        if this.is_end_stream() {
            this.finish(End::Complete);
        }
        this
    }

    /// Cuts the body when the backend pauses it longer than `limit` (see
    /// the module docs).
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.stall = Some(Stall {
            limit,
            timer: None,
            deadline: None,
        });
        self
    }

    /// Whether the request's body is still on its way and the backend has
    /// taken some of it within `limit`, or waits on the client for more:
    /// then the answer's pause is the client's pacing (see the module
    /// docs), not the backend's stall.
    fn upload_paced_by_client(&self, limit: Duration) -> bool {
        self.recorder
            .as_ref()
            .and_then(|r| r.body.as_ref())
            .is_some_and(|w| {
                !w.progress.is_sent()
                    && w.progress.stall(limit) != Some(crate::body::Stall::Backend)
            })
    }

    /// The recorder's code (the status the client gets), once set.
    pub fn set_code(&mut self, code: u16) {
        if let Some(r) = &mut self.recorder {
            r.code = code;
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(r) = self.recorder.take() {
            r.finish(end);
        }
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = match &mut self.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Text(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        };
        let expired = match &mut self.stall {
            Some(stall) if polled.is_ready() => {
                stall.deadline = None;
                None
            }
            Some(stall) => stall.expired(cx).then_some(stall.limit),
            None => None,
        };
        if let Some(limit) = expired {
            if self.upload_paced_by_client(limit) {
                // Judged again a limit from now.
                if let Some(stall) = &mut self.stall {
                    stall.deadline = None;
                    let _ = stall.expired(cx);
                }
            } else {
                self.finish(End::UpstreamStalled);
                self.stall = None;
                return Poll::Ready(Some(Err(AnswerStalled(limit).into())));
            }
        }
        match &polled {
            Poll::Ready(None) => self.finish(End::Complete),
            Poll::Ready(Some(Err(e))) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
                let mut malformed = false;
                while let Some(c) = cause {
                    malformed |= c.is::<crate::http1::MalformedBody>();
                    cause = c.source();
                }
                self.finish(if malformed {
                    End::UpstreamMalformed
                } else {
                    End::UpstreamFailed
                });
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(judge) = self.recorder.as_mut().and_then(|r| r.grpc.as_mut())
                    && let Some(status) = crate::grpc::status(trailers)
                {
                    judge.status = Some(status);
                }
                if self.is_end_stream() {
                    self.finish(End::Complete);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Text(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Text(b) => b.size_hint(),
        }
    }
}

impl Stall {
    /// Called while the body waits: arms the timer at the wait's start,
    /// and whether it has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let deadline = *self
            .deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + limit);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // A timer set for an earlier wait wakes early: set it again.
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.finish(End::ClientLeft);
        }
    }
}
