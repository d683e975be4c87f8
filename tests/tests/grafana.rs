//! The Grafana dashboard (deploy/grafana/sluice.json) draws each namespace's
//! apps apart: its queries are rendered for one namespace at a time, with
//! the template variables substituted the way Grafana's Prometheus data
//! source does, and run against a real Prometheus scraping two real proxies
//! that serve the same route name (`web`) in two namespaces, plus a real
//! operator metrics endpoint reporting a release in each.
//!
//! The proxies are scraped with a `namespace` target label, as the shipped
//! scrape config (deploy/prometheus/prometheus.yml) sets it from Kubernetes
//! service discovery; the operator is scraped with `honor_labels`, as there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_operator::kube::KubeStatus;
use sluice_operator::kube::metrics::OperatorMetrics;
use sluice_tests::*;

/// What a dashboard user picked for a variable.
#[derive(Clone, Debug)]
enum Pick {
    All,
    Values(Vec<String>),
}

fn pick(values: &[&str]) -> Pick {
    Pick::Values(values.iter().map(|v| v.to_string()).collect())
}

/// A template variable of the dashboard.
struct Variable {
    name: String,
    multi_or_all: bool,
    all_value: Option<String>,
    query: Option<String>,
}

fn dashboard() -> Value {
    let path = workspace_root().join("deploy/grafana/sluice.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn variables(dashboard: &Value) -> Vec<Variable> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| Variable {
            name: v["name"].as_str().expect("variable name").to_string(),
            multi_or_all: v["multi"] == true || v["includeAll"] == true,
            all_value: v["allValue"].as_str().map(str::to_string),
            query: v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .map(str::to_string),
        })
        .collect()
}

/// Every (panel title, refId, expr) of the dashboard.
fn panel_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        title.clone(),
                        t["refId"].as_str().unwrap_or_default().to_string(),
                        t["expr"].as_str().expect("target expr").to_string(),
                    )
                })
        })
        .collect()
}

/// A value escaped for a PromQL regex inside a double-quoted string, as
/// Grafana's Prometheus data source escapes multi-value variables.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str("\\\\");
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The text Grafana puts in place of `variable` for `pick`.
fn format_pick(variable: &Variable, pick: &Pick) -> String {
    match pick {
        Pick::All => variable
            .all_value
            .clone()
            .unwrap_or_else(|| panic!("${} has no allValue", variable.name)),
        Pick::Values(values) if !variable.multi_or_all => values.join(","),
        Pick::Values(values) if values.len() == 1 => regex_escape(&values[0]),
        Pick::Values(values) => format!(
            "({})",
            values
                .iter()
                .map(|v| regex_escape(v))
                .collect::<Vec<_>>()
                .join("|")
        ),
    }
}

