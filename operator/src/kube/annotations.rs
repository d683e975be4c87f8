//! The user's contract: `sluice.dev/*` annotations on a Deployment.
//!
//! Every value is checked before anything is created or changed; a bad one
//! is reported (as a Warning Event) naming the annotation, the value and
//! what is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::knobs::{self, CanaryScale, ProxySettings, RouteSettings};
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
pub const GATE: &str = "sluice.dev/gate";
pub const ALPHA: &str = "sluice.dev/alpha";
pub const BETA: &str = "sluice.dev/beta";
pub const RHO0: &str = "sluice.dev/rho0";
pub const RHO_MAX: &str = "sluice.dev/rho-max";
pub const FAILURE_FLOOR: &str = "sluice.dev/failure-floor";
pub const LATENCY_BOUND: &str = "sluice.dev/latency-bound";
pub const MAX_DURATION: &str = "sluice.dev/max-duration";
pub const SCRAPE_INTERVAL: &str = "sluice.dev/scrape-interval";
pub const STRATEGY: &str = "sluice.dev/strategy";
pub const ITERATIONS: &str = "sluice.dev/iterations";
pub const SOAK: &str = "sluice.dev/soak";
pub const EXPERIMENT_DURATION: &str = "sluice.dev/experiment-duration";
pub const MIRROR: &str = "sluice.dev/mirror";
pub const MIRROR_MAX_BODY: &str = "sluice.dev/mirror-max-body";
pub const MIRROR_METHODS: &str = "sluice.dev/mirror-methods";
pub const AFFINITY_COOKIE: &str = "sluice.dev/affinity-cookie";
pub const AFFINITY_MAX_AGE: &str = "sluice.dev/affinity-max-age";
pub const AFFINITY_HEADER: &str = "sluice.dev/affinity-header";
pub const WHEN_UNDECIDED: &str = "sluice.dev/when-undecided";
pub const INCIDENT_ALLOWANCE: &str = "sluice.dev/incident-allowance";
pub const WARMUP: &str = "sluice.dev/warmup";
pub const LATENCY_TOLERANCE: &str = "sluice.dev/latency-tolerance";
pub const BASELINE: &str = "sluice.dev/baseline";
/// `"true"`: each release runs a baseline arm, a fresh copy of the
/// primary's version at the canary's size given the canary's exact share,
/// and the canary is judged against it (see [`baseline_arm_of`]).
pub const BASELINE_ARM: &str = "sluice.dev/baseline-arm";
/// A Secret in the app's namespace whose `access.yaml` gives this app's
/// outbound calls their CA and credentials (see `crate::http`).
pub const ACCESS: &str = "sluice.dev/access";
/// A Secret in the app's namespace whose keys `slack`, `teams`, `discord`,
/// `rocket`, `gchat`, `webhook` hold chat incoming-webhook URLs for this
/// app's releases, or a Flagger AlertProvider Secret's `address` (see
/// `inputs::read_channels`).
pub const NOTIFY: &str = "sluice.dev/notify";
/// Per-app knobs ([`super::knobs`]).
pub const MATCH: &str = "sluice.dev/match";
pub const REQUEST_TIMEOUT: &str = "sluice.dev/request-timeout";
pub const CONNECT_TIMEOUT: &str = "sluice.dev/connect-timeout";
pub const IDLE_TIMEOUT: &str = "sluice.dev/idle-timeout";
pub const UPSTREAM_IDLE_TIMEOUT: &str = "sluice.dev/upstream-idle-timeout";
pub const TUNNEL_IDLE_TIMEOUT: &str = "sluice.dev/tunnel-idle-timeout";
pub const ANSWER_IDLE_TIMEOUT: &str = "sluice.dev/answer-idle-timeout";
pub const PROXY_REPLICAS: &str = "sluice.dev/proxy-replicas";
pub const PROXY_RESOURCES: &str = "sluice.dev/proxy-resources";
pub const PROXY_AUTOSCALE: &str = "sluice.dev/proxy-autoscale";
pub const CANARY_SCALE: &str = "sluice.dev/canary-scale";
pub const ROLLBACK_WINDOW: &str = "sluice.dev/rollback-window";
/// The largest `sluice.dev/rollback-window` accepted: the status keeps at
/// most this many revisions besides the primary's.
pub const MAX_ROLLBACK_WINDOW: usize = 20;
pub const ABORT_SCALE_DOWN_DELAY: &str = "sluice.dev/abort-scale-down-delay";
/// How many releases' records `<app>-sluice-releases` keeps.
pub const KEEP_RELEASES: &str = "sluice.dev/keep-releases";
/// Which Service ports are HTTP (see [`super::ports`]).
pub const HTTP_PORTS: &str = "sluice.dev/http-ports";
/// `proxy` (default) or `gateway-api`: who moves the traffic.
pub const ROUTER: &str = "sluice.dev/router";
/// With `router: gateway-api`: the HTTPRoute (same namespace) to release through.
pub const HTTPROUTE: &str = "sluice.dev/httproute";
/// With `metrics: prometheus`: which series hold the traffic
/// ([`crate::provider::MetricsTemplate`]).
pub const METRICS_TEMPLATE: &str = "sluice.dev/metrics-template";

/// Every annotation Sluice reads, for "unknown annotation" errors.
pub const KNOWN: &[&str] = &[
    ACCESS,
    NOTIFY,
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
    GATE,
    ALPHA,
    BETA,
    RHO0,
    RHO_MAX,
    FAILURE_FLOOR,
    LATENCY_BOUND,
    MAX_DURATION,
    SCRAPE_INTERVAL,
    STRATEGY,
    ITERATIONS,
    SOAK,
    EXPERIMENT_DURATION,
    MIRROR,
    MIRROR_MAX_BODY,
    MIRROR_METHODS,
    AFFINITY_COOKIE,
    AFFINITY_MAX_AGE,
    AFFINITY_HEADER,
    WHEN_UNDECIDED,
    INCIDENT_ALLOWANCE,
    WARMUP,
    LATENCY_TOLERANCE,
    BASELINE,
    BASELINE_ARM,
    MATCH,
    REQUEST_TIMEOUT,
    CONNECT_TIMEOUT,
    IDLE_TIMEOUT,
    UPSTREAM_IDLE_TIMEOUT,
    TUNNEL_IDLE_TIMEOUT,
    ANSWER_IDLE_TIMEOUT,
    PROXY_REPLICAS,
    PROXY_RESOURCES,
    PROXY_AUTOSCALE,
    CANARY_SCALE,
    ROLLBACK_WINDOW,
    ABORT_SCALE_DOWN_DELAY,
    KEEP_RELEASES,
    HTTP_PORTS,
    ROUTER,
    HTTPROUTE,
    METRICS_TEMPLATE,
];

/// How often the operator reads the proxies under the sequential gate,
/// unless `sluice.dev/scrape-interval` says otherwise: each scrape is a
/// status write, so the operator is less eager than `sluice rollout`.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(5);

