//! Flagger-compatible webhooks (issue #27): a release whose only traffic
//! comes from a load test that a stand-in for `flagger-loadtester` runs,
//! asked by a `rollout` webhook written as Flagger users write them
//! (`metadata.cmd`), with a blocking `pre-rollout` acceptance test, a
//! `confirm-traffic-increase` gate that first says no, and an `event`
//! webhook that hears every event.
//!
//! The stand-in follows flagger-loadtester's documented HTTP API: a POST
//! of the webhook payload; `metadata.type` `cmd` (the default) starts
//! `metadata.cmd` in the background unless the same command is already
//! running, and answers 200 at once; `bash` runs it and answers 200 when it
//! exits 0, 400 otherwise.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use sluice_tests::*;

type Seen = Arc<Mutex<Vec<Value>>>;

/// The loadtester stand-in; every payload it got.
async fn loadtester() -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let running: Arc<Mutex<BTreeMap<String, std::process::Child>>> = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let (log, running) = (log.clone(), running.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock().unwrap().push(payload.clone());
            let cmd = payload["metadata"]["cmd"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = payload["metadata"]["type"]
                .as_str()
                .unwrap_or("cmd")
                .to_string();
            let status = if cmd.is_empty() {
                400
            } else if kind == "bash" {
                let ok = tokio::task::spawn_blocking(move || {
                    Command::new("bash")
                        .args(["-c", &cmd])
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                })
                .await
                .unwrap();
                if ok { 200 } else { 400 }
            } else {
                let mut running = running.lock().unwrap();
                let busy = running
                    .get_mut(&cmd)
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
                if !busy {
                    let child = Command::new("bash")
                        .args(["-c", &cmd])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start the load test");
                    running.insert(cmd, child);
                }
                200
            };
            http::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

/// A webhook that records payloads and answers 200 from the `pass_after`-th
/// call on (403 before).
async fn recorder(pass_after: usize) -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let header = req
                .headers()
                .get("x-team")
                .map(|v| v.to_str().unwrap().to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            payload["x-team header"] = header.into();
            let mut all = log.lock().unwrap();
            all.push(payload);
            let status = if all.len() >= pass_after { 200 } else { 403 };
            http::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn a_release_driven_by_flagger_style_webhooks_and_a_loadtester() {
    let dir = TempDir::new("flagger-hooks");
    let faults = Faults {
        error_rate: 0.01,
        error_status: 500,
        ..Faults::default()
    };
    let stable = sluice_loadtest::start_backend(BackendOptions {
        faults: faults.clone(),
        seed: 2,
        ..BackendOptions::new("stable")
    })
    .await
    .unwrap();
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults,
        seed: 3,
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let (tester, tester_seen) = loadtester().await;
    let (gate, gate_seen) = recorder(2).await;
    let (events, events_seen) = recorder(1).await;
    let load = format!(
        "{} run --rate 150 --duration 60s --timeout 2s http://{}/",
        bin("sluice-load").display(),
        proxy.addr
    );
    let hooks = format!(
        r#"
- name: acceptance-test
  type: pre-rollout
  url: http://{tester}/
  timeout: 30s
  metadata:
    type: bash
    cmd: "curl -sf http://{proxy}/ -o /dev/null"
- name: load-test
  url: http://{tester}/
  timeout: 5s
  metadata:
    cmd: "{load}"
- name: traffic-gate
  type: confirm-traffic-increase
  url: http://{gate}/
  retries: 0
  headers:
    X-Team: payments
- name: announce
  type: event
  url: http://{events}/
"#,
        proxy = proxy.addr,
    );
    let file = dir.path.join("webhooks.yaml");
    std::fs::write(&file, hooks).unwrap();
    let args: Vec<String> = [
        "rollout",
        "--admin",
        &format!("http://{}", proxy.admin_addr),
        "--route",
        "web",
        "--canary",
        &canary.url(),
        "--steps",
        "20,50",
        "--interval",
        "2s",
        "--min-requests",
        "20",
        "--progress-deadline",
        "20s",
        "--gate",
        "threshold",
        "--success-rate",
        "95",
        "--webhooks-file",
        &file.display().to_string(),
        "--output",
        "json",
        "--control-socket",
        &dir.path.join("control.sock").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            Command::new(bin("sluice")).args(args),
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Stop the load test the loadtester started.
    let _ = Command::new("pkill")
        .args([
            "-f",
            &format!(
                "run --rate 150 --duration 60s --timeout 2s http://{}/",
                proxy.addr
            ),
        ])
        .status();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    // The loadtester got Flagger's payload: the acceptance test first
    // (pre-rollout), then the load test on every analysis tick.
    let tester_seen = tester_seen.lock().unwrap().clone();
    assert_eq!(tester_seen[0]["name"], "web", "{tester_seen:?}");
    assert_eq!(tester_seen[0]["kind"], "pre-rollout");
    assert_eq!(tester_seen[0]["metadata"]["type"], "bash");
    assert!(
        tester_seen[0]["checksum"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(tester_seen[0].get("phase").is_some());
    let rollout_calls = tester_seen
        .iter()
        .filter(|p| p["kind"] == "rollout")
        .count();
    assert!(rollout_calls >= 2, "{tester_seen:?}");
    // Only the load test sent traffic, and the canary got its share.
    assert!(
        canary.stats().requests > 20,
        "the load test never reached the canary"
    );

    // The traffic gate held the first increase (403), then let it pass.
    let gate_seen = gate_seen.lock().unwrap().clone();
    assert!(gate_seen.len() >= 2, "{gate_seen:?}");
    assert!(
        gate_seen
            .iter()
            .all(|p| p["kind"] == "confirm-traffic-increase")
    );
    assert!(gate_seen.iter().all(|p| p["x-team header"] == "payments"));
    assert!(
        stdout.contains("until the confirm-traffic-increase webhooks answer 2xx"),
        "no tick held for the gate: {stdout}"
    );

    // Every event went to the event webhook with Flagger's metadata.
    let events_seen = events_seen.lock().unwrap().clone();
    // The release's course, as Flagger sends it: its start, each weight
    // change, and its end.
    let messages: Vec<&str> = events_seen
        .iter()
        .filter_map(|e| e["metadata"]["eventMessage"].as_str())
        .collect();
    for expected in ["started", "advancing to", "promot"] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "no event saying `{expected}`: {messages:?}"
        );
    }
    for e in &events_seen {
        assert_eq!(e["kind"], "event");
        assert!(
            e["metadata"]["eventMessage"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(
            ["Normal", "Warning"].contains(&e["metadata"]["eventType"].as_str().unwrap_or("")),
            "{e}"
        );
        assert!(
            e["metadata"]["timestamp"]
                .as_str()
                .is_some_and(|t| t.parse::<u64>().is_ok()),
            "{e}"
        );
    }
}

/// Bad webhook lists are refused at start naming the file and the field.
#[tokio::test]
async fn bad_webhook_lists_are_refused_naming_the_field() {
    let dir = TempDir::new("flagger-hooks-bad");
    for (yaml, expected) in [
        (
            "- name: x\n  type: pre-rolout\n  url: http://a/\n",
            "unknown variant `pre-rolout`",
        ),
        ("- name: x\n  url: ftp://a/\n", "webhook `x`: url:"),
        ("- name: x\n  url: http://a/\n  timeout: soon\n", "timeout"),
        (
            "- name: x\n  url: http://a/\n  retry: 3\n",
            "unknown field `retry`",
        ),
        (
            "- name: x\n  url: http://a/\n  headers: {\"bad name\": v}\n",
            "headers.bad name",
        ),
    ] {
        let file = dir.path.join("webhooks.yaml");
        std::fs::write(&file, yaml).unwrap();
        let (code, stderr) = rollout_refusal(&["--webhooks-file", &file.display().to_string()]);
        assert_eq!(code, Some(2), "{yaml}: {stderr}");
        assert!(
            stderr.contains("--webhooks-file") && stderr.contains(expected),
            "{yaml}: {stderr}"
        );
    }
}
