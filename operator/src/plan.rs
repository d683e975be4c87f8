//! The release plan: how far and how fast the weight moves, and the evidence
//! each step needs. Every mode (`rollout`, `demo`, `kube`) builds one of
//! these from its own inputs (flags, annotations), with the same parsers, so
//! the same text means the same thing everywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_proxy::config::{WEIGHT_SCALE_BP, format_duration, parse_duration, percent_to_bp};

/// One latency gate, e.g. `p95<=500ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyCheck {
    /// 0 < quantile < 1, e.g. 0.95.
    pub quantile: f64,
    pub max: Duration,
}

impl LatencyCheck {
    pub fn name(&self) -> String {
        format!("p{}", trim_float(self.quantile * 100.0))
    }

    pub fn describe(&self) -> String {
        format!("{}<={}", self.name(), format_duration(self.max))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A user check with bounds: a PromQL query (which may use `{{route}}`,
/// `{{backend}}` and `{{interval}}`), a number read from any JSON API, or a
/// Datadog metrics query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCheck {
    pub name: String,
    /// Where the number comes from: `prometheus` (PromQL, the default),
    /// `web` (any JSON API) or `datadog` (see `crate::external`).
    #[serde(default)]
    pub provider: QueryProvider,
    /// PromQL, or a Datadog metrics query.
    #[serde(default)]
    pub query: String,
    /// `web`: the URL to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `web`: `GET` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `web`: the JSON body of a POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `web`: where the number is in the answer (RFC 9535 JSONPath,
    /// e.g. `$.data.errorRate`); it must match one number (or a string
    /// holding one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// `datadog`: the API's base URL (default `https://api.datadoghq.com`;
    /// another site's, e.g. `https://api.datadoghq.eu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// The source of a custom check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryProvider {
    #[default]
    Prometheus,
    Web,
    Datadog,
}

impl QueryCheck {
    /// Its bounds as a check's threshold reads: `1..=2`, `>= 1`, `<= 2`.
    pub fn threshold(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            (Some(a), None) => format!(">= {a}"),
            (None, Some(b)) => format!("<= {b}"),
            (None, None) => "any".into(),
        }
    }

    /// What is missing or wrong for its provider, or in its bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("a check: name: empty (every check needs a name)".into());
        }
        let length = self.name.chars().count();
        if length > MAX_CHECK_NAME {
            let start: String = self.name.chars().take(40).collect();
            return Err(format!(
                "check `{start}…`: name: {length} characters, more than the {MAX_CHECK_NAME} a check's name may have (it names the check in events, reports and the release record)"
            ));
        }
        let at = format!("check `{}`", self.name);
        match self.provider {
            QueryProvider::Prometheus | QueryProvider::Datadog if self.query.trim().is_empty() => {
                return Err(format!("{at}: query: empty"));
            }
            QueryProvider::Web => {
                let url = self.url.as_deref().unwrap_or_default();
                if !crate::http::is_http_url(url) {
                    return Err(format!(
                        "{at}: url: `{}` is not an http:// or https:// URL",
                        crate::http::shown_url(url)
                    ));
                }
                match self.method.as_deref() {
                    None | Some("GET" | "POST") => {}
                    Some(m) => return Err(format!("{at}: method: `{m}` is not GET or POST")),
                }
                let path = self.json_path.as_deref().unwrap_or_default();
                serde_json_path::JsonPath::parse(path)
                    .map_err(|e| format!("{at}: json_path: `{path}` is not a JSONPath: {e}"))?;
                if let Some(body) = &self.body {
                    if self.method.as_deref() != Some("POST") {
                        return Err(format!(
                            "{at}: body: only a POST sends one; add `method: POST`"
                        ));
                    }
                    serde_json::from_str::<serde_json::Value>(body)
                        .map_err(|e| format!("{at}: body: not JSON: {e}"))?;
                }
            }
            _ => {}
        }
        // A field of another provider would be ignored without a word.
        let given = [
            ("query", !self.query.trim().is_empty()),
            ("url", self.url.is_some()),
            ("method", self.method.is_some()),
            ("body", self.body.is_some()),
            ("json_path", self.json_path.is_some()),
            ("address", self.address.is_some()),
        ];
        let (provider, own): (&str, &[&str]) = match self.provider {
            QueryProvider::Prometheus => ("prometheus", &["query"]),
            QueryProvider::Web => ("web", &["url", "method", "body", "json_path"]),
            QueryProvider::Datadog => ("datadog", &["query", "address"]),
        };
        if let Some((field, _)) = given
            .iter()
            .find(|(field, set)| *set && !own.contains(field))
        {
            return Err(format!(
                "{at}: {field}: not a field of provider {provider} (its fields: {})",
                own.join(", ")
            ));
        }
        if let Some(a) = &self.address
            && !crate::http::is_http_url(a)
        {
            return Err(format!(
                "{at}: address: `{}` is not an http:// or https:// URL",
                crate::http::shown_url(a)
            ));
        }
        if self.provider == QueryProvider::Prometheus {
            check_placeholders(&self.query).map_err(|e| format!("{at}: query: {e}"))?;
        }
        for (field, bound) in [("min", self.min), ("max", self.max)] {
            if bound.is_some_and(|b| !b.is_finite()) {
                return Err(format!("{at}: {field}: not a finite number"));
            }
        }
        match (self.min, self.max) {
            (None, None) => {
                return Err(format!(
                    "{at}: set min, max or both (a check with neither always passes)"
                ));
            }
            (Some(a), Some(b)) if a > b => {
                return Err(format!("{at}: min {a} is above max {b}: no value can pass"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The longest name a custom check may have, in characters: a name is in
/// every event, report line and release record entry about the check,
/// and a record must always be readable back (its reader refuses strings
/// past its own limit).
pub const MAX_CHECK_NAME: usize = 253;

/// The placeholders a PromQL check may hold (see
/// `PrometheusProvider::render`).
const PLACEHOLDERS: [&str; 4] = ["{{route}}", "{{namespace}}", "{{backend}}", "{{interval}}"];

/// A `{{...}}` that is none of [`PLACEHOLDERS`] (a typo would reach
/// Prometheus as it is written).
fn check_placeholders(query: &str) -> Result<(), String> {
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start..];
        let Some(end) = after.find("}}") else {
            return Ok(());
        };
        let found = &after[..end + 2];
        if !PLACEHOLDERS.contains(&found) {
            return Err(format!(
                "`{found}` is not a placeholder (they are {})",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Reads a list of custom checks (YAML); `what` names the source in
/// errors.
pub fn parse_checks(text: &str, what: &str) -> Result<Vec<QueryCheck>, String> {
    let checks: Vec<QueryCheck> =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{what}: {e}"))?;
    for (i, check) in checks.iter().enumerate() {
        check.check().map_err(|e| format!("{what}: {e}"))?;
        if checks[..i].iter().any(|c| c.name == check.name) {
            return Err(format!(
                "{what}: check `{}`: name: used twice (reports and events tell checks by name)",
                check.name
            ));
        }
    }
    Ok(checks)
}

/// A webhook's kind, with Flagger's semantics (see `crate::webhook`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookKind {
    /// Before the canary gets any traffic; the release waits until every
    /// one answers 2xx (nothing counts as failed meanwhile).
    ConfirmRollout,
    /// Before the first step; a failure counts toward the failure limit.
    PreRollout,
    /// Every analysis tick; a failure fails the tick. Flagger's default
    /// when a webhook names no type.
    #[default]
    Rollout,
    /// Before each weight increase; the release holds its weight until
    /// every one answers 2xx.
    ConfirmTrafficIncrease,
    /// Before promotion; the release waits (analysis goes on).
    ConfirmPromotion,
    /// After the release ends, promoted or rolled back; failures are
    /// logged only.
    PostRollout,
    /// Polled while the release runs; a 2xx asks for a rollback.
    Rollback,
    /// Every event of the release, with its message; never gates.
    Event,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 8] = [
        WebhookKind::ConfirmRollout,
        WebhookKind::PreRollout,
        WebhookKind::Rollout,
        WebhookKind::ConfirmTrafficIncrease,
        WebhookKind::ConfirmPromotion,
        WebhookKind::PostRollout,
        WebhookKind::Rollback,
        WebhookKind::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::ConfirmRollout => "confirm-rollout",
            WebhookKind::PreRollout => "pre-rollout",
            WebhookKind::Rollout => "rollout",
            WebhookKind::ConfirmTrafficIncrease => "confirm-traffic-increase",
            WebhookKind::ConfirmPromotion => "confirm-promotion",
            WebhookKind::PostRollout => "post-rollout",
            WebhookKind::Rollback => "rollback",
            WebhookKind::Event => "event",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a webhook kind; use one of confirm-rollout, pre-rollout, rollout, confirm-traffic-increase, confirm-promotion, post-rollout, rollback, event"
                )
            })
    }
}

/// A webhook as Flagger's `analysis.webhooks` writes one (`name`, `type`,
/// `url`, `timeout`, `metadata`, `retries`), plus Sluice's `headers`
/// (values in the clear: secrets belong in the access file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, alias = "type")]
    pub kind: WebhookKind,
    pub url: String,
    #[serde(default = "default_webhook_timeout", with = "timeout_text")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Calls again after a failure, this many times, with a growing pause.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Flagger's `muteAlert` (its alerts for this hook's failures): read so
    /// that Flagger's lists parse; Sluice sends no alerts of its own for it.
    #[serde(default, rename = "muteAlert", skip_serializing)]
    pub mute_alert: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Webhook {
    /// A webhook of `kind` to `url` with the defaults (the `--webhook
    /// KIND=URL` flag).
    pub fn new(kind: WebhookKind, url: &str) -> Self {
        Self {
            name: String::new(),
            kind,
            url: url.to_string(),
            timeout: default_webhook_timeout(),
            metadata: BTreeMap::new(),
            retries: 0,
            headers: BTreeMap::new(),
            mute_alert: false,
        }
    }

    /// What is wrong with it, if anything: its URL's scheme, its header
    /// names and values.
    pub fn check(&self) -> Result<(), String> {
        let at = if self.name.is_empty() {
            format!(
                "{} webhook {}",
                self.kind.as_str(),
                crate::http::shown_url(&self.url)
            )
        } else {
            format!("webhook `{}`", self.name)
        };
        if !crate::http::is_http_url(&self.url) {
            return Err(format!(
                "{at}: url: `{}` is not an http:// or https:// URL",
                crate::http::shown_url(&self.url)
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(format!("{at}: headers.{name}: not a valid header field"));
            }
        }
        if self.retries > 10 {
            return Err(format!("{at}: retries: {} is above 10", self.retries));
        }
        if self.timeout.is_zero() {
            return Err(format!("{at}: timeout: 0s (every call would fail at once)"));
        }
        Ok(())
    }
}

/// Reads a list of webhooks written as Flagger's `analysis.webhooks`
/// (YAML or JSON); `what` names the source in errors.
pub fn parse_webhooks(text: &str, what: &str) -> Result<Vec<Webhook>, String> {
    let hooks: Vec<Webhook> = serde_yaml_ng::from_str(text).map_err(|e| format!("{what}: {e}"))?;
    for hook in &hooks {
        hook.check().map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(hooks)
}

/// A hook's `timeout` when none is given: Flagger's, 10 s.
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A webhook's `timeout`, as [`duration_text`] with the field named in
/// errors.
mod timeout_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        crate::clock::duration_text::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        sluice_proxy::config::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("timeout: {e}")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Auto,
    Manual,
}

impl Approval {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Approval::Auto),
            "manual" => Ok(Approval::Manual),
            other => Err(format!(
                "`{other}` is not an approval mode; use auto or manual"
            )),
        }
    }
}

/// How the canary is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Gate {
    /// Flagger's way: every interval, the canary's own numbers against fixed
    /// thresholds, `failure_limit` failing ticks roll back.
    Threshold,
    /// The default: the canary against the primary, continuously, with
    /// anytime-valid error rates ([`crate::gate`]).
    Sequential(crate::gate::GateSettings),
}

