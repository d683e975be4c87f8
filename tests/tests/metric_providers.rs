//! Custom checks from other metric sources (issue #27): a generic web
//! provider (a JSON API read by JSONPath) and Datadog (its documented
//! `GET /api/v1/query` API, here a stand-in that answers like it and wants
//! the `DD-API-KEY` and `DD-APPLICATION-KEY` headers, which come from the
//! access file). They gate releases whose counters the proxy provider
//! reads: a business metric within its bounds lets the release through,
//! one outside them rolls it back, naming the check.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::*;

const API_KEY: &str = "dd-api-0a1b2c";
const APP_KEY: &str = "dd-app-3d4e5f";

/// The Datadog stand-in: `GET /api/v1/query?from&to&query` with both keys
/// answers a series whose last point is `value` (403 without the keys, 400
/// without the parameters, as Datadog does); every query string is kept.
async fn datadog(value: f64) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let keys = req
                .headers()
                .get("dd-api-key")
                .is_some_and(|v| v == API_KEY)
                && req
                    .headers()
                    .get("dd-application-key")
                    .is_some_and(|v| v == APP_KEY);
            let query = req.uri().query().unwrap_or_default().to_string();
            let has = |p: &str| query.split('&').any(|kv| kv.starts_with(&format!("{p}=")));
            let (status, body) = if req.uri().path() != "/api/v1/query" {
                (404, json!({"errors": ["Not found"]}))
            } else if !keys {
                (403, json!({"errors": ["Forbidden"]}))
            } else if !(has("from") && has("to") && has("query")) {
                (
                    400,
                    json!({"errors": ["The parameters from, to and query are required"]}),
                )
            } else {
                log.lock().unwrap().push(query.clone());
                let now = 1_700_000_000_000.0_f64;
                (
                    200,
                    json!({
                        "status": "ok", "res_type": "time_series", "query": "q",
                        "series": [{"metric": "checkout.errors", "pointlist": [
                            [now - 20_000.0, 0.1], [now - 10_000.0, value], [now, null]
                        ]}],
                    }),
                )
            };
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

/// A JSON API holding a business metric.
async fn web_api() -> std::net::SocketAddr {
    serve_http(|_req: http::Request<hyper::body::Incoming>| async {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"data": {"checkout": {"conversion": "0.031", "orders": [1, 2]}}})
                    .to_string(),
            )))
            .unwrap()
    })
    .await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `sluice rollout` on a fresh setup with `checks` (YAML) and the access
/// file for the Datadog stand-in; exit code and stdout.
async fn release(
    checks: &str,
    datadog_value: f64,
    extra: &[&str],
) -> (i32, String, String, Vec<String>) {
    let dir = TempDir::new("providers");
    let stable = sluice_loadtest::start_backend(BackendOptions::new("stable"))
        .await
        .unwrap();
    let canary = sluice_loadtest::start_backend(BackendOptions::new("canary"))
        .await
        .unwrap();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let (dd, dd_seen) = datadog(datadog_value).await;
    let api = web_api().await;
    let checks = checks
        .replace("DATADOG", &format!("http://{dd}"))
        .replace("API", &format!("http://{api}"));
    let access = format!(
        "- url: http://{dd}/\n  headers:\n    DD-API-KEY: {}\n    DD-APPLICATION-KEY: {}\n",
        write(&dir.path, "api-key", API_KEY),
        write(&dir.path, "app-key", APP_KEY)
    );
    let mut args: Vec<String> = vec![
        "rollout".into(),
        "--admin".into(),
        format!("http://{}", proxy.admin_addr),
        "--route".into(),
        "web".into(),
        "--canary".into(),
        canary.url(),
        "--steps".into(),
        "50".into(),
        "--interval".into(),
        "1s".into(),
        "--min-requests".into(),
        "10".into(),
        "--gate".into(),
        "threshold".into(),
        "--failure-limit".into(),
        "2".into(),
        "--checks-file".into(),
        write(&dir.path, "checks.yaml", &checks),
        "--access-file".into(),
        write(&dir.path, "access.yaml", &access),
        "--output".into(),
        "json".into(),
        "--control-socket".into(),
        dir.path.join("control.sock").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (load, _report) = steady_load(&format!("http://{}/", proxy.addr), 100.0);
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            Command::new(bin("sluice")).args(args),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    load.stop();
    let seen = dd_seen.lock().unwrap().clone();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        seen,
    )
}

const CHECKS: &str = r#"
- name: conversion
  provider: web
  url: API/metrics
  json_path: $.data.checkout.conversion
  min: 0.02
- name: checkout-errors
  provider: datadog
  address: DATADOG
  query: "avg:checkout.errors{version:canary}"
  max: 1
"#;

