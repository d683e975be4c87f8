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

    /// Starts a fresh measurement window (after the weight changed).
    pub async fn reset(&mut self) {
        match self {
            Provider::Proxy(p) => p.reset().await,
            Provider::Prometheus(p) => p.reset(),
            Provider::Scripted(_) | Provider::Windows(_) => {}
        }
    }

    pub async fn analyse(&mut self, plan: &Plan) -> Analysis {
        let mut analysis = match self {
            Provider::Proxy(p) => p.analyse(plan).await,
            Provider::Prometheus(p) => p.analyse(plan).await,
            Provider::Scripted(next) => return next(),
            Provider::Windows(next) => analyse_window(plan, &next(0)),
        };
        let http = self.checks_http();
        crate::external::overlay(plan, &mut analysis, plan.interval, &http).await;
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
            let http = self.checks_http();
            crate::external::overlay(plan, &mut analysis, plan.interval, &http).await;
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
    let arms = crate::gate::Arms::of(&plan.strategy, weight_bp);
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
    let volume = request_volume_check(plan, canary_requests);
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
                return Err(format!("proxy metrics at {url} answered {}", answer.status));
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
    /// The smallest range used in `rate()`/`increase()`.
    pub window_floor: Duration,
    /// Wall-clock end of the last judged window (or of the last reset).
    last_end: Option<f64>,
    /// The raw counter values, per series, at `last_end`: the next window
    /// is the difference from these.
    last_values: Option<std::collections::HashMap<String, f64>>,
}

impl PrometheusProvider {
    pub fn new(base: &str, route: &str) -> Self {
        Self {
            client: HttpClient::default(),
            checks_client: None,
            base: base.trim_end_matches('/').to_string(),
            route: route.to_string(),
            namespace: None,
            window_floor: Duration::from_secs(30),
            last_end: None,
            last_values: None,
        }
    }

    /// Only series from `namespace` (the `namespace` target label).
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
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
        self.last_end = Some(crate::runner::wall_clock());
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
                format!("prometheus unreachable at {}: {why}", self.base)
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
                if result.is_empty() {
                    return Err("no data (empty result)".into());
                }
                result
                    .iter()
                    .map(|r| r["value"][1].as_str().and_then(parse_prom_float))
                    .try_fold(0.0, |acc, v| v.map(|v| acc + v))
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
        let now = crate::runner::wall_clock();
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
                crate::counters::add_sample(&mut window, sample, delta.max(0.0));
            }
            values.insert(key, sample.value);
        }
        window.finish();
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
}