impl Gate {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "sequential" => Ok(Gate::Sequential(Default::default())),
            "threshold" => Ok(Gate::Threshold),
            other => Err(format!(
                "`{other}` is not a gate; use sequential (the canary against the primary) or threshold (fixed thresholds, as Flagger)"
            )),
        }
    }

    pub fn settings(&self) -> Option<&crate::gate::GateSettings> {
        match self {
            Gate::Sequential(s) => Some(s),
            Gate::Threshold => None,
        }
    }
}

/// What happens when the sequential gate has not decided within the
/// maximum release duration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Undecided {
    /// Wait for a person (`WaitingPromotion`): `promote` or `abort`. The
    /// checks keep running, so a canary shown worse still rolls back and
    /// one shown no worse is promoted.
    #[default]
    Hold,
    /// Promote, with a Warning Event saying it was not shown no worse.
    Promote,
    /// Roll back for lack of evidence.
    Rollback,
}

impl Undecided {
    pub const NAMES: &'static str = "hold, promote, rollback";

    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "hold" => Ok(Undecided::Hold),
            "promote" => Ok(Undecided::Promote),
            "rollback" => Ok(Undecided::Rollback),
            other => Err(format!(
                "`{other}` is not what to do when undecided; use one of {}",
                Self::NAMES
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Undecided::Hold => "hold",
            Undecided::Promote => "promote",
            Undecided::Rollback => "rollback",
        }
    }
}

