//! Metric providers: where a tick's evidence about the canary comes from.
//!
//! - [`ProxyProvider`] (the embedded default) scrapes the proxy's admin
//!   `/metrics` and diffs counters and histogram buckets against the previous
//!   scrape, so a tick sees exactly the requests since the last one, seconds
//!   after they happened, with no Prometheus.
//! - [`PrometheusProvider`] runs instant PromQL queries over the proxy's
//!   series. Consecutive ticks judge consecutive windows that never overlap
//!   (each failure is counted once): a tick's window runs from the end of
//!   the last judged window (or the last weight change) to now, and every
//!   query is evaluated at that instant. A window shorter than
//!   `window_floor` (too few scrapes for `rate()`) is not judged yet: the
//!   tick is Inconclusive and the next one judges the longer window.
//!   Which series it reads is a [`MetricsTemplate`] (annotation
//!   `sluice.dev/metrics-template`): `proxy` (the default, Sluice's proxy's
//!   own `sluice_requests_total`), `envoy-gateway`, `istio`, or a custom
//!   template from a ConfigMap; see [`SeriesTemplate`].
//! - [`Provider::Scripted`] asks a function for each tick's analysis (for tests
//!   of the drivers, where the real providers are not the subject).
//!
//! Every failure to measure (unreachable, empty result, NaN, too few
//! requests) is an Inconclusive check with its reason, never a pass.

use std::time::Duration;

use crate::analysis::{
    AbTraffic, Analysis, CheckResult, LatencyReading, Outcome, request_volume_check,
};
use crate::counters::{Arm, Counters, Window};
use crate::gate::GateState;
use crate::http::{HttpClient, encode_query_value};
use crate::plan::Plan;
use crate::scrape::Scrape;

pub enum Provider {
    Proxy(ProxyProvider),
    Prometheus(PrometheusProvider),
    Scripted(Box<dyn FnMut() -> Analysis + Send>),
    /// Windows of traffic from a function of the canary weight, judged by
    /// the real gate (for tests of the drivers with the gate in the loop).
    Windows(Box<dyn FnMut(u32) -> Window + Send>),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Proxy(_) => "proxy",
            Provider::Prometheus(_) => "prometheus",
            Provider::Scripted(_) => "scripted",
            Provider::Windows(_) => "windows",
        }
    }

    /// The client the custom checks read outside Prometheus use: the one
    /// [`Provider::set_checks_http`] gave, else the provider's own.
    pub fn checks_http(&self) -> HttpClient {
        match self {
            Provider::Proxy(p) => p.checks_client.clone().unwrap_or_else(|| p.client.clone()),
            Provider::Prometheus(p) => p.checks_client.clone().unwrap_or_else(|| p.client.clone()),
            Provider::Scripted(_) | Provider::Windows(_) => HttpClient::default(),
        }
    }

    /// Reads the web and Datadog checks with `http` (on Kubernetes: the
    /// app's own access, never the operator's, since an app's annotations
    /// choose those URLs).
    pub fn set_checks_http(&mut self, http: HttpClient) {
        match self {
            Provider::Proxy(p) => p.checks_client = Some(http),
            Provider::Prometheus(p) => p.checks_client = Some(http),
            Provider::Scripted(_) | Provider::Windows(_) => {}
        }
    }

    /// Starts a fresh measurement window (after the weight changed, or as
    /// a release starts): the web and Datadog checks are asked again too.
    pub async fn reset(&mut self) {
        match self {
            Provider::Proxy(p) => {
                p.readings.clear();
                p.reset().await
            }
            Provider::Prometheus(p) => {
                p.readings.clear();
                p.reset()
            }
            Provider::Scripted(_) | Provider::Windows(_) => {}
        }
    }

    /// Puts the web and Datadog checks' results in `analysis`, each asked
    /// at most once an interval (see `crate::external`). The test
    /// providers keep no readings: theirs are asked every tick.
    async fn overlay_external(&mut self, plan: &Plan, analysis: &mut Analysis) {
        let http = self.checks_http();
        let mut unkept = crate::external::Readings::default();
        let readings = match self {
            Provider::Proxy(p) => &mut p.readings,
            Provider::Prometheus(p) => &mut p.readings,
            Provider::Scripted(_) | Provider::Windows(_) => &mut unkept,
        };
        let now = std::time::Instant::now();
        crate::external::overlay(plan, analysis, plan.interval, &http, readings, now).await;
    }

    pub async fn analyse(&mut self, plan: &Plan) -> Analysis {
        let mut analysis = match self {
            Provider::Proxy(p) => p.analyse(plan).await,
            Provider::Prometheus(p) => p.analyse(plan).await,
            Provider::Scripted(next) => return next(),
            Provider::Windows(next) => analyse_window(plan, &next(0)),
        };
        self.overlay_external(plan, &mut analysis).await;
        analysis
    }

    /// One analysis tick under the plan's gate. The sequential gate first
    /// adds this scrape's window (taken at `weight_bp`) to `gate`, the
    /// release's evidence, then judges all of it; ceilings (a success rate,
    /// latency gates, custom queries), when given, are judged on the
    /// canary's traffic since the step began. During the `baseline`
    /// (before the first step) only the primary is measured.
    pub async fn tick(
        &mut self,
        plan: &Plan,
        gate: &mut Option<GateState>,
        weight_bp: u32,
        baseline: bool,
    ) -> Analysis {
        if baseline && (matches!(self, Provider::Scripted(_)) || plan.gate.settings().is_none()) {
            return all_inconclusive(plan, "measuring the primary before the first step");
        }
        let Some(settings) = plan.gate.settings() else {
            return self.analyse(plan).await;
        };
        let (window, queries) = match self {
            Provider::Scripted(next) => return next(),
            Provider::Windows(next) => (Ok(next(weight_bp)), Vec::new()),
            Provider::Proxy(p) => (p.window().await, Vec::new()),
            Provider::Prometheus(p) => match p.window(plan).await {
                Ok((w, queries)) => (Ok(w), queries),
                Err(e) => (Err(e), Vec::new()),
            },
        };
        let window = match window {
            Ok(w) => w,
            Err(reason) => return all_inconclusive(plan, &reason),
        };
        let mut analysis =
            judge_sequential(plan, settings, gate, window, weight_bp, baseline, queries);
        if !baseline {
            self.overlay_external(plan, &mut analysis).await;
        }
        analysis
    }
}

