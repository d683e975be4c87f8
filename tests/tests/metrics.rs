//! The canary metrics miss no failure: clients that give up, upstreams that
//! die mid-body, A/B traffic kept apart, and latency gates decided by the
//! counts at a bucket bound (real proxy, real backends, real sockets).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice_operator::analysis::Outcome;
use sluice_operator::plan::{LatencyCheck, Plan};
use sluice_operator::provider::{PrometheusProvider, ProxyProvider};
use sluice_tests::*;

fn route(stable: &str, canary: &str, weight: f64) -> String {
    format!(
        "  - name: web\n    stable: {stable}\n    canary: {canary}\n    canary_weight: {weight}\n"
    )
}

/// Sends `n` GETs, each on its own connection, each given up after `patience`.
async fn impatient_requests(url: &str, n: usize, patience: Duration, http2: bool) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = if http2 { h2_client() } else { h1_client() };
            let req = Request::get(url).body(Full::default()).unwrap();
            tokio::time::timeout(patience, client.request(req))
                .await
                .is_err()
        }));
    }
    let mut gave_up = 0;
    for t in tasks {
        if t.await.unwrap() {
            gave_up += 1;
        }
    }
    gave_up
}

async fn client_that_gives_up_is_a_499_failure(http2: bool) {
    let _shared = LATENCY_SENSITIVE.read().await;
    let stable = backend("stable").await;
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            latency: Latency::Fixed(Duration::from_secs(5)),
            ..Faults::default()
        },
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&route(&stable.url(), &canary.url(), 50.0))).await;
    let url = format!("http://{}/", proxy.addr);
    let started = std::time::Instant::now();
    let gave_up = impatient_requests(&url, 10, Duration::from_secs(1), http2).await;
    assert_eq!(gave_up, 5, "the five canary requests hang; stable answers");
    let canary_weighted = [
        ("route", "web"),
        ("backend", "canary"),
        ("decision", "weight"),
    ];
    let m = eventually(
        "the five abandoned canary requests to be counted",
        Duration::from_secs(3),
        || async {
            let m = scrape(proxy.admin_addr).await;
            (m.sum(
                "sluice_requests_total",
                &[("backend", "canary"), ("code", "499")],
            ) == 5.0)
                .then_some(m)
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "counted when the client left, not when the canary finally answered"
    );
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[
                ("backend", "canary"),
                ("code", "499"),
                ("classification", "failure"),
                ("decision", "weight")
            ]
        ),
        5.0
    );
    assert_eq!(
        m.sum(
            "sluice_requests_total",
            &[("backend", "stable"), ("classification", "success")]
        ),
        5.0
    );
    assert_eq!(
        m.sum("sluice_requests_total", &[("classification", "failure")]),
        5.0,
        "only the abandoned requests failed"
    );
    // Their time so far is in the histogram: about the client's patience.
    let buckets = m.buckets("sluice_request_duration_seconds_bucket", &canary_weighted);
    let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c);
    assert_eq!(at(0.9), Some(0.0), "{buckets:?}");
    assert_eq!(at(2.0), Some(5.0), "{buckets:?}");
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[]),
        0.0,
        "a client giving up is not an upstream error"
    );
}

#[tokio::test]
async fn an_http1_client_that_gives_up_waiting_is_a_499_failure_on_the_backend_it_waited_for() {
    client_that_gives_up_is_a_499_failure(false).await;
}

#[tokio::test]
async fn an_http2_client_that_resets_its_stream_is_a_499_failure_on_the_backend_it_waited_for() {
    client_that_gives_up_is_a_499_failure(true).await;
}

