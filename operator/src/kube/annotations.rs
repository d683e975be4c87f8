//! The user's contract: `sluice.dev/*` annotations on a Deployment.
//!
//! Every value is checked before anything is created or changed; a bad one
//! is reported (as a Warning Event) naming the annotation, the value and
//! what is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::plan::{self, Approval, Plan};

pub const PREFIX: &str = "sluice.dev/";
pub const CANARY: &str = "sluice.dev/canary";
pub const PORT: &str = "sluice.dev/port";
pub const STEPS: &str = "sluice.dev/steps";
pub const INTERVAL: &str = "sluice.dev/interval";
pub const FAILURE_LIMIT: &str = "sluice.dev/failure-limit";
pub const SUCCESS_RATE: &str = "sluice.dev/success-rate";
pub const LATENCY: &str = "sluice.dev/latency";
pub const MIN_REQUESTS: &str = "sluice.dev/min-requests";
pub const PROGRESS_DEADLINE: &str = "sluice.dev/progress-deadline";
pub const METRICS: &str = "sluice.dev/metrics";
pub const CHECKS: &str = "sluice.dev/checks";
pub const WEBHOOKS: &str = "sluice.dev/webhooks";
pub const APPROVAL: &str = "sluice.dev/approval";

/// Every annotation Sluice reads, for "unknown annotation" errors.
pub const KNOWN: [&str; 13] = [
    CANARY,
    PORT,
    STEPS,
    INTERVAL,
    FAILURE_LIMIT,
    SUCCESS_RATE,
    LATENCY,
    MIN_REQUESTS,
    PROGRESS_DEADLINE,
    METRICS,
    CHECKS,
    WEBHOOKS,
    APPROVAL,
];

/// Annotations Sluice itself writes (never user input).
pub const STATUS: &str = "sluice.dev/status";
pub const COMMAND: &str = "sluice.dev/command";
pub const ORIGINAL_SELECTOR: &str = "sluice.dev/original-selector";
pub const ORIGINAL_TARGET_PORT: &str = "sluice.dev/original-target-port";
pub const FINALIZER: &str = "sluice.dev/cleanup";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationError {
    pub annotation: String,
    pub value: String,
    pub problem: String,
    pub allowed: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}: `{}` is invalid: {} (allowed: {})",
            self.annotation, self.value, self.problem, self.allowed
        )
    }
}

impl std::error::Error for AnnotationError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsSource {
    Prometheus,
    Proxy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub plan: Plan,
    pub port: Option<PortRef>,
    pub metrics: MetricsSource,
    pub checks_configmap: Option<String>,
    pub webhooks_configmap: Option<String>,
}

/// Whether the Deployment opted in.
pub fn enabled(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(CANARY).map(String::as_str) == Some("enabled")
}

