//! Traffic mirroring: a copy of `mirror.percent` of the requests the
//! stable serves goes to the canary, fire and forget.
//!
//! - Which requests: those answered by the stable (by weight or affinity)
//!   whose method is in `mirror.methods` (the idempotent methods unless
//!   configured), picked by the same exact counter as the weighted split, so
//!   the canary receives exactly `percent` of them (±1). Upgrades are never
//!   mirrored.
//! - The client gets the stable's answer only and never waits for the copy:
//!   the copy is sent from its own task once the stable has answered (or
//!   failed) and the client's request body has been read (the body is
//!   copied as it streams to the stable, up to `mirror.max_body`), so its
//!   work never comes before the client's own request.
//! - Bounded: at most `mirror.max_in_flight` copies are in flight per route;
//!   a copy over that is dropped. Every pick that is not sent is counted in
//!   `sluice_mirror_skipped_total{route,reason}` (`queue_full`,
//!   `body_too_large`, `incomplete` for a client body that never ended or
//!   a client that left before the stable answered).
//! - Measured: the canary's answers to copies are recorded in
//!   `sluice_requests_total{backend="canary",decision="mirror"}` and the
//!   duration histogram, so the gate can judge a release on them before
//!   any user is exposed. Copies carry `X-Sluice-Mirror: 1`, so a backend
//!   can tell them from real requests (and, e.g., skip side effects).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request};
use http_body::Frame;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::body::{MeteredBody, Recorder, UpstreamBody};
use crate::config::ValidMirror;
use crate::metrics::{Classification, Metrics, MirrorSkip, Series, UpstreamErrorKind};
use crate::routing::Route;
use crate::split::SplitState;

/// The header every copy carries.
pub const MIRROR_HEADER: &str = "x-sluice-mirror";

/// A route's mirroring, resolved for one routing table.
pub struct Mirror {
    pub split: Arc<SplitState>,
    pub max_body: u64,
    methods: Vec<Method>,
    slots: Arc<Semaphore>,
    bound: usize,
    /// The canary's series for copies (`decision="mirror"`).
    pub series: Arc<Series>,
    too_large: Counter,
    queue_full: Counter,
    incomplete: Counter,
}

impl Mirror {
    /// The route's mirroring; the counter and the in-flight bound carry
    /// over from `previous` when the percent and the bound are unchanged.
    pub fn new(
        route: &str,
        rule: &ValidMirror,
        previous: Option<&Mirror>,
        series: Arc<Series>,
        metrics: &Metrics,
    ) -> Self {
        let kept = previous.filter(|p| p.split.canary_weight_bp() == rule.percent_bp);
        Self {
            split: kept
                .map(|p| p.split.clone())
                .unwrap_or_else(|| Arc::new(SplitState::new(rule.percent_bp))),
            max_body: rule.max_body,
            methods: rule.methods.clone(),
            slots: previous
                .filter(|p| p.bound == rule.max_in_flight)
                .map(|p| p.slots.clone())
                .unwrap_or_else(|| Arc::new(Semaphore::new(rule.max_in_flight))),
            bound: rule.max_in_flight,
            series,
            too_large: metrics.mirror_skipped(route, MirrorSkip::BodyTooLarge),
            queue_full: metrics.mirror_skipped(route, MirrorSkip::QueueFull),
            incomplete: metrics.mirror_skipped(route, MirrorSkip::Incomplete),
        }
    }

    /// Whether this request is picked for a copy (and takes a place in
    /// the in-flight bound). Counts what it skips.
    pub fn pick(&self, method: &Method, declared_len: Option<u64>) -> Option<OwnedSemaphorePermit> {
        if !self.methods.contains(method) || !self.split.next_is_canary() {
            return None;
        }
        if declared_len.is_some_and(|n| n > self.max_body) {
            self.too_large.inc();
            return None;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.queue_full.inc();
                None
            }
        }
    }
}

/// Copies a request body as it streams to the stable.
pub struct Tee {
    buf: BytesMut,
    limit: u64,
    over: bool,
    done: Option<oneshot::Sender<Option<Bytes>>>,
}

