//! The load generator.
//!
//! Closed loop: `connections` keep-alive connections, each sending its next
//! request as soon as the previous answer is read. Open loop: a fixed total
//! `rate`, spread over the connections; each request has an *intended* send
//! time on a fixed schedule and its latency is measured from that time, so a
//! stalled server shows up in the percentiles instead of silently slowing the
//! load down (no coordinated omission, as in wrk2). The intended times are
//! kept to within 100 µs, not tokio's millisecond ticks (see `pace.rs`), so
//! the load arrives at an even pace and a latency holds little rounding of
//! the generator's own.
//!
//! Every run is bounded: by a duration, a request count, or both (whichever
//! comes first), and by an external stop flag.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::pace::Pacer;

/// Why a run cannot start; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("URL `{0}`: {1}")]
    Url(String, String),
    #[error("-c/--connections must be at least 1")]
    Connections,
    #[error("--rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
    #[error("give -d/--duration or -n/--requests: a run must be bounded")]
    Unbounded,
    #[error("-n/--requests must be at least 1")]
    Requests,
}

/// What to send and how.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub url: Uri,
    pub connections: usize,
    /// Open loop at this total rate (requests/s); closed loop when `None`.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub http2: bool,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Count responses by this header's value (e.g. `x-backend`).
    pub count_header: Option<HeaderName>,
    /// Per-request timeout; a request past it counts as a `timeout` error.
    pub timeout: Duration,
    /// Load sent before the measured run and left out of the report, so the
    /// report is of a steady state: connections opened, pools warm, and any
    /// backlog of the start drained (see [`run`]).
    pub warmup: Duration,
}

impl LoadOptions {
    /// Closed-loop defaults for `url`.
    pub fn new(url: &str) -> Result<Self, UsageError> {
        Ok(Self {
            url: parse_url(url)?,
            connections: 10,
            rate: None,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            http2: false,
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            count_header: None,
            timeout: Duration::from_secs(10),
            warmup: Duration::ZERO,
        })
    }

    pub fn validate(&self) -> Result<(), UsageError> {
        if self.connections == 0 {
            return Err(UsageError::Connections);
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(UsageError::Rate(r));
        }
        if self.duration.is_none() && self.requests.is_none() {
            return Err(UsageError::Unbounded);
        }
        if self.requests == Some(0) {
            return Err(UsageError::Requests);
        }
        Ok(())
    }
}

