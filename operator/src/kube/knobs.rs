//! Per-app knobs: the annotations that shape an app's data plane and the
//! cost of its releases, parsed into plain types the phases read.
//!
//! - `sluice.dev/match`: A/B rules, in the proxy's own `canary_match`
//!   format, as YAML (a block or a flow list):
//!   `[{header: x-canary, value: "1"}, {cookie: beta, value: "yes"}]`.
//!   Each rule sets exactly one of `header` or `cookie`, and `value`; other
//!   keys are refused. A matching request goes to the canary from the
//!   moment the release starts (weight 0 included) until it is promoted or
//!   rolled back; between releases no rule is written, so nothing reaches
//!   the canary. The rules are checked by the proxy's own validator.
//! - `sluice.dev/request-timeout`, `connect-timeout`, `idle-timeout`,
//!   `upstream-idle-timeout`, `tunnel-idle-timeout`,
//!   `answer-idle-timeout`: the route's `timeouts.request`, `.connect`,
//!   `.idle`, `.upstream_idle`, `.tunnel_idle` and `.answer_idle` on every
//!   route of the app, checked as the proxy checks them (a duration above
//!   0). Defaults are the proxy's (30s, 1s, 60s, 4s, 1h, 5m). They apply
//!   between releases too.
//! - `sluice.dev/proxy-replicas` (default 2): the proxy Deployment's
//!   replicas, 1..=100.
//! - `sluice.dev/proxy-resources`: the proxy container's `resources`, as
//!   YAML in Kubernetes' own shape, `{requests: {cpu: 200m, memory: 64Mi},
//!   limits: {memory: 512Mi}}` (only `cpu` and `memory`, Kubernetes
//!   quantities, a request never above its limit). It replaces the default
//!   (`requests: {cpu: 100m, memory: 32Mi}, limits: {memory: 256Mi}`)
//!   whole, as writing `resources:` in a pod spec would.
//! - `sluice.dev/proxy-autoscale: min=2,max=10,cpu=70`: an
//!   `autoscaling/v2` HorizontalPodAutoscaler for the proxy Deployment
//!   (named like it), scaling on CPU utilisation (percent of the CPU
//!   request). The operator then leaves the proxy's replicas to the HPA;
//!   it is refused with `proxy-replicas` (one owner of the replica count),
//!   and needs a CPU request (the default has one). Removing the annotation
//!   deletes the HPA.
//! - `sluice.dev/canary-scale: full | proportional` (default full): see
//!   [`CanaryScale`].
//! - `sluice.dev/rollback-window: N` (0..=20, default 0 = off): a new
//!   revision equal to one of the last N revisions promoted before the one
//!   the primary runs (the same pod template, without Sluice's config
//!   hash, and the same referenced config: the revision hash covers both)
//!   is promoted at once, without analysis, with a `RollbackWindow` Event.
//! - `sluice.dev/abort-scale-down-delay: DURATION` (up to 24h, default 0 =
//!   off): a rolled-back (or aborted) canary stays up, out of the traffic
//!   (weight 0, no A/B rule), for that long, then is scaled to 0. A new
//!   revision meanwhile is released as usual.

use serde_json::{Value, json};
use sluice_proxy::config::{MatchRule, Timeouts};

/// The route settings an app's annotations give, on every route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteSettings {
    /// A/B rules; written only while a release runs ([`Self::at_rest`]).
    pub canary_match: Vec<MatchRule>,
    pub timeouts: Timeouts,
    /// `sluice.dev/baseline-arm`: the routes' `baseline` points at Service
    /// `app-baseline`; written only while a release runs ([`Self::at_rest`]).
    pub baseline_arm: bool,
}

impl RouteSettings {
    /// Between releases, and once a release is promoted or rolled back:
    /// no A/B rule sends anything to the canary, and no route has a
    /// baseline arm.
    pub fn at_rest(&self) -> Self {
        Self {
            canary_match: Vec::new(),
            timeouts: self.timeouts.clone(),
            baseline_arm: false,
        }
    }
}

/// The default proxy replicas.
pub const DEFAULT_PROXY_REPLICAS: i32 = 2;

/// The app's proxy Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySettings {
    pub replicas: i32,
    /// The container's `resources` (Kubernetes' JSON shape).
    pub resources: Value,
    pub autoscale: Option<Autoscale>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            replicas: DEFAULT_PROXY_REPLICAS,
            resources: default_proxy_resources(),
            autoscale: None,
        }
    }
}

/// Today's proxy resources: a small CPU request, a memory cap.
pub fn default_proxy_resources() -> Value {
    json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
}