/// `expr` with `$name` and `${name}` replaced for every picked variable;
/// panics on a variable reference left over, naming it.
fn render(expr: &str, variables: &[Variable], picks: &[(&str, Pick)]) -> String {
    let mut out = expr.to_string();
    // Longest names first, so `$route` never eats the start of `$routes`.
    let mut ordered: Vec<&Variable> = variables.iter().collect();
    ordered.sort_by_key(|v| std::cmp::Reverse(v.name.len()));
    for variable in ordered {
        let Some((_, pick)) = picks.iter().find(|(n, _)| *n == variable.name) else {
            continue;
        };
        let text = format_pick(variable, pick);
        out = out
            .replace(&format!("${{{}}}", variable.name), &text)
            .replace(&format!("${}", variable.name), &text);
    }
    assert!(
        !out.contains('$'),
        "a variable is left in the rendered query: {out}"
    );
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus with two jobs: the proxies, each with its namespace as
/// a target label, and the operator, its own labels honoured.
struct Prometheus2 {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Prometheus2 {
    async fn start(proxies: &[(SocketAddr, &str)], operator: SocketAddr) -> Self {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: run `apt-get install -y prometheus` (tests/run does this)")
        });
        let dir = TempDir::new("grafana-prometheus");
        let port = free_port();
        let proxy_targets: String = proxies
            .iter()
            .map(|(t, ns)| {
                format!("      - targets: ['{t}']\n        labels: {{namespace: '{ns}'}}\n")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice-proxy\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    static_configs:\n{proxy_targets}  - job_name: sluice-operator\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    honor_labels: true\n    static_configs:\n      - targets: ['{operator}']\n"
        );
        let config_path = dir.path.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_until_ok(
            "prometheus to be ready",
            &format!("{}/-/ready", prometheus.url),
            Duration::from_secs(30),
        )
        .await;
        prometheus
    }

    async fn api(&self, path_and_query: &str) -> Value {
        let url = format!("{}{path_and_query}", self.url);
        let (status, _, body) = get(&url).await.expect("prometheus answers");
        let v: Value = serde_json::from_slice(&body).expect("prometheus answers JSON");
        assert!(
            status.is_success() && v["status"] == "success",
            "{path_and_query}: {status} {v}"
        );
        v["data"].clone()
    }

    /// An instant query's series, as (labels, value).
    async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        data["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// What Grafana asks for a `label_values(selector, label)` variable.
    async fn label_values(&self, rendered_query: &str) -> Vec<String> {
        let inner = rendered_query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a label_values() query: {rendered_query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let data = self
            .api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                percent_encode(selector.trim())
            ))
            .await;
        data.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Prometheus2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One namespace's set-up: a proxy whose route `web` sends `weight`% to a
/// canary that fails `canary_error_rate` of its requests.
struct Namespace {
    name: &'static str,
    weight: f64,
    canary_error_rate: f64,
    requests: u64,
}

const SHOP: Namespace = Namespace {
    name: "shop",
    weight: 50.0,
    canary_error_rate: 1.0,
    requests: 400,
};
const BLOG: Namespace = Namespace {
    name: "blog",
    weight: 10.0,
    canary_error_rate: 0.0,
    requests: 200,
};

fn near(value: f64, expected: f64, tolerance: f64) -> bool {
    (value - expected).abs() <= tolerance * expected.abs().max(1e-9)
}

#[tokio::test]
async fn every_dashboard_query_rendered_for_one_namespace_shows_only_that_namespace() {
    let board = dashboard();
    let vars = variables(&board);
    for name in ["namespace", "route"] {
        assert!(
            vars.iter().any(|v| v.name == name),
            "deploy/grafana/sluice.json has no `{name}` template variable"
        );
    }
    let queries = panel_queries(&board);
    for (title, ref_id, expr) in &queries {
        assert!(
            expr.contains("namespace=~\"$namespace\""),
            "panel {title:?} query {ref_id} is not filtered by namespace: {expr}"
        );
        assert!(
            expr.contains("=~\"$route\""),
            "panel {title:?} query {ref_id} is not filtered by app: {expr}"
        );
    }

    // Two proxies with the same route name, one per namespace.
    let mut keep = Vec::new();
    let mut proxies = Vec::new();
    for ns in [&SHOP, &BLOG] {
        let stable = backend("stable").await;
        let canary = failing_backend("canary", ns.canary_error_rate, 7).await;
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - name: web\n    stable: {}\n    canary: {}\n    canary_weight: {}\n",
            stable.url(),
            canary.url(),
            ns.weight
        )))
        .await;
        proxies.push(proxy);
        keep.push((stable, canary));
    }
    // The operator's series for a release of `web` in each namespace.
    let operator = OperatorMetrics::new();
    for ns in [&SHOP, &BLOG] {
        let status = KubeStatus {
            phase: "Progressing".into(),
            canary_weight: ns.weight,
            ..KubeStatus::default()
        };
        operator.observe(ns.name, "web", &status);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operator_addr = listener.local_addr().unwrap();
    tokio::spawn(sluice_operator::kube::metrics::serve(
        listener,
        operator.clone(),
    ));

    let prometheus = Prometheus2::start(
        &[
            (proxies[0].admin_addr, SHOP.name),
            (proxies[1].admin_addr, BLOG.name),
        ],
        operator_addr,
    )
    .await;
    eventually(
        "prometheus to scrape both proxies and the operator",
        Duration::from_secs(20),
        || async {
            let up = prometheus.query("up == 1").await;
            (up.len() == 3).then_some(())
        },
    )
    .await;
    // The release in shop fails once Prometheus has seen its counter at 0,
    // so increase() sees the step.
    eventually(
        "prometheus to see the release counters at 0",
        Duration::from_secs(20),
        || async {
            let zero = prometheus
                .query("sluice_canary_releases_total{result=\"failed\"} == 0")
                .await;
            (zero.len() == 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    operator.release_ended(SHOP.name, "web", "failed", 120.0);

    for (ns, proxy) in [&SHOP, &BLOG].into_iter().zip(&proxies) {
        for _ in 0..ns.requests {
            get(&format!("http://{}/", proxy.addr))
                .await
                .expect("request through the proxy");
        }
    }
    for ns in [&SHOP, &BLOG] {
        let total = format!("sum(sluice_requests_total{{namespace=\"{}\"}})", ns.name);
        let failed = format!(
            "sum(sluice_canary_releases_total{{namespace=\"{}\",result=\"failed\"}})",
            ns.name
        );
        eventually(
            "prometheus to scrape every request and the release's end",
            Duration::from_secs(20),
            || async {
                let requests = prometheus.query(&total).await.first()?.1;
                let releases = prometheus.query(&failed).await.first()?.1;
                (requests == ns.requests as f64 && releases == f64::from(ns.name == "shop"))
                    .then_some(())
            },
        )
        .await;
    }
    // A few more scrapes after the last request, so every rate window has
    // its end.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The variables' own queries, as Grafana runs them.
    let namespace_var = vars.iter().find(|v| v.name == "namespace").unwrap();
    let route_var = vars.iter().find(|v| v.name == "route").unwrap();
    let mut namespaces = prometheus
        .label_values(&render(
            namespace_var.query.as_deref().expect("namespace query"),
            &vars,
            &[],
        ))
        .await;
    namespaces.sort();
    assert_eq!(namespaces, ["blog", "shop"], "the namespace variable");

    for ns in [&SHOP, &BLOG] {
        let picks = [("namespace", pick(&[ns.name])), ("route", Pick::All)];
        let routes = prometheus
            .label_values(&render(
                route_var.query.as_deref().expect("route query"),
                &vars,
                &picks,
            ))
            .await;
        assert_eq!(routes, ["web"], "the route variable in {}", ns.name);

        let mut results = BTreeMap::new();
        for (title, ref_id, expr) in &queries {
            let rendered = render(expr, &vars, &picks);
            let series = prometheus.query(&rendered).await;
            for (labels, value) in &series {
                assert_eq!(
                    labels.get("namespace").map(String::as_str),
                    Some(ns.name),
                    "panel {title:?} query {ref_id} rendered for {} returned {labels:?} = {value}: {rendered}",
                    ns.name
                );
            }
            results.insert((title.clone(), ref_id.clone()), series);
        }
        let panel = |title: &str, ref_id: &str| -> &Vec<(BTreeMap<String, String>, f64)> {
            results
                .iter()
                .find(|((t, r), _)| t.starts_with(title) && r == ref_id)
                .map(|(_, s)| s)
                .unwrap_or_else(|| panic!("the dashboard has no panel {title:?} {ref_id}"))
        };
        let by = |series: &Vec<(BTreeMap<String, String>, f64)>, key: &str, value: &str| {
            series
                .iter()
                .filter(|(l, _)| l.get(key).map(String::as_str) == Some(value))
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        let context = format!("namespace {}: {results:#?}", ns.name);

        // Request rate: the split of the traffic sent here, and about its
        // total over the one-minute window.
        let rates = panel("Request rate", "A");
        let canary = by(rates, "backend", "canary");
        let stable = by(rates, "backend", "stable");
        let share = 100.0 * canary / (canary + stable);
        assert!(
            near(share, ns.weight, 0.05),
            "canary share {share}: {context}"
        );
        let per_minute = 60.0 * (canary + stable);
        assert!(
            near(per_minute, ns.requests as f64, 0.35),
            "{per_minute} requests a minute for {} sent: {context}",
            ns.requests
        );

        // Success rate: the canary's by its fault rate, stable all well.
        let success = panel("Success rate", "A");
        let canary_success = by(success, "backend", "canary");
        let stable_success = by(success, "backend", "stable");
        assert!(
            near(canary_success, 100.0 * (1.0 - ns.canary_error_rate), 0.01),
            "canary success {canary_success}%: {context}"
        );
        assert!(
            near(stable_success, 100.0, 1e-9),
            "stable success {stable_success}%: {context}"
        );

        // Weights: the proxy's and the operator's, this namespace's only.
        let weights = panel("Canary weight", "A");
        assert_eq!(weights.len(), 1, "{context}");
        assert_eq!(weights[0].1, ns.weight, "{context}");
        let operator_weights = panel("Canary weight", "B");
        assert_eq!(operator_weights.len(), 1, "{context}");
        assert_eq!(operator_weights[0].1, ns.weight, "{context}");

        // Release outcomes: the failed release is shop's alone.
        let outcomes = panel("Release outcomes", "A");
        let failed = by(outcomes, "result", "failed");
        if ns.name == "shop" {
            assert!((0.9..=1.5).contains(&failed), "{context}");
        } else {
            assert_eq!(failed, 0.0, "{context}");
        }

        // Failures by code: only where the canary fails.
        let failures = panel("Failures by backend and code", "A");
        if ns.canary_error_rate > 0.0 {
            let canary_failures = 60.0 * by(failures, "backend", "canary");
            let sent = ns.requests as f64 * ns.weight / 100.0;
            assert!(
                near(canary_failures, sent, 0.35),
                "{canary_failures} failures a minute for {sent} sent: {context}"
            );
        } else {
            // The proxy keeps its failure series at 0 from the start.
            let total: f64 = failures.iter().map(|(_, v)| v).sum();
            assert_eq!(total, 0.0, "{context}");
        }
        assert!(!panel("p95 latency", "A").is_empty(), "{context}");
    }

    // Both namespaces picked at once: one line each, never summed together.
    let both = [("namespace", Pick::All), ("route", pick(&["web"]))];
    let (_, _, weight_expr) = queries
        .iter()
        .find(|(t, r, _)| t == "Canary weight" && r == "A")
        .unwrap();
    let mut lines: Vec<(String, f64)> = prometheus
        .query(&render(weight_expr, &vars, &both))
        .await
        .into_iter()
        .map(|(l, v)| (l["namespace"].clone(), v))
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        lines,
        [
            ("blog".to_string(), BLOG.weight),
            ("shop".to_string(), SHOP.weight)
        ]
    );
}

#[test]
fn rendering_escapes_and_joins_picks_as_grafana_does() {
    let vars = vec![Variable {
        name: "namespace".into(),
        multi_or_all: true,
        all_value: Some(".*".into()),
        query: None,
    }];
    let expr = "x{namespace=~\"$namespace\"} + y{namespace=~\"${namespace}\"}";
    assert_eq!(
        render(expr, &vars, &[("namespace", pick(&["shop"]))]),
        "x{namespace=~\"shop\"} + y{namespace=~\"shop\"}"
    );
    assert_eq!(
        render(expr, &vars, &[("namespace", pick(&["a.b", "c"]))]),
        "x{namespace=~\"(a\\\\.b|c)\"} + y{namespace=~\"(a\\\\.b|c)\"}"
    );
    assert_eq!(
        render(expr, &vars, &[("namespace", Pick::All)]),
        "x{namespace=~\".*\"} + y{namespace=~\".*\"}"
    );
}
