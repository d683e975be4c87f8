//! `sluice rollout --strategy blue-green | experiment` end to end: a real
//! proxy, seeded backends that both fail 1% of requests, steady open-loop
//! load, and the `sluice` binary driving the release with the sequential
//! gate on the proxy's own metrics.

use std::time::Duration;

use sluice_tests::*;

struct Release {
    stable: BackendHandle,
    canary: BackendHandle,
    proxy: ProxyHandle,
    dir: TempDir,
}

fn one_percent() -> Faults {
    Faults {
        error_rate: 0.01,
        ..Faults::default()
    }
}

impl Release {
    async fn new() -> Self {
        let stable = failing_backend("stable", 0.01, 21).await;
        let canary = failing_backend("canary", 0.01, 22).await;
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}' }}\n",
            stable.url()
        )))
        .await;
        Self {
            stable,
            canary,
            proxy,
            dir: TempDir::new("strategies"),
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--admin",
            &format!("http://{}", self.proxy.admin_addr),
            "--route",
            "web",
            "--canary",
            &self.canary.url(),
            "--interval",
            "3s",
            "--scrape-interval",
            "1s",
            "--min-requests",
            "50",
            "--rho-max",
            "2",
            "--max-duration",
            "120s",
            "--progress-deadline",
            "30s",
            // Short releases on a quiet machine: a short baseline and
            // warm-up (the canary is up before the release starts).
            "--baseline",
            "2s",
            "--warmup",
            "2s",
            "--control-socket",
            &self.dir.path.join("control.sock").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn route(&self) -> serde_json::Value {
        let (_, _, body) = get(&format!("http://{}/routes/web", self.proxy.admin_addr))
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    async fn metric(&self, labels: &[(&str, &str)]) -> f64 {
        scrape(self.proxy.admin_addr)
            .await
            .sum("sluice_requests_total", labels)
    }
}

fn weights(events: &[serde_json::Value]) -> Vec<f64> {
    let mut seen: Vec<f64> = Vec::new();
    for w in events.iter().filter_map(|e| e["canary_weight"].as_f64()) {
        if seen.last() != Some(&w) {
            seen.push(w);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_blue_green_release_is_judged_on_mirrored_traffic_switches_in_one_step_and_soaks()
{
    let _slot = release_slot().await;
    let r = Release::new().await;
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), 600.0);
    let (code, events) = Rollout::start(&r.args(&[
        "--strategy",
        "blue-green",
        "--iterations",
        "1",
        "--soak",
        "6s",
    ]))
    .wait(Duration::from_secs(150))
    .await;
    load.stop();
    let report = report.await.unwrap();
    assert_eq!(code, 0, "{}", last_message(&events));
    // 0 while judged on copies, then 100 in one step, then the promotion
    // leaves the route at 0 on the new stable.
    assert_eq!(weights(&events), vec![0.0, 100.0, 0.0], "{events:?}");
    assert!(events.iter().all(|e| e["strategy"] == "blue-green"));
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("switched all traffic"))),
        "the switch is evented"
    );
    // The new version was judged on copies before any user reached it.
    let mirrored = r
        .metric(&[("backend", "canary"), ("decision", "mirror")])
        .await;
    assert!(mirrored >= 50.0, "{mirrored} mirrored copies");
    let route = r.route().await;
    assert_eq!(route["stable"], r.canary.url(), "{route}");
    assert!(
        route["mirror"].is_null(),
        "mirroring ends with the release: {route}"
    );
    // Users saw the 1% baseline and nothing more.
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.server_errors() * 100 <= report.requests * 3);
}