/// The proxy's HorizontalPodAutoscaler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Autoscale {
    pub min: i32,
    pub max: i32,
    /// Target average CPU utilisation, percent of the request.
    pub cpu_percent: i32,
}

/// How many pods the canary runs during a release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CanaryScale {
    /// As many as the primary (Flagger's behaviour).
    #[default]
    Full,
    /// `ceil(primary replicas × share / 100)`, at least 1, where the share
    /// is the larger of the weight and the mirrored percent (a blue/green
    /// copy at weight 0 runs on as many pods as it copies). At each weight
    /// change the user's HPA aimed at the app (it scales the canary during
    /// a release) gets its bounds scaled the same way first, then the
    /// canary is scaled, and the weight moves only once the canary's
    /// Deployment has rolled out at the new count (until then the step is
    /// retried, its status message saying how many pods are ready). The
    /// HPA's bounds are put back after the release, and before the app's
    /// Deployment is scaled when Sluice lets go; the HPA's twin on
    /// `app-primary` keeps the user's bounds (see `sync_hpas`). A/B rules
    /// (`sluice.dev/match`) at weight 0 run on one pod: use `full` when
    /// they match much traffic.
    Proportional,
}

impl CanaryScale {
    /// The canary's replicas for `primary` replicas at weight `bp`.
    pub fn replicas(self, primary: i64, bp: u32) -> i64 {
        let primary = primary.max(1);
        match self {
            Self::Full => primary,
            Self::Proportional => ((primary * i64::from(bp) + 9_999) / 10_000).clamp(1, primary),
        }
    }
}

/// `min=2,max=10,cpu=70`.
pub fn parse_autoscale(text: &str) -> Result<Autoscale, String> {
    let (mut min, mut max, mut cpu) = (None, None, None);
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not key=value"))?;
        let number = value
            .trim()
            .trim_end_matches('%')
            .parse::<i32>()
            .map_err(|_| format!("{key}: `{value}` is not a whole number"))?;
        let slot = match key.trim() {
            "min" => &mut min,
            "max" => &mut max,
            "cpu" => &mut cpu,
            other => return Err(format!("unknown key `{other}`")),
        };
        if slot.replace(number).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    let (Some(min), Some(max), Some(cpu_percent)) = (min, max, cpu) else {
        return Err("min, max and cpu are all needed".into());
    };
    if !(1..=100).contains(&min) {
        return Err(format!("min {min} is not in 1..=100"));
    }
    if !(min..=100).contains(&max) {
        return Err(format!("max {max} is not in min..=100"));
    }
    if !(1..=100).contains(&cpu_percent) {
        return Err(format!("cpu {cpu_percent} is not a percent in 1..=100"));
    }
    Ok(Autoscale {
        min,
        max,
        cpu_percent,
    })
}

/// The A/B rules, as YAML, each rule's keys checked (the proxy's own
/// deserializer would ignore a misspelt one).
pub fn parse_match(text: &str) -> Result<Vec<MatchRule>, String> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let serde_yaml_ng::Value::Sequence(rules) = value else {
        return Err("not a list of rules".into());
    };
    if rules.is_empty() {
        return Err("an empty list (remove the annotation instead)".into());
    }
    let mut out = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        let at = format!("rule {}", i + 1);
        let serde_yaml_ng::Value::Mapping(map) = &rule else {
            return Err(format!(
                "{at}: not a mapping of header or cookie, and value"
            ));
        };
        for key in map.keys() {
            match key.as_str() {
                Some("header" | "cookie" | "value") => {}
                _ => {
                    return Err(format!(
                        "{at}: unknown key `{}`",
                        serde_yaml_ng::to_string(key).unwrap_or_default().trim_end()
                    ));
                }
            }
        }
        let rule: MatchRule = serde_yaml_ng::from_value(rule).map_err(|e| format!("{at}: {e}"))?;
        out.push(rule);
    }
    Ok(out)
}