/// Annotations Sluice itself writes (never user input).
pub const STATUS: &str = "sluice.dev/status";
pub const COMMAND: &str = "sluice.dev/command";
pub const ORIGINAL_SELECTOR: &str = "sluice.dev/original-selector";
pub const ORIGINAL_TARGET_PORT: &str = "sluice.dev/original-target-port";
/// The user's Service ports before the take-over (JSON), for the way back.
pub const ORIGINAL_PORTS: &str = "sluice.dev/original-ports";
/// On a user's HPA aimed at the app, while a proportional release scales
/// its bounds: its own `minReplicas` and `maxReplicas` (JSON).
pub const ORIGINAL_BOUNDS: &str = "sluice.dev/original-bounds";
pub const FINALIZER: &str = "sluice.dev/cleanup";
/// The phase and message, mirrored on the user's Deployment (for GitOps
/// health checks, which see only the object they track).
pub const PHASE: &str = "sluice.dev/phase";
pub const MESSAGE: &str = "sluice.dev/message";
/// On the proxy Deployment the operator makes: a digest of what it wants
/// there, so an unchanged one is not written again.
pub const SPEC_HASH: &str = "sluice.dev/spec-hash";
/// Every annotation Sluice writes on Deployments itself (the user's and
/// its own proxy's): never refused as unknown, by the parser or by the
/// shipped admission policy (a test keeps its list equal to this one).
pub const OPERATOR_WRITTEN: &[&str] = &[
    STATUS,
    COMMAND,
    ORIGINAL_SELECTOR,
    ORIGINAL_TARGET_PORT,
    ORIGINAL_PORTS,
    PHASE,
    MESSAGE,
    SPEC_HASH,
];

/// The annotations only the sequential gate reads (the flags
/// `sluice rollout` refuses with `--gate threshold`); the shipped admission
/// policy refuses them with `sluice.dev/gate: threshold` too.
pub const SEQUENTIAL_ONLY: [&str; 13] = [
    SCRAPE_INTERVAL,
    ALPHA,
    BETA,
    RHO0,
    RHO_MAX,
    FAILURE_FLOOR,
    LATENCY_BOUND,
    MAX_DURATION,
    WHEN_UNDECIDED,
    INCIDENT_ALLOWANCE,
    WARMUP,
    LATENCY_TOLERANCE,
    BASELINE,
];

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

/// Who moves an app's traffic (`sluice.dev/router`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Router {
    /// Sluice's own proxy takes over Service `app` (the default).
    #[default]
    Proxy,
    /// The weights of this HTTPRoute's backendRefs, served by any Gateway
    /// API implementation (see [`super::gateway`]); Service `app` is left
    /// alone.
    GatewayApi { httproute: String },
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
    /// `sluice.dev/metrics-template`: the series the prometheus provider
    /// reads (a ConfigMap's is read by the reconciler into `Custom`).
    pub metrics_template: crate::provider::MetricsTemplate,
    pub checks_configmap: Option<String>,
    pub webhooks_configmap: Option<String>,
    /// `sluice.dev/access`: the Secret with this app's outbound access.
    pub access_secret: Option<String>,
    /// `sluice.dev/notify`: the Secret with this app's chat channels.
    pub notify_secret: Option<String>,
    /// A/B rules and timeouts of the app's routes.
    pub route: RouteSettings,
    /// The app's proxy Deployment (replicas, resources, HPA).
    pub proxy: ProxySettings,
    pub canary_scale: CanaryScale,
    /// How many earlier promoted revisions a revert may return to at once.
    pub rollback_window: usize,
    /// How long a rolled-back canary stays up, out of the traffic.
    pub abort_scale_down_delay: Duration,
    /// Releases kept in the records ConfigMap (`sluice.dev/keep-releases`).
    pub keep_releases: usize,
    /// `sluice.dev/http-ports`: exactly these Service ports are HTTP
    /// (None: guessed, see [`super::ports`]).
    pub http_ports: Option<Vec<PortRef>>,
    /// `sluice.dev/router` with `sluice.dev/httproute`.
    pub router: Router,
}

/// Whether the Deployment opted in: `sluice.dev/canary: enabled`.
pub fn enabled(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(CANARY).map(String::as_str) == Some("enabled")
}

/// Whether `sluice.dev/canary` is there at all. For an app Sluice already
/// manages, any value other than `enabled` (`Enabled`, `true`) is an
/// invalid annotation like any other, a Warning Event with the release
/// going on as if it were `enabled`, so that a typo never lets go of a
/// release under way (which would hand all traffic to a canary never
/// judged). Only removing the annotation opts out. A Deployment Sluice
/// does not manage is taken on only with `enabled`.
pub fn present(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(CANARY)
}

/// [`parse`] with `sluice.dev/canary` read as `enabled`: the settings an
/// app Sluice manages goes on with while that one annotation is invalid.
pub fn parse_as_enabled(
    annotations: &BTreeMap<String, String>,
    have_prometheus: bool,
) -> Result<Settings, AnnotationError> {
    let mut a = annotations.clone();
    a.insert(CANARY.to_string(), "enabled".to_string());
    parse(&a, have_prometheus)
}

