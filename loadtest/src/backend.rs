//! The demo backend: a small HTTP app whose faults can be set at start and
//! changed at runtime, so a canary can turn bad in the middle of a release.
//!
//! Every path answers 200 with a JSON body naming the backend and the header
//! `x-backend: <name>`, except a seeded fraction (`error_rate`) that answers
//! `error_status`. Reserved paths:
//! - `GET /_backend/stats`: `{"name":..,"requests":N,"by_status":{"200":N,..}}`
//! - `GET /_backend/healthz`: 200
//! - `PUT /_backend/faults`: JSON with any of `error_rate`, `error_status`,
//!   `latency` (`"20ms"` or `"10ms..200ms"`), `slow_rate` and
//!   `slow_latency` (an exact, evenly spread share of requests takes this
//!   delay instead), `stall` (one next request waits this long, once),
//!   `error_run` (failures come in runs of this many requests; the share
//!   failing stays `error_rate`), `incident_every`, `incident_for` and
//!   `incident_error_rate` (incidents start at random, on average one every
//!   `incident_every`, and last `incident_for`, failing that share; or all
//!   of these as one object, `error_burst: {run, incident_every,
//!   incident_for, incident_error_rate}`), and
//!   `warmup` with `warmup_latency` (for this long after its first request
//!   the backend adds that delay: a cold cache or JIT).
//!
//! Reserved paths are not counted in the stats.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Rng;

/// Added delay of every answer.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Latency {
    #[default]
    None,
    Fixed(Duration),
    Uniform(Duration, Duration),
}

#[cfg(test)]
mod tests {
    #[test]
    fn slow_requests_are_spread_exactly() {
        let mut slow = 0;
        for n in 0..10_000u64 {
            if super::picked(n, 0.012) {
                slow += 1;
            }
            let expected = ((n + 1) as f64 * 0.012).floor() as u64;
            assert_eq!(slow, expected, "after {} requests", n + 1);
        }
        assert_eq!(slow, 120);
    }
}

impl Latency {
    /// Reads `20ms`, `10ms..200ms`, or `0`/`none`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() || t == "0" || t == "none" {
            return Ok(Latency::None);
        }
        let parse = |s: &str| sluice_proxy::config::parse_duration(s);
        match t.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(format!("`{text}`: the lower bound is above the upper"));
                }
                Ok(Latency::Uniform(lo, hi))
            }
            None => Ok(Latency::Fixed(parse(t)?)),
        }
    }

    fn pick(&self, rng: &mut Rng) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => lo + (hi - lo).mul_f64(rng.next_f64()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Latency::None => "0".into(),
            Latency::Fixed(d) => sluice_proxy::config::format_duration(*d),
            Latency::Uniform(a, b) => format!(
                "{}..{}",
                sluice_proxy::config::format_duration(*a),
                sluice_proxy::config::format_duration(*b)
            ),
        }
    }
}

/// How a backend misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    pub error_rate: f64,
    pub error_status: u16,
    pub latency: Latency,
    /// Share of requests that take `slow_latency` instead of `latency`.
    /// Spread exactly like the proxy's split: after N requests,
    /// floor(N·rate) or ceil(N·rate) of them were slow, never bunched.
    pub slow_rate: f64,
    pub slow_latency: Latency,
    /// One next request waits this long, then it is cleared.
    pub stall: Option<Duration>,
    /// Failures in runs and incidents.
    pub error_burst: ErrorBurst,
    /// Slower for a while after the first request.
    pub warmup: Option<Warmup>,
}

/// Failures that come together, as real ones do.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorBurst {
    /// Failures come in runs of this many requests (1: one at a time); the
    /// share of requests failing stays the error rate.
    pub run: u32,
    /// Incidents start at random times, on average one this often…
    pub incident_every: Option<Duration>,
    /// …last this long…
    pub incident_for: Duration,
    /// …and fail this share of requests meanwhile.
    pub incident_error_rate: f64,
}

impl Default for ErrorBurst {
    fn default() -> Self {
        Self {
            run: 1,
            incident_every: None,
            incident_for: Duration::ZERO,
            incident_error_rate: 0.0,
        }
    }
}

/// Slower for a while after the first request: a cold cache or JIT.
#[derive(Clone, Debug, PartialEq)]
pub struct Warmup {
    pub duration: Duration,
    /// Added to every request's delay meanwhile.
    pub latency: Latency,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 500,
            latency: Latency::None,
            slow_rate: 0.0,
            slow_latency: Latency::None,
            stall: None,
            error_burst: ErrorBurst::default(),
            warmup: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsPatch {
    error_rate: Option<f64>,
    error_status: Option<u16>,
    latency: Option<String>,
    slow_rate: Option<f64>,
    slow_latency: Option<String>,
    stall: Option<String>,
    error_run: Option<u32>,
    error_burst: Option<BurstPatch>,
    incident_every: Option<String>,
    incident_for: Option<String>,
    incident_error_rate: Option<f64>,
    warmup: Option<String>,
    warmup_latency: Option<String>,
}

/// `error_burst` as one object: the same settings as the flat fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstPatch {
    run: Option<u32>,
    incident_every: Option<String>,
    incident_for: Option<String>,
    incident_error_rate: Option<f64>,
}