/// The body of a copy: none, or the one a [`Tee`] will hand over.
pub enum CopyBody {
    Empty,
    Pending(oneshot::Receiver<Option<Bytes>>),
}

impl Tee {
    pub fn new(limit: u64) -> (Self, CopyBody) {
        let (tx, rx) = oneshot::channel();
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

    pub fn frame(&mut self, frame: &Frame<Bytes>) {
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
    pub fn end(&mut self) {
        if let Some(tx) = self.done.take() {
            let body = (!self.over).then(|| std::mem::take(&mut self.buf).freeze());
            let _ = tx.send(body);
        }
    }
}

/// A copy made, to be sent once the stable has answered the client's
/// request (so the copy's connect and write never come before the
/// client's own). Dropped unsent (the client went away first), it counts
/// as `incomplete`.
pub struct PendingCopy {
    job: Option<(
        Arc<Route>,
        http::request::Parts,
        CopyBody,
        OwnedSemaphorePermit,
    )>,
}

impl PendingCopy {
    /// `head` is the request as forwarded to the stable.
    pub fn new(
        route: Arc<Route>,
        head: http::request::Parts,
        body: CopyBody,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            job: Some((route, head, body, permit)),
        }
    }

    /// Sends the copy from a task of its own.
    pub fn launch(mut self) {
        if let Some((route, head, body, permit)) = self.job.take() {
            launch(route, head, body, permit);
        }
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if let Some((route, ..)) = self.job.take()
            && let Some(mirror) = &route.mirror
        {
            mirror.incomplete.inc();
        }
    }
}

/// Sends the copy of a request to the route's canary from a task of its
/// own. `head` is the request as forwarded to the stable.
fn launch(
    route: Arc<Route>,
    mut head: http::request::Parts,
    body: CopyBody,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let _permit = permit;
        let Some(mirror) = route.mirror.as_ref() else {
            return;
        };
        let Some(canary) = route.canary.as_ref() else {
            return;
        };
        let bytes = match body {
            CopyBody::Empty => None,
            CopyBody::Pending(rx) => match rx.await {
                Ok(Some(bytes)) => Some(bytes),
                Ok(None) => {
                    mirror.too_large.inc();
                    return;
                }
                Err(_) => {
                    mirror.incomplete.inc();
                    return;
                }
            },
        };
        let start = Instant::now();
        if head.version == http::Version::HTTP_2 {
            // `:authority` is the backend's on HTTP/2 routes.
            let scheme = head.uri.scheme().cloned();
            let mut parts = http::uri::Parts::default();
            parts.scheme = scheme;
            parts.authority = canary.url.authority().parse().ok();
            parts.path_and_query = head.uri.path_and_query().cloned();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                head.uri = uri;
            }
        }
        head.headers
            .insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        // The copy's body is whole: nothing to wait for.
        head.headers.remove(http::header::EXPECT);
        if let Some(b) = &bytes {
            head.headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            head.headers.remove(http::header::TRANSFER_ENCODING);
        }
        let req = Request::from_parts(head, UpstreamBody::full(bytes));
        let sent =
            tokio::time::timeout(route.request_timeout, canary.client.send(req, || false)).await;
        let failed = |kind: UpstreamErrorKind, code: u16| {
            canary.metrics.record_upstream_error(kind);
            mirror
                .series
                .record(code, Classification::Failure, start.elapsed());
        };
        match sent {
            Err(_) => failed(UpstreamErrorKind::Timeout, 504),
            Ok(Err(e)) => failed(e.kind, 502),
            Ok(Ok(resp)) => {
                let code = resp.status().as_u16();
                let grpc = crate::grpc::is_grpc(resp.headers()).then(|| crate::body::GrpcJudge {
                    failure_codes: route.grpc_failure_codes,
                    status: crate::grpc::status(resp.headers()),
                });
                let recorder = Recorder {
                    series: mirror.series.clone(),
                    errors: canary.metrics.clone(),
                    code,
                    start,
                    grpc,
                    permit: None,
                };
                let mut body = MeteredBody::new(resp.into_body(), Some(recorder));
                // Read to the end (the recorder counts it there), within
                // the request timeout.
                let _ = tokio::time::timeout(route.request_timeout, async {
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    });
}