/// Reads every `sluice.dev/*` annotation; the first bad one is the error.
/// Every problem of a Deployment's annotations, not just the first:
/// each invalid one is set aside and the rest parsed again, until they
/// pass (`kubectl sluice lint`). Empty when the annotations are valid.
pub fn lint(annotations: &BTreeMap<String, String>, have_prometheus: bool) -> Vec<AnnotationError> {
    let mut left = annotations.clone();
    let mut problems = Vec::new();
    while let Err(e) = parse(&left, have_prometheus) {
        let removed = left.remove(&e.annotation).is_some();
        problems.push(e);
        // A problem no single annotation causes (nothing left to set
        // aside) ends the search.
        if !removed || problems.len() > annotations.len() {
            break;
        }
    }
    problems
}

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
            && !OPERATOR_WRITTEN.contains(&key.as_str())
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
    let mut plan = Plan {
        scrape_interval: DEFAULT_SCRAPE_INTERVAL,
        ..Plan::default()
    };
    let get = |k: &str| annotations.get(k).map(String::as_str);
    // An error of the form `annotation NAME: problem`, from a check that
    // was told how to name each setting.
    let named_error = |e: String, allowed: &str| {
        let (annotation, problem) = e.split_once(": ").unwrap_or(("", e.as_str()));
        let annotation = annotation.trim_start_matches("annotation ");
        err(
            annotation,
            get(annotation).unwrap_or_default(),
            problem.to_string(),
            allowed,
        )
    };
    if let Some(v) = get(GATE) {
        plan.gate = plan::Gate::parse(v).map_err(|e| err(GATE, v, e, "sequential, threshold"))?;
    }
    // What only the sequential gate reads is refused with the threshold
    // gate, as `sluice rollout --gate threshold` refuses the same flags: it
    // would be ignored (so an out-of-range `alpha` passed unseen).
    if !matches!(plan.gate, plan::Gate::Sequential(_))
        && let Some(key) = SEQUENTIAL_ONLY
            .iter()
            .find(|k| annotations.contains_key(**k))
    {
        return Err(err(
            key,
            get(key).unwrap_or_default(),
            format!(
                "applies to the sequential gate, not to {GATE}: threshold; it would be ignored"
            ),
            &format!("drop it, or drop {GATE}: threshold"),
        ));
    }
    if let plan::Gate::Sequential(settings) = &mut plan.gate {
        let number = |k: &str, allowed: &str| -> Result<Option<f64>, AnnotationError> {
            get(k)
                .map(|v| plan::parse_number(v).map_err(|e| err(k, v, e, allowed)))
                .transpose()
        };
        if let Some(v) = number(ALPHA, "a probability in (0, 0.5), e.g. 0.01")? {
            settings.alpha = v;
        }
        if let Some(v) = number(BETA, "a probability in (0, 0.5), e.g. 0.05")? {
            settings.beta = v;
        }
        if let Some(v) = number(RHO0, "a ratio above 0, e.g. 1.0")? {
            settings.rho0 = v;
        }
        if let Some(v) = number(RHO_MAX, "a ratio above rho0, e.g. 1.5")? {
            settings.rho_max = v;
        }
        if let Some(v) = get(FAILURE_FLOOR) {
            settings.failure_floor = plan::parse_percent(v)
                .map_err(|e| err(FAILURE_FLOOR, v, e, "a percent, e.g. 0.1"))?
                / 100.0;
        }
        if let Some(v) = get(LATENCY_BOUND) {
            settings.latency_bounds = plan::parse_bounds(v)
                .map_err(|e| err(LATENCY_BOUND, v, e, "bucket bounds like 300ms,1s"))?;
        }
        let duration = |k: &str, allowed: &str| -> Result<Option<Duration>, AnnotationError> {
            get(k)
                .map(|v| sluice_proxy::config::parse_duration(v).map_err(|e| err(k, v, e, allowed)))
                .transpose()
        };
        if let Some(d) = duration(INCIDENT_ALLOWANCE, "a duration up to 10m, e.g. 30s")? {
            settings.incident_allowance = d;
        }
        if let Some(d) = duration(WARMUP, "a duration up to 10m, e.g. 10s")? {
            settings.warmup = d;
        }
        if let Some(d) = duration(BASELINE, "a duration up to 10m, e.g. 30s")? {
            settings.baseline = d;
        }
        if let Some(v) = get(LATENCY_TOLERANCE) {
            settings.latency_tolerance = plan::parse_percent(v)
                .map_err(|e| err(LATENCY_TOLERANCE, v, e, "a percent, e.g. 10%"))?
                / 100.0;
        }
        let names = |field: &str| match field {
            "alpha" => ALPHA,
            "beta" => BETA,
            "rho0" => RHO0,
            "rho_max" => RHO_MAX,
            "failure_floor" => FAILURE_FLOOR,
            "incident_allowance" => INCIDENT_ALLOWANCE,
            "warmup" => WARMUP,
            "baseline" => BASELINE,
            "latency_tolerance" => LATENCY_TOLERANCE,
            _ => LATENCY_BOUND,
        };
        settings
            .validate(|f| format!("annotation {}", names(f)))
            .map_err(|e| named_error(e, "see docs/gate.md"))?;
    } else {
        plan.success_rate_min = Some(plan::THRESHOLD_SUCCESS_RATE);
        plan.latency = plan::threshold_latency();
    }
    if let Some(v) = get(MAX_DURATION) {
        plan.max_duration = sluice_proxy::config::parse_duration(v)
            .map_err(|e| err(MAX_DURATION, v, e, "a duration, e.g. 30m"))?;
    }
    if let Some(v) = get(WHEN_UNDECIDED) {
        plan.when_undecided = plan::Undecided::parse(v)
            .map_err(|e| err(WHEN_UNDECIDED, v, e, plan::Undecided::NAMES))?;
    }
    if let Some(v) = get(SCRAPE_INTERVAL) {
        let d = sluice_proxy::config::parse_duration(v)
            .map_err(|e| err(SCRAPE_INTERVAL, v, e, "a duration of at least 1s, e.g. 5s"))?;
        if d < Duration::from_secs(1) {
            return Err(err(
                SCRAPE_INTERVAL,
                v,
                "shorter than 1s".into(),
                "a duration of at least 1s, e.g. 5s",
            ));
        }
        plan.scrape_interval = d;
    }
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
        plan.success_rate_min = Some(
            plan::parse_percent(v)
                .map_err(|e| err(SUCCESS_RATE, v, e, "a percent in 0..=100, e.g. 99 or 99.5"))?,
        );
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
    plan.strategy = plan::Strategy::parse(
        get(STRATEGY).unwrap_or("canary"),
        get(ITERATIONS).unwrap_or("1"),
        get(SOAK).unwrap_or("5m"),
        get(EXPERIMENT_DURATION).unwrap_or("10m"),
    )
    .map_err(|(name, e)| {
        let (annotation, allowed) = match name {
            "iterations" => (ITERATIONS, "a whole number of at least 1"),
            "soak" => (SOAK, "a duration, e.g. 5m"),
            "experiment-duration" => (EXPERIMENT_DURATION, "a duration, e.g. 10m"),
            _ => (STRATEGY, plan::Strategy::NAMES),
        };
        err(annotation, get(annotation).unwrap_or_default(), e, allowed)
    })?;
    if matches!(plan.strategy, plan::Strategy::Experiment { .. }) && get(STEPS).is_none() {
        plan.steps_bp = vec![5000];
    }
    plan.traffic = plan::Traffic::parse(
        &plan::TrafficText {
            affinity_cookie: get(AFFINITY_COOKIE),
            affinity_max_age: get(AFFINITY_MAX_AGE),
            affinity_header: get(AFFINITY_HEADER),
            mirror: get(MIRROR),
            mirror_max_body: get(MIRROR_MAX_BODY),
            mirror_methods: get(MIRROR_METHODS),
        },
        &plan.strategy,
    )
    .map_err(|(name, e)| {
        let annotation = format!("{PREFIX}{name}");
        let allowed = match name.as_str() {
            "affinity-cookie" => "a cookie name (a token: letters, digits and !#$%&'*+-.^_`|~)",
            "affinity-header" => "a header name",
            "affinity-max-age" => "a duration, with affinity-cookie",
            "mirror-max-body" => "a size, e.g. 64KiB",
            "mirror-methods" => "methods, e.g. GET,HEAD,POST",
            _ => "a percent in 0..=100",
        };
        let value = get(&annotation).unwrap_or_default().to_string();
        err(&annotation, &value, e, allowed)
    })?;
    plan.apply_strategy(|f| match f {
        "steps" => format!("annotation {STEPS}"),
        "gate" => format!("annotation {GATE}"),
        _ => format!("annotation {STRATEGY}"),
    })
    .map_err(|e| {
        // What is allowed depends on the annotation the problem names.
        let allowed = if e.starts_with(&format!("annotation {STEPS}")) {
            "rising weights under 100, e.g. 10,25,50 (one step for an experiment; blue-green switches at once)"
        } else if e.starts_with(&format!("annotation {GATE}")) {
            "sequential, threshold"
        } else {
            plan::Strategy::NAMES
        };
        named_error(e, allowed)
    })?;
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
    // Whether its PromQL checks need the prometheus provider is known once
    // the ConfigMap is read (web and Datadog checks do not).
    let checks_configmap = name_of(CHECKS)?;
    // Webhooks: a ConfigMap's name, or the list itself inline, as Flagger's
    // `analysis.webhooks` writes it.
    let webhooks_configmap = match get(WEBHOOKS) {
        Some(v) if v.trim_start().starts_with(['-', '[']) => {
            plan.webhooks = crate::plan::parse_webhooks(v, "the list").map_err(|e| {
                err(
                    WEBHOOKS,
                    v,
                    e,
                    "a YAML list as Flagger's analysis.webhooks: [{name, type, url, timeout, metadata, retries, headers}]",
                )
            })?;
            None
        }
        _ => name_of(WEBHOOKS)?,
    };
    let secret_of = |k: &str| -> Result<Option<String>, AnnotationError> {
        match get(k) {
            None => Ok(None),
            Some(v) if is_dns_label(v) => Ok(Some(v.to_string())),
            Some(v) => Err(err(
                k,
                v,
                "not a Secret name".into(),
                "a Secret name in the Deployment's namespace",
            )),
        }
    };
    let router = router_of(annotations)?;
    let metrics_template = match get(METRICS_TEMPLATE) {
        None => crate::provider::MetricsTemplate::Proxy,
        Some(v) => {
            let t = crate::provider::MetricsTemplate::parse(v).map_err(|e| {
                err(
                    METRICS_TEMPLATE,
                    v,
                    e,
                    crate::provider::MetricsTemplate::ALLOWED,
                )
            })?;
            // Only the prometheus provider reads templates: said outright,
            // not left to the operator's --prometheus-url default.
            if get(METRICS) != Some("prometheus") {
                return Err(err(
                    METRICS_TEMPLATE,
                    v,
                    "only used with sluice.dev/metrics: prometheus".into(),
                    "sluice.dev/metrics: prometheus beside it, or no template",
                ));
            }
            if t == crate::provider::MetricsTemplate::EnvoyGateway
                && !matches!(router, Router::GatewayApi { .. })
            {
                return Err(err(
                    METRICS_TEMPLATE,
                    v,
                    "Envoy Gateway names its clusters after the HTTPRoute: needs sluice.dev/router: gateway-api".into(),
                    "envoy-gateway with sluice.dev/router: gateway-api and sluice.dev/httproute, or another template",
                ));
            }
            t
        }
    };
    let mut route = route_settings(annotations)?;
    if baseline_arm_of(annotations, &plan, &router, &metrics_template)? {
        route.baseline_arm = true;
        if let plan::Gate::Sequential(settings) = &mut plan.gate {
            settings.use_baseline_arm(get(WARMUP).is_some());
        }
    }
    Ok(Settings {
        router,
        plan,
        port,
        metrics,
        metrics_template,
        checks_configmap,
        webhooks_configmap,
        http_ports: get(HTTP_PORTS)
            .map(|v| {
                super::ports::parse_http_ports(v).map_err(|e| {
                    err(
                        HTTP_PORTS,
                        v,
                        e,
                        "Service port names or numbers, comma separated, e.g. http,8080",
                    )
                })
            })
            .transpose()?,
        access_secret: secret_of(ACCESS)?,
        notify_secret: secret_of(NOTIFY)?,
        route,
        proxy: proxy_settings(annotations)?,
        canary_scale: match get(CANARY_SCALE) {
            None | Some("full") => CanaryScale::Full,
            Some("proportional") => CanaryScale::Proportional,
            Some(v) => {
                return Err(err(
                    CANARY_SCALE,
                    v,
                    "unknown scaling".into(),
                    "full, proportional",
                ));
            }
        },
        rollback_window: match get(ROLLBACK_WINDOW) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_ROLLBACK_WINDOW)
                .ok_or_else(|| {
                    err(
                        ROLLBACK_WINDOW,
                        v,
                        "not a whole number in 0..=20".into(),
                        "0 (off), 1, 2, ... 20",
                    )
                })?,
        },
        abort_scale_down_delay: match get(ABORT_SCALE_DOWN_DELAY) {
            None => Duration::ZERO,
            Some(v) => {
                let allowed = "a duration up to 24h, e.g. 10m (0s: off)";
                let d = sluice_proxy::config::parse_duration(v)
                    .map_err(|e| err(ABORT_SCALE_DOWN_DELAY, v, e, allowed))?;
                if d > Duration::from_secs(24 * 3600) {
                    return Err(err(
                        ABORT_SCALE_DOWN_DELAY,
                        v,
                        "longer than 24h".into(),
                        allowed,
                    ));
                }
                d
            }
        },
        keep_releases: match get(KEEP_RELEASES) {
            None => crate::record::DEFAULT_KEEP,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    err(
                        KEEP_RELEASES,
                        v,
                        "not a whole number in 1..=100".into(),
                        "1, 2, ... 100",
                    )
                })?,
        },
    })
}

