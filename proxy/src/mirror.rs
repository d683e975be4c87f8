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
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{CopyBody, UpstreamBody};
use crate::config::{UpstreamUrl, ValidMirror};
use crate::metrics::{
    BackendMetrics, Classification, Metrics, MirrorSkip, Series, UpstreamErrorKind,
};
use crate::record::{GrpcJudge, MeteredBody, Recorder};
use crate::split::SplitState;
use crate::upstream::{BackendClients, Head, SendFailure};

/// The header every copy carries.
pub const MIRROR_HEADER: &str = "x-sluice-mirror";

/// A route's mirroring, resolved for one routing table.
pub struct Mirror {
    pub split: Arc<SplitState>,
    pub max_body: u64,
    methods: Vec<Method>,
    slots: Arc<Semaphore>,
    bound: usize,
    target: Arc<Target>,
}

/// Where a route's copies go and what they are counted in.
struct Target {
    canary: BackendClients,
    /// The canary's upstream errors.
    errors: BackendMetrics,
    /// The canary's `host:port` (an HTTP/2 copy's `:authority`).
    authority: String,
    /// The canary's series for copies (`decision="mirror"`).
    series: Arc<Series>,
    grpc_failure_codes: crate::grpc::Codes,
    request_timeout: Duration,
    /// A copy's answer may pause no longer than this (see [`send_copy`]).
    answer_stall: Duration,
    too_large: Counter,
    queue_full: Counter,
    incomplete: Counter,
}

/// The canary a route mirrors to, and the route settings its copies use.
pub struct MirrorTo<'a> {
    pub route: &'a str,
    pub canary: &'a BackendClients,
    pub errors: BackendMetrics,
    pub url: &'a UpstreamUrl,
    pub grpc_failure_codes: crate::grpc::Codes,
    pub request_timeout: Duration,
    pub answer_idle_timeout: Duration,
}

impl Mirror {
    /// The route's mirroring; the counter and the in-flight bound carry
    /// over from `previous` when the percent and the bound are unchanged.
    pub fn new(
        rule: &ValidMirror,
        to: MirrorTo<'_>,
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
            target: Arc::new(Target {
                canary: to.canary.clone(),
                errors: to.errors,
                authority: to.url.authority(),
                series,
                grpc_failure_codes: to.grpc_failure_codes,
                request_timeout: to.request_timeout,
                answer_stall: to.answer_idle_timeout.min(to.request_timeout),
                too_large: metrics.mirror_skipped(to.route, MirrorSkip::BodyTooLarge),
                queue_full: metrics.mirror_skipped(to.route, MirrorSkip::QueueFull),
                incomplete: metrics.mirror_skipped(to.route, MirrorSkip::Incomplete),
            }),
        }
    }

    /// Whether this request is picked for a copy (and takes a place in
    /// the in-flight bound). Counts what it skips.
    pub fn pick(&self, method: &Method, declared_len: Option<u64>) -> Option<OwnedSemaphorePermit> {
        if !self.methods.contains(method) || !self.split.next_is_canary() {
            return None;
        }
        if declared_len.is_some_and(|n| n > self.max_body) {
            self.target.too_large.inc();
            return None;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.target.queue_full.inc();
                None
            }
        }
    }

    /// A copy of a request picked by [`Mirror::pick`], to be sent by
    /// [`PendingCopy::launch`]: `head` is its head as forwarded to the
    /// stable, less its framing fields.
    pub fn copy(&self, head: CopyHead, body: CopyBody, place: OwnedSemaphorePermit) -> PendingCopy {
        PendingCopy {
            job: Some((self.target.clone(), head, body, place)),
        }
    }
}

/// A copy's head as forwarded to the stable, without its framing.
pub enum CopyHead {
    /// The request line and fields, without framing fields or the blank
    /// line.
    H1(Vec<u8>),
    H2(http::request::Parts),
}

/// A copy made, to be sent once the stable has answered the client's
/// request (so the copy's connect and write never come before the
/// client's own). Dropped unsent (the client went away first), it counts
/// as `incomplete`.
pub struct PendingCopy {
    job: Option<(Arc<Target>, CopyHead, CopyBody, OwnedSemaphorePermit)>,
}

impl PendingCopy {
    /// Sends the copy from a task of its own.
    pub fn launch(mut self) {
        if let Some((target, head, body, permit)) = self.job.take() {
            tokio::spawn(async move {
                let _permit = permit;
                send_copy(&target, head, body).await;
            });
        }
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if let Some((target, ..)) = self.job.take() {
            target.incomplete.inc();
        }
    }
}