#[tokio::test]
async fn ab_rule_traffic_is_counted_apart_from_weighted_traffic() {
    let _shared = LATENCY_SENSITIVE.read().await;
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let routes = format!(
        "{}    canary_match:\n      - {{ header: x-canary, value: always }}\n",
        route(&stable.url(), &canary.url(), 0.0)
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let client = h1_client();
    for _ in 0..100 {
        let req = Request::get(format!("http://{}/", proxy.addr))
            .header("x-canary", "always")
            .body(Full::default())
            .unwrap();
        let (status, headers, _) = send(&client, req).await.unwrap();
        assert_eq!(
            (status, &headers["x-backend"]),
            (StatusCode::OK, &"canary".parse().unwrap())
        );
    }
    for _ in 0..10 {
        let (status, _, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let m = scrape(proxy.admin_addr).await;
    let count = |backend: &str, decision: &str| {
        m.sum(
            "sluice_requests_total",
            &[("backend", backend), ("decision", decision)],
        )
    };
    assert_eq!(count("canary", "match"), 100.0);
    assert_eq!(
        count("canary", "weight"),
        0.0,
        "the weighted canary saw nothing"
    );
    assert_eq!(count("stable", "weight"), 10.0);
    assert_eq!(
        count("stable", "match"),
        0.0,
        "stable traffic is always weight"
    );
    assert_eq!(
        m.sum(
            "sluice_request_duration_seconds_count",
            &[("backend", "canary"), ("decision", "weight")]
        ),
        0.0
    );
    assert_eq!(
        m.sum(
            "sluice_request_duration_seconds_count",
            &[("backend", "canary"), ("decision", "match")]
        ),
        100.0
    );
    // The gate's reading of the window: nothing weighted, A/B shown apart.
    let mut provider = ProxyProvider::new(&format!("http://{}", proxy.admin_addr), "web");
    provider.reset().await;
    for _ in 0..30 {
        let req = Request::get(format!("http://{}/", proxy.addr))
            .header("x-canary", "always")
            .body(Full::default())
            .unwrap();
        send(&client, req).await.unwrap();
    }
    let analysis = provider.analyse(&Plan::default()).await;
    assert_eq!(analysis.canary_requests, Some(0));
    assert_eq!(analysis.verdict(), Outcome::Inconclusive);
    let ab = analysis.ab.expect("A/B traffic is reported");
    assert_eq!(ab.requests, 30);
    assert_eq!(ab.success_rate, Some(100.0));
}

#[tokio::test]
async fn an_upstream_that_closes_mid_body_is_a_failure_under_the_code_it_sent() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _shared = LATENCY_SENSITIVE.read().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: 'http://{upstream}' }}\n"
    )))
    .await;
    for _ in 0..3 {
        let resp = h1_client()
            .request(
                Request::get(format!("http://{}/", proxy.addr))
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.into_body().collect().await.is_err());
    }
    let m = eventually("three failures", Duration::from_secs(5), || async {
        let m = scrape(proxy.admin_addr).await;
        (m.sum(
            "sluice_requests_total",
            &[("code", "200"), ("classification", "failure")],
        ) == 3.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        m.sum("sluice_requests_total", &[("classification", "success")]),
        0.0
    );
    assert_eq!(
        m.sum("sluice_upstream_errors_total", &[("kind", "reset")]),
        3.0
    );
}

/// A canary at weight 100 behind a proxy, `n` requests through it, and the
/// `p99<=300ms` gate judged by both providers over exactly that traffic.
/// The p99 gate tests measure time against a bucket bound 30 ms above the
/// slowest request: each runs alone (write), so that it is not measured on
/// the CPU of another test of this file that loads a proxy or runs a
/// Prometheus (those take it to read, and run alongside each other).
static LATENCY_SENSITIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn p99_gate_on(faults: Faults, n: usize) -> (Outcome, Outcome, f64) {
    let _alone = LATENCY_SENSITIVE.write().await;
    let stable = backend("stable").await;
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults,
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&route(&stable.url(), &canary.url(), 100.0))).await;
    let prometheus = Prometheus::start(&[proxy.admin_addr]).await;
    prometheus.wait_for_targets_up(1).await;
    let admin = format!("http://{}", proxy.admin_addr);
    let mut proxy_provider = ProxyProvider::new(&admin, "web");
    proxy_provider.reset().await;
    let mut load = sluice_loadtest::LoadOptions::new(&format!("http://{}/", proxy.addr)).unwrap();
    load.connections = 50;
    load.requests = Some(n as u64);
    load.duration = Some(Duration::from_secs(60));
    let report = sluice_loadtest::run(load, sluice_loadtest::LoadControl::new())
        .await
        .unwrap();
    assert_eq!(report.status_counts.get(&200).copied(), Some(n as u64));
    let plan = Plan {
        min_requests: 1,
        latency: vec![LatencyCheck {
            quantile: 0.99,
            max: Duration::from_millis(300),
        }],
        ..Plan::default()
    };
    let by_proxy = proxy_provider.analyse(&plan).await;
    assert_eq!(by_proxy.canary_requests, Some(n as u64));
    let p99 = by_proxy.checks.iter().find(|c| c.name == "p99").unwrap();
    let value = p99.value.unwrap();
    // Prometheus over a window covering all of it, once it has scraped the end.
    let mut prom = PrometheusProvider::new(&prometheus.url, "web");
    prom.window_floor = Duration::from_secs(60);
    let total_query =
        "sum(sluice_requests_total{route=\"web\",backend=\"canary\",decision=\"weight\"})"
            .to_string();
    eventually(
        "prometheus to scrape every request",
        Duration::from_secs(10),
        || {
            let prom = &prom;
            let q = total_query.clone();
            async move { (prom.query(&q).await.ok()? == n as f64).then_some(()) }
        },
    )
    .await;
    let by_prometheus = prom.analyse(&plan).await;
    let prom_p99 = by_prometheus
        .checks
        .iter()
        .find(|c| c.name == "p99")
        .unwrap();
    (p99.outcome, prom_p99.outcome, value)
}