/// The ceilings of a sequential release, on the canary's traffic since the
/// step began (and custom query results, when the provider ran them).
/// The sequential gate's judgement of one window taken at `weight_bp`
/// (the live providers and `sluice simulate` both come here): during the
/// `baseline` it only measures the primary; otherwise the window joins
/// `gate`, the release's evidence, and every check is judged, with the
/// ceilings (and their `queries`) on the canary's traffic since the step
/// began.
pub fn judge_sequential(
    plan: &Plan,
    settings: &crate::gate::GateSettings,
    gate: &mut Option<GateState>,
    window: Window,
    weight_bp: u32,
    baseline: bool,
    queries: Vec<Result<f64, String>>,
) -> Analysis {
    let state = gate.get_or_insert_with(|| GateState::new(settings));
    if baseline {
        state.observe_baseline(settings, &window);
        return all_inconclusive(plan, "measuring the primary before the first step");
    }
    let arms = plan.strategy.arms(weight_bp);
    let window = arms.select(window);
    let mut analysis = if arms == crate::gate::Arms::Soak {
        state.observe_soak(settings, &window, weight_bp);
        state.soak_analysis(settings, plan.min_requests)
    } else {
        state.observe(settings, &window, weight_bp, arms);
        state.analysis(settings, plan.min_requests, arms)
    };
    if state.step_canary.requests >= plan.min_requests as f64 {
        analysis
            .checks
            .extend(ceiling_checks(plan, &state.step_canary, queries));
    }
    if window.canary_match.requests > 0.0 {
        analysis.ab = Some(AbTraffic {
            requests: window.canary_match.requests.round() as u64,
            success_rate: window.canary_match.success_rate(),
        });
    }
    analysis
}

pub fn ceiling_checks(
    plan: &Plan,
    step: &Arm,
    queries: Vec<Result<f64, String>>,
) -> Vec<CheckResult> {
    let mut checks = Vec::new();
    if let Some(min) = plan.success_rate_min {
        checks.push(match step.success_rate() {
            Some(v) => CheckResult::bounded("success-rate", v, Some(min), None, "%"),
            None => CheckResult::inconclusive(
                "success-rate",
                format!(">= {min}%"),
                "no canary requests at this step",
            ),
        });
    }
    for check in &plan.latency {
        let max = check.max.as_secs_f64();
        checks.push(match latency_reading(step, check.quantile, max) {
            Ok(v) => CheckResult::latency(&check.name(), v, max),
            Err(reason) => CheckResult::inconclusive(&check.name(), format!("<= {max}s"), reason),
        });
    }
    for (check, value) in plan.queries.iter().zip(queries) {
        checks.push(match value {
            Ok(v) => CheckResult::bounded(&check.name, v, check.min, check.max, ""),
            Err(reason) => CheckResult::inconclusive(&check.name, check.threshold(), reason),
        });
    }
    checks
}

/// Builds the checks of a tick from measured values. Below `min_requests`
/// every other check is Inconclusive too: too little traffic to judge.
pub fn judge(
    plan: &Plan,
    canary_requests: Option<u64>,
    success_rate: Result<f64, String>,
    latencies: Vec<Result<LatencyReading, String>>,
    queries: Vec<Result<f64, String>>,
) -> Analysis {
    let volume = request_volume_check(plan.min_requests, canary_requests);
    let too_few = volume.outcome != Outcome::Pass;
    let mut checks = vec![volume.clone()];
    let mut push = |check: CheckResult| {
        if too_few && check.outcome != Outcome::Inconclusive {
            checks.push(CheckResult {
                outcome: Outcome::Inconclusive,
                reason: format!("not judged: {}", volume.reason),
                ..check
            });
        } else {
            checks.push(check);
        }
    };
    if let Some(min) = plan.success_rate_min {
        push(match success_rate {
            Ok(v) => CheckResult::bounded("success-rate", v, Some(min), None, "%"),
            Err(reason) => CheckResult::inconclusive("success-rate", format!(">= {min}%"), reason),
        });
    }
    for (check, value) in plan.latency.iter().zip(latencies) {
        let max = check.max.as_secs_f64();
        push(match value {
            Ok(v) => CheckResult::latency(&check.name(), v, max),
            Err(reason) => CheckResult::inconclusive(&check.name(), format!("<= {max}s"), reason),
        });
    }
    for (check, value) in plan.queries.iter().zip(queries) {
        push(match value {
            Ok(v) => CheckResult::bounded(&check.name, v, check.min, check.max, ""),
            Err(reason) => CheckResult::inconclusive(&check.name, check.threshold(), reason),
        });
    }
    Analysis {
        canary_requests,
        checks,
        ab: None,
        promotable: None,
        against: None,
    }
}

pub fn all_inconclusive(plan: &Plan, reason: &str) -> Analysis {
    let n = plan.latency.len();
    let q = plan.queries.len();
    let mut a = judge(
        plan,
        None,
        Err(reason.to_string()),
        vec![Err(reason.to_string()); n],
        vec![Err(reason.to_string()); q],
    );
    for (i, check) in a.checks.iter_mut().enumerate() {
        check.reason = if i == 0 {
            reason.to_string()
        } else {
            format!("not judged: {reason}")
        };
    }
    a
}

// === impl ProxyProvider ===

pub struct ProxyProvider {
    client: HttpClient,
    /// For the web and Datadog checks, when not `client`.
    checks_client: Option<HttpClient>,
    /// One `/metrics` URL per proxy replica; each is diffed on its own.
    metrics_urls: Vec<String>,
    counters: Counters,
    /// When the counters were last read (a window's length).
    last_read: Option<std::time::Instant>,
    /// The web and Datadog checks' last readings (asked once an interval).
    readings: crate::external::Readings,
}

impl ProxyProvider {
    /// `admin` is the proxy's admin base URL, e.g. `http://127.0.0.1:9901`.
    pub fn new(admin: &str, route: &str) -> Self {
        Self {
            client: HttpClient::default(),
            checks_client: None,
            metrics_urls: vec![format!("{}/metrics", admin.trim_end_matches('/'))],
            counters: Counters::new(route),
            last_read: None,
            readings: Default::default(),
        }
    }

    /// Scrapes these admin base URLs (every proxy replica) from now on.
    /// Replicas seen before keep their baselines; new ones start one.
    pub fn set_targets(&mut self, admins: &[String]) {
        self.metrics_urls = admins
            .iter()
            .map(|a| format!("{}/metrics", a.trim_end_matches('/')))
            .collect();
    }

    /// Scrapes every replica and returns the traffic since the last scrape.
    /// On an error nothing is remembered, so the next window covers this one.
    pub async fn window(&mut self) -> Result<Window, String> {
        if self.metrics_urls.is_empty() {
            return Err("no proxy replica to read metrics from".into());
        }
        let mut scrapes = Vec::with_capacity(self.metrics_urls.len());
        for url in &self.metrics_urls {
            let answer = self
                .client
                .get(url, Duration::from_secs(5))
                .await
                .map_err(|e| format!("proxy metrics unreachable: {e}"))?;
            if !answer.status.is_success() {
                return Err(format!(
                    "proxy metrics at {} answered {}",
                    crate::http::shown_url(url),
                    answer.status
                ));
            }
            scrapes.push((url.clone(), Scrape::parse(&answer.text()).0));
        }
        let now = std::time::Instant::now();
        let mut window = self.counters.observe(&scrapes);
        window.seconds = self
            .last_read
            .map(|at| now.duration_since(at).as_secs_f64())
            .unwrap_or(0.0);
        self.last_read = Some(now);
        Ok(window)
    }