fn annotation_error(
    annotation: &str,
    value: &str,
    problem: String,
    allowed: &str,
) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        problem,
        allowed: allowed.to_string(),
    }
}

/// `sluice.dev/match` and the route timeouts, checked as the proxy checks
/// its config.
fn route_settings(
    annotations: &BTreeMap<String, String>,
) -> Result<RouteSettings, AnnotationError> {
    const RULES: &str = "a YAML list of {header: NAME, value: V} or {cookie: NAME, value: V}, e.g. [{header: x-canary, value: \"1\"}]";
    const DURATION: &str = "a duration above 0, e.g. 500ms, 10s, 2m";
    let mut route = RouteSettings::default();
    if let Some(v) = annotations.get(MATCH) {
        route.canary_match =
            knobs::parse_match(v).map_err(|e| annotation_error(MATCH, v, e, RULES))?;
        knobs::validate_route(&route).map_err(|e| annotation_error(MATCH, v, e, RULES))?;
    }
    for (annotation, field) in [
        (REQUEST_TIMEOUT, &mut route.timeouts.request),
        (CONNECT_TIMEOUT, &mut route.timeouts.connect),
        (IDLE_TIMEOUT, &mut route.timeouts.idle),
        (UPSTREAM_IDLE_TIMEOUT, &mut route.timeouts.upstream_idle),
        (TUNNEL_IDLE_TIMEOUT, &mut route.timeouts.tunnel_idle),
        (ANSWER_IDLE_TIMEOUT, &mut route.timeouts.answer_idle),
    ] {
        if let Some(v) = annotations.get(annotation) {
            *field = v.trim().to_string();
        }
    }
    // The proxy's validator names the timeout (`timeouts.request: ...`).
    if let Err(e) = knobs::validate_route(&RouteSettings {
        canary_match: Vec::new(),
        timeouts: route.timeouts.clone(),
        baseline_arm: false,
    }) {
        let annotation = [
            ("timeouts.request", REQUEST_TIMEOUT),
            ("timeouts.connect", CONNECT_TIMEOUT),
            ("timeouts.idle", IDLE_TIMEOUT),
            ("timeouts.upstream_idle", UPSTREAM_IDLE_TIMEOUT),
            ("timeouts.tunnel_idle", TUNNEL_IDLE_TIMEOUT),
            ("timeouts.answer_idle", ANSWER_IDLE_TIMEOUT),
        ]
        .into_iter()
        .find(|(field, _)| e.starts_with(&format!("{field}:")))
        .map_or(REQUEST_TIMEOUT, |(_, a)| a);
        let problem = e
            .split_once(": ")
            .map_or(e.as_str(), |(_, p)| p)
            .to_string();
        let value = annotations.get(annotation).cloned().unwrap_or_default();
        return Err(annotation_error(annotation, &value, problem, DURATION));
    }
    Ok(route)
}

/// The proxy Deployment's replicas, resources and HPA.
fn proxy_settings(
    annotations: &BTreeMap<String, String>,
) -> Result<ProxySettings, AnnotationError> {
    let mut proxy = ProxySettings::default();
    if let Some(v) = annotations.get(PROXY_REPLICAS) {
        proxy.replicas = v
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                annotation_error(
                    PROXY_REPLICAS,
                    v,
                    "not a whole number in 1..=100".into(),
                    "1, 2, 3, ... 100 (default 2)",
                )
            })?;
    }
    if let Some(v) = annotations.get(PROXY_RESOURCES) {
        proxy.resources = knobs::parse_resources(v).map_err(|e| {
            annotation_error(
                PROXY_RESOURCES,
                v,
                e,
                "YAML like {requests: {cpu: 200m, memory: 64Mi}, limits: {memory: 512Mi}}",
            )
        })?;
    }
    if let Some(v) = annotations.get(PROXY_AUTOSCALE) {
        const ALLOWED: &str = "min=N,max=M,cpu=PERCENT, e.g. min=2,max=10,cpu=70";
        let autoscale = knobs::parse_autoscale(v)
            .map_err(|e| annotation_error(PROXY_AUTOSCALE, v, e, ALLOWED))?;
        if annotations.contains_key(PROXY_REPLICAS) {
            return Err(annotation_error(
                PROXY_AUTOSCALE,
                v,
                format!("{PROXY_REPLICAS} is set too; the HPA owns the proxy's replicas"),
                "one of proxy-autoscale or proxy-replicas",
            ));
        }
        if !knobs::has_cpu_request(&proxy.resources) {
            return Err(annotation_error(
                PROXY_AUTOSCALE,
                v,
                format!(
                    "the proxy has no CPU request ({PROXY_RESOURCES}), and CPU utilisation is a percent of it"
                ),
                ALLOWED,
            ));
        }
        proxy.autoscale = Some(autoscale);
    }
    Ok(proxy)
}

