//! Operator metrics: `sluice_canary_weight`, `sluice_canary_phase`,
//! `sluice_canary_releases_total{result}`, `sluice_canary_duration_seconds`,
//! each labelled with the Deployment's `namespace` and `name`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::KubeStatus;
use crate::machine::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub namespace: String,
    pub name: String,
    pub result: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
    ])
}

pub struct OperatorMetrics {
    registry: Registry,
    weight: Family<ReleaseLabels, Gauge<f64, AtomicU64>>,
    phase: Family<ReleaseLabels, Gauge>,
    releases: Family<ResultLabels, Counter>,
    duration: Family<ReleaseLabels, Histogram, fn() -> Histogram>,
    /// Notifications that could not be sent, by `service`.
    pub notifications_failed: Family<Vec<(String, String)>, Counter>,
}

pub fn phase_code(phase: &str) -> i64 {
    [
        Phase::Initializing,
        Phase::Initialized,
        Phase::Progressing,
        Phase::WaitingPromotion,
        Phase::Promoting,
        Phase::Finalising,
        Phase::Succeeded,
        Phase::Failed,
    ]
    .into_iter()
    .find(|p| p.as_str() == phase)
    .map(Phase::code)
    .unwrap_or(-1)
}

impl OperatorMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("sluice");
        let weight = Family::<ReleaseLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("canary_weight", "Canary weight in percent", weight.clone());
        let phase = Family::<ReleaseLabels, Gauge>::default();
        registry.register(
            "canary_phase",
            "Release phase: 0 Initializing, 1 Initialized, 2 Progressing, 3 WaitingPromotion, 4 Promoting, 5 Finalising, 6 Succeeded, 7 Failed",
            phase.clone(),
        );
        let releases = Family::<ResultLabels, Counter>::default();
        registry.register(
            "canary_releases",
            "Finished releases by result",
            releases.clone(),
        );
        let duration: Family<ReleaseLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "canary_duration",
            "Time from release start to its end",
            Unit::Seconds,
            duration.clone(),
        );
        let notifications_failed = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "notifications_failed",
            "Chat notifications that could not be sent after their retries, by service",
            notifications_failed.clone(),
        );
        Arc::new(Self {
            registry,
            weight,
            phase,
            releases,
            duration,
            notifications_failed,
        })
    }

    fn labels(ns: &str, name: &str) -> ReleaseLabels {
        ReleaseLabels {
            namespace: ns.to_string(),
            name: name.to_string(),
        }
    }

    pub fn observe(&self, ns: &str, name: &str, status: &KubeStatus) {
        let l = Self::labels(ns, name);
        self.weight.get_or_create(&l).set(status.canary_weight);
        self.phase.get_or_create(&l).set(phase_code(&status.phase));
        // Every result exists at 0 from the first sight of a release, so
        // `increase()` sees the first failure (a series born at 1 does not
        // increase).
        for result in ["succeeded", "failed"] {
            let _ = self.releases.get_or_create(&ResultLabels {
                namespace: ns.to_string(),
                name: name.to_string(),
                result: result.to_string(),
            });
        }
    }

    pub fn release_ended(&self, ns: &str, name: &str, result: &str, seconds: f64) {
        self.releases
            .get_or_create(&ResultLabels {
                namespace: ns.to_string(),
                name: name.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&Self::labels(ns, name))
            .observe(seconds.max(0.0));
    }

    pub fn forget(&self, ns: &str, name: &str) {
        let l = Self::labels(ns, name);
        self.weight.remove(&l);
        self.phase.remove(&l);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("String write");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` for the operator.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<OperatorMetrics>) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, body, content_type) = match req.uri().path() {
                            "/metrics" => (
                                200,
                                metrics.encode(),
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                            "/healthz" | "/readyz" => (200, "ok\n".to_string(), "text/plain"),
                            _ => (404, "not found\n".to_string(), "text/plain"),
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(Full::new(bytes::Bytes::from(body)))
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