    pub async fn reset(&mut self) {
        if self.window().await.is_err() {
            self.counters.clear();
            self.last_read = None;
        }
    }

    pub async fn analyse(&mut self, plan: &Plan) -> Analysis {
        let had_baseline = self.counters.has_baseline();
        let window = match self.window().await {
            Ok(w) => w,
            Err(reason) => return all_inconclusive(plan, &reason),
        };
        if !had_baseline {
            return all_inconclusive(plan, "first scrape: no earlier counters to compare with");
        }
        analyse_window(plan, &window)
    }
}

/// The checks of one window of the weighted canary arm; A/B traffic shown apart.
pub fn analyse_window(plan: &Plan, window: &Window) -> Analysis {
    let canary = &window.canary;
    let success_rate = canary
        .success_rate()
        .ok_or_else(|| "no canary requests in this window".to_string());
    let latencies = plan
        .latency
        .iter()
        .map(|check| latency_reading(canary, check.quantile, check.max.as_secs_f64()))
        .collect();
    let queries = plan
        .queries
        .iter()
        .map(|_| Err("custom PromQL checks need the prometheus provider".to_string()))
        // (web and Datadog checks are read by `crate::external` over this.)
        .collect();
    let mut analysis = judge(
        plan,
        Some(canary.requests.round() as u64),
        success_rate,
        latencies,
        queries,
    );
    if window.canary_match.requests > 0.0 {
        analysis.ab = Some(AbTraffic {
            requests: window.canary_match.requests.round() as u64,
            success_rate: window.canary_match.success_rate(),
        });
    }
    analysis
}

/// The quantile of an arm, decided by counts: the `q` quantile is within
/// `max` (a bucket bound) iff at least `q` of the requests took `max` or less.
fn latency_reading(arm: &Arm, q: f64, max: f64) -> Result<LatencyReading, String> {
    let value = arm.quantile(q);
    if value.is_nan() {
        return Err("no latency observations in this window".to_string());
    }
    let total = arm.buckets.last().map(|b| b.1).unwrap_or(0.0);
    let within = arm
        .slower_than(max)
        .map(|slow| (total - slow) >= q * total - 1e-9 * total.max(1.0));
    Ok(LatencyReading { value, within })
}

// === impl PrometheusProvider ===

pub struct PrometheusProvider {
    client: HttpClient,
    /// For the web and Datadog checks, when not `client`.
    checks_client: Option<HttpClient>,
    base: String,
    route: String,
    /// In Kubernetes, the proxy's namespace: Prometheus attaches it to every
    /// series it scrapes there, and two apps of the same name in different
    /// namespaces must not mix.
    namespace: Option<String>,
    /// Which series hold the route's traffic (None: the proxy's own).
    template: Option<Box<RenderedTemplate>>,
    /// The smallest range used in `rate()`/`increase()`.
    pub window_floor: Duration,
    /// Wall-clock end of the last judged window (or of the last reset).
    last_end: Option<f64>,
    /// The raw counter values, per series, at `last_end`: the next window
    /// is the difference from these.
    last_values: Option<std::collections::HashMap<String, f64>>,
    /// The web and Datadog checks' last readings (asked once an interval).
    readings: crate::external::Readings,
}

impl PrometheusProvider {
    pub fn new(base: &str, route: &str) -> Self {
        Self {
            client: HttpClient::default(),
            checks_client: None,
            base: base.trim_end_matches('/').to_string(),
            route: route.to_string(),
            namespace: None,
            template: None,
            window_floor: Duration::from_secs(30),
            last_end: None,
            last_values: None,
            readings: Default::default(),
        }
    }

    /// Only series from `namespace` (the `namespace` target label).
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// Reads the route's traffic from the series `template` names (filled
    /// for `vars`) instead of the proxy's own. [`MetricsTemplate::Proxy`]
    /// keeps the proxy's.
    pub fn with_template(mut self, template: &MetricsTemplate, vars: &TemplateVars) -> Self {
        self.template = match template {
            MetricsTemplate::Proxy => None,
            other => other.series().map(|t| Box::new(t.render(vars))),
        };
        self
    }

    /// The instant queries whose samples make a window under a series
    /// template: (arm, kind, PromQL), the primary's first.
    pub fn series_queries(&self) -> Vec<(TemplateArm, SeriesKind, String)> {
        let Some(t) = &self.template else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (arm, value) in [
            (TemplateArm::Primary, &t.primary),
            (TemplateArm::Canary, &t.canary),
        ] {
            for kind in [
                SeriesKind::Requests,
                SeriesKind::Failures,
                SeriesKind::Buckets,
            ] {
                out.push((arm, kind, t.selector(kind, value)));
            }
        }
        out
    }

