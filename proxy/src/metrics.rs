//! The proxy's own RED metrics, exposed in OpenMetrics text on the admin
//! listener. Names are an interface (dashboards, alerts and the control loop's
//! `proxy` provider read them), see the metrics table in docs/proxy.md.
//!
//! - `sluice_requests_total{route, backend, code, classification, decision}`
//!   and `sluice_request_duration_seconds{route, backend, decision}` are kept
//!   in [`Series`]: one per (route, backend, decision), resolved once when a
//!   routing table is built, kept across reloads (counters never go back), and
//!   sharded per serving thread (plain relaxed atomics on the thread's own
//!   cache lines, summed at scrape time), so the request path takes no lock and
//!   allocates nothing.
//! - `classification` is `success` or `failure`; see [`Classification`].
//! - `decision` is `weight` (chosen by the exact split; stable traffic is
//!   always `weight`) or `match` (sent to the canary by an A/B rule). The gate
//!   judges weighted traffic only.
//! - `backend` is `stable`, `canary`, or `baseline` for a route's baseline
//!   arm (see [`BackendLabel::Baseline`]), which has every per-backend
//!   series the canary has, with the same buckets; a route without one
//!   has no `baseline` series.
//! - The duration buckets are a fixed log-linear layout
//!   ([`DURATION_BUCKET_BOUNDS_US`]): every threshold between 1 ms and 30 s
//!   is within 10% of a bound, and the usual gate values (100 ms, 250 ms,
//!   300 ms, 500 ms, 1 s, ...) are bounds exactly, so a gate is decided by
//!   counts, never by interpolation.
//! - Every series always shows `code="200",classification="success"` and
//!   `code="500",classification="failure"` (at 0 until used), so a sum over
//!   either classification is never an empty vector in PromQL.
//! - The plain TCP listeners' families (`sluice_tcp_*`) are in [`tcp`].

pub mod tcp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::worker;

/// Mantissas of one decade of the duration layout, in units of the decade's
/// tenth: 1, 1.2, 1.4, 1.6, 1.8, 2, 2.25, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9.
/// Consecutive bounds differ by at most 20%, so any value is within
/// sqrt(1.2) - 1 < 10% of a bound.
const DECADE: [u64; 17] = [
    100, 120, 140, 160, 180, 200, 225, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900,
];

/// Upper bounds of the request duration histogram in microseconds: the
/// decade layout from 1 ms to 9 s, then 10, 12, 14, 16, 18, 20, 22.5, 25 and
/// 30 s (77 bounds, plus `+Inf`).
pub const DURATION_BUCKET_BOUNDS_US: [u64; 77] = bucket_bounds();

const fn bucket_bounds() -> [u64; 77] {
    let mut out = [0u64; 77];
    let mut i = 0;
    let mut scale = 10; // 1 ms = 100 * 10 us
    while i < 68 {
        out[i] = DECADE[i % 17] * scale;
        i += 1;
        if i % 17 == 0 {
            scale *= 10;
        }
    }
    let tail = [100, 120, 140, 160, 180, 200, 225, 250, 300];
    let mut j = 0;
    while j < tail.len() {
        out[68 + j] = tail[j] * 100_000;
        j += 1;
    }
    out
}

/// The duration bounds in seconds, as the `le` labels show them.
pub fn duration_bounds_secs() -> impl Iterator<Item = f64> {
    DURATION_BUCKET_BOUNDS_US
        .iter()
        .map(|us| *us as f64 / 1_000_000.0)
}

/// Whether `d` is exactly one of the histogram's bounds.
pub fn is_duration_bound(d: Duration) -> bool {
    d.subsec_nanos().is_multiple_of(1000)
        && u64::try_from(d.as_micros()).is_ok_and(|us| DURATION_BUCKET_BOUNDS_US.contains(&us))
}

