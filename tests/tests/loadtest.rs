//! Tests of `sluice-load`: the report tells the truth, the backend's faults
//! behave as configured, and bad usage exits 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use sluice_loadtest::{LoadControl, LoadOptions, run};
use sluice_tests::*;

#[tokio::test]
async fn report_counts_equal_what_the_backend_saw() {
    let b = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            error_rate: 0.3,
            error_status: 502,
            ..Faults::default()
        },
        ..BackendOptions::new("app")
    })
    .await
    .unwrap();
    let mut o = LoadOptions::new(&format!("{}/x", b.url())).unwrap();
    o.connections = 4;
    o.requests = Some(1500);
    o.count_header = Some(http::HeaderName::from_static("x-backend"));
    let report = run(o, LoadControl::new()).await.unwrap();
    let stats = b.stats();
    assert_eq!(report.requests, 1500);
    assert_eq!(stats.requests, 1500);
    assert_eq!(report.status_counts, stats.by_status);
    assert_eq!(report.header_counts.get("app"), Some(&1500));
    assert_eq!(report.header_status_counts["app"], stats.by_status);
    assert!(report.errors.is_empty());
    assert_eq!(report.histogram.len(), 1500);
}

#[tokio::test]
async fn count_header_splits_counts_by_backend_through_the_proxy() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let routes = format!(
        "  - {{ name: web, stable: '{}', canary: '{}', canary_weight: 20 }}\n",
        v1.url(),
        v2.url()
    );
    let proxy = start_proxy(&proxy_yaml(&routes)).await;
    let mut o = LoadOptions::new(&format!("http://{}/", proxy.addr)).unwrap();
    o.connections = 5;
    o.requests = Some(1000);
    o.count_header = Some(http::HeaderName::from_static("x-backend"));
    let report = run(o, LoadControl::new()).await.unwrap();
    assert_eq!(report.header_counts.get("v1"), Some(&800));
    assert_eq!(report.header_counts.get("v2"), Some(&200));
    assert_eq!(v2.stats().requests, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_shows_a_one_second_stall() {
    let b = backend("app").await;
    let mut o = LoadOptions::new(&b.url()).unwrap();
    o.connections = 2;
    o.rate = Some(200.0);
    o.duration = Some(Duration::from_secs(4));
    let control = LoadControl::new();
    let run_task = tokio::spawn(run(o, control.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = put_json(
        &format!("{}/_backend/faults", b.url()),
        json!({"stall": "1s"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = run_task.await.unwrap().unwrap();
    // Closed-loop tools would count one slow request; the open loop also
    // charges every request that was due while the connection was stuck.
    assert!(
        report.latency.max_ms >= 1000.0,
        "max {} ms hides the stall",
        report.latency.max_ms
    );
    assert!(
        report.latency.p999_ms >= 500.0,
        "p99.9 {} ms hides the stall",
        report.latency.p999_ms
    );
    assert!(
        report.latency.p99_ms >= 100.0,
        "p99 {} ms hides the stall",
        report.latency.p99_ms
    );
    assert!(
        report.latency.p50_ms < 50.0,
        "p50 {} ms",
        report.latency.p50_ms
    );
    let expected = 200.0 * 4.0;
    assert!(
        (report.requests as f64 - expected).abs() <= expected * 0.05,
        "{} requests at 200/s over 4s",
        report.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_at_an_even_pace_not_in_millisecond_bursts() {
    // 4 connections at 2,000 req/s in total: one request due every 0.5 ms,
    // the connections' schedules staggered by 0.5 ms. Sleeping on a
    // millisecond timer wheel would end every wait on a millisecond tick,
    // so the requests would arrive in pairs (every other gap near zero);
    // paced to within 0.1 ms, the gaps stay near 0.5 ms.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(4096)));
    let seen = arrivals.clone();
    let addr = serve_http(move |_req| {
        seen.lock().unwrap().push(std::time::Instant::now());
        async { http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))) }
    })
    .await;
    let mut o = LoadOptions::new(&format!("http://{addr}/")).unwrap();
    o.connections = 4;
    o.rate = Some(2000.0);
    o.duration = Some(Duration::from_millis(1500));
    let report = run(o, LoadControl::new()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut times = arrivals.lock().unwrap().clone();
    times.sort();
    // Skip the first 100 (connections being opened).
    let gaps: Vec<Duration> = times[100..].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() > 2000, "{} requests arrived", times.len());
    let bunched = gaps
        .iter()
        .filter(|g| **g < Duration::from_micros(150))
        .count();
    let share = bunched as f64 / gaps.len() as f64;
    assert!(
        share < 0.25,
        "{bunched} of {} gaps under 0.15 ms ({:.0}%): the load arrives in bursts",
        gaps.len(),
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warmup_is_sent_but_left_out_of_the_report() {
    // The backend's first request stalls 500 ms: inside the warm-up, so the
    // report, of the steady state after it, must not show it.
    let b = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            stall: Some(Duration::from_millis(500)),
            ..Faults::default()
        },
        ..BackendOptions::new("app")
    })
    .await
    .unwrap();
    let mut o = LoadOptions::new(&b.url()).unwrap();
    o.connections = 2;
    o.rate = Some(200.0);
    o.warmup = Duration::from_secs(1);
    o.duration = Some(Duration::from_secs(1));
    let report = run(o, LoadControl::new()).await.unwrap();
    let seen = b.stats().requests;
    assert!(
        (report.requests as f64 - 200.0).abs() <= 10.0,
        "{} requests reported for 1 s at 200/s after the warm-up",
        report.requests
    );
    assert!(
        seen >= report.requests + 190,
        "the backend saw {seen} requests, the report {}: the warm-up was not sent",
        report.requests
    );
    assert_eq!(report.histogram.len(), report.requests);
    assert!(
        report.latency.max_ms < 250.0,
        "max {} ms: the warm-up's 500 ms stall is in the report",
        report.latency.max_ms
    );

    // A request bound counts measured requests only.
    let mut o = LoadOptions::new(&b.url()).unwrap();
    o.connections = 2;
    o.warmup = Duration::from_millis(200);
    o.duration = None;
    o.requests = Some(300);
    let before = b.stats().requests;
    let report = run(o, LoadControl::new()).await.unwrap();
    assert_eq!(report.requests, 300);
    assert_eq!(report.status_counts.values().sum::<u64>(), 300);
    assert!(
        b.stats().requests - before > 300,
        "closed loop: no request was sent in the warm-up"
    );
}

#[tokio::test]
async fn error_injection_lands_in_the_binomial_band() {
    let b = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            error_rate: 0.08,
            ..Faults::default()
        },
        seed: 42,
        ..BackendOptions::new("app")
    })
    .await
    .unwrap();
    let mut o = LoadOptions::new(&b.url()).unwrap();
    o.connections = 8;
    o.requests = Some(10_000);
    let report = run(o, LoadControl::new()).await.unwrap();
    let errors = report.status_counts.get(&500).copied().unwrap_or(0) as f64;
    // n·p = 800, sd = sqrt(n·p·(1-p)) ≈ 27; allow 4 sd.
    assert!(
        (errors - 800.0).abs() <= 4.0 * 27.2,
        "{errors} errors out of 10000 at rate 0.08"
    );
    assert_eq!(report.requests, 10_000);
}

#[tokio::test]
async fn faults_change_at_runtime_and_bad_faults_are_refused() {
    let b = backend("app").await;
    let url = format!("{}/_backend/faults", b.url());
    let (status, _) = put_json(&url, json!({"error_rate": 1.0, "error_status": 503}), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&format!("{}/any", b.url())).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = put_json(&url, json!({"error_rate": 2}), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("error_rate"),
        "{body}"
    );
    let (status, body) = put_json(&url, json!({"latency": "soon"}), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("latency"),
        "{body}"
    );
    assert_eq!(
        b.faults().error_status,
        503,
        "a refused patch changes nothing"
    );
    let (_, _, stats) = get(&format!("{}/_backend/stats", b.url())).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["by_status"]["503"], 1);
}

