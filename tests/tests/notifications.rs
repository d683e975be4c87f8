//! Chat notifications (issue #27): `sluice rollout --notify slack=FILE
//! --notify teams=FILE` posts the documented payloads of Slack's and
//! Microsoft Teams' incoming webhooks to stand-ins that check their shape:
//! the release started, then rolled back with its reason. A stand-in that
//! answers 500 never holds the release up. The URLs (credentials) are not
//! printed.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use sluice_tests::*;

type Seen = Arc<Mutex<Vec<Value>>>;

/// A stand-in incoming webhook at a secret path: records JSON bodies and
/// answers `status`.
async fn incoming(status: u16) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let ok_path = req.uri().path() == "/hooks/T000/B000/s3cr3t-path";
            let json = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/json");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if ok_path && json {
                log.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            http::Response::builder()
                .status(if ok_path { status } else { 404 })
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (format!("http://{addr}/hooks/T000/B000/s3cr3t-path"), seen)
}

#[tokio::test]
async fn slack_and_teams_get_the_documented_payloads_and_a_failing_one_holds_nothing_up() {
    let dir = TempDir::new("notify");
    let stable = sluice_loadtest::start_backend(BackendOptions::new("stable"))
        .await
        .unwrap();
    let canary = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        },
        ..BackendOptions::new("canary")
    })
    .await
    .unwrap();
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let (slack_url, slack) = incoming(200).await;
    let (teams_url, teams) = incoming(200).await;
    let (broken_url, broken) = incoming(500).await;
    let file = |name: &str, url: &str| {
        let path = dir.path.join(name);
        std::fs::write(&path, format!("{url}\n")).unwrap();
        path.display().to_string()
    };
    let args: Vec<String> = vec![
        "rollout".into(),
        "--admin".into(),
        format!("http://{}", proxy.admin_addr),
        "--route".into(),
        "web".into(),
        "--canary".into(),
        canary.url(),
        "--steps".into(),
        "20,50".into(),
        "--interval".into(),
        "1s".into(),
        "--min-requests".into(),
        "10".into(),
        "--gate".into(),
        "threshold".into(),
        "--failure-limit".into(),
        "1".into(),
        "--notify".into(),
        format!("slack={}", file("slack", &slack_url)),
        "--notify".into(),
        format!("teams={}", file("teams", &teams_url)),
        "--notify".into(),
        format!("webhook={}", file("broken", &broken_url)),
        "--output".into(),
        "json".into(),
        "--control-socket".into(),
        dir.path.join("control.sock").display().to_string(),
    ];
    let (load, _report) = steady_load(&format!("http://{}/", proxy.addr), 100.0);
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            Command::new(bin("sluice")).args(args),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    load.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // The broken channel (three tries per note, 1.5 s of pauses) did not
    // slow the rollback down.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let slack = eventually("two Slack notes", Duration::from_secs(10), || {
        let slack = slack.clone();
        async move {
            let seen = slack.lock().unwrap().clone();
            (seen.len() >= 2).then_some(seen)
        }
    })
    .await;
    for note in &slack {
        assert!(
            note["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Sluice: web ")),
            "{note}"
        );
    }
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("release started")
    );
    let last = slack.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(
        last.contains("rolled back") && last.contains("failure limit"),
        "{last}"
    );

    let teams = eventually("two Teams notes", Duration::from_secs(10), || {
        let teams = teams.clone();
        async move {
            let seen = teams.lock().unwrap().clone();
            (seen.len() >= 2).then_some(seen)
        }
    })
    .await;
    for card in &teams {
        assert_eq!(card["@type"], "MessageCard", "{card}");
        assert_eq!(card["@context"], "https://schema.org/extensions", "{card}");
        for field in ["summary", "title", "text", "themeColor"] {
            assert!(
                card[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}: {card}"
            );
        }
    }
    let rolled_back = teams.last().unwrap();
    assert!(
        rolled_back["title"]
            .as_str()
            .unwrap()
            .contains("rolled back")
    );
    assert_eq!(rolled_back["themeColor"], "D93F0B");
    let facts = rolled_back["sections"][0]["facts"].as_array().unwrap();
    assert!(
        facts
            .iter()
            .any(|f| f["name"] == "Phase" && f["value"] == "Failed")
    );

    // The broken endpoint was tried (three times per note).
    assert!(broken.lock().unwrap().len() >= 3);
    assert!(
        !stdout.contains("s3cr3t-path") && !stderr.contains("s3cr3t-path"),
        "a notification URL was printed: {stderr}"
    );
    assert!(
        stderr.contains("a notification could not be sent"),
        "the broken channel is logged: {stderr}"
    );
}

#[tokio::test]
async fn bad_notify_flags_are_usage_errors() {
    let dir = TempDir::new("notify-bad");
    let not_url = dir.path.join("not-url");
    std::fs::write(&not_url, "hooks.slack.com/services/x\n").unwrap();
    for (flag, expected) in [
        ("irc=/dev/null".to_string(), "not a notification service"),
        ("slack".to_string(), "not SERVICE=FILE"),
        (
            "slack=https://hooks.slack.com/services/T0/B0/SECRETX".to_string(),
            "gives a URL; put it in a file",
        ),
        (
            format!("slack={}", dir.path.join("missing").display()),
            "cannot read",
        ),
        (
            format!("teams={}", not_url.display()),
            "does not hold an http:// or https:// URL",
        ),
    ] {
        let (code, stderr) = rollout_refusal(&["--notify", &flag]);
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains("--notify") && stderr.contains(expected),
            "{flag}: {stderr}"
        );
        assert!(
            !stderr.contains("hooks.slack.com") && !stderr.contains("SECRETX"),
            "{stderr}"
        );
    }
}