/// The ceilings the threshold gate applies when none are given: Flagger's
/// usual pair. The sequential gate has no ceilings unless given.
pub const THRESHOLD_SUCCESS_RATE: f64 = 99.0;
pub fn threshold_latency() -> Vec<LatencyCheck> {
    vec![LatencyCheck {
        quantile: 0.99,
        max: Duration::from_millis(500),
    }]
}

/// The shape of a release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// The weight moves step by step (the default).
    #[default]
    Canary,
    /// The new version takes mirrored traffic only (weight 0) for at least
    /// `iterations` × `interval` and until the gate shows it no worse than
    /// the primary on the same requests; then all traffic switches to it
    /// in one step, and it is watched for `soak` against the primary's
    /// rates from before the switch. Any failure then switches back at
    /// once; a clean soak promotes.
    BlueGreen {
        iterations: u32,
        #[serde(with = "crate::clock::duration_text")]
        soak: Duration,
    },
    /// Both versions serve side by side at the first step's weight (and
    /// any A/B rules of the route) for `duration`, judged by the gate's
    /// statistics; a report ends it and the route returns to stable. No
    /// promotion. A canary the gate shows to be worse ends it early.
    Experiment {
        #[serde(with = "crate::clock::duration_text")]
        duration: Duration,
    },
}