    /// The label matchers of this route's series: `route="…"` and, in
    /// Kubernetes, `namespace="…"`.
    pub fn matchers(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("route=\"{}\",namespace=\"{ns}\"", self.route),
            None => format!("route=\"{}\"", self.route),
        }
    }

    /// The next window starts now.
    pub fn reset(&mut self) {
        self.last_end = Some(crate::clock::wall_clock());
        self.last_values = None;
    }

    /// Fills `{{route}}`, `{{namespace}}`, `{{backend}}` and `{{interval}}`.
    pub fn render(&self, template: &str, window: &str) -> String {
        template
            .replace("{{route}}", &self.route)
            .replace("{{namespace}}", self.namespace.as_deref().unwrap_or(""))
            .replace("{{backend}}", "canary")
            .replace("{{interval}}", window)
    }

    /// One instant query, now; Err says why there is no usable number.
    pub async fn query(&self, promql: &str) -> Result<f64, String> {
        self.query_at(promql, None).await
    }

    /// Runs an instant query (at `at`, Unix seconds, when given) and
    /// returns its `data` object.
    async fn fetch(&self, promql: &str, at: Option<f64>) -> Result<serde_json::Value, String> {
        let mut url = format!(
            "{}/api/v1/query?query={}",
            self.base,
            encode_query_value(promql)
        );
        if let Some(t) = at {
            url.push_str(&format!("&time={t:.3}"));
        }
        let answer = self
            .client
            .get(&url, Duration::from_secs(5))
            .await
            .map_err(|e| {
                let why = match e {
                    crate::http::HttpError::Unreachable { reason, .. } => reason,
                    other => other.to_string(),
                };
                format!(
                    "prometheus unreachable at {}: {why}",
                    crate::http::shown_url(&self.base)
                )
            })?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| {
            format!(
                "prometheus answered {} with a body that is not JSON: {e}",
                answer.status
            )
        })?;
        if body["status"] != "success" {
            return Err(format!(
                "prometheus rejected the query: {}",
                body["error"].as_str().unwrap_or("unknown error")
            ));
        }
        Ok(body["data"].clone())
    }

    /// The samples of a vector query: labels and value.
    async fn vector_at(
        &self,
        promql: &str,
        at: f64,
    ) -> Result<Vec<(std::collections::BTreeMap<String, String>, f64)>, String> {
        let data = self.fetch(promql, Some(at)).await?;
        if data["resultType"] != "vector" {
            return Err(format!("expected a vector from `{promql}`"));
        }
        Ok(data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let value = r["value"][1].as_str().and_then(parse_prom_float)?;
                let labels = r["metric"]
                    .as_object()?
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                Some((labels, value))
            })
            .collect())
    }

    /// One instant query evaluated at `at` (Unix seconds) when given.
    pub async fn query_at(&self, promql: &str, at: Option<f64>) -> Result<f64, String> {
        let data = self.fetch(promql, at).await?;
        let value = match data["resultType"].as_str() {
            Some("vector") => {
                let result = data["result"].as_array().cloned().unwrap_or_default();
                match result.as_slice() {
                    [] => return Err("no data (empty result)".into()),
                    [one] => one["value"][1].as_str().and_then(parse_prom_float),
                    // Summing them, or taking one, would judge a number
                    // nobody asked for.
                    many => {
                        return Err(format!(
                            "the query gave {} series; a check needs one number: aggregate them (sum, max, avg)",
                            many.len()
                        ));
                    }
                }
            }
            Some("scalar") => data["result"][1].as_str().and_then(parse_prom_float),
            other => {
                return Err(format!(
                    "unexpected result type {other:?}; use a query that gives one number"
                ));
            }
        };
        match value {
            Some(v) if v.is_nan() => Err("the query gave NaN (no traffic in the window?)".into()),
            Some(v) => Ok(v),
            None => Err("the answer held no number".into()),
        }
    }

    /// The next window to judge: its end (now) and its range for PromQL, or
    /// why it is too short yet.
    fn span(&self, plan: &Plan) -> Result<(f64, String), String> {
        let now = crate::clock::wall_clock();
        let floor = self.window_floor.as_secs_f64();
        let start = self
            .last_end
            .unwrap_or(now - plan.tick_interval().as_secs_f64().max(floor));
        let span = now - start;
        if span + 0.05 < floor {
            return Err(format!(
                "this window has {span:.1}s of the {floor}s Prometheus needs (--prometheus-window); it is judged with the next tick"
            ));
        }
        Ok((now, format!("{}ms", (span * 1000.0).round() as u64)))
    }

    /// The raw values of this route's request and bucket counters at `at`
    /// (Unix seconds): each series' latest sample then, with all its labels
    /// (so every proxy replica is its own series).
    async fn counters_at(&self, at: f64) -> Result<Vec<crate::scrape::Sample>, String> {
        if self.template.is_some() {
            let mut samples = Vec::new();
            for (arm, kind, promql) in self.series_queries() {
                for (mut labels, value) in self.vector_at(&promql, at).await? {
                    labels.insert(ARM_LABEL.into(), arm.as_str().into());
                    samples.push(crate::scrape::Sample {
                        name: kind.as_str().to_string(),
                        labels,
                        value,
                    });
                }
            }
            return Ok(samples);
        }
        let m = self.matchers();
        let mut samples = Vec::new();
        for name in [
            "sluice_requests_total",
            "sluice_request_duration_seconds_bucket",
        ] {
            for (labels, value) in self.vector_at(&format!("{name}{{{m}}}"), at).await? {
                samples.push(crate::scrape::Sample {
                    name: name.to_string(),
                    labels,
                    value,
                });
            }
        }
        Ok(samples)
    }

    /// The route's traffic per arm over the next window (the sequential
    /// gate's input), and the custom queries over the same window.
    ///
    /// The window is the difference of the raw counters at its two ends,
    /// per series (a series that went down was reset and counts from 0; a
    /// new one from 0), never `increase()`, which extrapolates each window
    /// to its edges and so over- or under-counts every window by a share of
    /// a scrape. Consecutive windows share their ends, so every request is
    /// counted once, in the window whose end first saw it.
    pub async fn window(
        &mut self,
        plan: &Plan,
    ) -> Result<(Window, Vec<Result<f64, String>>), String> {
        let (now, w) = self.span(plan)?;
        let start = self.last_end;
        let before = match self.last_values.take() {
            Some(values) => values,
            None => match start {
                Some(t) => self
                    .counters_at(t)
                    .await?
                    .iter()
                    .map(|s| (crate::counters::series_key(s), s.value))
                    .collect(),
                None => std::collections::HashMap::new(),
            },
        };
        let after = self.counters_at(now).await;
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                self.last_values = Some(before);
                return Err(e);
            }
        };
        let mut window = Window::default();
        let mut values = std::collections::HashMap::new();
        for sample in &after {
            let key = crate::counters::series_key(sample);
            if start.is_some() {
                let delta = crate::counters::counter_delta(before.get(&key).copied(), sample.value);
                match &self.template {
                    Some(t) => add_templated(&mut window, t, sample, delta.max(0.0)),
                    None => crate::counters::add_sample(&mut window, sample, delta.max(0.0)),
                }
            }
            values.insert(key, sample.value);
        }
        window.finish();
        if self.template.is_some() {
            // Two counters read at one instant may disagree by a request in
            // flight: failures stay a subset of requests.
            for arm in [&mut window.stable, &mut window.canary] {
                arm.failures = arm.failures.min(arm.requests);
            }
        }
        window.seconds = start.map(|t| now - t).unwrap_or(0.0);
        let mut queries = Vec::new();
        for check in &plan.queries {
            if crate::external::is_external(check) {
                queries.push(Err("read outside Prometheus".to_string()));
                continue;
            }
            queries.push(
                self.query_at(&self.render(&check.query, &w), Some(now))
                    .await,
            );
        }
        self.last_end = Some(now);
        self.last_values = Some(values);
        if start.is_none() {
            return Err(
                "first read of Prometheus: it sets the counters the next window is measured from"
                    .into(),
            );
        }
        Ok((window, queries))
    }

    pub async fn analyse(&mut self, plan: &Plan) -> Analysis {
        let (now, w) = match self.span(plan) {
            Ok(span) => span,
            Err(reason) => return all_inconclusive(plan, &reason),
        };
        let at = Some(now);
        if let Some(t) = self.template.clone() {
            return self.analyse_templated(plan, &t, now, &w).await;
        }
        let selector = format!(
            "{},backend=\"canary\",decision=~\"weight|affinity\"",
            self.matchers()
        );
        let requests = self
            .query_at(
                &format!("sum(increase(sluice_requests_total{{{selector}}}[{w}]))"),
                at,
            )
            .await;
        if let Err(reason) = &requests
            && reason.starts_with("prometheus unreachable")
        {
            // Not judged: the next tick judges this window too.
            return all_inconclusive(plan, reason);
        }
        self.last_end = Some(now);
        let success = self
            .query_at(&format!(
                "100 * (sum(rate(sluice_requests_total{{{selector},classification=\"success\"}}[{w}])) or vector(0)) / sum(rate(sluice_requests_total{{{selector}}}[{w}]))"
            ), at)
            .await;
        let mut latencies = Vec::new();
        for check in &plan.latency {
            latencies.push(
                self.query_at(&format!(
                    "histogram_quantile({}, sum by (le) (rate(sluice_request_duration_seconds_bucket{{{selector}}}[{w}])))",
                    check.quantile
                ), at)
                .await
                .map(LatencyReading::from),
            );
        }
        let mut queries = Vec::new();
        for check in &plan.queries {
            if crate::external::is_external(check) {
                queries.push(Err("read outside Prometheus".to_string()));
                continue;
            }
            queries.push(self.query_at(&self.render(&check.query, &w), at).await);
        }
        // No canary series at all means no canary request was ever counted.
        let canary_requests = match requests {
            Ok(v) => Some(v.max(0.0).round() as u64),
            Err(reason) if reason.starts_with("no data") => Some(0),
            Err(_) => None,
        };
        judge(plan, canary_requests, success, latencies, queries)
    }
}