impl Faults {
    fn apply(&mut self, mut patch: FaultsPatch) -> Result<(), String> {
        if let Some(b) = patch.error_burst.take() {
            patch.error_run = patch.error_run.or(b.run);
            patch.incident_every = patch.incident_every.or(b.incident_every);
            patch.incident_for = patch.incident_for.or(b.incident_for);
            patch.incident_error_rate = patch.incident_error_rate.or(b.incident_error_rate);
        }
        let mut next = self.clone();
        if let Some(r) = patch.error_rate {
            check_rate(r).map_err(|e| format!("error_rate: {e}"))?;
            next.error_rate = r;
        }
        if let Some(s) = patch.error_status {
            StatusCode::from_u16(s)
                .map_err(|_| format!("error_status: {s} is not an HTTP status"))?;
            next.error_status = s;
        }
        if let Some(l) = patch.latency {
            next.latency = Latency::parse(&l).map_err(|e| format!("latency: {e}"))?;
        }
        if let Some(r) = patch.slow_rate {
            check_rate(r).map_err(|e| format!("slow_rate: {e}"))?;
            next.slow_rate = r;
        }
        if let Some(l) = patch.slow_latency {
            next.slow_latency = Latency::parse(&l).map_err(|e| format!("slow_latency: {e}"))?;
        }
        if let Some(s) = patch.stall {
            next.stall =
                Some(sluice_proxy::config::parse_duration(&s).map_err(|e| format!("stall: {e}"))?);
        }
        let duration = |name: &str, text: &str| {
            sluice_proxy::config::parse_duration(text).map_err(|e| format!("{name}: {e}"))
        };
        if let Some(run) = patch.error_run {
            next.error_burst.run = run;
        }
        if let Some(every) = patch.incident_every {
            let every = duration("incident_every", &every)?;
            next.error_burst.incident_every = (!every.is_zero()).then_some(every);
        }
        if let Some(length) = patch.incident_for {
            next.error_burst.incident_for = duration("incident_for", &length)?;
        }
        if let Some(r) = patch.incident_error_rate {
            next.error_burst.incident_error_rate = r;
        }
        if patch.warmup.is_some() || patch.warmup_latency.is_some() {
            let current = next.warmup.clone().unwrap_or(Warmup {
                duration: Duration::ZERO,
                latency: Latency::None,
            });
            let duration = match &patch.warmup {
                Some(w) => duration("warmup", w)?,
                None => current.duration,
            };
            let latency = match &patch.warmup_latency {
                Some(l) => Latency::parse(l).map_err(|e| format!("warmup_latency: {e}"))?,
                None => current.latency,
            };
            next.warmup = Some(Warmup { duration, latency });
        }
        next.check()?;
        *self = next;
        Ok(())
    }

    /// Checks the values that are not checked as they are parsed; errors
    /// name the field.
    pub fn check(&self) -> Result<(), String> {
        if self.error_burst.run == 0 {
            return Err("error_run: must be at least 1".into());
        }
        check_rate(self.error_burst.incident_error_rate)
            .map_err(|e| format!("incident_error_rate: {e}"))?;
        if self.error_burst.incident_every.is_some() && self.error_burst.incident_for.is_zero() {
            return Err("incident_for: an incident must last more than 0s".into());
        }
        Ok(())
    }
}

pub fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{rate} is not a fraction in 0..=1"))
    }
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub listen: SocketAddr,
    pub name: String,
    pub faults: Faults,
    /// Serve prior-knowledge HTTP/2 only (otherwise HTTP/1.1 and h2c).
    pub http2_only: bool,
    pub seed: u64,
}

impl BackendOptions {
    pub fn new(name: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("static address"),
            name: name.to_string(),
            faults: Faults::default(),
            http2_only: false,
            seed: 1,
        }
    }
}

#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackendStats {
    pub name: String,
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
}

struct BackendState {
    name: String,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    stats: Mutex<BackendStats>,
    /// Requests answered so far, for the exact spread of slow ones.
    served: std::sync::atomic::AtomicU64,
    bursts: Mutex<BurstState>,
}

/// Where the bursts and the warm-up stand.
#[derive(Default)]
struct BurstState {
    /// Failures still to come in the current run.
    run_left: u32,
    next_incident: Option<std::time::Instant>,
    incident_until: Option<std::time::Instant>,
    first_request: Option<std::time::Instant>,
}