/// Checks route settings with the proxy's own validator, on a route like
/// the one the operator writes. The error names the rule or timeout.
pub fn validate_route(route: &RouteSettings) -> Result<(), String> {
    // Built from YAML, so fields the proxy adds later take their defaults.
    let mut config = sluice_proxy::Config::from_yaml(
        "listen: 0.0.0.0:8080\nadmin:\n  listen: 127.0.0.1:9901\nroutes:\n- name: app\n  stable: http://app-primary.ns.svc:80\n  canary: http://app-canary.ns.svc:80\n",
    )
    .expect("the route template is a valid config");
    config.routes[0].canary_match = route.canary_match.clone();
    config.routes[0].timeouts = route.timeouts.clone();
    match config.validate() {
        Ok(_) => Ok(()),
        Err(errors) => Err(errors
            .0
            .iter()
            .map(|e| {
                let path = e.path.trim_start_matches("routes[0].");
                // canary_match[0].header -> rule 1 (header)
                let path = match path.strip_prefix("canary_match[") {
                    Some(rest) => {
                        let (index, field) = rest.split_once(']').unwrap_or((rest, ""));
                        let n = index.parse::<usize>().map_or(0, |n| n + 1);
                        format!("rule {n}{field}")
                    }
                    None => path.to_string(),
                };
                format!("{path}: {}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// The proxy container's `resources`, as YAML in Kubernetes' shape.
pub fn parse_resources(text: &str) -> Result<Value, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let Some(map) = value.as_object() else {
        return Err("not a mapping of requests and limits".into());
    };
    if map.is_empty() {
        return Err("empty (remove the annotation for the default)".into());
    }
    let mut out = serde_json::Map::new();
    for (section, resources) in map {
        if section != "requests" && section != "limits" {
            return Err(format!("unknown key `{section}` (requests, limits)"));
        }
        let Some(resources) = resources.as_object() else {
            return Err(format!("{section}: not a mapping of cpu and memory"));
        };
        let mut checked = serde_json::Map::new();
        for (name, quantity) in resources {
            if name != "cpu" && name != "memory" {
                return Err(format!("{section}.{name}: unknown resource (cpu, memory)"));
            }
            // YAML reads `cpu: 1` as a number; Kubernetes takes it as "1".
            let text = match quantity {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(format!("{section}.{name}: {other} is not a quantity")),
            };
            let amount = quantity_value(&text).map_err(|e| format!("{section}.{name}: {e}"))?;
            if amount <= 0.0 {
                return Err(format!("{section}.{name}: `{text}` must be above 0"));
            }
            checked.insert(name.clone(), json!(text));
        }
        out.insert(section.clone(), Value::Object(checked));
    }
    for name in ["cpu", "memory"] {
        let get = |section: &str| {
            out.get(section)
                .and_then(|s| s.get(name))
                .and_then(Value::as_str)
                .map(|q| quantity_value(q).unwrap_or(0.0))
        };
        if let (Some(request), Some(limit)) = (get("requests"), get("limits"))
            && request > limit
        {
            return Err(format!(
                "requests.{name} must be less than or equal to limits.{name}"
            ));
        }
    }
    Ok(Value::Object(out))
}

/// Whether the container has a CPU request (given, or defaulted from its
/// limit as Kubernetes does): an HPA on CPU utilisation needs one.
pub fn has_cpu_request(resources: &Value) -> bool {
    !resources["requests"]["cpu"].is_null() || !resources["limits"]["cpu"].is_null()
}

/// A Kubernetes quantity (`100m`, `1.5`, `64Mi`, `1e3`, `2G`) as a number,
/// by the API server's grammar: a non-negative decimal, then one of the
/// binary (`Ki`..`Ei`) or decimal (`n`, `u`, `m`, `k`, `M`..`E`) suffixes or
/// an exponent (`e3`, `E-2`).
pub fn quantity_value(text: &str) -> Result<f64, String> {
    let bad = || format!("`{text}` is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)");
    let s = text.strip_prefix('+').unwrap_or(text);
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..]
                .strip_prefix('+')
                .unwrap_or(&exp[1..])
                .parse()
                .map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    let value = number * scale;
    if !value.is_finite() {
        return Err(bad());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_api_servers_grammar() {
        for (text, value) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("2G", 2e9),
            ("1e3", 1000.0),
            ("+1k", 1000.0),
        ] {
            assert_eq!(quantity_value(text), Ok(value), "{text}");
        }
        for text in ["", "m", "1.2.3", "-1", "1mi", "1 Gi", "one", "1e", "1KB"] {
            assert!(quantity_value(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_proportional_canary_follows_the_weight_and_never_goes_below_one() {
        let p = CanaryScale::Proportional;
        assert_eq!(p.replicas(10, 0), 1);
        assert_eq!(p.replicas(10, 1000), 1);
        assert_eq!(p.replicas(10, 1001), 2);
        assert_eq!(p.replicas(10, 2500), 3);
        assert_eq!(p.replicas(10, 5000), 5);
        assert_eq!(p.replicas(10, 10_000), 10);
        assert_eq!(p.replicas(3, 5000), 2);
        assert_eq!(CanaryScale::Full.replicas(4, 1000), 4);
    }
}
