//! Operator metrics: `sluice_canary_weight`, `sluice_canary_phase`,
//! `sluice_canary_releases_total{result}`, `sluice_canary_duration_seconds`,
//! each labelled with the Deployment's `namespace` and `name`; and
//! `sluice_notifications_failed_total` and
//! `sluice_notifications_dropped_total`, by chat `service`.
//!
//! `sluice_canary_phase` is [`Phase::code`]: every phase of the state
//! machine has its own non-negative number, stable across releases (alert
//! rules and dashboards compare against them; a new phase takes the next
//! free number). The list of phases is read from the enum itself
//! ([`every_phase`]), so the gauge and its HELP text cannot miss one. `-1`
//! is left only for a status whose phase text names no phase at all.

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
    /// Notifications that could not be sent, or were dropped (a full
    /// queue, a channel removed from its notify Secret), by `service`.
    pub notifications: crate::notify::NotifyCounters,
}

/// Every phase of [`Phase`], in declaration order.
///
/// Read from the enum's own serde derive (the variant list it hands a
/// deserializer), not written out here, so a phase added to the machine is
/// covered without an edit to this file.
pub fn every_phase() -> Vec<Phase> {
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    let mut names: &'static [&'static str] = &[];
    let _ = Phase::deserialize(VariantNames(&mut names));
    names
        .iter()
        .map(|name| {
            Phase::deserialize(
                IntoDeserializer::<serde::de::value::Error>::into_deserializer(*name),
            )
            .expect("a unit variant deserializes from its own name")
        })
        .collect()
}

/// The gauge's value for a status's phase text; `-1` for text that names
/// no phase.
pub fn phase_code(phase: &str) -> i64 {
    every_phase()
        .into_iter()
        .find(|p| p.as_str() == phase)
        .map(Phase::code)
        .unwrap_or(-1)
}

/// The HELP text of `sluice_canary_phase`: every code with its phase.
pub fn phase_help() -> String {
    let codes: Vec<String> = every_phase()
        .into_iter()
        .map(|p| format!("{} {}", p.code(), p.as_str()))
        .collect();
    format!(
        "Release phase: {} (-1: a phase this operator does not know)",
        codes.join(", ")
    )
}

/// A deserializer that only records the variant names an enum's derive
/// passes to `deserialize_enum`, then stops.
struct VariantNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for VariantNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom(
            "only an enum's variant names are read",
        ))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(serde::de::Error::custom("variant names read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl OperatorMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("sluice");
        let weight = Family::<ReleaseLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("canary_weight", "Canary weight in percent", weight.clone());
        let phase = Family::<ReleaseLabels, Gauge>::default();
        registry.register("canary_phase", phase_help(), phase.clone());
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
        let notifications = crate::notify::NotifyCounters::default();
        registry.register(
            "notifications_failed",
            "Chat notifications that could not be sent after their retries, by service",
            notifications.failed.clone(),
        );
        registry.register(
            "notifications_dropped",
            "Chat notifications never sent because their channel's queue (64) was full, or their channel was removed from its notify Secret while they waited, by service",
            notifications.dropped.clone(),
        );
        Arc::new(Self {
            registry,
            weight,
            phase,
            releases,
            duration,
            notifications,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_phase_of_the_machine_has_its_own_non_negative_code() {
        let phases = every_phase();
        assert!(
            phases.contains(&Phase::Concluded) && phases.contains(&Phase::Initializing),
            "the phase list is read from the enum: {phases:?}"
        );
        let mut seen: BTreeMap<i64, Phase> = BTreeMap::new();
        for phase in phases {
            let code = phase_code(phase.as_str());
            assert!(code >= 0, "phase {phase:?} exports {code}");
            assert_eq!(code, phase.code(), "phase {phase:?}");
            if let Some(other) = seen.insert(code, phase) {
                panic!("phases {other:?} and {phase:?} share the code {code}");
            }
            assert!(
                phase_help().contains(&format!("{code} {}", phase.as_str())),
                "the HELP text misses {phase:?}: {}",
                phase_help()
            );
        }
    }

    #[test]
    fn phase_codes_dashboards_and_alerts_use_stay_the_same() {
        // deploy/prometheus/rules.yaml's SluiceCanaryStuck reads 2 and 3.
        let fixed = [
            ("Initializing", 0),
            ("Initialized", 1),
            ("Progressing", 2),
            ("WaitingPromotion", 3),
            ("Promoting", 4),
            ("Finalising", 5),
            ("Succeeded", 6),
            ("Failed", 7),
            ("Concluded", 8),
        ];
        for (name, code) in fixed {
            assert_eq!(phase_code(name), code, "{name}");
        }
        assert_eq!(phase_code("NoSuchPhase"), -1);
        assert_eq!(phase_code(""), -1);
    }

    #[test]
    fn a_concluded_experiment_exports_its_phase() {
        let metrics = OperatorMetrics::new();
        let status = KubeStatus {
            phase: Phase::Concluded.as_str().to_string(),
            ..KubeStatus::default()
        };
        metrics.observe("lab", "exp", &status);
        let text = metrics.encode();
        assert!(
            text.contains("sluice_canary_phase{namespace=\"lab\",name=\"exp\"} 8"),
            "{text}"
        );
        assert!(text.contains("8 Concluded"), "{text}");
    }
}