impl PrometheusProvider {
    /// The threshold gate's checks under a series template: the canary
    /// arm's requests, its failure share and its duration quantiles over
    /// the window, by `increase()`/`rate()` as the proxy's series are.
    async fn analyse_templated(
        &mut self,
        plan: &Plan,
        t: &RenderedTemplate,
        now: f64,
        w: &str,
    ) -> Analysis {
        let at = Some(now);
        let requests_sel = t.selector(SeriesKind::Requests, &t.canary);
        let failures_sel = t.selector(SeriesKind::Failures, &t.canary);
        let buckets_sel = t.selector(SeriesKind::Buckets, &t.canary);
        let requests = self
            .query_at(&format!("sum(increase({requests_sel}[{w}]))"), at)
            .await;
        if let Err(reason) = &requests
            && reason.starts_with("prometheus unreachable")
        {
            return all_inconclusive(plan, reason);
        }
        self.last_end = Some(now);
        let success = self
            .query_at(
                &format!(
                    "100 * (1 - (sum(rate({failures_sel}[{w}])) or vector(0)) / sum(rate({requests_sel}[{w}])))"
                ),
                at,
            )
            .await;
        let mut latencies = Vec::new();
        for check in &plan.latency {
            latencies.push(
                self.query_at(
                    &format!(
                        "histogram_quantile({}, sum by (le) (rate({buckets_sel}[{w}]))){}",
                        check.quantile,
                        t.duration_unit.to_seconds_suffix()
                    ),
                    at,
                )
                .await
                .map(LatencyReading::from),
            );
        }
        let mut queries = Vec::new();
        for check in &plan.queries {
            if crate::external::is_external(check) {
                queries.push(Err("read outside Prometheus".to_string()));
                continue;
            }
            queries.push(self.query_at(&self.render(&check.query, w), at).await);
        }
        let canary_requests = match requests {
            Ok(v) => Some(v.max(0.0).round() as u64),
            Err(reason) if reason.starts_with("no data") => Some(0),
            Err(_) => None,
        };
        judge(plan, canary_requests, success, latencies, queries)
    }
}

// === metrics templates ===

/// The label the provider adds to a templated sample: which arm's query
/// returned it (so a series' identity includes its arm).
const ARM_LABEL: &str = "__sluice_arm";

/// Which series the Prometheus provider reads a route's traffic from
/// (annotation `sluice.dev/metrics-template`).
///
/// - `proxy` (default): Sluice's proxy's `sluice_requests_total` and
///   `sluice_request_duration_seconds_bucket`, by `route` and `backend`.
/// - `envoy-gateway`: Envoy's cluster statistics as Envoy's
///   `/stats/prometheus` exposes them: requests
///   `envoy_cluster_upstream_rq_total`, failures
///   `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}`,
///   durations `envoy_cluster_upstream_rq_time_bucket` (milliseconds). The
///   arms are told apart by `envoy_cluster_name`. Envoy Gateway names a
///   rule's cluster `httproute/NS/NAME/rule/N`, and when it gives each
///   backendRef a cluster of its own (it does when a backendRef of the
///   rule has filters) `httproute/NS/NAME/rule/N/backend/I`, `I` the
///   backendRef's index. Sluice writes every managed rule as exactly two
///   backendRefs, `app-primary` first and `app-canary` second, so the
///   primary is `…/rule/N/backend/0` and the canary `…/rule/N/backend/1`,
///   over every managed rule `N`. A rule served by one shared cluster (no
///   `/backend/I`) cannot be split by arm from Envoy's statistics: the gate
///   sees no traffic of either arm and stays Inconclusive (give the app's
///   backendRef a filter, e.g. a `ResponseHeaderModifier`, which Sluice
///   keeps on both copies). Needs `sluice.dev/router: gateway-api`.
/// - `istio`: the destination sidecars' `istio_requests_total` and
///   `istio_request_duration_milliseconds_bucket`, `reporter="destination"`
///   in the app's namespace; the arms are the destination Services
///   `destination_service_name="app-primary"` and `"app-canary"` (the pods
///   of both need sidecars); failures are `response_code=~"5.."`.
/// - `configmap:NAME/KEY`: a [`SeriesTemplate`] in YAML under KEY of the
///   ConfigMap NAME in the Deployment's namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsTemplate {
    Proxy,
    EnvoyGateway,
    Istio,
    /// Not read yet: the ConfigMap's name and key.
    ConfigMap {
        name: String,
        key: String,
    },
    /// Read from a ConfigMap.
    Custom(SeriesTemplate),
}

impl MetricsTemplate {
    pub const ALLOWED: &'static str = "proxy, envoy-gateway, istio, or configmap:NAME/KEY (a ConfigMap in the Deployment's namespace and its key)";

    /// Parses the annotation's value; Err says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "proxy" => Ok(MetricsTemplate::Proxy),
            "envoy-gateway" => Ok(MetricsTemplate::EnvoyGateway),
            "istio" => Ok(MetricsTemplate::Istio),
            v => {
                let Some(rest) = v.strip_prefix("configmap:") else {
                    return Err("unknown template".into());
                };
                let Some((name, key)) = rest.split_once('/') else {
                    return Err("a ConfigMap template needs NAME/KEY".into());
                };
                if !is_dns_label(name) {
                    return Err(format!("`{name}` is not a ConfigMap name"));
                }
                if key.is_empty()
                    || key.len() > 253
                    || !key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(format!("`{key}` is not a ConfigMap key"));
                }
                Ok(MetricsTemplate::ConfigMap {
                    name: name.to_string(),
                    key: key.to_string(),
                })
            }
        }
    }

    /// The series template (None for the proxy's own series and for a
    /// ConfigMap not read yet).
    pub fn series(&self) -> Option<SeriesTemplate> {
        match self {
            MetricsTemplate::Proxy | MetricsTemplate::ConfigMap { .. } => None,
            MetricsTemplate::EnvoyGateway => Some(SeriesTemplate {
                requests: "envoy_cluster_upstream_rq_total".into(),
                failures: "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\"}".into(),
                duration: "envoy_cluster_upstream_rq_time_bucket".into(),
                duration_unit: DurationUnit::Milliseconds,
                arm_label: "envoy_cluster_name".into(),
                primary: "httproute/{{namespace}}/{{httproute}}/rule/[0-9]+/backend/0".into(),
                canary: "httproute/{{namespace}}/{{httproute}}/rule/[0-9]+/backend/1".into(),
            }),
            MetricsTemplate::Istio => {
                let m = "reporter=\"destination\",destination_service_namespace=\"{{namespace}}\"";
                Some(SeriesTemplate {
                    requests: format!("istio_requests_total{{{m}}}"),
                    failures: format!("istio_requests_total{{{m},response_code=~\"5..\"}}"),
                    duration: format!("istio_request_duration_milliseconds_bucket{{{m}}}"),
                    duration_unit: DurationUnit::Milliseconds,
                    arm_label: "destination_service_name".into(),
                    primary: "{{primary}}".into(),
                    canary: "{{canary}}".into(),
                })
            }
            MetricsTemplate::Custom(t) => Some(t.clone()),
        }
    }
}

fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

/// A custom metrics template, the YAML under a ConfigMap key:
///
/// ```yaml
/// # Series selectors: a metric name, optionally with PromQL label matchers.
/// requests: http_requests_total{job="web",namespace="{{namespace}}"}
/// failures: http_requests_total{job="web",namespace="{{namespace}}",code=~"5.."}
/// duration: http_request_duration_seconds_bucket{job="web",namespace="{{namespace}}"}
/// durationUnit: seconds          # or milliseconds (the histogram's `le` unit)
/// armLabel: service              # the label that tells the arms apart
/// primary: "{{primary}}"         # its value (a PromQL regex, fully matched)
/// canary: "{{canary}}"           #   for each arm
/// ```
///
/// `requests` counts every request, `failures` the failed ones among them
/// (a counter too, a subset of `requests`), `duration` is a cumulative
/// histogram's `_bucket` series. In every field `{{namespace}}` is the
/// Deployment's namespace, `{{app}}` its name, `{{primary}}` and
/// `{{canary}}` the Services `app-primary` and `app-canary`, and
/// `{{httproute}}` the `sluice.dev/httproute` (empty without one).
/// Unknown keys are refused.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeriesTemplate {
    pub requests: String,
    pub failures: String,
    pub duration: String,
    #[serde(default)]
    pub duration_unit: DurationUnit,
    pub arm_label: String,
    pub primary: String,
    pub canary: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurationUnit {
    #[default]
    Seconds,
    Milliseconds,
}

impl DurationUnit {
    fn divisor(self) -> f64 {
        match self {
            DurationUnit::Seconds => 1.0,
            DurationUnit::Milliseconds => 1000.0,
        }
    }

    fn to_seconds_suffix(self) -> &'static str {
        match self {
            DurationUnit::Seconds => "",
            DurationUnit::Milliseconds => " / 1000",
        }
    }
}

/// What a template's placeholders are filled with.
#[derive(Clone, Debug, Default)]
pub struct TemplateVars {
    pub namespace: String,
    pub app: String,
    pub httproute: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateArm {
    Primary,
    Canary,
}

impl TemplateArm {
    fn as_str(self) -> &'static str {
        match self {
            TemplateArm::Primary => "primary",
            TemplateArm::Canary => "canary",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesKind {
    Requests,
    Failures,
    Buckets,
}

impl SeriesKind {
    fn as_str(self) -> &'static str {
        match self {
            SeriesKind::Requests => "requests",
            SeriesKind::Failures => "failures",
            SeriesKind::Buckets => "buckets",
        }
    }
}

impl SeriesTemplate {
    /// Parses the YAML of a ConfigMap template; `origin` names where it is
    /// in errors. Every selector must be a metric name with, optionally,
    /// `{label matchers}`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let t: SeriesTemplate =
            serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        for (field, value) in [
            ("requests", &t.requests),
            ("failures", &t.failures),
            ("duration", &t.duration),
        ] {
            split_selector(value).map_err(|e| format!("{origin}: {field}: {e}"))?;
        }
        let label_ok = |l: &str| {
            l.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !label_ok(&t.arm_label) {
            return Err(format!(
                "{origin}: armLabel: `{}` is not a Prometheus label name",
                t.arm_label
            ));
        }
        for (field, value) in [("primary", &t.primary), ("canary", &t.canary)] {
            if value.trim().is_empty() || value.contains(['"', '\n']) {
                return Err(format!(
                    "{origin}: {field}: `{value}` must be a non-empty label value regex without quotes"
                ));
            }
        }
        if t.primary == t.canary {
            return Err(format!(
                "{origin}: primary and canary are both `{}`: the arms must differ",
                t.primary
            ));
        }
        Ok(t)
    }