impl BurstState {
    /// Whether the next request fails, and the delay the warm-up adds.
    fn decide(&mut self, faults: &Faults, rng: &mut Rng) -> (bool, Duration) {
        let now = std::time::Instant::now();
        let first = *self.first_request.get_or_insert(now);
        let burst = &faults.error_burst;
        if let Some(every) = burst.incident_every {
            // Exponential gaps: incidents start at random, one per `every`
            // on average.
            let gap = |rng: &mut Rng| every.mul_f64(-(1.0 - rng.next_f64()).ln());
            let next = *self.next_incident.get_or_insert_with(|| now + gap(rng));
            if now >= next {
                self.incident_until = Some(now + burst.incident_for);
                self.next_incident = Some(now + burst.incident_for + gap(rng));
            }
        }
        let in_incident = self.incident_until.is_some_and(|until| now < until);
        let rate = if in_incident {
            burst.incident_error_rate
        } else {
            faults.error_rate
        };
        let fail = if self.run_left > 0 {
            self.run_left -= 1;
            true
        } else if rate > 0.0 && rng.next_f64() < rate / f64::from(burst.run.max(1)) {
            self.run_left = burst.run.max(1) - 1;
            true
        } else {
            false
        };
        let warm = match &faults.warmup {
            Some(w) if now.duration_since(first) < w.duration => w.latency.pick(rng),
            _ => Duration::ZERO,
        };
        (fail, warm)
    }
}

/// Whether request number `n` (0-based) is one of the `rate` share, spread
/// exactly: `floor((n+1)·rate) > floor(n·rate)`.
fn picked(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// A running backend.
pub struct BackendHandle {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> BackendStats {
        self.state.stats.lock().expect("stats lock").clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults lock") = faults;
    }

    pub fn faults(&self) -> Faults {
        self.state.faults.lock().expect("faults lock").clone()
    }

    /// Stops accepting and closes the listener.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds and serves until [`BackendHandle::stop`].
pub async fn start_backend(options: BackendOptions) -> std::io::Result<BackendHandle> {
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(BackendState {
        name: options.name.clone(),
        faults: Mutex::new(options.faults.clone()),
        rng: Mutex::new(Rng::new(options.seed)),
        served: std::sync::atomic::AtomicU64::new(0),
        bursts: Mutex::new(BurstState::default()),
        stats: Mutex::new(BackendStats {
            name: options.name.clone(),
            ..Default::default()
        }),
    });
    let (stop, mut stop_rx) = watch::channel(false);
    let serve_state = state.clone();
    let task = tokio::spawn(async move {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if options.http2_only {
            builder = builder.http2_only();
        }
        let builder = Arc::new(builder);
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let state = serve_state.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(answer(state, req).await) }
                        });
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            }
        }
    });
    Ok(BackendHandle {
        addr,
        state,
        stop,
        task,
    })
}

fn json(status: StatusCode, name: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    if let Ok(v) = name.parse() {
        headers.insert("x-backend", v);
    }
    resp
}

async fn answer(state: Arc<BackendState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/_backend/healthz") => {
            return json(StatusCode::OK, &state.name, "{\"ok\":true}".into());
        }
        (&Method::GET, "/_backend/stats") => {
            let stats = state.stats.lock().expect("stats lock").clone();
            return json(
                StatusCode::OK,
                &state.name,
                serde_json::to_string(&stats).expect("stats serialize"),
            );
        }
        (&Method::PUT, "/_backend/faults") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &state.name,
                        serde_json::json!({"error": e.to_string()}).to_string(),
                    );
                }
            };
            let result = serde_json::from_slice::<FaultsPatch>(&body)
                .map_err(|e| format!("bad faults JSON: {e}"))
                .and_then(|patch| state.faults.lock().expect("faults lock").apply(patch));
            return match result {
                Ok(()) => {
                    let f = state.faults.lock().expect("faults lock").clone();
                    json(
                        StatusCode::OK,
                        &state.name,
                        serde_json::json!({
                            "error_rate": f.error_rate,
                            "error_status": f.error_status,
                            "latency": f.latency.describe(),
                            "slow_rate": f.slow_rate,
                            "slow_latency": f.slow_latency.describe(),
                        })
                        .to_string(),
                    )
                }
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    &state.name,
                    serde_json::json!({"error": e}).to_string(),
                ),
            };
        }
        _ => {}
    }
    let method = req.method().to_string();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // Read the whole request body as it streams, counting bytes only.
    let mut body = req.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    received += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let (delay, fail, status) = {
        let mut faults = state.faults.lock().expect("faults lock");
        let mut rng = state.rng.lock().expect("rng lock");
        let stall = faults.stall.take().unwrap_or_default();
        let n = state
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let latency = if faults.slow_rate > 0.0 && picked(n, faults.slow_rate) {
            faults.slow_latency
        } else {
            faults.latency
        };
        let (fail, warm) = state
            .bursts
            .lock()
            .expect("bursts lock")
            .decide(&faults, &mut rng);
        let delay = stall + latency.pick(&mut rng) + warm;
        (delay, fail, faults.error_status)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = if fail {
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        StatusCode::OK
    };
    {
        let mut stats = state.stats.lock().expect("stats lock");
        stats.requests += 1;
        *stats.by_status.entry(status.as_u16()).or_default() += 1;
    }
    let body = serde_json::json!({
        "backend": state.name,
        "method": method,
        "path": path,
        "host": host,
        "received_bytes": received,
        "error": fail,
    });
    json(status, &state.name, body.to_string())
}