impl Strategy {
    pub const NAMES: &'static str = "canary, blue-green, experiment";

    /// What the gate compares at `weight_bp` under this strategy.
    pub fn arms(&self, weight_bp: u32) -> crate::gate::Arms {
        use crate::gate::Arms;
        match self {
            Strategy::Canary => Arms::Weighted,
            Strategy::BlueGreen { .. } if weight_bp == 0 => Arms::Mirror,
            Strategy::BlueGreen { .. } => Arms::Soak,
            Strategy::Experiment { .. } => Arms::AllCanary,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen { .. } => "blue-green",
            Strategy::Experiment { .. } => "experiment",
        }
    }

    /// A strategy by name, with its settings: `iterations`, `soak` (blue-green)
    /// and `duration` (experiment), given as text.
    pub fn parse(
        name: &str,
        iterations: &str,
        soak: &str,
        duration: &str,
    ) -> Result<Self, (&'static str, String)> {
        match name {
            "canary" => Ok(Strategy::Canary),
            "blue-green" => {
                let iterations: u32 =
                    iterations.trim().parse().ok().filter(|n| *n >= 1).ok_or((
                        "iterations",
                        format!("`{iterations}` is not a whole number of at least 1"),
                    ))?;
                let soak = parse_duration(soak).map_err(|e| ("soak", e))?;
                Ok(Strategy::BlueGreen { iterations, soak })
            }
            "experiment" => {
                let duration = parse_duration(duration).map_err(|e| ("experiment-duration", e))?;
                if duration.is_zero() {
                    return Err(("experiment-duration", "must be greater than 0".into()));
                }
                Ok(Strategy::Experiment { duration })
            }
            other => Err((
                "strategy",
                format!(
                    "`{other}` is not a strategy this version knows; use one of {}",
                    Self::NAMES
                ),
            )),
        }
    }
}

/// What a release sets on its proxy route besides the weight: session
/// affinity and mirroring (blue/green mirrors 100% unless told otherwise).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<sluice_proxy::config::AffinityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<sluice_proxy::config::MirrorConfig>,
}