/// The bounds just below and just above `d` (either may be missing at the
/// ends of the layout).
pub fn nearest_duration_bounds(d: Duration) -> (Option<Duration>, Option<Duration>) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let below = DURATION_BUCKET_BOUNDS_US
        .iter()
        .rev()
        .find(|b| **b <= us)
        .map(|b| Duration::from_micros(*b));
    let above = DURATION_BUCKET_BOUNDS_US
        .iter()
        .find(|b| **b >= us)
        .map(|b| Duration::from_micros(*b));
    (below, above)
}

/// Index of the bucket a duration of `us` microseconds falls in (`le` is
/// inclusive); the last index is `+Inf`.
fn bucket_index(us: u64) -> usize {
    DURATION_BUCKET_BOUNDS_US.partition_point(|b| *b < us)
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BackendLabel {
    Stable,
    Canary,
    /// A route's baseline arm (`baseline`): its series carry the same
    /// `decision` labels (weight, affinity) as the canary's.
    Baseline,
}

/// Label values are the lower-case names the docs use.
macro_rules! lower_case_label {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

lower_case_label!(BackendLabel { Stable => "stable", Canary => "canary", Baseline => "baseline" });

/// Whether the upstream did its part, the `classification` label.
///
/// Failure is: a 5xx the client got (the proxy's own 502/504 too); an
/// upstream that reset or closed before the response ended; a gRPC response
/// whose `grpc-status` is in the route's failure set; a client that gave up
/// while still waiting for the upstream's response head (`code="499"`).
/// Everything else is success, including a client that leaves mid-body after
/// a non-5xx head: the upstream had answered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

lower_case_label!(Classification { Success => "success", Failure => "failure" });

/// Why a request went to the backend it went to, the `decision` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Decision {
    /// The exact weighted split (all stable traffic is `weight`).
    Weight,
    /// A `canary_match` A/B rule.
    Match,
    /// Session affinity: the client's cookie, or the hash of its header.
    Affinity,
    /// A mirrored copy (the client never sees its answer).
    Mirror,
}

lower_case_label!(Decision {
    Weight => "weight",
    Match => "match",
    Affinity => "affinity",
    Mirror => "mirror",
});

/// Why a request picked for mirroring was not copied; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MirrorSkip {
    /// Its body was larger than `mirror.max_body`.
    BodyTooLarge,
    /// `mirror.max_in_flight` copies were in flight.
    QueueFull,
    /// The client's body never completed.
    Incomplete,
}

lower_case_label!(MirrorSkip {
    BodyTooLarge => "body_too_large",
    QueueFull => "queue_full",
    Incomplete => "incomplete",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorSkipLabels {
    pub route: String,
    pub reason: MirrorSkip,
}

/// Where an upstream exchange failed; the `kind` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
    Tls,
    Reset,
}

lower_case_label!(UpstreamErrorKind {
    Connect => "connect",
    Timeout => "timeout",
    Protocol => "protocol",
    Tls => "tls",
    Reset => "reset",
});

/// How a client failed its own request; the `kind` label of
/// `sluice_client_errors_total`. A client's fault is never a backend's:
/// such a request is not counted in `sluice_requests_total` and never
/// in `sluice_upstream_errors_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// The request body's framing is broken (a chunk-size line that is
    /// not a size, chunk data without its CRLF, an HTTP/2 body longer or
    /// shorter than its `content-length`): answered 400.
    MalformedBody,
    /// The client's connection (or stream) ended before its body did:
    /// answered 400 if it can still read the answer.
    IncompleteBody,
    /// The client paused its body longer than `timeouts.idle`: answered 408.
    BodyTimeout,
    /// The client went away before anything of its request was written
    /// to the backend (which is not charged a 499 for it).
    LeftBeforeSent,
    /// The client broke HTTP/2's rules (on its stream, or on another stream
    /// of its connection, which then closed): the proxy reset the stream or
    /// closed the connection while the request waited for its backend, which
    /// is not charged a 499 for it.
    Protocol,
}

lower_case_label!(ClientErrorKind {
    MalformedBody => "malformed_body",
    IncompleteBody => "incomplete_body",
    BodyTimeout => "body_timeout",
    LeftBeforeSent => "left_before_sent",
    Protocol => "protocol",
});