#[tokio::test]
async fn web_and_datadog_checks_within_bounds_let_a_release_through() {
    let (code, stdout, stderr, dd) = release(CHECKS, 0.4, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let ticks: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let judged = ticks
        .iter()
        .flat_map(|t| t["checks"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["outcome"] == "pass")
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["value"].as_f64().unwrap(),
            )
        })
        .collect::<Vec<_>>();
    assert!(judged.contains(&("conversion".into(), 0.031)), "{judged:?}");
    assert!(
        judged.contains(&("checkout-errors".into(), 0.4)),
        "{judged:?}"
    );
    assert!(!dd.is_empty());
    assert!(
        dd[0].contains("query=avg%3Acheckout.errors%7Bversion%3Acanary%7D"),
        "{dd:?}"
    );
    assert!(!stdout.contains(API_KEY) && !stderr.contains(API_KEY));
}

#[tokio::test]
async fn a_datadog_metric_out_of_bounds_rolls_the_release_back() {
    let (code, stdout, stderr, _) = release(CHECKS, 7.5, &[]).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["phase"], "Failed");
    assert!(
        stdout.contains("checkout-errors") && stdout.contains("7.5"),
        "the rollback names the check and its value: {stdout}"
    );
}

/// A JSONPath that matches nothing, or two values, leaves its check
/// Inconclusive with the reason; nothing is promoted on it.
#[tokio::test]
async fn a_json_path_that_matches_nothing_is_inconclusive_with_the_reason() {
    let checks = r#"
- name: conversion
  provider: web
  url: API/metrics
  json_path: $.data.checkout.missing
  min: 0.02
"#;
    let (code, stdout, _, _) = release(checks, 0.0, &["--progress-deadline", "4s"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("json_path `$.data.checkout.missing` matched nothing"),
        "{stdout}"
    );
    assert!(!stdout.contains("\"Succeeded\""));
}

#[tokio::test]
async fn bad_checks_are_refused_naming_the_check_and_field() {
    let dir = TempDir::new("providers-bad");
    for (yaml, expected) in [
        (
            "- name: c\n  provider: web\n  url: http://a/\n  json_path: data.x\n  min: 1\n",
            "check `c`: json_path: `data.x` is not a JSONPath",
        ),
        (
            "- name: c\n  provider: web\n  url: ftp://a/\n  json_path: $.x\n",
            "check `c`: url:",
        ),
        (
            "- name: c\n  provider: datadog\n  max: 1\n",
            "check `c`: query: empty",
        ),
        (
            "- name: c\n  provider: newrelic\n  query: x\n",
            "unknown variant `newrelic`",
        ),
        (
            "- name: c\n  provider: web\n  url: http://a/\n  jsonpath: $.x\n",
            "unknown field `jsonpath`",
        ),
        // Bounds no value can pass, or that every value passes.
        (
            "- name: c\n  query: up\n  min: 5\n  max: 1\n",
            "check `c`: min 5 is above max 1",
        ),
        (
            "- name: c\n  query: up\n  max: .nan\n",
            "check `c`: max: not a finite number",
        ),
        (
            "- name: c\n  query: up\n",
            "check `c`: set min, max or both",
        ),
        (
            "- name: c\n  query: up\n  max: 1\n- name: c\n  query: down\n  max: 1\n",
            "check `c`: name: used twice",
        ),
        (
            "- name: c\n  provider: web\n  url: http://127.0.0.1:99999/\n  json_path: $.x\n  max: 1\n",
            "check `c`: url:",
        ),
        // A body is JSON, and only a POST sends one.
        (
            "- name: c\n  provider: web\n  url: http://a/\n  method: POST\n  body: '{x'\n  json_path: $.x\n  max: 1\n",
            "check `c`: body: not JSON",
        ),
        (
            "- name: c\n  provider: web\n  url: http://a/\n  body: '{}'\n  json_path: $.x\n  max: 1\n",
            "check `c`: body: only a POST sends one",
        ),
        // A field of another provider would be ignored.
        (
            "- name: c\n  query: up\n  url: http://a/\n  max: 1\n",
            "check `c`: url: not a field of provider prometheus",
        ),
        (
            "- name: c\n  provider: web\n  url: http://a/\n  query: up\n  json_path: $.x\n  max: 1\n",
            "check `c`: query: not a field of provider web",
        ),
        (
            "- name: c\n  provider: datadog\n  query: avg:x\n  json_path: $.x\n  max: 1\n",
            "check `c`: json_path: not a field of provider datadog",
        ),
        (
            "- name: c\n  provider: datadog\n  query: avg:x\n  address: 'http://'\n  max: 1\n",
            "check `c`: address:",
        ),
        // A misspelt placeholder would reach Prometheus as written.
        (
            "- name: c\n  query: 'up{route=\"{{rout}}\"}'\n  max: 1\n",
            "check `c`: query: `{{rout}}` is not a placeholder",
        ),
    ] {
        let (code, stderr) =
            rollout_refusal(&["--checks-file", &write(&dir.path, "checks.yaml", yaml)]);
        assert_eq!(code, Some(2), "{yaml}: {stderr}");
        assert!(
            stderr.contains("--checks-file") && stderr.contains(expected),
            "{yaml}: {stderr}"
        );
    }
}