/// The raw settings of [`Traffic`], as flags or annotations give them.
#[derive(Clone, Debug, Default)]
pub struct TrafficText<'a> {
    pub affinity_cookie: Option<&'a str>,
    pub affinity_max_age: Option<&'a str>,
    pub affinity_header: Option<&'a str>,
    pub mirror: Option<&'a str>,
    pub mirror_max_body: Option<&'a str>,
    pub mirror_methods: Option<&'a str>,
}

impl Traffic {
    /// Parses and checks the settings with the proxy's own rules. An error
    /// names the setting: `affinity-cookie`, `affinity-max-age`,
    /// `affinity-header`, `mirror`, `mirror-max-body` or `mirror-methods`.
    pub fn parse(t: &TrafficText<'_>, strategy: &Strategy) -> Result<Self, (String, String)> {
        use sluice_proxy::config::{AffinityConfig, MirrorConfig};
        let affinity = match (t.affinity_cookie, t.affinity_header) {
            (None, None) => {
                if t.affinity_max_age.is_some() {
                    return Err((
                        "affinity-max-age".into(),
                        "applies with affinity-cookie only".into(),
                    ));
                }
                None
            }
            (Some(_), Some(_)) => {
                return Err((
                    "affinity-cookie".into(),
                    "set either affinity-cookie or affinity-header, not both".into(),
                ));
            }
            (cookie, header) => Some(AffinityConfig {
                cookie: cookie.map(str::to_string),
                max_age: t.affinity_max_age.map(str::to_string),
                header: header.map(str::to_string),
            }),
        };
        if let Some(a) = &affinity
            && let Err(e) = sluice_proxy::config::check_affinity(a)
        {
            let first = &e.0[0];
            let name = match first.path.as_str() {
                "affinity.max_age" => "affinity-max-age",
                "affinity.header" => "affinity-header",
                _ => "affinity-cookie",
            };
            return Err((name.into(), first.message.clone()));
        }
        let blue_green = matches!(strategy, Strategy::BlueGreen { .. });
        let percent = match t.mirror {
            None if blue_green => Some(100.0),
            None => None,
            Some(text) => Some(parse_percent(text).map_err(|e| ("mirror".to_string(), e))?),
        };
        let mirror = match percent {
            None => {
                // Named by the setting that was given, not the missing one.
                let given = [
                    ("mirror-methods", t.mirror_methods),
                    ("mirror-max-body", t.mirror_max_body),
                ]
                .into_iter()
                .find(|(_, v)| v.is_some());
                if let Some((name, _)) = given {
                    return Err((
                        name.into(),
                        "mirror-max-body and mirror-methods need a mirror percent (mirror)".into(),
                    ));
                }
                None
            }
            Some(percent) => {
                let mirror = MirrorConfig {
                    percent,
                    max_body: t.mirror_max_body.unwrap_or("64KiB").to_string(),
                    methods: t.mirror_methods.map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    }),
                    max_in_flight: 512,
                };
                if let Err(e) = sluice_proxy::config::check_mirror(&mirror) {
                    let first = &e.0[0];
                    let name = match first.path.as_str() {
                        "mirror.max_body" => "mirror-max-body",
                        p if p.starts_with("mirror.methods") => "mirror-methods",
                        _ => "mirror",
                    };
                    return Err((name.into(), first.message.clone()));
                }
                if blue_green && percent <= 0.0 {
                    return Err((
                        "mirror".into(),
                        "blue-green judges the new version on mirrored traffic before the switch; give a percent above 0".into(),
                    ));
                }
                Some(mirror)
            }
        };
        Ok(Self { affinity, mirror })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Canary weights of the steps, in basis points, strictly increasing.
    pub steps_bp: Vec<u32>,
    /// Threshold gate: the analysis tick. Sequential gate: the least time a
    /// step lasts before the weight may advance.
    #[serde(with = "crate::clock::duration_text")]
    pub interval: Duration,
    pub failure_limit: u32,
    /// Threshold gate: canary requests a tick needs. Sequential gate:
    /// canary requests a step needs before the weight may advance.
    pub min_requests: u64,
    #[serde(with = "crate::clock::duration_text")]
    pub progress_deadline: Duration,
    pub gate: Gate,
    /// Sequential gate: how often the proxy is scraped and the evidence
    /// updated (independent of `interval`).
    #[serde(with = "crate::clock::duration_text")]
    pub scrape_interval: Duration,
    /// Sequential gate: roll back when the canary is not shown to be no
    /// worse than the primary within this long.
    #[serde(with = "crate::clock::duration_text")]
    pub max_duration: Duration,
    /// Minimum percent of canary answers classified `success` (a ceiling
    /// under the sequential gate; the threshold gate's main check).
    pub success_rate_min: Option<f64>,
    pub latency: Vec<LatencyCheck>,
    pub queries: Vec<QueryCheck>,
    pub approval: Approval,
    pub webhooks: Vec<Webhook>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub traffic: Traffic,
    /// Sequential gate: what happens when nothing is decided within
    /// `max_duration`.
    #[serde(default)]
    pub when_undecided: Undecided,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            steps_bp: vec![1000, 2000, 3000, 4000, 5000],
            interval: Duration::from_secs(60),
            failure_limit: 3,
            min_requests: 20,
            progress_deadline: Duration::from_secs(600),
            gate: Gate::Sequential(crate::gate::GateSettings::default()),
            scrape_interval: Duration::from_secs(2),
            max_duration: Duration::from_secs(30 * 60),
            success_rate_min: None,
            latency: Vec::new(),
            queries: Vec::new(),
            approval: Approval::Auto,
            webhooks: Vec::new(),
            strategy: Strategy::Canary,
            traffic: Traffic::default(),
            when_undecided: Undecided::Hold,
        }
    }
}