/// The operator's own bad-value cases: (annotation, value, what its error
/// says), each refused alone beside `sluice.dev/canary: enabled`. Public
/// so the admission policy's test (tests/tests/admission_policy.rs) applies
/// the very same cases through `kubectl apply`.
#[doc(hidden)]
pub const BAD_VALUE_CASES: &[(&str, &str, &str)] = &[
    (STEPS, "10,5", "steps must increase"),
    (INTERVAL, "2s", "shorter than 5s"),
    (FAILURE_LIMIT, "0", "at least 1"),
    (LATENCY, "p95<500ms", "p95<500ms"),
    (APPROVAL, "sometimes", "auto, manual"),
    (METRICS, "datadog", "prometheus, proxy"),
    (GATE, "magic", "sequential, threshold"),
    (ALPHA, "0.7", "not in (0, 0.5)"),
    (RHO_MAX, "0.5", "must be above 1"),
    (LATENCY_BOUND, "270ms", "250ms or 300ms"),
    (SCRAPE_INTERVAL, "100ms", "shorter than 1s"),
    (WHEN_UNDECIDED, "wait", "hold, promote, rollback"),
    (INCIDENT_ALLOWANCE, "1h", "longer than the 10m"),
    (WARMUP, "soon", "a duration"),
    (LATENCY_TOLERANCE, "150%", "0..=100"),
    (BASELINE, "-5s", "a duration"),
    (BASELINE_ARM, "yes", "not true or false"),
    (LATENCY, "p99<=270ms", "not a bound"),
    ("sluice.dev/stepz", "10", "unknown annotation"),
    (
        WEBHOOKS,
        "- url: http://a/\n  type: rolout\n",
        "unknown variant `rolout`",
    ),
    (
        WEBHOOKS,
        "- name: x\n  url: ftp://a/\n",
        "webhook `x`: url:",
    ),
    (WEBHOOKS, "Hooks", "not a ConfigMap name"),
    (ROUTER, "istio", "proxy, gateway-api"),
    (METRICS_TEMPLATE, "linkerd", "unknown template"),
    (METRICS_TEMPLATE, "configmap:tpl", "needs NAME/KEY"),
    (
        METRICS_TEMPLATE,
        "configmap:Tpl/t.yaml",
        "not a ConfigMap name",
    ),
    (
        METRICS_TEMPLATE,
        "istio",
        "only used with sluice.dev/metrics: prometheus",
    ),
    (ROUTER, "gateway-api", "needs sluice.dev/httproute"),
    (
        HTTPROUTE,
        "web",
        "only used with sluice.dev/router: gateway-api",
    ),
    (MATCH, "x-canary=1", "not a list of rules"),
    (
        MATCH,
        "[{header: x-canary}]",
        "rule 1: missing field `value`",
    ),
    (
        MATCH,
        "[{heder: x-canary, value: \"1\"}]",
        "rule 1: unknown key `heder`",
    ),
    (
        MATCH,
        "- {header: x-a, value: \"1\"}\n- {header: \"bad header\", value: x}\n",
        "rule 2.header: `bad header` is not a header field name",
    ),
    (MATCH, "[{header: a, cookie: b, value: x}]", "not both"),
    (MATCH, "[]", "an empty list"),
    (REQUEST_TIMEOUT, "0s", "must be greater than 0"),
    (REQUEST_TIMEOUT, "soon", "not a duration"),
    (CONNECT_TIMEOUT, "0ms", "must be greater than 0"),
    (IDLE_TIMEOUT, "1x", "unknown unit `x`"),
    (UPSTREAM_IDLE_TIMEOUT, "", "empty duration"),
    (TUNNEL_IDLE_TIMEOUT, "0s", "must be greater than 0"),
    (ANSWER_IDLE_TIMEOUT, "2 minutes", "unknown unit ` minutes`"),
    (PROXY_REPLICAS, "0", "1..=100"),
    (PROXY_REPLICAS, "two", "1..=100"),
    (
        PROXY_RESOURCES,
        "{requests: {cpu: 1x}}",
        "not a Kubernetes quantity",
    ),
    (PROXY_RESOURCES, "{requests: {gpu: 1}}", "unknown resource"),
    (
        PROXY_RESOURCES,
        "{reqests: {cpu: 1}}",
        "unknown key `reqests`",
    ),
    (
        PROXY_RESOURCES,
        "{requests: {memory: 1Gi}, limits: {memory: 512Mi}}",
        "requests.memory must be less than or equal to limits.memory",
    ),
    (PROXY_RESOURCES, "{limits: {cpu: 0}}", "must be above 0"),
    (
        PROXY_AUTOSCALE,
        "min=3,max=2,cpu=70",
        "max 2 is not in min..=100",
    ),
    (
        PROXY_AUTOSCALE,
        "min=1,max=5",
        "min, max and cpu are all needed",
    ),
    (
        PROXY_AUTOSCALE,
        "min=1,max=5,cpu=70,mem=3",
        "unknown key `mem`",
    ),
    (CANARY_SCALE, "half", "full, proportional"),
    (ROLLBACK_WINDOW, "21", "0..=20"),
    (ROLLBACK_WINDOW, "-1", "0..=20"),
    (KEEP_RELEASES, "0", "1..=100"),
    (KEEP_RELEASES, "ten", "1..=100"),
    (ABORT_SCALE_DOWN_DELAY, "48h", "longer than 24h"),
    (ABORT_SCALE_DOWN_DELAY, "later", "a duration"),
];

fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `sluice.dev/router` and `sluice.dev/httproute`. The Gateway API router
/// moves only weights: the proxy's own routing knobs (A/B matches,
/// mirroring, affinity, timeouts, the proxy's size) have no meaning there
/// and are refused rather than silently ignored.
/// `sluice.dev/baseline-arm`: `"true"` or `"false"` (the default). A
/// baseline arm shares the canary's weight on the Sluice proxy's routes,
/// so it needs the proxy router (an HTTPRoute splits between two
/// backends), a plan whose every weight is at most 50 (the canary's share
/// and the baseline's together are at most the whole), and a strategy
/// that moves by steps (a blue/green switch goes to 100 at once), and the
/// proxy's own series (`sluice.dev/metrics-template` other than `proxy`
/// names two arms only). Under
/// the sequential gate the canary is then judged against the baseline arm,
/// with no warm-up unless `sluice.dev/warmup` gives one.
fn baseline_arm_of(
    annotations: &BTreeMap<String, String>,
    plan: &Plan,
    router: &Router,
    template: &crate::provider::MetricsTemplate,
) -> Result<bool, AnnotationError> {
    const ALLOWED: &str = "true or false; true needs weights of at most 50, the proxy router, the canary or experiment strategy and the proxy's own series";
    let Some(v) = annotations.get(BASELINE_ARM) else {
        return Ok(false);
    };
    let refused = |problem: String| {
        Err(AnnotationError {
            annotation: BASELINE_ARM.to_string(),
            value: v.clone(),
            problem,
            allowed: ALLOWED.to_string(),
        })
    };
    match v.as_str() {
        "false" => return Ok(false),
        "true" => {}
        _ => return refused("not true or false".into()),
    }
    if matches!(router, Router::GatewayApi { .. }) {
        return refused(format!(
            "the baseline arm is a third backend of the Sluice proxy's routes; with {ROUTER}: gateway-api the HTTPRoute splits the traffic"
        ));
    }
    if matches!(plan.strategy, plan::Strategy::BlueGreen { .. }) {
        return refused(format!(
            "{STRATEGY}: blue-green switches all traffic at once; the baseline arm shares the canary's weight, so it needs steps of at most 50"
        ));
    }
    if *template != crate::provider::MetricsTemplate::Proxy {
        return refused(format!(
            "the baseline arm is read from the Sluice proxy's own series (backend=\"baseline\"); a {METRICS_TEMPLATE} other than `proxy` has no such arm"
        ));
    }
    if let Some(over) = plan.steps_bp.iter().find(|bp| **bp > 5000) {
        return refused(format!(
            "the baseline arm gets the canary's share too, so every weight must be at most 50, and {STEPS} has {}",
            sluice_proxy::config::bp_to_percent(*over)
        ));
    }
    Ok(true)
}

