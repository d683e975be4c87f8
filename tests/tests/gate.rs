//! The sequential gate end to end: `sluice rollout` (its default gate)
//! against a real proxy and seeded backends that both fail 1% of requests,
//! steady open-loop load, the proxy's own metrics or a real Prometheus. The
//! scenarios of `tests/bench/gate-power` at a smaller scale: a healthy canary
//! is promoted (also when both arms fail in bursts, and when the canary
//! starts cold), a worse one is rolled back on evidence, a slowdown of both
//! arms is not held against the canary, and a release too quiet to decide is
//! held for a person, who promotes it.

use std::time::Duration;

use sluice_tests::*;

struct Release {
    stable: BackendHandle,
    canary: BackendHandle,
    proxy: ProxyHandle,
    prometheus: Option<Prometheus>,
    dir: TempDir,
}

/// The load of the releases that must be promoted: at 800 req/s a healthy
/// canary is proven in about 19 s (median; 29 s at 400 req/s, `sluice
/// simulate` at these settings). The releases to be rolled back run at
/// half of it, which their bounds on what users met are set for.
const HEALTHY_RPS: f64 = 800.0;

fn one_percent(seed_faults: Faults) -> Faults {
    Faults {
        error_rate: 0.01,
        ..seed_faults
    }
}

impl Release {
    async fn new(canary: Faults, with_prometheus: bool) -> Self {
        Self::with(one_percent(Faults::default()), canary, with_prometheus).await
    }

    async fn with(stable: Faults, canary: Faults, with_prometheus: bool) -> Self {
        let stable = sluice_loadtest::start_backend(BackendOptions {
            faults: stable,
            seed: 11,
            ..BackendOptions::new("stable")
        })
        .await
        .unwrap();
        let canary = sluice_loadtest::start_backend(BackendOptions {
            faults: canary,
            seed: 12,
            ..BackendOptions::new("canary")
        })
        .await
        .unwrap();
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}' }}\n",
            stable.url()
        )))
        .await;
        let prometheus = if with_prometheus {
            let p = Prometheus::start(&[proxy.admin_addr]).await;
            p.wait_for_targets_up(1).await;
            Some(p)
        } else {
            None
        };
        Self {
            stable,
            canary,
            proxy,
            prometheus,
            dir: TempDir::new("gate"),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--admin",
            &format!("http://{}", self.proxy.admin_addr),
            "--route",
            "web",
            "--canary",
            &self.canary.url(),
            "--steps",
            "20,50",
            "--interval",
            "3s",
            "--scrape-interval",
            "1s",
            "--min-requests",
            "50",
            // Smaller scale than production: a canary twice as bad must not
            // be promoted (beta), so a healthy one is shown so sooner.
            "--rho-max",
            "2",
            "--max-duration",
            "150s",
            "--progress-deadline",
            "30s",
            // Short: the canary is up before the release starts here.
            "--baseline",
            "3s",
            "--control-socket",
            &self.dir.path.join("control.sock").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = &self.prometheus {
            // Each tick judges its own window of 1 s scrapes: two of them.
            let scrape = args.iter().position(|a| a == "--scrape-interval").unwrap();
            args[scrape + 1] = "2s".into();
            // Half as many ticks in the same time, each on what Prometheus
            // had scraped by then: proof takes longer, and once in a full
            // run it took more than 150 s for a healthy canary.
            let max = args.iter().position(|a| a == "--max-duration").unwrap();
            args[max + 1] = "300s".into();
            args.extend([
                "--prometheus".into(),
                p.url.clone(),
                "--prometheus-window".into(),
                "2s".into(),
            ]);
        }
        args
    }

    /// Runs the release under 400 req/s of load; (exit code, events, report).
    async fn run(&self) -> (i32, Vec<serde_json::Value>, sluice_loadtest::Report) {
        self.run_at(400.0).await
    }

    /// Runs the release under `rps` of load; (exit code, events, report).
    async fn run_at(&self, rps: f64) -> (i32, Vec<serde_json::Value>, sluice_loadtest::Report) {
        let (load, report) = steady_load(&format!("http://{}/", self.proxy.addr), rps);
        let (code, events) = Rollout::start(&self.args())
            .wait(Duration::from_secs(360))
            .await;
        load.stop();
        (code, events, report.await.unwrap())
    }

    async fn route(&self) -> serde_json::Value {
        let (_, _, body) = get(&format!("http://{}/routes/web", self.proxy.admin_addr))
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

/// The evidence report of a check in the last event that has it.
fn evidence(events: &[serde_json::Value], check: &str) -> serde_json::Value {
    events
        .iter()
        .rev()
        .filter_map(|e| e["checks"].as_array())
        .flatten()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(check)))
        .map(|c| c["evidence"].clone())
        .unwrap_or(serde_json::Value::Null)
}