impl ClientErrorKind {
    pub const ALL: [ClientErrorKind; 5] = [
        ClientErrorKind::MalformedBody,
        ClientErrorKind::IncompleteBody,
        ClientErrorKind::BodyTimeout,
        ClientErrorKind::LeftBeforeSent,
        ClientErrorKind::Protocol,
    ];
}

/// How an upgraded connection (a WebSocket tunnel after a 101) ended; the
/// `outcome` label of `sluice_tunnels_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client or the backend closed its side, and the other side got
    /// everything that was sent before.
    Closed,
    /// Reading or writing either side failed (a reset, a broken pipe).
    Error,
    /// No byte moved either way for the route's `timeouts.tunnel_idle`:
    /// the proxy closed both sides.
    IdleTimeout,
}

lower_case_label!(TunnelEnd {
    Closed => "closed",
    Error => "error",
    IdleTimeout => "idle_timeout",
});

impl TunnelEnd {
    pub const ALL: [TunnelEnd; 3] = [TunnelEnd::Closed, TunnelEnd::Error, TunnelEnd::IdleTimeout];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub route: String,
    pub outcome: TunnelEnd,
}

/// The tunnel counters of one route, one per [`TunnelEnd`].
#[derive(Clone, Debug)]
pub struct Tunnels(Arc<[Counter; 3]>);

