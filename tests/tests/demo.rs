//! `sluice demo`, the README's main command: every scenario ends as expected,
//! with the proxy provider and with a real Prometheus.

use std::process::Command;

use sluice_tests::*;

/// Runs `sluice demo ARGS --output json` in a [`release_slot`]: each demo
/// puts 1,000 req/s through a debug build, about half of one core.
async fn demo_in_turn(args: Vec<String>) -> (i32, serde_json::Value, String) {
    let _slot = release_slot().await;
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        demo(&args)
    })
    .await
    .unwrap()
}

fn demo(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(bin("sluice"))
        .arg("demo")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("results").is_some())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every scenario, and the phase it must end in.
const EXPECTED: [(&str, &str); 7] = [
    ("healthy", "Succeeded"),
    ("bursty", "Succeeded"),
    ("cold", "Succeeded"),
    ("noisy", "Failed"),
    ("errors", "Failed"),
    ("latency", "Failed"),
    ("silent", "Failed"),
];

fn outcomes(summary: &serde_json::Value) -> Vec<(String, String, bool)> {
    summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["as_expected"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_scenario_ends_as_expected() {
    let (code, summary, stderr) = demo_in_turn(vec![]).await;
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(
        outcomes(&summary),
        EXPECTED.map(|(s, p)| (s.to_string(), p.to_string(), true))
    );
    let results = summary["results"].as_array().unwrap();
    assert_eq!(
        results[6]["canary_requests"], 0,
        "the silent canary served nothing"
    );
    assert!(
        results[4]["canary_failures"].as_u64().unwrap() > 0,
        "the errors scenario shows its blast radius"
    );
    // The healthy canary was promoted on evidence for it; the noisy one, 3x
    // worse than a primary that itself fails 2%, was rolled back on evidence
    // against it.
    let evidence = |r: &serde_json::Value, check: &str| {
        r["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[0] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no {check} evidence in {r}"))
    };
    let healthy = evidence(&results[0], "errors");
    assert!(
        healthy[3].as_f64().unwrap() >= healthy[4].as_f64().unwrap(),
        "{healthy}"
    );
    let noisy = evidence(&results[3], "errors");
    assert!(
        noisy[1].as_f64().unwrap() >= noisy[2].as_f64().unwrap(),
        "{noisy}"
    );
    assert!(
        results[3]["message"]
            .as_str()
            .unwrap()
            .contains("worse than the primary")
    );
    // The bursty and the cold canaries were promoted too (in EXPECTED);
    // the bursts were measured as dispersion.
    let bursty = evidence(&results[1], "errors");
    assert!(
        bursty[3].as_f64().unwrap() >= bursty[4].as_f64().unwrap(),
        "{bursty}"
    );
    assert!(summary["seconds"].as_f64().unwrap() < 180.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_a_real_prometheus() {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prometheus = Prometheus::start(&[admin]).await;
    let url = prometheus.url.clone();
    let (code, summary, stderr) = demo_in_turn(
        [
            "--scenario",
            "errors",
            "--prometheus",
            &url,
            "--admin-listen",
            &admin.to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(
        outcomes(&summary),
        [("errors".into(), "Failed".into(), true)]
    );
    let message = summary["results"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("worse than the primary") && message.contains("errors"),
        "rolled back on Prometheus' evidence: {message}"
    );
    drop(prometheus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blue_green_demo_judges_on_copies_and_no_user_meets_a_bad_release() {
    let (code, summary, stderr) =
        demo_in_turn(["--strategy", "blue-green"].map(String::from).to_vec()).await;
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(
        outcomes(&summary),
        EXPECTED.map(|(s, p)| (s.to_string(), p.to_string(), true))
    );
    let results = summary["results"].as_array().unwrap();
    // The bad releases were judged on mirrored copies and rolled back
    // before the switch: no user request reached them.
    for r in &results[3..] {
        assert_eq!(r["canary_requests"], 0, "{r}");
    }
    // The healthy ones took all traffic after their switch.
    for r in &results[..3] {
        assert!(r["canary_requests"].as_u64().unwrap() > 0, "{r}");
    }
    let (code, _, stderr) = tokio::task::spawn_blocking(|| demo(&["--strategy", "rainbow"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid value 'rainbow' for '--strategy")
            && stderr.contains("possible values: canary, blue-green, experiment"),
        "{stderr}"
    );
}