#[tokio::test]
async fn a_p99_gate_fails_when_1_2_percent_take_490ms() {
    let faults = Faults {
        latency: Latency::Fixed(Duration::from_millis(10)),
        slow_rate: 0.012,
        slow_latency: Latency::Fixed(Duration::from_millis(490)),
        ..Faults::default()
    };
    let (by_proxy, by_prometheus, value) = p99_gate_on(faults, 1000).await;
    assert_eq!(by_proxy, Outcome::Fail, "p99 read as {value}");
    assert_eq!(by_prometheus, Outcome::Fail);
    assert!(
        value > 0.45 && value <= 0.5,
        "p99 {value} lies in (450ms, 500ms]"
    );
}

#[tokio::test]
async fn a_p99_gate_passes_when_every_request_takes_255_to_270ms() {
    let faults = Faults {
        latency: Latency::Uniform(Duration::from_millis(255), Duration::from_millis(270)),
        ..Faults::default()
    };
    let (by_proxy, by_prometheus, value) = p99_gate_on(faults, 400).await;
    assert_eq!(by_proxy, Outcome::Pass, "p99 read as {value}");
    assert_eq!(by_prometheus, Outcome::Pass);
    assert!(
        value > 0.25 && value <= 0.3,
        "p99 {value} lies in (250ms, 300ms]"
    );
}

#[tokio::test]
async fn bad_grpc_codes_and_off_layout_latency_gates_are_usage_errors_naming_the_field() {
    let dir = TempDir::new("metrics-bad-input");
    let file = dir.path.join("bad.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:1\nroutes:\n  - name: grpc\n    protocol: http2\n    stable: http://127.0.0.1:2\n    grpc_failure_codes: [INTERNAL, TEAPOT]\n",
    )
    .unwrap();
    let (code, stderr) = proxy_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].grpc_failure_codes[1]: `TEAPOT` is not a gRPC status code; use one of OK, CANCELLED, UNKNOWN"),
        "{stderr}"
    );
    let (code, stderr) = rollout_refusal(&["--latency", "p99<=270ms"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--latency: `p99<=270ms`: 270ms is not a bound")
            && stderr.contains("250ms or 300ms"),
        "{stderr}"
    );
}

/// Two apps named `web` in two namespaces, one Prometheus: each release is
/// judged on its own namespace's traffic. The canary in `shop` fails 30%,
/// the one in `blog` 1% (like its stable); neither reading mixes in the other.
#[tokio::test]
async fn the_same_route_in_two_namespaces_is_read_apart() {
    let _shared = LATENCY_SENSITIVE.read().await;
    let mut proxies = Vec::new();
    let mut keep = Vec::new();
    for rate in [0.30, 0.01] {
        let stable = sluice_loadtest::start_backend(BackendOptions {
            faults: Faults {
                error_rate: 0.01,
                ..Faults::default()
            },
            ..BackendOptions::new("stable")
        })
        .await
        .unwrap();
        let canary = sluice_loadtest::start_backend(BackendOptions {
            faults: Faults {
                error_rate: rate,
                ..Faults::default()
            },
            ..BackendOptions::new("canary")
        })
        .await
        .unwrap();
        let proxy = start_proxy(&proxy_yaml(&route(&stable.url(), &canary.url(), 50.0))).await;
        proxies.push(proxy);
        keep.push((stable, canary));
    }
    let prometheus = Prometheus::start_in_namespaces(&[
        (proxies[0].admin_addr, "shop"),
        (proxies[1].admin_addr, "blog"),
    ])
    .await;
    prometheus.wait_for_targets_up(2).await;
    let n = 2000u64;
    for proxy in &proxies {
        let mut load =
            sluice_loadtest::LoadOptions::new(&format!("http://{}/", proxy.addr)).unwrap();
        load.connections = 20;
        load.requests = Some(n);
        load.duration = Some(Duration::from_secs(60));
        sluice_loadtest::run(load, sluice_loadtest::LoadControl::new())
            .await
            .unwrap();
    }
    let plan = Plan {
        min_requests: 1,
        success_rate_min: Some(95.0),
        ..Plan::default()
    };
    let mut readings = Vec::new();
    for ns in ["shop", "blog"] {
        let mut prom = PrometheusProvider::new(&prometheus.url, "web").in_namespace(ns);
        prom.window_floor = Duration::from_secs(60);
        let total = format!(
            "sum(sluice_requests_total{{{},backend=\"canary\",decision=\"weight\"}})",
            prom.matchers()
        );
        eventually(
            "prometheus to scrape every request",
            Duration::from_secs(15),
            || {
                let (prom, q) = (&prom, total.clone());
                async move { (prom.query(&q).await.ok()? == (n / 2) as f64).then_some(()) }
            },
        )
        .await;
        // (The total above is exact: exactly this namespace's requests. The
        // analysis's count uses increase(), which Prometheus extrapolates.)
        let a = prom.analyse(&plan).await;
        let success = a.checks.iter().find(|c| c.name == "success-rate").unwrap();
        readings.push(success.value.unwrap());
    }
    assert!(
        readings[0] < 80.0 && readings[1] > 95.0,
        "success rates shop {:.1}%, blog {:.1}%",
        readings[0],
        readings[1]
    );
}