/// The copy's head, marked as a copy, with its whole body's length (a
/// bodiless POST's `0` too, as its original had).
fn copy_head(target: &Target, head: CopyHead, method: &Method, length: usize) -> Head {
    let declare = length > 0 || crate::fields::expects_body(method);
    match head {
        CopyHead::H1(mut bytes) => {
            crate::http1::write::field(&mut bytes, MIRROR_HEADER.as_bytes(), b"1");
            if declare {
                crate::http1::write::content_length(&mut bytes, length as u64);
            }
            bytes.extend_from_slice(b"\r\n");
            let mut head: crate::reuse::Reused<Vec<u8>> = crate::reuse::Reused::take();
            head.extend_from_slice(&bytes);
            Head::H1(head)
        }
        CopyHead::H2(mut parts) => {
            // `:authority` is the backend's on HTTP/2 routes.
            let mut uri = http::uri::Parts::default();
            uri.scheme = parts.uri.scheme().cloned();
            uri.authority = target.authority.parse().ok();
            uri.path_and_query = parts.uri.path_and_query().cloned();
            if let Ok(uri) = http::Uri::from_parts(uri) {
                parts.uri = uri;
            }
            parts
                .headers
                .insert(MIRROR_HEADER, HeaderValue::from_static("1"));
            if declare {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            Head::H2(parts)
        }
    }
}

/// Sends a copy to the canary, waits for its whole answer (within the
/// request timeout) and counts it.
async fn send_copy(target: &Target, head: CopyHead, body: CopyBody) {
    let bytes = match body {
        CopyBody::Empty => None,
        CopyBody::Pending(rx) => match rx.await {
            Ok(Some(bytes)) => Some(bytes),
            Ok(None) => {
                target.too_large.inc();
                return;
            }
            Err(_) => {
                target.incomplete.inc();
                return;
            }
        },
    };
    let start = Instant::now();
    let length = bytes.as_ref().map_or(0, |b| b.len());
    let method = match &head {
        CopyHead::H1(bytes) => method_of(bytes),
        CopyHead::H2(parts) => parts.method.clone(),
    };
    let head = copy_head(target, head, &method, length);
    let mut ignore = |_: http::StatusCode, _: &dyn crate::fields::Fields| {};
    // A copy is recorded from its own outcome, not from what was written.
    let written = std::sync::atomic::AtomicBool::new(false);
    let mut req = crate::upstream::Request {
        method,
        head,
        has_body: length > 0,
        body: Some(UpstreamBody::full(bytes)),
        chunked: false,
        upgrade: false,
        interim: &mut ignore,
        start,
        written: &written,
    };
    let sent = tokio::time::timeout(
        target.request_timeout,
        target.canary.send(&mut req, || false),
    )
    .await;
    let failed = |kind: UpstreamErrorKind, code: u16| {
        target.errors.record_upstream_error(kind);
        target
            .series
            .record(code, Classification::Failure, start.elapsed());
    };
    let response = match sent {
        Err(_) => return failed(UpstreamErrorKind::Timeout, 504),
        Ok(Err(SendFailure::Upstream(e))) => return failed(e.kind, 502),
        Ok(Err(SendFailure::Body(_))) => {
            target.incomplete.inc();
            return;
        }
        Ok(Ok(response)) => response,
    };
    let code = response.head.status().as_u16();
    let grpc = response.head.grpc_judged().map(|status| GrpcJudge {
        failure_codes: target.grpc_failure_codes,
        status,
    });
    let recorder = Recorder {
        series: target.series.clone(),
        errors: target.errors.clone(),
        code,
        start,
        grpc,
        permit: None,
        body: None,
    };
    let mut body = MeteredBody::new(response.body, Some(recorder)).stall_limit(target.answer_stall);
    // Read to the end (the recorder counts it there). A copy's backend
    // that pauses its answer longer than the route's `answer_idle`, or
    // than its request timeout if shorter (a copy waits for no client),
    // is cut there and counted as a timeout; an answer that keeps coming
    // is read for at most ten request timeouts, then dropped and counted
    // with its status.
    let _ = tokio::time::timeout(target.request_timeout * 10, async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
}

/// The method of an HTTP/1.1 head's request line.
fn method_of(head: &[u8]) -> Method {
    let end = head.iter().position(|&b| b == b' ').unwrap_or(head.len());
    Method::from_bytes(&head[..end]).unwrap_or(Method::GET)
}