async fn healthy_canary_is_promoted(with_prometheus: bool) {
    let _slot = release_slot().await;
    let r = Release::new(one_percent(Faults::default()), with_prometheus).await;
    let (code, events, report) = r.run_at(HEALTHY_RPS).await;
    assert_eq!(code, 0, "{}", last_message(&events));
    let errors = evidence(&events, "errors");
    assert_eq!(errors["proven"], true, "{errors}");
    assert_eq!(r.route().await["stable"], r.canary.url());
    // Users saw the baseline, nothing more.
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.server_errors() * 100 <= report.requests * 3);
    assert!(r.stable.stats().requests > 0);
}

async fn worse_canary_is_rolled_back_on_evidence(canary: Faults, check: &str) {
    let _slot = release_slot().await;
    let r = Release::new(canary, false).await;
    let (code, events, _) = r.run().await;
    assert_eq!(code, 1, "{}", last_message(&events));
    let message = last_message(&events);
    assert!(
        message.contains("worse than the primary") && message.contains(check),
        "rolled back by the gate's evidence on {check}: {message}"
    );
    let e = evidence(&events, check);
    assert!(
        e["fail"].as_f64().unwrap() >= e["fail_threshold"].as_f64().unwrap(),
        "{e}"
    );
    assert!(
        events.iter().all(|e| e["phase"] != "Promoting"),
        "never promoted"
    );
    let route = r.route().await;
    assert_eq!(route["canary_weight"], 0.0);
    assert_eq!(route["stable"], r.stable.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_as_good_as_the_primary_is_promoted() {
    healthy_canary_is_promoted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_as_good_as_the_primary_is_promoted_on_prometheus_data() {
    healthy_canary_is_promoted(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_twice_as_often_as_the_primary_is_rolled_back() {
    worse_canary_is_rolled_back_on_evidence(
        Faults {
            error_rate: 0.02,
            ..Faults::default()
        },
        "errors",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_8_percent_is_rolled_back_within_its_first_step() {
    let _slot = release_slot().await;
    let r = Release::new(
        Faults {
            error_rate: 0.08,
            ..Faults::default()
        },
        false,
    )
    .await;
    let (code, events, report) = r.run().await;
    assert_eq!(code, 1, "{}", last_message(&events));
    assert!(last_message(&events).contains("worse than the primary"));
    // Decided at the first step: the weight never reached the second.
    let weights: Vec<f64> = events
        .iter()
        .filter_map(|e| e["canary_weight"].as_f64())
        .collect();
    assert!(weights.iter().all(|w| *w <= 20.0), "{weights:?}");
    // The blast radius: users got few of the canary's failures.
    let canary_failures: u64 = report
        .header_status_counts
        .get("canary")
        .map(|m| m.iter().filter(|(c, _)| **c >= 500).map(|(_, n)| n).sum())
        .unwrap_or(0);
    assert!(canary_failures < 100, "{canary_failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_400ms_slower_is_rolled_back_on_latency() {
    worse_canary_is_rolled_back_on_evidence(
        Faults {
            error_rate: 0.01,
            latency: Latency::Fixed(Duration::from_millis(400)),
            ..Faults::default()
        },
        "latency",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowdown_of_both_arms_mid_release_is_not_held_against_the_canary() {
    let _slot = release_slot().await;
    let r = Release::new(one_percent(Faults::default()), false).await;
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), HEALTHY_RPS);
    let rollout = Rollout::start(&r.args());
    // Once the canary has traffic (and the bound was learnt), slow both down.
    loop {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(30))
            .expect("ticks");
        if e["phase"] == "Progressing"
            && e["checks"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"].as_str().unwrap_or("").starts_with("latency>"))
            })
        {
            break;
        }
    }
    let slow = Faults {
        error_rate: 0.01,
        latency: Latency::Fixed(Duration::from_millis(100)),
        ..Faults::default()
    };
    r.stable.set_faults(slow.clone());
    r.canary.set_faults(slow);
    let (code, events) = rollout.wait(Duration::from_secs(200)).await;
    load.stop();
    let _ = report.await;
    assert_eq!(code, 0, "{}", last_message(&events));
    let latency = evidence(&events, "latency>");
    assert!(
        latency["canary_rate"].as_f64().unwrap() > 0.3,
        "the canary was slowed: {latency}"
    );
    assert!(
        latency["primary_rate"].as_f64().unwrap() > 0.3,
        "the primary was slowed too: {latency}"
    );
}

/// Both arms fail 1% in runs of two (a client's retry after each failure).
fn bursty(seed_faults: Faults) -> Faults {
    Faults {
        error_burst: sluice_loadtest::backend::ErrorBurst {
            run: 2,
            ..Default::default()
        },
        ..one_percent(seed_faults)
    }
}

/// On this plan (1 s scrapes, 3 s steps) `sluice simulate --clump 2
/// --baseline 20s` rolls back 0.7% of such releases (seed 1, 1,000 runs):
/// the gate learns the dispersion from the baseline, so it gets 30 s (with
/// 20 s, the pairs of bins it had were once too few to show it: `φ` 1.0
/// in one full run of the tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_when_both_arms_fail_in_bursts() {
    let _slot = release_slot().await;
    let r = Release::with(bursty(Faults::default()), bursty(Faults::default()), false).await;
    let mut args = r.args();
    let baseline = args.iter().position(|a| a == "--baseline").unwrap();
    args[baseline + 1] = "30s".into();
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), HEALTHY_RPS);
    let (code, events) = Rollout::start(&args).wait(Duration::from_secs(360)).await;
    load.stop();
    let _ = report.await;
    assert_eq!(code, 0, "{}", last_message(&events));
    assert_eq!(r.route().await["stable"], r.canary.url());
    // The bursts were there, and measured: the failures' dispersion is
    // above the binomial's.
    let errors = evidence(&events, "errors");
    assert!(
        errors["dispersion"].as_f64().unwrap() > 1.2,
        "runs of two failures were measured as dispersion: {errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_slow_only_while_cold_is_promoted() {
    let _slot = release_slot().await;
    let cold = Faults {
        warmup: Some(sluice_loadtest::backend::Warmup {
            duration: Duration::from_secs(4),
            latency: Latency::Fixed(Duration::from_millis(300)),
        }),
        ..one_percent(Faults::default())
    };
    let r = Release::new(cold, false).await;
    let (code, events, report) = r.run_at(HEALTHY_RPS).await;
    assert_eq!(code, 0, "{}", last_message(&events));
    // It really was slow at first: users saw some 300 ms answers.
    assert!(
        report.latency.max_ms >= 300.0,
        "the canary's cold start was slow: {:?}",
        report.latency
    );
    assert!(
        events
            .iter()
            .any(|e| e["checks"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["reason"].as_str().unwrap_or("").contains("warm-up")))),
        "the live view said the latency waited for the warm-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_too_quiet_to_decide_is_held_then_promoted_by_a_person() {
    // No release slot: 5 req/s costs next to nothing, and the release
    // waits out its 25 s on the clock.
    let r = Release::new(one_percent(Faults::default()), false).await;
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), 5.0);
    let mut args = r.args();
    for (flag, value) in [("--max-duration", "25s"), ("--min-requests", "5")] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
    }
    let rollout = Rollout::start(&args);
    // The forecast said so at the start, and then the release waits.
    let mut forecast = None;
    let held = loop {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(60))
            .expect("ticks until the release is held");
        let message = e["message"].as_str().unwrap_or_default().to_string();
        if message.contains("baseline:") {
            forecast = Some(message.clone());
        }
        assert_ne!(e["phase"], "Failed", "{message}");
        if e["phase"] == "WaitingPromotion" {
            break message;
        }
    };
    let forecast = forecast.expect("a forecast from the baseline");
    assert!(
        forecast.contains("not expected to be shown no worse"),
        "{forecast}"
    );
    assert!(held.contains("undecided after 25s"), "{held}");
    assert!(held.contains("Still missing"), "{held}");
    assert!(!held.contains("all checks passed"), "{held}");
    // Still held a few ticks later: nothing is rolled back for lack of evidence.
    for _ in 0..3 {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(10))
            .expect("ticks while held");
        assert_eq!(e["phase"], "WaitingPromotion", "{e}");
    }
    let socket = r.dir.path.join("control.sock");
    let out = std::process::Command::new(bin("sluice"))
        .args(["promote", "web", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, events) = rollout.wait(Duration::from_secs(60)).await;
    load.stop();
    let _ = report.await;
    assert_eq!(code, 0, "{}", last_message(&events));
    assert_eq!(r.route().await["stable"], r.canary.url());
}

