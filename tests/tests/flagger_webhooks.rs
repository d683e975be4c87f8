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

/// `event` and `post-rollout` hooks never gate, so a slow endpoint never
/// holds the release: with a hook that keeps every call unanswered, the
/// release still steps and is promoted; the calls then go out in order
/// before `sluice rollout` exits, `post-rollout` among them.
#[tokio::test]
async fn a_hung_event_hook_never_holds_the_release_and_its_calls_keep_their_order() {
    let dir = TempDir::new("hung-event-hook");
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
    // Every call is held until `answer` is set (at most 60 s).
    let answer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (held, log, count) = (answer.clone(), seen.clone(), answered.clone());
    let hook = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let (held, log, count) = (held.clone(), log.clone(), count.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            log.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            for _ in 0..600 {
                if held.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            http::Response::builder()
                .status(200)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let file = dir.path.join("webhooks.yaml");
    std::fs::write(
        &file,
        format!(
            "- {{name: announce, type: event, url: 'http://{hook}/', timeout: 60s}}\n\
             - {{name: after, type: post-rollout, url: 'http://{hook}/', timeout: 60s}}\n"
        ),
    )
    .unwrap();
    let admin = format!("http://{}", proxy.admin_addr);
    let args: Vec<String> = [
        "rollout",
        "--admin",
        &admin,
        "--route",
        "web",
        "--canary",
        &canary.url(),
        "--steps",
        "20,50",
        "--interval",
        "1s",
        "--gate",
        "threshold",
        "--min-requests",
        "5",
        "--webhooks-file",
        &file.display().to_string(),
        "--control-socket",
        &dir.path.join("control.sock").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Traffic for the analysis: at most 3,000 requests, until the end.
    let (stop, target) = (answer.clone(), format!("http://{}/", proxy.addr));
    let load = tokio::spawn(async move {
        for _ in 0..3000 {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let _ = get(&target).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let run = tokio::task::spawn_blocking(move || {
        output_within(
            Command::new(bin("sluice")).args(args),
            Duration::from_secs(120),
        )
    });
    // The release is promoted (the canary's URL is the route's stable)
    // while the hook has answered nothing.
    let mut promoted = false;
    for _ in 0..300 {
        let (_, _, body) = get(&format!("{admin}/routes/web")).await.unwrap();
        let route: Value = serde_json::from_slice(&body).unwrap();
        if route["stable"].as_str() == Some(canary.url().as_str()) {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered_by_then = answered.load(std::sync::atomic::Ordering::SeqCst);
    answer.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = run.await.unwrap();
    load.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(promoted, "the release was held by its event hook: {stderr}");
    assert_eq!(answered_by_then, 0, "the hook was answering: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = seen.iter().filter_map(|p| p["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "post-rollout").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().all(|k| ["event", "post-rollout"].contains(k)),
        "{kinds:?}"
    );
    let messages: Vec<&str> = seen
        .iter()
        .filter_map(|p| p["metadata"]["eventMessage"].as_str())
        .collect();
    let started = messages.iter().position(|m| m.contains("started"));
    let promoting = messages.iter().position(|m| m.contains("promot"));
    assert!(
        started.is_some() && promoting.is_some() && started < promoting,
        "events out of order: {messages:?}"
    );
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