    /// The template with its placeholders filled.
    pub fn render(&self, vars: &TemplateVars) -> RenderedTemplate {
        // Filled into PromQL regexes and strings: a `.` (the only regex
        // character a Kubernetes name can hold) is matched literally.
        let esc = |v: &str| v.replace('.', "\\\\.");
        let fill = |text: &str| {
            text.replace("{{namespace}}", &esc(&vars.namespace))
                .replace("{{app}}", &esc(&vars.app))
                .replace("{{primary}}", &esc(&format!("{}-primary", vars.app)))
                .replace("{{canary}}", &esc(&format!("{}-canary", vars.app)))
                .replace("{{httproute}}", &esc(&vars.httproute))
        };
        let sel = |text: &str| {
            let (name, matchers) = split_selector(text).unwrap_or((text.trim(), ""));
            (name.to_string(), fill(matchers))
        };
        RenderedTemplate {
            requests: sel(&self.requests),
            failures: sel(&self.failures),
            duration: sel(&self.duration),
            duration_unit: self.duration_unit,
            arm_label: self.arm_label.clone(),
            primary: fill(&self.primary),
            canary: fill(&self.canary),
        }
    }
}

/// `name{matchers}` as (name, matchers without braces).
fn split_selector(text: &str) -> Result<(&str, &str), String> {
    let text = text.trim();
    let (name, matchers) = match text.split_once('{') {
        None => (text, ""),
        Some((name, rest)) => match rest.strip_suffix('}') {
            Some(m) => (name.trim(), m.trim()),
            None => return Err(format!("`{text}`: the label matchers must end with `}}`")),
        },
    };
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !ok {
        return Err(format!("`{text}` does not start with a metric name"));
    }
    Ok((name, matchers.trim_end_matches(',')))
}

/// A [`SeriesTemplate`] filled for one release.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedTemplate {
    requests: (String, String),
    failures: (String, String),
    duration: (String, String),
    duration_unit: DurationUnit,
    arm_label: String,
    primary: String,
    canary: String,
}

impl RenderedTemplate {
    /// The selector of one kind of series of the arm whose label value
    /// matches `arm`.
    fn selector(&self, kind: SeriesKind, arm: &str) -> String {
        let (name, matchers) = match kind {
            SeriesKind::Requests => &self.requests,
            SeriesKind::Failures => &self.failures,
            SeriesKind::Buckets => &self.duration,
        };
        let sep = if matchers.is_empty() { "" } else { "," };
        format!("{name}{{{matchers}{sep}{}=~\"{arm}\"}}", self.arm_label)
    }
}

/// Adds one templated sample's increase to its arm of the window.
fn add_templated(window: &mut Window, t: &RenderedTemplate, s: &crate::scrape::Sample, delta: f64) {
    let arm = match s.labels.get(ARM_LABEL).map(String::as_str) {
        Some("primary") => &mut window.stable,
        Some("canary") => &mut window.canary,
        _ => return,
    };
    match s.name.as_str() {
        "requests" => arm.requests += delta,
        "failures" => arm.failures += delta,
        "buckets" => {
            if let Some(le) = s
                .labels
                .get("le")
                .and_then(|l| crate::counters::parse_le(l))
            {
                arm.add_bucket(le / t.duration_unit.divisor(), delta);
            }
        }
        _ => {}
    }
}

fn parse_prom_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Prometheus URL's user info (its Basic auth) is never in a
    /// failed query's reason, which reaches statuses, Events and notes.
    #[tokio::test]
    async fn an_unreachable_prometheus_is_named_without_its_password() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let p = PrometheusProvider::new(&format!("http://sluice:S3cretPw@127.0.0.1:{port}"), "web");
        let e = p.fetch("up", None).await.unwrap_err();
        assert!(e.contains("prometheus unreachable"), "{e}");
        assert!(!e.contains("S3cretPw"), "{e}");
    }

    #[test]
    fn too_few_requests_make_every_check_inconclusive() {
        let plan = Plan::threshold();
        let a = judge(&plan, Some(3), Ok(50.0), vec![Ok(0.1.into())], vec![]);
        assert_eq!(a.verdict(), Outcome::Inconclusive);
        assert!(a.checks.iter().all(|c| c.outcome == Outcome::Inconclusive));
        assert!(
            a.summary().contains("only 3 canary requests"),
            "{}",
            a.summary()
        );
    }

    #[test]
    fn enough_requests_judge_each_check() {
        let plan = Plan::threshold();
        let a = judge(&plan, Some(100), Ok(92.0), vec![Ok(0.1.into())], vec![]);
        assert_eq!(a.verdict(), Outcome::Fail);
        assert!(
            a.summary().contains("success-rate: 92.00% is below >= 99%"),
            "{}",
            a.summary()
        );
        let a = judge(&plan, Some(100), Ok(100.0), vec![Ok(0.9.into())], vec![]);
        assert!(
            a.summary().contains("p99: 900ms is above the limit"),
            "{}",
            a.summary()
        );
        let a = judge(&plan, Some(100), Ok(100.0), vec![Ok(0.1.into())], vec![]);
        assert_eq!(a.verdict(), Outcome::Pass);
    }

    fn vars() -> TemplateVars {
        TemplateVars {
            namespace: "shop".into(),
            app: "web".into(),
            httproute: "web.v1".into(),
        }
    }

    fn queries(t: &MetricsTemplate) -> Vec<String> {
        PrometheusProvider::new("http://127.0.0.1:9090", "web")
            .in_namespace("shop")
            .with_template(t, &vars())
            .series_queries()
            .into_iter()
            .map(|(_, _, q)| q)
            .collect()
    }

    #[test]
    fn the_proxy_template_keeps_the_proxys_own_series() {
        assert!(queries(&MetricsTemplate::Proxy).is_empty());
        assert_eq!(
            MetricsTemplate::parse("proxy").unwrap(),
            MetricsTemplate::Proxy
        );
    }

    #[test]
    fn envoy_gateway_queries_tell_the_arms_apart_by_per_backend_cluster() {
        let c = |i: u32| {
            format!("envoy_cluster_name=~\"httproute/shop/web\\\\.v1/rule/[0-9]+/backend/{i}\"")
        };
        assert_eq!(
            queries(&MetricsTemplate::parse("envoy-gateway").unwrap()),
            vec![
                format!("envoy_cluster_upstream_rq_total{{{}}}", c(0)),
                format!(
                    "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",{}}}",
                    c(0)
                ),
                format!("envoy_cluster_upstream_rq_time_bucket{{{}}}", c(0)),
                format!("envoy_cluster_upstream_rq_total{{{}}}", c(1)),
                format!(
                    "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",{}}}",
                    c(1)
                ),
                format!("envoy_cluster_upstream_rq_time_bucket{{{}}}", c(1)),
            ]
        );
    }

    #[test]
    fn istio_queries_read_the_destination_services() {
        let m = "reporter=\"destination\",destination_service_namespace=\"shop\"";
        let q = queries(&MetricsTemplate::Istio);
        assert_eq!(
            q[0],
            format!("istio_requests_total{{{m},destination_service_name=~\"web-primary\"}}")
        );
        assert_eq!(
            q[4],
            format!(
                "istio_requests_total{{{m},response_code=~\"5..\",destination_service_name=~\"web-canary\"}}"
            )
        );
        assert_eq!(
            q[5],
            format!(
                "istio_request_duration_milliseconds_bucket{{{m},destination_service_name=~\"web-canary\"}}"
            )
        );
    }

    #[test]
    fn a_custom_template_names_its_series_label_and_arms() {
        let text = "requests: http_requests_total{job=\"api\",namespace=\"{{namespace}}\"}\n\
                    failures: http_requests_total{job=\"api\",code=~\"5..\"}\n\
                    duration: http_request_duration_seconds_bucket\n\
                    armLabel: service\n\
                    primary: \"{{primary}}\"\n\
                    canary: \"{{app}}-(canary|next)\"\n";
        let t = SeriesTemplate::parse(text, "cm").unwrap();
        assert_eq!(t.duration_unit, DurationUnit::Seconds);
        assert_eq!(
            queries(&MetricsTemplate::Custom(t)),
            vec![
                "http_requests_total{job=\"api\",namespace=\"shop\",service=~\"web-primary\"}",
                "http_requests_total{job=\"api\",code=~\"5..\",service=~\"web-primary\"}",
                "http_request_duration_seconds_bucket{service=~\"web-primary\"}",
                "http_requests_total{job=\"api\",namespace=\"shop\",service=~\"web-(canary|next)\"}",
                "http_requests_total{job=\"api\",code=~\"5..\",service=~\"web-(canary|next)\"}",
                "http_request_duration_seconds_bucket{service=~\"web-(canary|next)\"}",
            ]
        );
    }

    #[test]
    fn bad_custom_templates_are_refused_saying_where() {
        let base = "requests: a_total\nfailures: a_total{code=\"500\"}\nduration: a_bucket\narmLabel: svc\nprimary: p\ncanary: c\n";
        assert!(SeriesTemplate::parse(base, "cm").is_ok());
        for (text, want) in [
            (
                base.replace("armLabel: svc", "armLabel: 9svc"),
                "cm: armLabel: `9svc` is not a Prometheus label name",
            ),
            (
                base.replace("requests: a_total", "requests: 'a_total{x=\"1\"'"),
                "cm: requests: ",
            ),
            (
                base.replace("duration: a_bucket", "duration: '{le=\"1\"}'"),
                "cm: duration: `{le=\"1\"}` does not start with a metric name",
            ),
            (
                base.replace("canary: c", "canary: p"),
                "the arms must differ",
            ),
            (
                base.replace("canary: c", "canary: c\ncolour: red"),
                "unknown field `colour`",
            ),
            (base.replace("canary: c\n", ""), "missing field `canary`"),
            (
                format!("{base}durationUnit: minutes\n"),
                "unknown variant `minutes`",
            ),
        ] {
            let e = SeriesTemplate::parse(&text, "cm").unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        for (value, want) in [
            ("linkerd", "unknown template"),
            ("configmap:t", "needs NAME/KEY"),
            ("configmap:T/k", "`T` is not a ConfigMap name"),
            ("configmap:t/a/b", "`a/b` is not a ConfigMap key"),
            ("configmap:t/", "`` is not a ConfigMap key"),
        ] {
            assert!(
                MetricsTemplate::parse(value).unwrap_err().contains(want),
                "{value}"
            );
        }
        assert_eq!(
            MetricsTemplate::parse("configmap:tpl/envoy.yaml").unwrap(),
            MetricsTemplate::ConfigMap {
                name: "tpl".into(),
                key: "envoy.yaml".into()
            }
        );
    }

    #[test]
    fn templated_samples_fill_their_arm_in_seconds() {
        let t = MetricsTemplate::EnvoyGateway
            .series()
            .unwrap()
            .render(&vars());
        let sample = |kind: &str, arm: &str, le: Option<&str>| crate::scrape::Sample {
            name: kind.into(),
            labels: [(ARM_LABEL.to_string(), arm.to_string())]
                .into_iter()
                .chain(le.map(|l| ("le".to_string(), l.to_string())))
                .collect(),
            value: 0.0,
        };
        let mut w = Window::default();
        add_templated(&mut w, &t, &sample("requests", "canary", None), 10.0);
        add_templated(&mut w, &t, &sample("failures", "canary", None), 2.0);
        add_templated(&mut w, &t, &sample("requests", "primary", None), 90.0);
        add_templated(&mut w, &t, &sample("buckets", "canary", Some("250")), 8.0);
        add_templated(&mut w, &t, &sample("buckets", "canary", Some("+Inf")), 10.0);
        add_templated(&mut w, &t, &sample("requests", "other", None), 5.0);
        w.finish();
        assert_eq!((w.canary.requests, w.canary.failures), (10.0, 2.0));
        assert_eq!((w.stable.requests, w.stable.failures), (90.0, 0.0));
        assert_eq!(w.canary.buckets, vec![(0.25, 8.0), (f64::INFINITY, 10.0)]);
        assert_eq!(w.canary.slower_than(0.25), Some(2.0));
    }

    #[test]
    fn templates_are_filled() {
        let p = PrometheusProvider::new("http://127.0.0.1:9090", "web");
        assert_eq!(
            p.render(
                "rate(x{route=\"{{route}}\",backend=\"{{backend}}\"}[{{interval}}])",
                "30s"
            ),
            "rate(x{route=\"web\",backend=\"canary\"}[30s])"
        );
    }

    /// A Prometheus on 127.0.0.1 that answers every query with `result`
    /// (a vector), for `answers` connections.
    async fn prometheus_answering(result: &'static str, answers: usize) -> String {
        let (url, _) = crate::http::test_server(answers, move |_| {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#
            );
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .await;
        url
    }

    /// A check's query that gives several series is not summed into a
    /// number nobody asked for (99.9 and 40 are not 139.9): it says why.
    #[tokio::test]
    async fn a_query_with_several_series_is_no_number() {
        let two = r#"[{"metric":{"pod":"a"},"value":[1,"99.9"]},{"metric":{"pod":"b"},"value":[1,"40"]}]"#;
        let url = prometheus_answering(two, 1).await;
        let err = PrometheusProvider::new(&url, "web")
            .query("success_by_pod")
            .await
            .unwrap_err();
        assert!(err.contains("the query gave 2 series"), "{err}");
        assert!(err.contains("aggregate"), "{err}");
        let one = r#"[{"metric":{},"value":[1,"99.9"]}]"#;
        let url = prometheus_answering(one, 1).await;
        let value = PrometheusProvider::new(&url, "web")
            .query("sum(x)")
            .await
            .unwrap();
        assert_eq!(value, 99.9);
        let inf = r#"[{"metric":{},"value":[1,"+Inf"]}]"#;
        let url = prometheus_answering(inf, 1).await;
        let value = PrometheusProvider::new(&url, "web")
            .query("q")
            .await
            .unwrap();
        assert_eq!(value, f64::INFINITY);
    }

    /// Under the sequential gate the provider ticks on every scrape, but a
    /// web check (here a POST, which may have side effects) is called once
    /// an interval: five scrapes in a row make one call, and each tick
    /// judges its value. A weight change (the provider's reset) asks again.
    #[tokio::test]
    async fn a_web_check_is_called_once_an_interval_not_every_scrape() {
        let empty = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (admin, _) = crate::http::test_server(20, move |_| empty.as_bytes().to_vec()).await;
        let (web, calls) = crate::http::test_server(20, |_| {
            let body = r#"{"v": 0.5}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .await;
        let yaml = format!(
            "- {{name: conv, provider: web, method: POST, body: '{{}}', url: '{web}/conv', json_path: '$.v', min: 0.2}}\n"
        );
        let plan = Plan {
            queries: crate::plan::parse_checks(&yaml, "test").unwrap(),
            ..Plan::default()
        };
        assert!(plan.is_sequential() && plan.interval >= Duration::from_secs(60));
        let mut provider = Provider::Proxy(ProxyProvider::new(&admin, "web"));
        let mut gate = None;
        let calls_made = || calls.lock().unwrap().len();
        for scrape in 0..5 {
            let analysis = provider.tick(&plan, &mut gate, 1000, false).await;
            let check = analysis.checks.iter().find(|c| c.name == "conv");
            assert_eq!(check.and_then(|c| c.value), Some(0.5), "scrape {scrape}");
        }
        assert_eq!(calls_made(), 1, "the web check was called every scrape");
        provider.reset().await;
        provider.tick(&plan, &mut gate, 2000, false).await;
        assert_eq!(calls_made(), 2, "a new step did not ask again");
    }
}