impl Plan {
    /// The weights and timing a forecast reads.
    pub fn schedule(&self) -> crate::gate::forecast::Schedule<'_> {
        crate::gate::forecast::Schedule {
            steps_bp: &self.steps_bp,
            interval: self.interval,
            max_duration: self.max_duration,
        }
    }

    /// The route settings of the plan, for people: `mirror 100%, affinity
    /// cookie app`, and `baseline arm` when the canary is judged against
    /// one; `-` when none.
    pub fn traffic_text(&self) -> String {
        let mut parts = Vec::new();
        if let Gate::Sequential(g) = &self.gate
            && g.baseline_arm
        {
            parts.push("baseline arm".to_string());
        }
        if let Some(m) = &self.traffic.mirror {
            parts.push(format!("mirror {}%", m.percent));
        }
        if let Some(a) = &self.traffic.affinity {
            match (&a.cookie, &a.header) {
                (Some(c), _) => parts.push(format!("affinity cookie {c}")),
                (_, Some(h)) => parts.push(format!("affinity header {h}")),
                _ => {}
            }
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }

    /// Flagger's plan: the threshold gate with its usual ceilings.
    pub fn threshold() -> Self {
        Self {
            gate: Gate::Threshold,
            success_rate_min: Some(THRESHOLD_SUCCESS_RATE),
            latency: threshold_latency(),
            ..Self::default()
        }
    }

    pub fn is_sequential(&self) -> bool {
        matches!(self.gate, Gate::Sequential(_))
    }

    /// Checks that the strategy fits the rest of the plan, and fixes the
    /// steps it implies: blue/green has one step (100%), an experiment one
    /// (its weight). `flag` names a setting as the caller's user wrote it.
    pub fn apply_strategy(&mut self, flag: impl Fn(&str) -> String) -> Result<(), String> {
        match self.strategy {
            // The sequential gate weighs the canary against the primary's
            // traffic, which a step of 100 leaves none of: the release
            // would hold there, undecided, until its deadline.
            Strategy::Canary
                if self.is_sequential() && self.steps_bp.last() == Some(&WEIGHT_SCALE_BP) =>
            {
                Err(format!(
                    "{}: a last step of 100 leaves the primary no traffic for the sequential gate to compare with; end below 100 (promotion moves the rest), or use {} blue-green",
                    flag("steps"),
                    flag("strategy")
                ))
            }
            Strategy::Canary => Ok(()),
            Strategy::BlueGreen { .. } | Strategy::Experiment { .. } if !self.is_sequential() => {
                Err(format!(
                    "{}: {} judges the new version against the primary with the sequential gate; drop {} threshold",
                    flag("strategy"),
                    self.strategy.name(),
                    flag("gate")
                ))
            }
            Strategy::BlueGreen { .. } => {
                self.steps_bp = vec![WEIGHT_SCALE_BP];
                Ok(())
            }
            Strategy::Experiment { .. } => {
                if self.steps_bp.len() != 1 {
                    return Err(format!(
                        "{}: an experiment runs at one weight; give one value (or 0 with the route's A/B rules)",
                        flag("steps")
                    ));
                }
                Ok(())
            }
        }
    }

    /// The baseline measured before the first step (sequential gate only).
    pub fn baseline(&self) -> std::time::Duration {
        self.gate.settings().map(|s| s.baseline).unwrap_or_default()
    }

    /// How long the driver waits for the next analysis tick.
    pub fn tick_interval(&self) -> Duration {
        if self.is_sequential() {
            self.scrape_interval
        } else {
            self.interval
        }
    }

    pub fn webhooks_of(&self, kind: WebhookKind) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().filter(move |w| w.kind == kind)
    }

    /// Whether promotion waits for a gate (manual approval or a
    /// confirm-promotion webhook) after the last step.
    pub fn has_promotion_gate(&self) -> bool {
        self.approval == Approval::Manual
            || self
                .webhooks_of(WebhookKind::ConfirmPromotion)
                .next()
                .is_some()
    }
}