fn router_of(annotations: &BTreeMap<String, String>) -> Result<Router, AnnotationError> {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let err = |annotation: &str, value: &str, problem: &str, allowed: &str| AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        problem: problem.to_string(),
        allowed: allowed.to_string(),
    };
    let route = get(HTTPROUTE);
    match get(ROUTER) {
        None | Some("proxy") => match route {
            Some(v) => Err(err(
                HTTPROUTE,
                v,
                "only used with sluice.dev/router: gateway-api",
                "no sluice.dev/httproute with the proxy router",
            )),
            None => Ok(Router::Proxy),
        },
        Some("gateway-api") => {
            let Some(name) = route else {
                return Err(err(
                    ROUTER,
                    "gateway-api",
                    "needs sluice.dev/httproute naming the HTTPRoute to release through",
                    "gateway-api with sluice.dev/httproute: NAME",
                ));
            };
            if !is_dns_subdomain(name) {
                return Err(err(
                    HTTPROUTE,
                    name,
                    "not an HTTPRoute name",
                    "a DNS-1123 subdomain (lower case letters, digits, '-', '.'; at most 253) in the Deployment's namespace",
                ));
            }
            for key in [
                MATCH,
                MIRROR,
                AFFINITY_COOKIE,
                AFFINITY_HEADER,
                REQUEST_TIMEOUT,
                CONNECT_TIMEOUT,
                IDLE_TIMEOUT,
                UPSTREAM_IDLE_TIMEOUT,
                TUNNEL_IDLE_TIMEOUT,
                ANSWER_IDLE_TIMEOUT,
                PROXY_REPLICAS,
                PROXY_RESOURCES,
                PROXY_AUTOSCALE,
            ] {
                if let Some(v) = get(key) {
                    return Err(err(
                        key,
                        v,
                        "a setting of the Sluice proxy, not supported with sluice.dev/router: gateway-api (the HTTPRoute's own rules and filters do this)",
                        "remove it, or use sluice.dev/router: proxy",
                    ));
                }
            }
            Ok(Router::GatewayApi {
                httproute: name.to_string(),
            })
        }
        Some(other) => Err(err(ROUTER, other, "unknown router", "proxy, gateway-api")),
    }
}