#[test]
fn usage_errors_exit_2_naming_the_flag() {
    for (args, expected) in [
        (vec!["run", "ftp://x"], "scheme `ftp`"),
        (vec!["run", "http://127.0.0.1:1/", "-d", "ten"], "ten"),
        (vec!["run", "http://127.0.0.1:1/", "--rate", "0"], "--rate"),
        (
            vec!["run", "http://127.0.0.1:1/", "-c", "0"],
            "--connections",
        ),
        (vec!["backend", "--error-rate", "1.5"], "--error-rate"),
        (vec!["backend", "--latency", "slow"], "--latency"),
    ] {
        let out = Command::new(bin("sluice-load"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn the_cli_backend_prints_its_port_and_the_cli_run_reports_json() {
    let mut child = Command::new(bin("sluice-load"))
        .args(["backend", "--listen", "127.0.0.1:0", "--name", "cli"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("first line names the address")
        .to_string();
    let out = Command::new(bin("sluice-load"))
        .args([
            "run",
            &format!("http://{addr}/"),
            "-n",
            "200",
            "-c",
            "2",
            "--json",
            "--count-header",
            "x-backend",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["requests"], 200);
    assert_eq!(report["status_counts"]["200"], 200);
    assert_eq!(report["header_counts"]["cli"], 200);
    assert!(report["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
}