/// A trace's clock starts at the canary's first request, mirrored ones
/// included: a blue/green release sees a regression that starts 20 s into
/// its mirrored traffic while it is still mirrored (the allowance for an
/// incident after it), and the baseline before the canary's first request
/// uses the trace's first line throughout (a second line 1 s in does not
/// leak into it).
#[test]
fn simulate_replays_a_trace_from_the_canarys_first_request() {
    let dir = TempDir::new("sim-clock");
    let write = |name: &str, text: &str| {
        let path = dir.path.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let simulate = |trace: &str, extra: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(bin("sluice"))
            .args(["simulate", "--trace", trace, "--runs", "20", "--json"])
            .args(["--interval", "10s", "--scrape-interval", "1s"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let regressed = write(
        "mirrored.jsonl",
        "{\"t\": 0}\n{\"t\": 20, \"canary\": {\"fail\": 0.08}}\n",
    );
    let out = simulate(
        &regressed,
        &["--strategy", "blue-green", "--iterations", "5"],
    );
    assert_eq!(out["summary"]["rolled_back"], 20, "{out}");
    for run in out["runs"].as_array().unwrap() {
        let at = run["seconds"].as_f64().unwrap();
        assert!((20.0..=20.0 + 30.0 + 15.0).contains(&at), "{run}");
        assert!(
            run["reason"]
                .as_str()
                .unwrap()
                .contains("on mirrored traffic"),
            "{run}"
        );
    }
    let blip = write(
        "blip.jsonl",
        "{\"t\": 0}\n{\"t\": 1, \"primary\": {\"median_ms\": 2000}, \"canary\": {\"median_ms\": 2000}}\n{\"t\": 2, \"primary\": {\"median_ms\": 20}, \"canary\": {\"median_ms\": 20, \"add_ms\": 50}}\n",
    );
    let out = simulate(&blip, &["--steps", "10,25,50"]);
    assert_eq!(
        out["summary"]["rolled_back"], 20,
        "a canary 50 ms slower: {out}"
    );
}

#[test]
fn simulate_reports_rates_and_times_and_rejects_bad_flags() {
    let run = |args: &[&str]| {
        std::process::Command::new(bin("sluice"))
            .arg("simulate")
            .args(args)
            .output()
            .unwrap()
    };
    let base = [
        "--rps",
        "400",
        "--steps",
        "10,25,50",
        "--interval",
        "10s",
        "--scrape-interval",
        "1s",
        "--runs",
        "40",
        "--max-duration",
        "10m",
        "--json",
    ];
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = base.to_vec();
        all.extend_from_slice(args);
        let out = run(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let worse = json(&["--primary-errors", "1%", "--canary-errors", "8%"]);
    assert_eq!(worse["summary"]["rolled_back"], 40, "{worse}");
    assert!(
        worse["summary"]["time_to_rollback"]["p50"]
            .as_f64()
            .unwrap()
            < 5.0
    );
    let healthy = json(&["--primary-errors", "1%", "--canary-errors", "1%"]);
    assert_eq!(healthy["summary"]["promoted"], 40, "{healthy}");
    // Deterministic for a seed: everything but the wall-clock time taken.
    let seeded = || {
        let mut out = json(&["--canary-errors", "2%", "--seed", "7"]);
        out.as_object_mut()
            .unwrap()
            .remove("wall_seconds")
            .expect("wall_seconds");
        out
    };
    assert_eq!(seeded(), seeded());
    // A cold canary against a baseline arm exactly as cold (no warm-up):
    // promoted; the same cold canary against a warm primary with the
    // warm-up turned off: rolled back.
    let cold_arm = json(&["--baseline-arm", "--cold-start", "10s:3"]);
    assert_eq!(cold_arm["summary"]["promoted"], 40, "{cold_arm}");
    let cold_alone = json(&["--cold-start", "10s:3", "--warmup", "0s"]);
    assert!(
        cold_alone["summary"]["rolled_back"].as_u64().unwrap() >= 30,
        "{cold_alone}"
    );
    // And +50 ms is caught against the baseline arm as against the primary.
    let slow = json(&["--baseline-arm", "--canary-delay", "+50ms"]);
    assert_eq!(slow["summary"]["rolled_back"], 40, "{slow}");
    let trace = std::env::temp_dir().join(format!("sluice-bad-arm-{}.jsonl", std::process::id()));
    std::fs::write(
        &trace,
        "{\"t\": 0}\n{\"t\": 5, \"baseline\": {\"fail\": 2}}\n",
    )
    .unwrap();
    let trace_arg = trace.display().to_string();
    let out = run(&["--baseline-arm", "--trace", &trace_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{trace_arg}:2: `baseline.fail`")),
        "{stderr}"
    );
    std::fs::remove_file(&trace).unwrap();
    for (args, flag) in [
        (vec!["--baseline-arm", "--steps", "10,60"], "--baseline-arm"),
        (
            vec!["--baseline-arm", "--strategy", "blue-green"],
            "--baseline-arm",
        ),
        (vec!["--cold-start", "10s"], "--cold-start"),
        (vec!["--cold-start", "10s:0.5"], "--cold-start"),
        (vec!["--canary-errors", "120%"], "--canary-errors"),
        (vec!["--rps=-1"], "--rps"),
        // A negative value is the flag's to refuse, named, not clap's
        // "unexpected argument".
        (vec!["--rps", "-5"], "--rps"),
        (vec!["--canary-errors", "-1%"], "--canary-errors"),
        (vec!["--warmup", "-1s"], "--warmup"),
        (vec!["--clump", "-1"], "--clump"),
        (vec!["--canary-delay", "-50ms"], "--canary-delay"),
        (vec!["--latency-tolerance", "-5%"], "--latency-tolerance"),
        (vec!["--canary-errors", "5%%"], "--canary-errors"),
        (
            vec!["--durations", "20ms~"],
            "--durations: `20ms~`: the sigma after `~`",
        ),
        (vec!["--rps", "1e18"], "--rps"),
        (vec!["--runs", "0"], "--runs"),
        (vec!["--runs", "1000000000"], "--runs"),
        (vec!["--steps", "10,50,100"], "a last step of 100"),
        (
            vec!["--scrape-interval", "2h"],
            "--scrape-interval: 2h is longer than --interval",
        ),
        (vec!["--max-duration", "0s"], "--max-duration"),
        (
            vec!["--progress-deadline", "1s"],
            "--progress-deadline: 1s is shorter than --interval",
        ),
        (vec!["--horizon", "1s"], "--horizon"),
        (
            vec!["--provider", "prometheus", "--prometheus-window", "10s"],
            "--prometheus-window: 10s holds fewer than two scrapes",
        ),
        (vec!["--durations", "20ms~9"], "--durations"),
        (vec!["--dispersion", "0.5"], "--dispersion"),
        (vec!["--trace", "/nonexistent/trace.jsonl"], "--trace"),
        (vec!["--when-undecided", "wait"], "--when-undecided"),
        (vec!["--alpha", "0.9"], "--alpha"),
        (vec!["--latency-bound", "270ms"], "--latency-bound"),
        (vec!["--gate", "magic"], "--gate"),
        // A flag the chosen gate or strategy does not read is refused, not ignored.
        (
            vec!["--gate", "threshold", "--alpha", "0.05"],
            "--alpha applies to the sequential gate, not to --gate threshold",
        ),
        (
            vec!["--gate", "threshold", "--latency-tolerance", "20%"],
            "--latency-tolerance applies to the sequential gate",
        ),
        (
            vec!["--soak", "1m"],
            "--soak applies to --strategy blue-green, not to --strategy canary",
        ),
        (
            vec!["--strategy", "blue-green", "--experiment-duration", "5m"],
            "--experiment-duration applies to --strategy experiment",
        ),
        (vec!["--failure-floor", "1%%"], "--failure-floor"),
        (
            vec!["--prometheus-window", "60s"],
            "--prometheus-window applies to --provider prometheus",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