/// A mirror left on the route (by a blue/green release stopped before its
/// end, or by hand) is taken off when a canary release that does not
/// mirror starts: while the canary has weight, it gets its share and no
/// copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_release_takes_off_a_mirror_it_did_not_ask_for() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    let admin = r.proxy.admin_addr;
    let (status, body) = put_json(
        &format!("http://{admin}/routes/web"),
        serde_json::json!({"canary": r.canary.url(), "mirror": {"percent": 100}}),
        None,
    )
    .await;
    assert!(status.is_success(), "{body}");
    let (load, _report) = steady_load(&format!("http://{}/", r.proxy.addr), 600.0);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !watching.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok((_, _, body)) = get(&format!("http://{admin}/routes/web")).await {
                let route: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if route["canary_weight"].as_f64().unwrap_or(0.0) > 0.0 {
                    seen.push(route);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    let (code, events) = Rollout::start(&r.args(&["--steps", "50"]))
        .wait(Duration::from_secs(150))
        .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    load.stop();
    let seen = watcher.await.unwrap();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert!(!seen.is_empty(), "the route was never seen at weight");
    assert!(
        seen.iter().all(|route| route["mirror"].is_null()),
        "a mirror while the canary had weight: {seen:?}"
    );
}

/// A route that loses the release's canary mid-release (the proxy
/// restarted from its file) is set back at the next tick, which says so,
/// and the release goes on to promotion. A weight a person changed (the
/// release's canary kept) is said, never undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_that_lost_the_release_is_set_back_at_the_next_tick() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    let (load, _report) = steady_load(&format!("http://{}/", r.proxy.addr), 600.0);
    let rollout = Rollout::start(&r.args(&["--steps", "30,60"]));
    let mut seen = rollout.until(|_| {}, |e| e["canary_weight"] == 30.0);
    // A person's change of the weight alone.
    let (status, body) = put_json(
        &format!("http://{}/routes/web", r.proxy.admin_addr),
        serde_json::json!({"canary_weight": 10}),
        None,
    )
    .await;
    assert!(status.is_success(), "{body}");
    seen.extend(rollout.until(
        |_| {},
        |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("is at 10%") && m.contains("left as it is"))
        },
    ));
    // What a restart from the file does: no canary, weight 0.
    let (status, body) = put_json(
        &format!("http://{}/routes/web", r.proxy.admin_addr),
        serde_json::json!({"canary_weight": 0, "canary": null}),
        None,
    )
    .await;
    assert!(status.is_success(), "{body}");
    let (code, events) = rollout.wait(Duration::from_secs(120)).await;
    load.stop();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert!(
        seen.iter().chain(&events).any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("had canary none at 0%") && m.contains("set back"))),
        "no tick said the route was set back: {events:?}"
    );
    assert_eq!(r.route().await["stable"], r.canary.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_release_failing_in_its_soak_switches_back_at_once() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), 300.0);
    let rollout = Rollout::start(&r.args(&[
        "--strategy",
        "blue-green",
        "--iterations",
        "1",
        "--soak",
        "60s",
    ]));
    // Healthy on copies; once all traffic is on it, it fails 30%.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(std::time::Instant::now() < deadline, "no switch: {seen:?}");
        match rollout.events.try_recv() {
            Ok(e) => {
                let switched = e["canary_weight"] == 100.0;
                seen.push(e);
                if switched {
                    break;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    r.canary.set_faults(Faults {
        error_rate: 0.3,
        ..Faults::default()
    });
    let broken_at = seen.len();
    let canary_before = r.canary.stats().requests;
    let (code, events) = rollout.wait(Duration::from_secs(60)).await;
    seen.extend(events);
    assert_eq!(code, 1, "{}", last_message(&seen));
    let message = last_message(&seen);
    assert!(message.contains("soak"), "{message}");
    // Back on blue within a scrape or two of the failures: the ticks
    // after the fault until the rollback.
    let ticks = seen[broken_at..]
        .iter()
        .position(|e| e["phase"] == "Failed")
        .expect("a Failed event");
    assert!(
        ticks <= 2,
        "{ticks} ticks after the fault: {:?}",
        &seen[broken_at..]
    );
    let route = r.route().await;
    assert_eq!(route["canary_weight"], 0.0);
    assert_eq!(route["stable"], r.stable.url());
    // After the switch back, no user request reaches green.
    let after_rollback = r.canary.stats().requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.canary.stats().requests, after_rollback);
    load.stop();
    let report = report.await.unwrap();
    // Failed requests: the baseline plus what green answered while it was
    // being caught (a few scrapes' worth at 30%), nothing after.
    let on_green = after_rollback - canary_before;
    let failed_on_green = report.header_status_counts["canary"]
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum::<u64>();
    assert!(
        on_green <= 300 * 4,
        "{on_green} requests reached green after it broke"
    );
    assert!(
        failed_on_green <= on_green,
        "{failed_on_green} > {on_green}"
    );
}

/// Runs an experiment at 30% for 8 s with a canary 20 ms slower than the
/// stable (both fail 1%); `extra` flags added.
async fn experiment(r: &Release, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
    r.canary.set_faults(Faults {
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..one_percent()
    });
    let (load, _) = steady_load(&format!("http://{}/", r.proxy.addr), 600.0);
    let mut args = vec![
        "--strategy",
        "experiment",
        "--steps",
        "30",
        "--experiment-duration",
        "8s",
        "--affinity-header",
        "x-user-id",
    ];
    args.extend(extra);
    let (code, events) = Rollout::start(&r.args(&args))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    (code, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_experiment_reports_both_arms_and_ends_on_stable() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    // Judged on requests over 100 ms: the 20 ms difference is reported,
    // not held against the canary.
    let (code, events) = experiment(&r, &["--latency-bound", "100ms"]).await;
    assert_eq!(code, 0, "{}", last_message(&events));
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "Concluded", "{last}");
    let report = &last["report"];
    for arm in ["stable", "canary"] {
        let a = &report[arm];
        assert!(a["requests"].as_u64().unwrap() > 100, "{arm}: {a}");
        let rate = a["error_rate"].as_f64().unwrap();
        let (lo, hi) = (
            a["error_rate_low"].as_f64().unwrap(),
            a["error_rate_high"].as_f64().unwrap(),
        );
        assert!(lo <= rate && rate <= hi && hi < 0.05, "{arm}: {a}");
        assert_eq!(a["latency"].as_array().unwrap().len(), 3, "{arm}: {a}");
    }
    // The canary's 20 ms shows in its median, the stable's does not.
    let p50 = |arm: &str| report[arm]["latency"][0]["value"].as_f64().unwrap();
    assert!(p50("canary") >= 0.02 && p50("stable") < 0.02, "{report}");
    let split = report["canary"]["requests"].as_f64().unwrap()
        / (report["canary"]["requests"].as_f64().unwrap()
            + report["stable"]["requests"].as_f64().unwrap());
    assert!((split - 0.3).abs() < 0.02, "canary share {split}");
    assert!(report["comparisons"][0]["check"] == "errors", "{report}");
    // No promotion: the route is back on the old stable.
    let route = r.route().await;
    assert_eq!(route["stable"], r.stable.url(), "{route}");
    assert_eq!(route["canary_weight"], 0.0);
    assert!(events.iter().all(|e| e["phase"] != "Promoting"));
    // The affinity the experiment brought stays on the route (it does
    // nothing at weight 0); no mirror was set.
    assert_eq!(route["affinity"]["header"], "x-user-id", "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_shown_worse_ends_an_experiment_early_with_its_report() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    // Judged on the primary's own p99 bound, 20 ms more is worse.
    let (code, events) = experiment(&r, &[]).await;
    assert_eq!(code, 1, "{}", last_message(&events));
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert!(
        last_message(&events).contains("experiment stopped early"),
        "{last}"
    );
    let latency = last["report"]["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with("latency>"))
        .cloned()
        .expect("a latency comparison");
    assert_eq!(latency["verdict"], "worse than the primary", "{latency}");
    assert_eq!(r.route().await["canary_weight"], 0.0);
}

#[tokio::test]
async fn unknown_strategies_and_bad_route_settings_are_usage_errors_and_change_nothing() {
    let r = Release::new().await;
    let before = r.route().await;
    for (extra, expected) in [
        (
            vec!["--strategy", "rainbow"],
            "[possible values: canary, blue-green, experiment]",
        ),
        (
            vec!["--affinity-cookie", "my cookie"],
            "--affinity-cookie: `my cookie` is not a valid cookie name",
        ),
        (vec!["--mirror", "150"], "--mirror: 150 is not in 0..=100"),
        (vec!["--mirror=-5"], "--mirror: -5 is not in 0..=100"),
        (
            vec!["--affinity-cookie", "a", "--affinity-header", "x-user"],
            "--affinity-cookie: set either",
        ),
        (
            vec!["--strategy", "blue-green", "--gate", "threshold"],
            "--strategy: blue-green judges",
        ),
        (
            vec!["--strategy", "blue-green", "--mirror", "0"],
            "--mirror: blue-green judges",
        ),
        (
            vec!["--strategy", "blue-green", "--soak", "forever"],
            "--soak",
        ),
        (
            vec!["--strategy", "blue-green", "--steps", "10,20"],
            "--steps applies to --strategy canary and experiment",
        ),
        (
            vec!["--strategy", "experiment", "--steps", "10,20"],
            "--steps: an experiment runs at one weight",
        ),
    ] {
        let out = std::process::Command::new(bin("sluice"))
            .arg("rollout")
            .args(r.args(&extra))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{extra:?}: {stderr:?} lacks {expected:?}"
        );
    }
    assert_eq!(r.route().await, before, "nothing was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_release_is_judged_on_mirrored_traffic_through_prometheus() {
    let _slot = release_slot().await;
    let r = Release::new().await;
    let prometheus = Prometheus::start(&[r.proxy.admin_addr]).await;
    prometheus.wait_for_targets_up(1).await;
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), 600.0);
    let mut args = r.args(&[
        "--strategy",
        "blue-green",
        "--soak",
        "6s",
        "--prometheus",
        &prometheus.url,
        "--prometheus-window",
        "2s",
    ]);
    let scrape = args.iter().position(|a| a == "--scrape-interval").unwrap();
    args[scrape + 1] = "2s".into();
    let (code, events) = Rollout::start(&args).wait(Duration::from_secs(150)).await;
    load.stop();
    let report = report.await.unwrap();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert_eq!(weights(&events), vec![0.0, 100.0, 0.0], "{events:?}");
    // Before the switch the gate saw the copies (Prometheus's windows of
    // the canary's decision="mirror" series): its exposure grew at weight 0.
    let exposure_at_zero = events
        .iter()
        .filter(|e| e["canary_weight"] == 0.0 && e["phase"] == "Progressing")
        .filter_map(|e| e["canary_requests"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        exposure_at_zero >= 50,
        "{exposure_at_zero} mirrored requests judged"
    );
    assert_eq!(r.route().await["stable"], r.canary.url());
    assert!(report.server_errors() * 100 <= report.requests * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_experiment_on_a_b_rules_alone_compares_the_testers_with_everyone_else() {
    let _slot = release_slot().await;
    let stable = failing_backend("stable", 0.01, 31).await;
    let canary = failing_backend("canary", 0.01, 32).await;
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - name: web\n    stable: '{}'\n    canary: '{}'\n    canary_match:\n      - {{ header: x-tester, value: 'yes' }}\n",
        stable.url(),
        stable.url()
    )))
    .await;
    let dir = TempDir::new("ab-experiment");
    let url = format!("http://{}/", proxy.addr);
    let (everyone, _) = steady_load(&url, 200.0);
    let mut options = sluice_loadtest::LoadOptions::new(&url).unwrap();
    options.rate = Some(60.0);
    options.connections = 8;
    options.duration = Some(Duration::from_secs(60));
    options.count_header = Some(http::HeaderName::from_static("x-backend"));
    options.headers.push((
        http::HeaderName::from_static("x-tester"),
        http::HeaderValue::from_static("yes"),
    ));
    let testers_control = sluice_loadtest::LoadControl::new();
    let testers = tokio::spawn({
        let control = testers_control.clone();
        async move { sluice_loadtest::run(options, control).await.unwrap() }
    });
    let args: Vec<String> = [
        "--admin",
        &format!("http://{}", proxy.admin_addr),
        "--route",
        "web",
        "--canary",
        &canary.url(),
        "--strategy",
        "experiment",
        "--steps",
        "0",
        "--experiment-duration",
        "6s",
        "--scrape-interval",
        "1s",
        "--min-requests",
        "20",
        "--latency-bound",
        "100ms",
        "--baseline",
        "2s",
        "--control-socket",
        &dir.path.join("control.sock").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, events) = Rollout::start(&args).wait(Duration::from_secs(60)).await;
    everyone.stop();
    testers_control.stop();
    let testers = testers.await.unwrap();
    assert_eq!(code, 0, "{}", last_message(&events));
    assert_eq!(weights(&events), vec![0.0], "no weight ever moved");
    let report = &events.last().unwrap()["report"];
    let canary_requests = report["canary"]["requests"].as_u64().unwrap();
    let stable_requests = report["stable"]["requests"].as_u64().unwrap();
    // The testers' requests (60/s) are the canary arm; everyone else's the stable's.
    assert!(canary_requests >= 150, "{report}");
    assert!(stable_requests > 3 * canary_requests, "{report}");
    assert!(testers.header_counts.get("canary").copied().unwrap_or(0) >= canary_requests);
    // Ended on stable: the rules' slot points at the stable again.
    let (_, _, body) = get(&format!("http://{}/routes/web", proxy.admin_addr))
        .await
        .unwrap();
    let route: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(route["canary"], stable.url(), "{route}");
}