/// Parses a target URL: `http://host:port/path?query`.
pub fn parse_url(text: &str) -> Result<Uri, UsageError> {
    let uri: Uri = text
        .parse()
        .map_err(|e| UsageError::Url(text.into(), format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(UsageError::Url(
                text.into(),
                format!("scheme `{other}` is not supported; use http://"),
            ));
        }
        None => return Err(UsageError::Url(text.into(), "needs http://".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(UsageError::Url(text.into(), "has no host".into()));
    }
    Ok(uri)
}

/// Live counters, readable while a run goes on; `stop` ends it early.
#[derive(Default, Debug)]
pub struct LoadControl {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub stop: AtomicBool,
}

impl LoadControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The result of a run.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub url: String,
    pub mode: &'static str,
    pub connections: usize,
    pub target_rate: Option<f64>,
    /// Requests attempted and finished (answered or failed).
    pub requests: u64,
    /// Requests that got an HTTP response.
    pub responses: u64,
    pub duration_secs: f64,
    pub requests_per_sec: f64,
    pub status_counts: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    /// Responses by the `count_header` value (`-` when absent).
    pub header_counts: BTreeMap<String, u64>,
    /// Responses by the `count_header` value, then status.
    pub header_status_counts: BTreeMap<String, BTreeMap<u16, u64>>,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl Report {
    /// Responses with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.status_counts
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    /// A human summary, as printed by `sluice-load run`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {} with {} connection(s){}",
            self.mode,
            self.url,
            self.connections,
            self.target_rate
                .map(|r| format!(" at {r} req/s"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  requests   {} in {:.2}s, {:.1} req/s",
            self.requests, self.duration_secs, self.requests_per_sec
        );
        let statuses: Vec<String> = self
            .status_counts
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let _ = writeln!(out, "  status     {}", statuses.join(", "));
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(out, "  errors     {}", errors.join(", "));
        }
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency    p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  p99.9 {:.2}ms  max {:.2}ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        for (value, n) in &self.header_counts {
            let _ = writeln!(out, "  header     {value}: {n}");
        }
        out
    }
}

struct Shared {
    options: LoadOptions,
    control: Arc<LoadControl>,
    issued: AtomicU64,
    start: Instant,
    /// The end of the warm-up: requests intended before it are not reported.
    measured_from: Instant,
    deadline: Option<Instant>,
    /// Time between two intended sends on one connection (open loop).
    interval: Option<Duration>,
    /// Ends the open loop's waits at their intended times (see [`Pacer`]).
    pacer: Option<Pacer>,
    authority: String,
    path_and_query: String,
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    header_status: BTreeMap<String, BTreeMap<u16, u64>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

#[derive(Debug)]
enum Failure {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl Failure {
    fn as_str(&self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
        }
    }

    fn of(e: &hyper::Error) -> Self {
        if e.is_timeout() {
            return Failure::Timeout;
        }
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            return Failure::Reset;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            {
                return Failure::Reset;
            }
            source = s.source();
        }
        Failure::Protocol
    }
}

/// Runs the load described by `options`; returns when it is bounded out or
/// stopped through `control`.
///
/// With a warm-up, the same load (and, open loop, the same schedule) runs
/// for `warmup` first, and nothing of it is reported: not its requests,
/// statuses, errors or latencies, nor does it count towards `requests`.
/// Open-loop latency is measured from the intended time, so without a
/// warm-up a short run reports its own start: every connection opened at
/// once, and pools behind a proxy filled, and then the backlog that leaves
/// drained at the spare capacity. Through a proxy at 29,500 req/s that
/// start made up more than 1% of a 10 s run's requests, and so its p99.
pub async fn run(options: LoadOptions, control: Arc<LoadControl>) -> Result<Report, UsageError> {
    options.validate()?;
    let start = Instant::now();
    let measured_from = start + options.warmup;
    let authority = options
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path_and_query = options
        .url
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let interval = options
        .rate
        .map(|r| Duration::from_secs_f64(options.connections as f64 / r));
    let shared = Arc::new(Shared {
        deadline: options.duration.map(|d| measured_from + d),
        measured_from,
        control,
        issued: AtomicU64::new(0),
        start,
        pacer: interval.map(|_| Pacer::new()),
        interval,
        authority,
        path_and_query,
        options,
    });
    let workers: Vec<_> = (0..shared.options.connections)
        .map(|i| tokio::spawn(worker(i, shared.clone())))
        .collect();
    let mut histogram = new_histogram();
    let mut tally = Tally::default();
    for w in workers {
        let (h, t) = w.await.expect("load worker panicked");
        histogram.add(&h).expect("same histogram bounds");
        for (s, n) in t.statuses {
            *tally.statuses.entry(s).or_default() += n;
        }
        for (k, n) in t.errors {
            *tally.errors.entry(k).or_default() += n;
        }
        for (v, by_status) in t.header_status {
            let entry = tally.header_status.entry(v).or_default();
            for (s, n) in by_status {
                *entry.entry(s).or_default() += n;
            }
        }
    }
    let elapsed = shared.measured_from.elapsed().as_secs_f64();
    let responses: u64 = tally.statuses.values().sum();
    let requests = responses + tally.errors.values().sum::<u64>();
    let ms = |v: u64| v as f64 / 1000.0;
    let latency = LatencySummary {
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
        mean_ms: histogram.mean() / 1000.0,
    };
    let header_counts = tally
        .header_status
        .iter()
        .map(|(v, m)| (v.clone(), m.values().sum()))
        .collect();
    Ok(Report {
        url: shared.options.url.to_string(),
        mode: if shared.options.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        connections: shared.options.connections,
        target_rate: shared.options.rate,
        requests,
        responses,
        duration_secs: elapsed,
        requests_per_sec: if elapsed > 0.0 {
            requests as f64 / elapsed
        } else {
            0.0
        },
        status_counts: tally.statuses,
        errors: tally.errors,
        latency,
        header_counts,
        header_status_counts: tally.header_status,
        histogram,
    })
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn connect(shared: &Shared) -> Result<Sender, Failure> {
    let port = shared.options.url.port_u16().unwrap_or(80);
    let host = shared
        .options
        .url
        .host()
        .unwrap_or("127.0.0.1")
        .trim_matches(|c| c == '[' || c == ']');
    let stream = tokio::time::timeout(shared.options.timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if shared.options.http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

fn build_request(shared: &Shared) -> Request<Full<Bytes>> {
    let o = &shared.options;
    let uri: Uri = if o.http2 {
        o.url.clone()
    } else {
        shared
            .path_and_query
            .parse()
            .expect("path from a valid URL")
    };
    let mut req = Request::builder()
        .method(o.method.clone())
        .uri(uri)
        .body(Full::new(o.body.clone()))
        .expect("valid request parts");
    let headers = req.headers_mut();
    if !o.http2 {
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&shared.authority).expect("authority is a header value"),
        );
    }
    for (k, v) in &o.headers {
        headers.append(k.clone(), v.clone());
    }
    req
}

async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    count_header: Option<&HeaderName>,
) -> Result<(u16, Option<String>), Failure> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| Failure::of(&e))?;
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| Failure::of(&e))?;
            s.send_request(req).await
        }
    }
    .map_err(|e| Failure::of(&e))?;
    let status = resp.status().as_u16();
    let tag = count_header.map(|h| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    });
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| Failure::of(&e))?;
    }
    Ok((status, tag))
}