impl Tunnels {
    pub fn record(&self, end: TunnelEnd) {
        self.0[end as usize].inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectResponseLabels {
    pub route: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientErrorLabels {
    pub route: String,
    pub kind: ClientErrorKind,
}

/// Why the proxy refused a request itself; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    MaxRequestsInFlight,
    BodyTooLarge,
}

lower_case_label!(RejectReason {
    MaxRequestsInFlight => "max_requests_in_flight",
    BodyTooLarge => "body_too_large",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

/// The answers a request refused before routing can get (see
/// [`Metrics::record_refused`]).
pub const REFUSED_CODES: [u16; 6] = [400, 405, 414, 431, 501, 505];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub route: String,
    pub backend: BackendLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub route: String,
    pub reason: RejectReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DigestLabels {
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

lower_case_label!(ReloadResult { Success => "success", Failure => "failure" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    pub backend: BackendLabel,
    pub kind: UpstreamErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

// === impl Series ===

/// Counts of one hundred status codes (`1xx`, `2xx`, ...) by classification.
struct CodePage([[AtomicU64; 2]; 100]);

impl CodePage {
    fn new() -> Box<Self> {
        Box::new(Self(std::array::from_fn(|_| {
            [AtomicU64::new(0), AtomicU64::new(0)]
        })))
    }
}

/// Status codes the text shows even at 0 (see the module doc).
const PINNED: [(u16, Classification); 2] = [
    (200, Classification::Success),
    (500, Classification::Failure),
];

/// One serving thread's counts; aligned so two threads never write one line.
#[repr(align(128))]
struct Shard {
    /// `pages[c]` holds codes `(c+1)*100 ..`; allocated on first use.
    pages: [OnceLock<Box<CodePage>>; 9],
    /// Non-cumulative bucket counts, the last one `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKET_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            pages: Default::default(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// The request counts and durations of one (route, backend, decision).
pub struct Series {
    route: String,
    backend: BackendLabel,
    decision: Decision,
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
            .field("route", &self.route)
            .field("backend", &self.backend)
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl Series {
    fn new(route: &str, backend: BackendLabel, decision: Decision, slots: usize) -> Self {
        Self {
            route: route.to_string(),
            backend,
            decision,
            shards: (0..slots.max(1)).map(|_| Shard::new()).collect(),
        }
    }

    pub fn backend(&self) -> BackendLabel {
        self.backend
    }

    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// Records one finished request: the status the client got, its
    /// classification and its whole duration.
    pub fn record(&self, code: u16, classification: Classification, elapsed: Duration) {
        let shard = &self.shards[worker::slot() % self.shards.len()];
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        shard.buckets[bucket_index(us)].fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
        let code = code.clamp(100, 999);
        let page = shard.pages[usize::from(code / 100 - 1)].get_or_init(CodePage::new);
        page.0[usize::from(code % 100)][classification as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Totals over every shard: `(code, classification, count)` for every
    /// code seen, plus the pinned rows.
    pub fn code_counts(&self) -> Vec<(u16, Classification, u64)> {
        let mut out = Vec::new();
        for page_index in 0..9u16 {
            for offset in 0..100u16 {
                let code = (page_index + 1) * 100 + offset;
                for class in [Classification::Success, Classification::Failure] {
                    let mut seen = false;
                    let mut total = 0u64;
                    for shard in self.shards.iter() {
                        if let Some(page) = shard.pages[usize::from(page_index)].get() {
                            seen = true;
                            total +=
                                page.0[usize::from(offset)][class as usize].load(Ordering::Relaxed);
                        }
                    }
                    if (seen && total > 0) || PINNED.contains(&(code, class)) {
                        out.push((code, class, total));
                    }
                }
            }
        }
        out
    }

    /// Totals over every shard: (sum in seconds, count, non-cumulative
    /// buckets as `(upper bound, count)` with `+Inf` last).
    pub fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = duration_bounds_secs()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        let mut sum_us = 0u64;
        for shard in self.shards.iter() {
            sum_us = sum_us.wrapping_add(shard.sum_us.load(Ordering::Relaxed));
            for (slot, count) in buckets.iter_mut().zip(shard.buckets.iter()) {
                slot.1 += count.load(Ordering::Relaxed);
            }
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        (sum_us as f64 / 1_000_000.0, count, buckets)
    }
}

/// Every [`Series`] ever made, encoded at scrape time.
#[derive(Debug, Default)]
struct TrafficCollector {
    series: Mutex<Vec<Arc<Series>>>,
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let series = self.series.lock().expect("metrics lock").clone();
        {
            let mut family = encoder.encode_descriptor(
                "requests",
                "Requests answered, by route, backend, the status code the client got, classification and split decision",
                None,
                MetricType::Counter,
            )?;
            for s in &series {
                for (code, class, count) in s.code_counts() {
                    let code = code.to_string();
                    let labels = [
                        ("route", s.route.as_str()),
                        ("backend", s.backend.as_str()),
                        ("code", code.as_str()),
                        ("classification", class.as_str()),
                        ("decision", s.decision.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "request_duration",
            "Time from request received to response end",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for s in &series {
            let (sum, count, buckets) = s.histogram();
            let labels = [
                ("route", s.route.as_str()),
                ("backend", s.backend.as_str()),
                ("decision", s.decision.as_str()),
            ];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

// === impl Metrics ===

/// All metric families of one proxy process.
pub struct Metrics {
    registry: Registry,
    traffic: Arc<TrafficCollector>,
    /// Shards per series: one per serving thread plus the caller's runtime.
    slots: usize,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    canary_weight: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    reloads: Family<ReloadLabels, Counter>,
    last_reload_ok: Gauge<i64, std::sync::atomic::AtomicI64>,
    tls_last_reload_ok: Gauge<i64, std::sync::atomic::AtomicI64>,
    tls_expiry: Gauge<i64, std::sync::atomic::AtomicI64>,
    config_source: Family<DigestLabels, Gauge>,
    config_digest: std::sync::Mutex<Option<String>>,
    rejected: Family<RejectLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    mirror_skipped: Family<MirrorSkipLabels, Counter>,
    client_errors: Family<ClientErrorLabels, Counter>,
    failovers: Family<RouteLabels, Counter>,
    tunnels: Family<TunnelLabels, Counter>,
    unrouted: Counter,
    refused: Family<CodeLabels, Counter>,
    direct_responses: Family<DirectResponseLabels, Counter>,
    connections_rejected: Counter,
    open_connections: Gauge,
    /// The plain TCP listeners' families (`sluice_tcp_*`).
    pub tcp: tcp::TcpMetrics,
}

impl Metrics {
    /// Metrics for in-process use (one shard per series).
    pub fn new() -> Arc<Self> {
        Self::with_threads(0)
    }

    /// Metrics sharded for `threads` dedicated serving threads.
    pub fn with_threads(threads: usize) -> Arc<Self> {
        let mut registry = Registry::with_prefix("sluice");
        let traffic = Arc::new(TrafficCollector::default());
        registry.register_collector(Box::new(traffic.clone()));
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by kind",
            upstream_errors.clone(),
        );
        let canary_weight = Family::<RouteLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "route_canary_weight",
            "Percent of a route's requests sent to the canary by weight",
            canary_weight.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register(
            "config_reloads",
            "Configuration reload attempts, by result",
            reloads.clone(),
        );
        let last_reload_ok = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        last_reload_ok.set(1);
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration reload succeeded (or none was tried), 0 while the last one was rejected",
            last_reload_ok.clone(),
        );
        let tls_last_reload_ok = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        tls_last_reload_ok.set(1);
        registry.register(
            "tls_last_reload_successful",
            "1 when the last change of the listener's certificate files was taken (or none was seen), 0 while the last one was rejected",
            tls_last_reload_ok.clone(),
        );
        let tls_expiry = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the listener's served certificate stops being valid, in Unix seconds (0 without TLS)",
            tls_expiry.clone(),
        );
        let config_source = Family::<DigestLabels, Gauge>::default();
        registry.register(
            "config_source",
            "1 for the digest (sha256) of the config text this proxy serves, when it follows a ConfigMap",
            config_source.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests the proxy answered itself because a limit was reached (503 max_requests_in_flight, 413 body_too_large)",
            rejected.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Requests without a body tried once more after their backend could not be reached (within a budget of 20% of requests plus 10)",
            retries.clone(),
        );
        let mirror_skipped = Family::<MirrorSkipLabels, Counter>::default();
        registry.register(
            "mirror_skipped",
            "Requests picked for mirroring that were not copied to the canary, by reason",
            mirror_skipped.clone(),
        );
        let client_errors = Family::<ClientErrorLabels, Counter>::default();
        registry.register(
            "client_errors",
            "Requests that failed by their client's fault (a malformed or incomplete body, a body paused too long), by kind; never counted against a backend",
            client_errors.clone(),
        );
        let failovers = Family::<RouteLabels, Counter>::default();
        registry.register(
            "failovers",
            "Requests the canary provably never started on (connect refused, closed before the request was written, REFUSED_STREAM) that went to the stable instead; the canary is still charged the failure",
            failovers.clone(),
        );
        let tunnels = Family::<TunnelLabels, Counter>::default();
        registry.register(
            "tunnels",
            "Upgraded connections (WebSocket tunnels after a 101) of HTTP routes, counted when they end, by outcome: closed, error, idle_timeout",
            tunnels.clone(),
        );
        let unrouted = Counter::default();
        registry.register(
            "unrouted_requests",
            "Requests no route held for (host, path and the matches' conditions), answered 404 by the proxy itself",
            unrouted.clone(),
        );
        let refused = Family::<CodeLabels, Counter>::default();
        for code in REFUSED_CODES {
            drop(refused.get_or_create(&CodeLabels { code }));
        }
        registry.register(
            "refused_requests",
            "Requests the proxy refused before routing, by its answer: 400 (a malformed or ambiguous HTTP/1.x head or framing; a missing, repeated or malformed Host; a method or target it does not forward), 405 (CONNECT), 414 (an HTTP/1.x request line over limits.max_header_bytes, a target too long for an HTTP/2 backend's :path), 431 (an HTTP/1.x head over limits.max_header_bytes or 128 fields, an HTTP/2 request over 128 fields), 501 (a transfer coding other than chunked), 505 (an HTTP major version other than 1 in a request line); no route or backend is charged",
            refused.clone(),
        );
        let direct_responses = Family::<DirectResponseLabels, Counter>::default();
        registry.register(
            "direct_responses",
            "Requests of a route with direct_response, answered by the proxy itself (no backend), by status code",
            direct_responses.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Client connections closed at once because limits.max_connections were open",
            connections_rejected.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now, all listeners",
            open_connections.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Sluice proxy build", build_info);
        let tcp = tcp::TcpMetrics::register(registry.sub_registry_with_prefix("tcp"));
        Arc::new(Self {
            registry,
            traffic,
            slots: threads + 1,
            upstream_errors,
            canary_weight,
            reloads,
            last_reload_ok,
            tls_last_reload_ok,
            tls_expiry,
            config_source,
            config_digest: std::sync::Mutex::new(None),
            rejected,
            retries,
            mirror_skipped,
            client_errors,
            failovers,
            tunnels,
            unrouted,
            direct_responses,
            connections_rejected,
            refused,
            open_connections,
            tcp,
        })
    }

    /// OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The config text now served (one series, at 1).
    pub fn set_config_digest(&self, digest: &str) {
        *self.config_digest.lock().expect("digest") = Some(digest.to_string());
        self.config_source.clear();
        self.config_source
            .get_or_create(&DigestLabels {
                sha256: digest.to_string(),
            })
            .set(1);
    }

    /// The counter of mirror copies of `route` skipped for `reason`
    /// (made at once, so it is exposed at 0).
    pub fn mirror_skipped(&self, route: &str, reason: MirrorSkip) -> Counter {
        self.mirror_skipped
            .get_or_create(&MirrorSkipLabels {
                route: route.to_string(),
                reason,
            })
            .clone()
    }

    /// `sluice_unrouted_requests_total`.
    pub fn unrouted(&self) -> Counter {
        self.unrouted.clone()
    }

    /// `sluice_direct_responses_total{route, code}`.
    pub fn direct_responses(&self, route: &str, code: u16) -> Counter {
        self.direct_responses
            .get_or_create(&DirectResponseLabels {
                route: route.to_string(),
                code,
            })
            .clone()
    }

    /// The failover counter of `route` (made at once, so it is exposed at 0).
    pub fn failovers(&self, route: &str) -> Counter {
        self.failovers
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .clone()
    }

    /// The tunnel counters of `route`, one per outcome (made at once, so
    /// they are exposed at 0).
    pub fn tunnels(&self, route: &str) -> Tunnels {
        Tunnels(Arc::new(TunnelEnd::ALL.map(|outcome| {
            self.tunnels
                .get_or_create(&TunnelLabels {
                    route: route.to_string(),
                    outcome,
                })
                .clone()
        })))
    }

    /// The client-error counters of `route`, one per kind (made at once,
    /// so they are exposed at 0).
    pub fn client_errors(&self, route: &str) -> ClientErrors {
        ClientErrors(Arc::new(ClientErrorKind::ALL.map(|kind| {
            self.client_errors
                .get_or_create(&ClientErrorLabels {
                    route: route.to_string(),
                    kind,
                })
                .clone()
        })))
    }

    /// The counter of requests the proxy refuses itself on `route` for
    /// `reason` (a limit), resolved once per routing table.
    pub fn rejected(&self, route: &str, reason: RejectReason) -> Counter {
        self.rejected
            .get_or_create(&RejectLabels {
                route: route.to_string(),
                reason,
            })
            .clone()
    }

    /// A request refused before routing, answered `code` (one of
    /// [`REFUSED_CODES`]): it reached no route, so only this counts it.
    pub fn record_refused(&self, code: u16) {
        debug_assert!(
            REFUSED_CODES.contains(&code),
            "{code} is not a refusal's code"
        );
        self.refused.get_or_create(&CodeLabels { code }).inc();
    }

    /// A client connection closed at once (limits.max_connections).
    pub fn record_connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// Open client connections, +1 or -1.
    pub fn connection_opened(&self, opened: bool) {
        if opened {
            self.open_connections.inc();
        } else {
            self.open_connections.dec();
        }
    }

    /// The digest of the ConfigMap text served, when following one.
    pub fn config_digest(&self) -> Option<String> {
        self.config_digest.lock().expect("digest").clone()
    }

    /// A reload of the config's source (the file, a ConfigMap, the
    /// Gateway API).
    pub fn record_reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_ok
            .set(i64::from(result == ReloadResult::Success));
    }

    /// A change of the listener's certificate files, taken or not; `served`
    /// is when the certificate now served stops being valid. Counted with
    /// the config's reloads, and shown apart from them, so neither masks
    /// the other's failure.
    pub fn record_tls_reload(&self, result: ReloadResult, served: Option<i64>) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.tls_last_reload_ok
            .set(i64::from(result == ReloadResult::Success));
        self.set_tls_expiry(served);
    }

    /// When the listener's served certificate stops being valid.
    pub fn set_tls_expiry(&self, served: Option<i64>) {
        self.tls_expiry.set(served.unwrap_or(0));
    }

    pub fn set_canary_weight(&self, route: &str, percent: f64) {
        self.canary_weight
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .set(percent);
    }

    /// Removes the canary weight of a route that is gone.
    pub fn forget_canary_weight(&self, route: &str) {
        self.canary_weight.remove(&RouteLabels {
            route: route.to_string(),
        });
    }

    /// The series of (route, backend, decision), made on first use and kept
    /// for the life of the process.
    pub fn series(&self, route: &str, backend: BackendLabel, decision: Decision) -> Arc<Series> {
        let mut all = self.traffic.series.lock().expect("metrics lock");
        if let Some(s) = all
            .iter()
            .find(|s| s.route == route && s.backend == backend && s.decision == decision)
        {
            return s.clone();
        }
        let s = Arc::new(Series::new(route, backend, decision, self.slots));
        all.push(s.clone());
        s
    }

    /// Handles for one route and backend, resolved once per routing table.
    pub fn backend(&self, route: &str, backend: BackendLabel) -> BackendMetrics {
        BackendMetrics {
            inner: Arc::new(BackendMetricsInner {
                route: route.to_string(),
                backend,
                errors: self.upstream_errors.clone(),
                retries: self
                    .retries
                    .get_or_create(&RetryLabels {
                        route: route.to_string(),
                        backend,
                    })
                    .clone(),
            }),
        }
    }
}

/// Pre-resolved `sluice_client_errors_total` handles of one route, one
/// per [`ClientErrorKind`] (shared: a request with a body holds them).
#[derive(Clone, Debug)]
pub struct ClientErrors(Arc<[Counter; ClientErrorKind::ALL.len()]>);

impl ClientErrors {
    pub fn record(&self, kind: ClientErrorKind) {
        self.0[kind as usize].inc();
    }
}

/// Pre-resolved upstream-error handles of one (route, backend) pair.
#[derive(Clone)]
pub struct BackendMetrics {
    inner: Arc<BackendMetricsInner>,
}

struct BackendMetricsInner {
    route: String,
    backend: BackendLabel,
    errors: Family<UpstreamErrorLabels, Counter>,
    retries: Counter,
}

impl BackendMetrics {
    /// A request tried once more after its backend could not be reached.
    pub fn record_retry(&self) {
        self.inner.retries.inc();
    }

    pub fn record_upstream_error(&self, kind: UpstreamErrorKind) {
        self.inner
            .errors
            .get_or_create(&UpstreamErrorLabels {
                route: self.inner.route.clone(),
                backend: self.inner.backend,
                kind,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_documented_interface() {
        let m = Metrics::new();
        let canary = m.series("web", BackendLabel::Canary, Decision::Weight);
        canary.record(503, Classification::Failure, Duration::from_millis(20));
        m.series("web", BackendLabel::Canary, Decision::Match)
            .record(200, Classification::Success, Duration::from_millis(300));
        m.backend("web", BackendLabel::Canary)
            .record_upstream_error(UpstreamErrorKind::Connect);
        m.set_canary_weight("web", 33.33);
        m.record_reload(ReloadResult::Success);
        m.client_errors("web")
            .record(ClientErrorKind::MalformedBody);
        let text = m.encode();
        for needle in [
            "sluice_requests_total{route=\"web\",backend=\"canary\",code=\"503\",classification=\"failure\",decision=\"weight\"} 1",
            "sluice_requests_total{route=\"web\",backend=\"canary\",code=\"200\",classification=\"success\",decision=\"weight\"} 0",
            "sluice_requests_total{route=\"web\",backend=\"canary\",code=\"500\",classification=\"failure\",decision=\"weight\"} 0",
            "sluice_requests_total{route=\"web\",backend=\"canary\",code=\"200\",classification=\"success\",decision=\"match\"} 1",
            "sluice_request_duration_seconds_count{route=\"web\",backend=\"canary\",decision=\"weight\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"0.02\",route=\"web\",backend=\"canary\",decision=\"weight\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"0.018\",route=\"web\",backend=\"canary\",decision=\"weight\"} 0",
            "sluice_request_duration_seconds_bucket{le=\"0.3\",route=\"web\",backend=\"canary\",decision=\"match\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"0.25\",route=\"web\",backend=\"canary\",decision=\"match\"} 0",
            "sluice_upstream_errors_total{route=\"web\",backend=\"canary\",kind=\"connect\"} 1",
            "sluice_route_canary_weight{route=\"web\"} 33.33",
            "sluice_client_errors_total{route=\"web\",kind=\"malformed_body\"} 1",
            "sluice_client_errors_total{route=\"web\",kind=\"incomplete_body\"} 0",
            "sluice_client_errors_total{route=\"web\",kind=\"body_timeout\"} 0",
            "sluice_config_reloads_total{result=\"success\"} 1",
            "sluice_config_reloads_total{result=\"failure\"} 0",
            "sluice_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn bucket_layout_puts_every_threshold_within_ten_percent_of_a_bound() {
        let bounds: Vec<f64> = duration_bounds_secs().collect();
        assert_eq!(bounds.first(), Some(&0.001));
        assert_eq!(bounds.last(), Some(&30.0));
        assert!(
            bounds
                .windows(2)
                .all(|w| w[1] > w[0] && w[1] / w[0] <= 1.2 + 1e-9)
        );
        // Every millisecond value from 5 ms to 10 s has a bound within 10%.
        for ms in 5..=10_000u64 {
            let v = ms as f64 / 1000.0;
            let nearest = bounds
                .iter()
                .map(|b| (b / v).max(v / b))
                .fold(f64::INFINITY, f64::min);
            assert!(nearest <= 1.1, "{ms} ms is {nearest} from a bound");
        }
        for gate_ms in [
            5, 10, 25, 50, 100, 200, 250, 300, 400, 500, 800, 1000, 2000, 5000,
        ] {
            assert!(
                is_duration_bound(Duration::from_millis(gate_ms)),
                "{gate_ms} ms"
            );
        }
        assert!(!is_duration_bound(Duration::from_millis(270)));
        assert_eq!(
            nearest_duration_bounds(Duration::from_millis(270)),
            (
                Some(Duration::from_millis(250)),
                Some(Duration::from_millis(300))
            )
        );
    }

    #[test]
    fn durations_land_in_the_bucket_whose_bound_is_inclusive() {
        assert_eq!(bucket_index(1000), 0);
        assert_eq!(bucket_index(1001), 1);
        assert_eq!(bucket_index(300_000), 42);
        assert_eq!(DURATION_BUCKET_BOUNDS_US[42], 300_000);
        assert_eq!(bucket_index(u64::MAX), DURATION_BUCKET_BOUNDS_US.len());
    }

    #[test]
    fn shards_of_every_thread_are_summed() {
        let m = Metrics::with_threads(3);
        let s = m.series("web", BackendLabel::Stable, Decision::Weight);
        let threads: Vec<_> = (1..=3)
            .map(|slot| {
                let s = s.clone();
                std::thread::spawn(move || {
                    worker::set_slot(slot);
                    for _ in 0..1000 {
                        s.record(200, Classification::Success, Duration::from_millis(2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        s.record(502, Classification::Failure, Duration::from_millis(2));
        let counts = s.code_counts();
        assert!(counts.contains(&(200, Classification::Success, 3000)));
        assert!(counts.contains(&(502, Classification::Failure, 1)));
        let (sum, count, _) = s.histogram();
        assert_eq!(count, 3001);
        assert!((sum - 6.002).abs() < 1e-9, "{sum}");
    }
}