// === parsers shared by flags and annotations ===

/// `10,25,50` -> basis points; each in (0, 100], strictly increasing.
pub fn parse_steps(text: &str) -> Result<Vec<u32>, String> {
    let mut steps = Vec::new();
    for part in text.split(',') {
        let p = part.trim();
        let percent: f64 = p.parse().map_err(|_| {
            format!("`{p}` is not a number (write weights in percent, e.g. 10,25,50)")
        })?;
        let bp = percent_to_bp(percent)?;
        if bp == 0 {
            return Err("a step of 0 sends the canary nothing; steps must be above 0".into());
        }
        if let Some(&last) = steps.last()
            && bp <= last
        {
            return Err(format!(
                "steps must increase; {p} follows {}",
                f64::from(last) / 100.0
            ));
        }
        steps.push(bp);
    }
    if steps.is_empty() {
        return Err("give at least one step".into());
    }
    debug_assert!(steps.iter().all(|s| *s <= WEIGHT_SCALE_BP));
    Ok(steps)
}

/// `p95<=500ms,p99<=1s` -> latency checks.
pub fn parse_latency(text: &str) -> Result<Vec<LatencyCheck>, String> {
    let mut checks = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (q, max) = part
            .split_once("<=")
            .ok_or_else(|| format!("`{part}` is not like p95<=500ms"))?;
        let q = q.trim();
        let number = q
            .strip_prefix('p')
            .ok_or_else(|| format!("`{part}`: the quantile must look like p95 or p99.9"))?;
        let percentile: f64 = number
            .parse()
            .map_err(|_| format!("`{part}`: `{q}` is not a percentile like p95"))?;
        if !(percentile > 0.0 && percentile < 100.0) {
            return Err(format!(
                "`{part}`: the percentile must be between 0 and 100"
            ));
        }
        let max = parse_duration(max.trim()).map_err(|e| format!("`{part}`: {e}"))?;
        crate::gate::check_bucket_bound(max).map_err(|e| format!("`{part}`: {e}"))?;
        checks.push(LatencyCheck {
            quantile: percentile / 100.0,
            max,
        });
    }
    if checks.is_empty() {
        return Err("give at least one check like p99<=500ms".into());
    }
    Ok(checks)
}

/// A plain number (`0.01`, `1.5`).
pub fn parse_number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("`{text}` is not a number"))
}

/// Latency bounds: `300ms,1s`; each must be a bucket bound.
pub fn parse_bounds(text: &str) -> Result<Vec<Duration>, String> {
    let mut bounds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = parse_duration(part).map_err(|e| format!("`{part}`: {e}"))?;
        crate::gate::check_bucket_bound(d).map_err(|e| format!("`{part}`: {e}"))?;
        bounds.push(d);
    }
    if bounds.is_empty() {
        return Err("give at least one bound like 300ms".into());
    }
    Ok(bounds)
}

