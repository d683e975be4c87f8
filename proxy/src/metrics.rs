//! The proxy's own RED metrics, exposed in OpenMetrics text on the admin
//! listener. Names are an interface (dashboards, alerts and the control loop's
//! `proxy` provider read them), see DESIGN.md.
//!
//! Per-route handles are resolved once when a routing table is built
//! ([`RouteMetrics`]), so the request path touches no label strings.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Upper bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BackendLabel {
    Stable,
    Canary,
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

lower_case_label!(BackendLabel { Stable => "stable", Canary => "canary" });

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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

lower_case_label!(ReloadResult { Success => "success", Failure => "failure" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub backend: BackendLabel,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteBackendLabels {
    pub route: String,
    pub backend: BackendLabel,
}

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

fn new_duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// All metric families of one proxy process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteBackendLabels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    canary_weight: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, backend and the status code the client got",
            requests.clone(),
        );
        let durations: Family<RouteBackendLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_duration_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request received to response end",
            Unit::Seconds,
            durations.clone(),
        );
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
        registry.register(
            "config_reloads",
            "Configuration reload attempts, by result",
            reloads.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Sluice proxy build", build_info);
        Arc::new(Self {
            registry,
            requests,
            durations,
            upstream_errors,
            canary_weight,
            reloads,
        })
    }

    /// OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn record_reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn set_canary_weight(&self, route: &str, percent: f64) {
        self.canary_weight
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .set(percent);
    }

    /// Handles for one route and backend, resolved once per routing table.
    pub fn backend(&self, route: &str, backend: BackendLabel) -> BackendMetrics {
        let duration = self
            .durations
            .get_or_create(&RouteBackendLabels {
                route: route.to_string(),
                backend,
            })
            .clone();
        BackendMetrics {
            inner: Arc::new(BackendMetricsInner {
                route: route.to_string(),
                backend,
                duration,
                by_code: RwLock::new(HashMap::new()),
                requests: self.requests.clone(),
                errors: self.upstream_errors.clone(),
            }),
        }
    }
}

/// Pre-resolved metric handles of one (route, backend) pair.
#[derive(Clone)]
pub struct BackendMetrics {
    inner: Arc<BackendMetricsInner>,
}

struct BackendMetricsInner {
    route: String,
    backend: BackendLabel,
    duration: Histogram,
    by_code: RwLock<HashMap<u16, Counter>>,
    requests: Family<RequestLabels, Counter>,
    errors: Family<UpstreamErrorLabels, Counter>,
}

impl BackendMetrics {
    /// Records one finished request: its status and its whole duration.
    pub fn record(&self, code: u16, elapsed: Duration) {
        self.inner.duration.observe(elapsed.as_secs_f64());
        let counter = {
            let map = self.inner.by_code.read().expect("metrics lock");
            map.get(&code).cloned()
        };
        let counter = match counter {
            Some(c) => c,
            None => {
                let c = self
                    .inner
                    .requests
                    .get_or_create(&RequestLabels {
                        route: self.inner.route.clone(),
                        backend: self.inner.backend,
                        code,
                    })
                    .clone();
                self.inner
                    .by_code
                    .write()
                    .expect("metrics lock")
                    .insert(code, c.clone());
                c
            }
        };
        counter.inc();
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
        let b = m.backend("web", BackendLabel::Canary);
        b.record(503, Duration::from_millis(20));
        b.record_upstream_error(UpstreamErrorKind::Connect);
        m.set_canary_weight("web", 33.33);
        m.record_reload(ReloadResult::Success);
        let text = m.encode();
        for needle in [
            "sluice_requests_total{route=\"web\",backend=\"canary\",code=\"503\"} 1",
            "sluice_request_duration_seconds_count{route=\"web\",backend=\"canary\"} 1",
            "sluice_request_duration_seconds_bucket{le=\"0.025\",route=\"web\",backend=\"canary\"} 1",
            "sluice_upstream_errors_total{route=\"web\",backend=\"canary\",kind=\"connect\"} 1",
            "sluice_route_canary_weight{route=\"web\"} 33.33",
            "sluice_config_reloads_total{result=\"success\"} 1",
            "sluice_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