/// A DNS-1123 subdomain: dot-separated labels of `[a-z0-9-]`, each
/// starting and ending alphanumeric, 253 characters at most.
fn is_dns_subdomain(v: &str) -> bool {
    v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_annotation_value_panics_the_parser() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const VALUES: &[&str] = &[
            "99999999999999999999h",
            "1e400",
            "-1",
            "",
            "NaN",
            "inf",
            "0",
            "100",
            "101",
            "10,20,30",
            "50,10",
            "p99<=300ms",
            "p99<=99999999999999999999h",
            "p0<=1ms",
            "300ms,1s",
            "1%",
            "150%",
            "auto",
            "manual",
            "prometheus",
            "proxy",
            "sequential",
            "threshold",
            ",,,",
            "µ",
        ];
        for _ in 0..5_000 {
            let mut annotations = BTreeMap::new();
            annotations.insert(super::CANARY.to_string(), "enabled".to_string());
            for _ in 0..(next() % 6) {
                let key = super::KNOWN[(next() % super::KNOWN.len() as u64) as usize];
                let value = VALUES[(next() % VALUES.len() as u64) as usize];
                annotations.insert(key.to_string(), value.to_string());
            }
            let _ = super::parse(&annotations, next() % 2 == 0);
        }
    }

    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `sluice rollout --gate threshold --alpha 2` is refused (the threshold
    /// gate would ignore it); so is the annotation, whatever its value, for
    /// every setting only the sequential gate reads.
    #[test]
    fn the_sequential_gates_settings_are_refused_with_the_threshold_gate() {
        let e = parse(
            &ann(&[(CANARY, "enabled"), (GATE, "threshold"), (ALPHA, "2")]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.annotation, ALPHA);
        assert_eq!(
            e.to_string(),
            "annotation sluice.dev/alpha: `2` is invalid: applies to the sequential gate, not to sluice.dev/gate: threshold; it would be ignored (allowed: drop it, or drop sluice.dev/gate: threshold)"
        );
        for key in SEQUENTIAL_ONLY {
            let e = parse(
                &ann(&[(CANARY, "enabled"), (GATE, "threshold"), (key, "1")]),
                false,
            )
            .unwrap_err();
            assert_eq!(e.annotation, key);
        }
        // With the sequential gate the value is checked as before.
        let e = parse(&ann(&[(CANARY, "enabled"), (ALPHA, "2")]), false).unwrap_err();
        assert_eq!(e.annotation, ALPHA);
        assert!(parse(&ann(&[(CANARY, "enabled"), (ALPHA, "0.02")]), false).is_ok());
    }

    #[test]
    fn a_metrics_template_needs_prometheus_and_envoy_gateway_the_gateway_router() {
        use crate::provider::MetricsTemplate;
        let prom = [(CANARY, "enabled"), (METRICS, "prometheus")];
        assert_eq!(
            parse(&ann(&prom), true).unwrap().metrics_template,
            MetricsTemplate::Proxy
        );
        let with = |extra: &[(&str, &str)]| {
            let mut a = ann(&prom);
            a.extend(ann(extra));
            parse(&a, true)
        };
        assert_eq!(
            with(&[(METRICS_TEMPLATE, "istio")])
                .unwrap()
                .metrics_template,
            MetricsTemplate::Istio
        );
        assert_eq!(
            with(&[(METRICS_TEMPLATE, "configmap:tpl/t.yaml")])
                .unwrap()
                .metrics_template,
            MetricsTemplate::ConfigMap {
                name: "tpl".into(),
                key: "t.yaml".into()
            }
        );
        let gw = [
            (METRICS_TEMPLATE, "envoy-gateway"),
            (ROUTER, "gateway-api"),
            (HTTPROUTE, "web"),
        ];
        assert_eq!(
            with(&gw).unwrap().metrics_template,
            MetricsTemplate::EnvoyGateway
        );
        let e = with(&[(METRICS_TEMPLATE, "envoy-gateway")]).unwrap_err();
        assert_eq!(e.annotation, METRICS_TEMPLATE);
        assert!(
            e.to_string()
                .contains("needs sluice.dev/router: gateway-api"),
            "{e}"
        );
        // Without the explicit provider, even where prometheus is the default.
        let e = parse(
            &ann(&[(CANARY, "enabled"), (METRICS_TEMPLATE, "istio")]),
            true,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("only used with sluice.dev/metrics: prometheus"),
            "{e}"
        );
        let e = with(&[(METRICS_TEMPLATE, "configmap:tpl")]).unwrap_err();
        assert!(e.to_string().contains("configmap:NAME/KEY"), "{e}");
    }

    #[test]
    fn a_baseline_arm_is_judged_against_with_no_warmup_and_refused_where_it_cannot_share() {
        let on = |extra: &[(&str, &str)]| {
            let mut pairs = vec![(CANARY, "enabled"), (BASELINE_ARM, "true")];
            pairs.extend_from_slice(extra);
            parse(&ann(&pairs), false)
        };
        let s = on(&[]).unwrap();
        assert!(s.route.baseline_arm);
        let g = s.plan.gate.settings().unwrap();
        assert!(g.baseline_arm);
        assert_eq!(g.warmup, Duration::ZERO, "no warm-up by default");
        let g = on(&[(WARMUP, "3s")]).unwrap();
        assert_eq!(
            g.plan.gate.settings().unwrap().warmup,
            Duration::from_secs(3)
        );
        // Off: as without the annotation.
        let off = parse(&ann(&[(CANARY, "enabled"), (BASELINE_ARM, "false")]), false).unwrap();
        assert!(!off.route.baseline_arm);
        let g = off.plan.gate.settings().unwrap();
        assert!(!g.baseline_arm);
        assert_eq!(g.warmup, Duration::from_secs(10));
        // An experiment at its default 50% shares; a threshold gate too.
        assert!(on(&[(STRATEGY, "experiment")]).unwrap().route.baseline_arm);
        assert!(on(&[(GATE, "threshold")]).unwrap().route.baseline_arm);
        for (extra, says) in [
            (
                vec![(STEPS, "10,50,60")],
                "every weight must be at most 50, and sluice.dev/steps has 60",
            ),
            (
                vec![(STRATEGY, "blue-green")],
                "blue-green switches all traffic at once",
            ),
            (
                vec![(ROUTER, "gateway-api"), (HTTPROUTE, "web")],
                "with sluice.dev/router: gateway-api the HTTPRoute splits",
            ),
        ] {
            let e = on(&extra).unwrap_err();
            assert_eq!(e.annotation, BASELINE_ARM, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = parse(
            &ann(&[
                (CANARY, "enabled"),
                (BASELINE_ARM, "true"),
                (METRICS, "prometheus"),
                (METRICS_TEMPLATE, "istio"),
            ]),
            true,
        )
        .unwrap_err();
        assert_eq!(e.annotation, BASELINE_ARM);
        assert!(
            e.to_string().contains("other than `proxy` has no such arm"),
            "{e}"
        );
        for bad in ["yes", "True", " true", ""] {
            let e = parse(&ann(&[(CANARY, "enabled"), (BASELINE_ARM, bad)]), false).unwrap_err();
            assert_eq!(e.annotation, BASELINE_ARM);
            assert!(e.to_string().contains("not true or false"), "{e}");
        }
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
        // The sequential gate by default, with no ceilings.
        let g = s.plan.gate.settings().expect("sequential by default");
        assert_eq!((g.alpha, g.beta, g.rho0, g.rho_max), (0.01, 0.05, 1.0, 1.5));
        assert_eq!(g.failure_floor, 0.001);
        assert!(g.latency_bounds.is_empty());
        assert_eq!(s.plan.scrape_interval, Duration::from_secs(5));
        assert_eq!(s.plan.max_duration, Duration::from_secs(1800));
        assert_eq!(s.plan.success_rate_min, None);
        assert!(s.plan.latency.is_empty());
        // Flagger's gate, with its usual thresholds.
        let t = parse(&ann(&[(CANARY, "enabled"), (GATE, "threshold")]), false).unwrap();
        assert_eq!(t.plan.gate, plan::Gate::Threshold);
        assert_eq!(t.plan.success_rate_min, Some(99.0));
        assert_eq!(t.plan.latency.len(), 1);
    }

    #[test]
    fn gate_settings_are_read_and_checked() {
        let s = parse(
            &ann(&[
                (CANARY, "enabled"),
                (ALPHA, "0.001"),
                (BETA, "0.1"),
                (RHO0, "1.1"),
                (RHO_MAX, "2"),
                (FAILURE_FLOOR, "0.5"),
                (LATENCY_BOUND, "300ms,1s"),
                (MAX_DURATION, "1h"),
                (SCRAPE_INTERVAL, "2s"),
                (WHEN_UNDECIDED, "rollback"),
                (INCIDENT_ALLOWANCE, "45s"),
                (WARMUP, "1m"),
                (LATENCY_TOLERANCE, "25%"),
                (BASELINE, "0s"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(s.plan.when_undecided, plan::Undecided::Rollback);
        let g = s.plan.gate.settings().unwrap();
        assert_eq!((g.alpha, g.beta, g.rho0, g.rho_max), (0.001, 0.1, 1.1, 2.0));
        assert_eq!(g.failure_floor, 0.005);
        assert_eq!(
            g.latency_bounds,
            vec![Duration::from_millis(300), Duration::from_secs(1)]
        );
        assert_eq!(s.plan.max_duration, Duration::from_secs(3600));
        assert_eq!(s.plan.scrape_interval, Duration::from_secs(2));
        assert_eq!(g.incident_allowance, Duration::from_secs(45));
        assert_eq!(g.warmup, Duration::from_secs(60));
        assert_eq!(g.latency_tolerance, 0.25);
        assert_eq!(g.baseline, Duration::ZERO);
        // Defaults: hold for a person, a 30 s allowance, 10 s warm-up, 10%, 30 s.
        let d = parse(&ann(&[(CANARY, "enabled")]), false).unwrap();
        assert_eq!(d.plan.when_undecided, plan::Undecided::Hold);
        let g = d.plan.gate.settings().unwrap();
        assert_eq!(
            (
                g.incident_allowance,
                g.warmup,
                g.latency_tolerance,
                g.baseline
            ),
            (
                Duration::from_secs(30),
                Duration::from_secs(10),
                0.1,
                Duration::from_secs(30)
            )
        );
    }

    #[test]
    fn the_gateway_api_router_needs_a_route_name_and_refuses_the_proxys_knobs() {
        let ok = parse(
            &ann(&[
                (CANARY, "enabled"),
                (ROUTER, "gateway-api"),
                (HTTPROUTE, "shop.web-1"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            ok.router,
            Router::GatewayApi {
                httproute: "shop.web-1".into()
            }
        );
        let proxy = parse(&ann(&[(CANARY, "enabled"), (ROUTER, "proxy")]), false).unwrap();
        assert_eq!(proxy.router, Router::Proxy);
        // (extra annotations beside router: gateway-api, the one named, what it says)
        let gateway = [(ROUTER, "gateway-api")];
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let table: &[Case<'_>] = &[
            (&[(HTTPROUTE, "Web")], HTTPROUTE, "not an HTTPRoute name"),
            (&[(HTTPROUTE, "web_1")], HTTPROUTE, "not an HTTPRoute name"),
            (&[(HTTPROUTE, "-web")], HTTPROUTE, "not an HTTPRoute name"),
            (&[(HTTPROUTE, "web..a")], HTTPROUTE, "not an HTTPRoute name"),
            (&[(HTTPROUTE, "")], HTTPROUTE, "not an HTTPRoute name"),
            (&[], ROUTER, "needs sluice.dev/httproute"),
            (
                &[(HTTPROUTE, "web"), (MATCH, "[{header: x, value: y}]")],
                MATCH,
                "not supported with sluice.dev/router: gateway-api",
            ),
            (
                &[(HTTPROUTE, "web"), (MIRROR, "10")],
                MIRROR,
                "not supported with sluice.dev/router: gateway-api",
            ),
            (
                &[(HTTPROUTE, "web"), (PROXY_REPLICAS, "3")],
                PROXY_REPLICAS,
                "not supported with sluice.dev/router: gateway-api",
            ),
        ];
        for (extra, named, needle) in table {
            let mut set = vec![(CANARY, "enabled")];
            set.extend(gateway);
            set.extend(extra.iter().copied());
            let e = parse(&ann(&set), false).unwrap_err();
            assert_eq!(&e.annotation, named, "{set:?}: {e}");
            assert!(e.to_string().contains(needle), "{set:?}: {e}");
        }
        let long = "a".repeat(64);
        let e = parse(
            &ann(&[
                (CANARY, "enabled"),
                (ROUTER, "gateway-api"),
                (HTTPROUTE, &long),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.annotation, HTTPROUTE, "a label of 64 characters");
    }

    #[test]
    fn bad_values_name_the_annotation_value_and_what_is_allowed() {
        for &(key, value, needle) in BAD_VALUE_CASES {
            let e = parse(&ann(&[(CANARY, "enabled"), (key, value)]), false).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("annotation {key}: `{value}` is invalid")),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
        }
    }

    /// A mirror setting without a mirror percent is named by the setting
    /// given (with its value), not by the missing `sluice.dev/mirror`; so
    /// lint can set it aside and go on to the next problem.
    #[test]
    fn a_mirror_setting_without_a_mirror_names_itself() {
        let problems = lint(
            &ann(&[
                (CANARY, "enabled"),
                (MIRROR_METHODS, "GET"),
                (STEPS, "50,10"),
            ]),
            false,
        );
        let named: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.annotation.as_str(), p.value.as_str()))
            .collect();
        assert!(named.contains(&(MIRROR_METHODS, "GET")), "{problems:?}");
        assert!(named.iter().any(|(a, _)| *a == STEPS), "{problems:?}");
    }

    /// A plan the strategy cannot run names what each annotation allows,
    /// not the list of strategies under `sluice.dev/steps`.
    #[test]
    fn a_last_step_of_100_says_what_steps_allow() {
        let e = parse(&ann(&[(CANARY, "enabled"), (STEPS, "100")]), false).unwrap_err();
        assert_eq!(e.annotation, STEPS);
        assert!(e.allowed.starts_with("rising weights under 100"), "{e}");
        let e = parse(
            &ann(&[
                (CANARY, "enabled"),
                (STRATEGY, "experiment"),
                (STEPS, "10,20"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.annotation, STEPS, "{e}");
        assert!(!e.allowed.contains("blue-green, experiment"), "{e}");
    }

    #[test]
    fn webhooks_are_flaggers_list_inline_or_a_configmap_name() {
        let inline = "- name: load-test\n  url: http://flagger-loadtester.test/\n  timeout: 5s\n  metadata:\n    cmd: \"hey -z 1m http://podinfo-canary:9898/\"\n- name: gate\n  type: confirm-traffic-increase\n  url: https://gate.test/\n  retries: 2\n";
        let s = parse(&ann(&[(CANARY, "enabled"), (WEBHOOKS, inline)]), false).unwrap();
        assert_eq!(s.webhooks_configmap, None);
        let hooks = &s.plan.webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].kind, crate::plan::WebhookKind::Rollout);
        assert_eq!(hooks[0].timeout, Duration::from_secs(5));
        assert_eq!(
            hooks[0].metadata["cmd"],
            "hey -z 1m http://podinfo-canary:9898/"
        );
        assert_eq!(
            hooks[1].kind,
            crate::plan::WebhookKind::ConfirmTrafficIncrease
        );
        assert_eq!(hooks[1].retries, 2);
        let s = parse(&ann(&[(CANARY, "enabled"), (WEBHOOKS, "my-hooks")]), false).unwrap();
        assert_eq!(s.webhooks_configmap.as_deref(), Some("my-hooks"));
        assert!(s.plan.webhooks.is_empty());
    }

    #[test]
    fn the_knobs_are_read_with_todays_behaviour_as_default() {
        let d = parse(&ann(&[(CANARY, "enabled")]), false).unwrap();
        assert!(d.route.canary_match.is_empty());
        assert_eq!(d.route.timeouts.request, "30s");
        assert_eq!(d.proxy, knobs::ProxySettings::default());
        assert_eq!(d.proxy.replicas, 2);
        assert_eq!(d.canary_scale, CanaryScale::Full);
        assert_eq!(d.rollback_window, 0);
        assert_eq!(d.abort_scale_down_delay, Duration::ZERO);
        let s = parse(
            &ann(&[
                (CANARY, "enabled"),
                (
                    MATCH,
                    "- header: x-canary\n  value: \"1\"\n- cookie: beta\n  value: yes\n",
                ),
                (REQUEST_TIMEOUT, "2s"),
                (CONNECT_TIMEOUT, "300ms"),
                (
                    PROXY_RESOURCES,
                    "{requests: {cpu: 250m, memory: 64Mi}, limits: {cpu: 1, memory: 512Mi}}",
                ),
                (PROXY_AUTOSCALE, "min=2,max=8,cpu=75%"),
                (CANARY_SCALE, "proportional"),
                (ROLLBACK_WINDOW, "3"),
                (ABORT_SCALE_DOWN_DELAY, "10m"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(s.route.canary_match.len(), 2);
        assert_eq!(s.route.canary_match[0].header.as_deref(), Some("x-canary"));
        assert_eq!(s.route.canary_match[0].value, "1");
        assert_eq!(s.route.canary_match[1].cookie.as_deref(), Some("beta"));
        assert_eq!(s.route.timeouts.request, "2s");
        assert_eq!(s.route.timeouts.connect, "300ms");
        assert_eq!(s.route.timeouts.idle, "60s");
        assert_eq!(s.proxy.resources["limits"]["cpu"], "1");
        assert_eq!(
            s.proxy.autoscale,
            Some(knobs::Autoscale {
                min: 2,
                max: 8,
                cpu_percent: 75
            })
        );
        assert_eq!(s.canary_scale, CanaryScale::Proportional);
        assert_eq!(s.rollback_window, 3);
        assert_eq!(s.abort_scale_down_delay, Duration::from_secs(600));
    }

    #[test]
    fn the_proxy_has_one_owner_of_its_replica_count_and_an_hpa_needs_a_cpu_request() {
        let e = parse(
            &ann(&[
                (CANARY, "enabled"),
                (PROXY_REPLICAS, "3"),
                (PROXY_AUTOSCALE, "min=2,max=8,cpu=75"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.annotation, PROXY_AUTOSCALE);
        assert!(
            e.to_string()
                .contains("sluice.dev/proxy-replicas is set too"),
            "{e}"
        );
        let e = parse(
            &ann(&[
                (CANARY, "enabled"),
                (PROXY_RESOURCES, "{limits: {memory: 1Gi}}"),
                (PROXY_AUTOSCALE, "min=2,max=8,cpu=75"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.annotation, PROXY_AUTOSCALE);
        assert!(e.to_string().contains("no CPU request"), "{e}");
    }
}