async fn worker(index: usize, shared: Arc<Shared>) -> (Histogram<u64>, Tally) {
    let mut histogram = new_histogram();
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    let mut sent_here: u64 = 0;
    // Stagger open-loop schedules so connections do not fire in lockstep.
    let offset = shared
        .interval
        .map(|i| i.mul_f64(index as f64 / shared.options.connections as f64))
        .unwrap_or_default();
    loop {
        if shared.control.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = match shared.interval {
            Some(interval) => shared.start + offset + interval.mul_f64(sent_here as f64),
            None => Instant::now(),
        };
        if shared.deadline.is_some_and(|d| intended >= d) {
            break;
        }
        let measured = intended >= shared.measured_from;
        if measured
            && let Some(limit) = shared.options.requests
            && shared.issued.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        sent_here += 1;
        if let Some(pacer) = &shared.pacer {
            pacer.until(intended).await;
        }
        if sender.is_none() {
            match connect(&shared).await {
                Ok(s) => sender = Some(s),
                Err(f) => {
                    if measured {
                        record_failure(&shared, &mut tally, f);
                    }
                    // Do not spin on a refused port.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let req = build_request(&shared);
        let s = sender.as_mut().expect("connected above");
        let outcome = tokio::time::timeout(
            shared.options.timeout,
            exchange(s, req, shared.options.count_header.as_ref()),
        )
        .await
        .unwrap_or(Err(Failure::Timeout));
        let latency_us = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
        if !measured {
            if outcome.is_err() {
                sender = None;
            }
            continue;
        }
        match outcome {
            Ok((status, tag)) => {
                histogram.saturating_record(latency_us.max(1));
                *tally.statuses.entry(status).or_default() += 1;
                if let Some(tag) = tag {
                    *tally
                        .header_status
                        .entry(tag)
                        .or_default()
                        .entry(status)
                        .or_default() += 1;
                }
                shared.control.completed.fetch_add(1, Ordering::Relaxed);
                if status >= 500 {
                    shared.control.server_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(f) => {
                histogram.saturating_record(latency_us.max(1));
                record_failure(&shared, &mut tally, f);
                sender = None;
            }
        }
    }
    (histogram, tally)
}

fn record_failure(shared: &Shared, tally: &mut Tally, f: Failure) {
    *tally.errors.entry(f.as_str().to_string()).or_default() += 1;
    shared.control.completed.fetch_add(1, Ordering::Relaxed);
    shared.control.errors.fetch_add(1, Ordering::Relaxed);
}