/// A percent in 0..=100, e.g. a success-rate minimum.
/// A percent in 0..=100, written with or without its sign (`99.5`,
/// `99.5%`): every percent flag and annotation takes both.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let v: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is not in 0..=100"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {

    #[test]
    fn percents_are_taken_with_or_without_their_sign() {
        for (text, expected) in [
            ("1", 1.0),
            ("1%", 1.0),
            (" 99.5% ", 99.5),
            ("0%", 0.0),
            ("100", 100.0),
        ] {
            assert_eq!(super::parse_percent(text), Ok(expected), "{text}");
        }
        for bad in ["1%%", "%", "", "101%", "-1", "NaN", "inf%", "1 %x"] {
            assert!(super::parse_percent(bad).is_err(), "{bad}");
        }
        assert_eq!(super::parse_steps("10,25, 50"), Ok(vec![1000, 2500, 5000]));
    }

    #[test]
    fn webhooks_that_could_never_be_called_are_refused_naming_the_field() {
        for (yaml, expected) in [
            (
                "- name: a\n  url: http://127.0.0.1:99999/\n",
                "webhook `a`: url:",
            ),
            (
                "- name: a\n  url: http://127.0.0.1:0/\n",
                "webhook `a`: url:",
            ),
            (
                "- name: a\n  url: http://h/\n  timeout: 0s\n",
                "webhook `a`: timeout: 0s",
            ),
            ("- name: a\n  url: ftp://h/\n", "webhook `a`: url:"),
        ] {
            let err = parse_webhooks(yaml, "hooks.yaml").unwrap_err();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        let ok = parse_webhooks("- name: a\n  url: http://[::1]:8080/x\n", "hooks.yaml").unwrap();
        assert_eq!(ok.len(), 1);
    }

    use super::*;

    #[test]
    fn steps_parse_to_basis_points_and_must_increase() {
        assert_eq!(parse_steps("10,25,50").unwrap(), vec![1000, 2500, 5000]);
        assert_eq!(parse_steps("0.5, 33.33").unwrap(), vec![50, 3333]);
        assert!(parse_steps("10,5").unwrap_err().contains("must increase"));
        assert!(parse_steps("0,10").unwrap_err().contains("above 0"));
        assert!(parse_steps("10,abc").unwrap_err().contains("`abc`"));
        assert!(parse_steps("150").unwrap_err().contains("0..=100"));
    }

    /// A check's name longer than a record may keep is refused when the
    /// checks are read, naming the check by its start (never the whole).
    #[test]
    fn a_check_name_longer_than_253_characters_is_refused() {
        let yaml = |name: &str| format!("- {{name: '{name}', query: 'up', min: 1}}\n");
        let longest = "é".repeat(MAX_CHECK_NAME);
        assert_eq!(
            parse_checks(&yaml(&longest), "checks.yaml").unwrap()[0].name,
            longest
        );
        let long = format!("{}{}", "a".repeat(40), "b".repeat(MAX_CHECK_NAME));
        let err = parse_checks(&yaml(&long), "checks.yaml").unwrap_err();
        assert!(
            err.starts_with(&format!(
                "checks.yaml: check `{}…`: name: 293 characters",
                "a".repeat(40)
            )),
            "{err}"
        );
        assert!(!err.contains("bb"), "{err}");
    }

    #[test]
    fn latency_checks_parse() {
        let checks = parse_latency("p95<=500ms, p99.9<=1s").unwrap();
        assert_eq!(checks[0].quantile, 0.95);
        assert_eq!(checks[0].max, Duration::from_millis(500));
        assert_eq!(checks[1].describe(), "p99.9<=1s");
        assert!(parse_latency("p95<500ms").is_err());
        assert!(parse_latency("q95<=1s").is_err());
        assert!(parse_latency("p100<=1s").is_err());
        assert!(parse_latency("p95<=fast").is_err());
        let off = parse_latency("p99<=270ms").unwrap_err();
        assert!(off.contains("`p99<=270ms`: 270ms is not a bound"), "{off}");
        assert!(off.contains("250ms or 300ms"), "{off}");
        assert!(parse_latency("p99<=22500ms").is_ok());
        assert!(parse_latency("p99<=1m").unwrap_err().contains("30s"));
    }
}