/// Reads every `sluice.dev/*` annotation; the first bad one is the error.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    have_prometheus: bool,
) -> Result<Settings, AnnotationError> {
    let err = |annotation: &str, value: &str, problem: String, allowed: &str| AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        problem,
        allowed: allowed.to_string(),
    };
    for (key, value) in annotations {
        if key.starts_with(PREFIX)
            && !KNOWN.contains(&key.as_str())
            && ![STATUS, COMMAND, ORIGINAL_SELECTOR, ORIGINAL_TARGET_PORT].contains(&key.as_str())
        {
            return Err(err(
                key,
                value,
                "unknown annotation".into(),
                &KNOWN.join(", "),
            ));
        }
    }
    if let Some(v) = annotations.get(CANARY)
        && v != "enabled"
    {
        return Err(err(CANARY, v, "only `enabled` opts in".into(), "enabled"));
    }
    let mut plan = Plan::default();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    if let Some(v) = get(STEPS) {
        plan.steps_bp = plan::parse_steps(v)
            .map_err(|e| err(STEPS, v, e, "increasing percents in (0,100], e.g. 10,25,50"))?;
    }
    if let Some(v) = get(INTERVAL) {
        let d = sluice_proxy::config::parse_duration(v)
            .map_err(|e| err(INTERVAL, v, e, "a duration of at least 5s, e.g. 30s, 1m"))?;
        if d < Duration::from_secs(5) {
            return Err(err(
                INTERVAL,
                v,
                "shorter than 5s".into(),
                "a duration of at least 5s, e.g. 30s, 1m",
            ));
        }
        plan.interval = d;
    }
    if let Some(v) = get(FAILURE_LIMIT) {
        plan.failure_limit = v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                err(
                    FAILURE_LIMIT,
                    v,
                    "not a whole number of at least 1".into(),
                    "1, 2, 3, ...",
                )
            })?;
    }
    if let Some(v) = get(SUCCESS_RATE) {
        plan.success_rate_min = plan::parse_percent(v)
            .map_err(|e| err(SUCCESS_RATE, v, e, "a percent in 0..=100, e.g. 99 or 99.5"))?;
    }
    if let Some(v) = get(LATENCY) {
        plan.latency = plan::parse_latency(v)
            .map_err(|e| err(LATENCY, v, e, "quantile gates like p95<=500ms,p99<=1s"))?;
    }
    if let Some(v) = get(MIN_REQUESTS) {
        plan.min_requests = v
            .trim()
            .parse::<u64>()
            .map_err(|_| err(MIN_REQUESTS, v, "not a whole number".into(), "0, 1, 2, ..."))?;
    }
    if let Some(v) = get(PROGRESS_DEADLINE) {
        plan.progress_deadline = sluice_proxy::config::parse_duration(v)
            .map_err(|e| err(PROGRESS_DEADLINE, v, e, "a duration, e.g. 10m"))?;
    }
    if let Some(v) = get(APPROVAL) {
        plan.approval = Approval::parse(v).map_err(|e| err(APPROVAL, v, e, "auto, manual"))?;
    }
    let metrics = match get(METRICS) {
        None if have_prometheus => MetricsSource::Prometheus,
        None => MetricsSource::Proxy,
        Some("proxy") => MetricsSource::Proxy,
        Some("prometheus") if have_prometheus => MetricsSource::Prometheus,
        Some("prometheus") => {
            return Err(err(
                METRICS,
                "prometheus",
                "the operator runs without --prometheus-url".into(),
                "proxy, or prometheus once the operator has --prometheus-url",
            ));
        }
        Some(other) => {
            return Err(err(
                METRICS,
                other,
                "unknown provider".into(),
                "prometheus, proxy",
            ));
        }
    };
    let port = match get(PORT) {
        None => None,
        Some(v) if v.trim().is_empty() => {
            return Err(err(
                PORT,
                v,
                "empty".into(),
                "a Service port name or number",
            ));
        }
        Some(v) => match v.trim().parse::<i32>() {
            Ok(n) if (1..=65535).contains(&n) => Some(PortRef::Number(n)),
            Ok(_) => {
                return Err(err(
                    PORT,
                    v,
                    "not a port number".into(),
                    "1..65535 or a port name",
                ));
            }
            Err(_) => Some(PortRef::Name(v.trim().to_string())),
        },
    };
    let name_of = |k: &str| -> Result<Option<String>, AnnotationError> {
        match get(k) {
            None => Ok(None),
            Some(v) if is_dns_label(v) => Ok(Some(v.to_string())),
            Some(v) => Err(err(
                k,
                v,
                "not a ConfigMap name".into(),
                "a ConfigMap name in the Deployment's namespace",
            )),
        }
    };
    let checks_configmap = name_of(CHECKS)?;
    if checks_configmap.is_some() && metrics != MetricsSource::Prometheus {
        return Err(err(
            CHECKS,
            get(CHECKS).unwrap_or_default(),
            "custom PromQL checks need the prometheus provider".into(),
            "set sluice.dev/metrics: prometheus (and run the operator with --prometheus-url)",
        ));
    }
    Ok(Settings {
        plan,
        port,
        metrics,
        checks_configmap,
        webhooks_configmap: name_of(WEBHOOKS)?,
    })
}

fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_table() {
        let s = parse(&ann(&[(CANARY, "enabled")]), false).unwrap();
        assert_eq!(s.plan.steps_bp, vec![1000, 2000, 3000, 4000, 5000]);
        assert_eq!(s.plan.interval, Duration::from_secs(60));
        assert_eq!(s.plan.failure_limit, 3);
        assert_eq!(s.plan.min_requests, 20);
        assert_eq!(s.plan.progress_deadline, Duration::from_secs(600));
        assert_eq!(s.metrics, MetricsSource::Proxy);
        assert_eq!(
            parse(&ann(&[(CANARY, "enabled")]), true).unwrap().metrics,
            MetricsSource::Prometheus
        );
    }

    #[test]
    fn bad_values_name_the_annotation_value_and_what_is_allowed() {
        for (key, value, needle) in [
            (STEPS, "10,5", "steps must increase"),
            (INTERVAL, "2s", "shorter than 5s"),
            (FAILURE_LIMIT, "0", "at least 1"),
            (LATENCY, "p95<500ms", "p95<500ms"),
            (APPROVAL, "sometimes", "auto, manual"),
            (METRICS, "datadog", "prometheus, proxy"),
            ("sluice.dev/stepz", "10", "unknown annotation"),
        ] {
            let e = parse(&ann(&[(CANARY, "enabled"), (key, value)]), false).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("annotation {key}: `{value}` is invalid")),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
        }
    }
}