#[cfg(test)]
mod burst_tests {
    use super::*;

    fn faults(rate: f64, run: u32) -> Faults {
        Faults {
            error_rate: rate,
            error_burst: ErrorBurst {
                run,
                ..ErrorBurst::default()
            },
            ..Faults::default()
        }
    }

    #[test]
    fn failures_come_in_runs_and_keep_their_share() {
        let mut state = BurstState::default();
        let mut rng = Rng::new(5);
        let f = faults(0.02, 3);
        let outcomes: Vec<bool> = (0..300_000).map(|_| state.decide(&f, &mut rng).0).collect();
        let share = outcomes.iter().filter(|x| **x).count() as f64 / outcomes.len() as f64;
        assert!((share - 0.02).abs() < 0.002, "share {share}");
        // Every failure is in a run of at least three.
        let mut run = 0;
        let mut runs = Vec::new();
        for &failed in &outcomes {
            if failed {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        assert!(
            runs.iter().all(|r| r % 3 == 0),
            "{:?}",
            &runs[..10.min(runs.len())]
        );
    }

    #[test]
    fn incidents_raise_the_failure_rate_for_their_length() {
        let mut state = BurstState::default();
        let mut rng = Rng::new(9);
        let f = Faults {
            error_burst: ErrorBurst {
                run: 1,
                incident_every: Some(Duration::from_millis(1)),
                incident_for: Duration::from_secs(3600),
                incident_error_rate: 0.5,
            },
            ..faults(0.0, 1)
        };
        // The first request sets the clock; an incident begins within a millisecond.
        state.decide(&f, &mut rng);
        std::thread::sleep(Duration::from_millis(20));
        let failed = (0..10_000).filter(|_| state.decide(&f, &mut rng).0).count();
        assert!((4_500..5_500).contains(&failed), "{failed}");
    }

    #[test]
    fn the_warm_up_slows_only_the_first_moments() {
        let mut state = BurstState::default();
        let mut rng = Rng::new(1);
        let f = Faults {
            warmup: Some(Warmup {
                duration: Duration::from_millis(50),
                latency: Latency::Fixed(Duration::from_millis(300)),
            }),
            ..Faults::default()
        };
        assert_eq!(state.decide(&f, &mut rng).1, Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(state.decide(&f, &mut rng).1, Duration::ZERO);
    }

    #[test]
    fn bad_burst_settings_name_the_field() {
        let mut f = Faults::default();
        let patch = |json: &str| serde_json::from_str::<FaultsPatch>(json).unwrap();
        let e = f.apply(patch(r#"{"error_run": 0}"#)).unwrap_err();
        assert!(e.starts_with("error_run"), "{e}");
        let e = f.apply(patch(r#"{"incident_error_rate": 2}"#)).unwrap_err();
        assert!(e.starts_with("incident_error_rate"), "{e}");
        let e = f.apply(patch(r#"{"incident_every": "1m"}"#)).unwrap_err();
        assert!(e.starts_with("incident_for"), "{e}");
        let e = f.apply(patch(r#"{"warmup": "soon"}"#)).unwrap_err();
        assert!(e.starts_with("warmup"), "{e}");
        // Nothing half applied.
        assert_eq!(f, Faults::default());
        f.apply(patch(r#"{"error_run": 3, "incident_every": "1m", "incident_for": "5s", "warmup": "10s", "warmup_latency": "50ms"}"#))
            .unwrap();
        assert_eq!(f.error_burst.run, 3);
        f.apply(patch(r#"{"error_burst": {"run": 2, "incident_every": "30s", "incident_for": "4s", "incident_error_rate": 0.2}}"#))
            .unwrap();
        assert_eq!(f.error_burst.run, 2);
        assert_eq!(f.error_burst.incident_every, Some(Duration::from_secs(30)));
        assert_eq!(f.error_burst.incident_error_rate, 0.2);
        let e = serde_json::from_str::<FaultsPatch>(r#"{"error_burst": {"runs": 2}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `runs`"), "{e}");
        assert_eq!(
            f.warmup.as_ref().unwrap().latency,
            Latency::Fixed(Duration::from_millis(50))
        );
    }
}
