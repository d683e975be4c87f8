//! `sluice rollout --baseline-arm URL` end to end: a real proxy, three real
//! backends (the stable, the canary, and a baseline arm: a fresh copy of
//! the stable's version), steady load, and the `sluice` binary driving the
//! release under its default (sequential) gate.
//!
//! What a user relies on: the baseline arm gets exactly the canary's share
//! at every step (read from the proxy's own `/metrics`), it is on the route
//! only while the release runs (gone after promotion and after rollback), a
//! plan it cannot share is refused before anything changes, and a canary
//! that starts cold beside an equally cold baseline arm is promoted with the
//! baseline arm's default warm-up (none).

use std::time::Duration;

use sluice_tests::*;

fn one_percent(faults: Faults) -> Faults {
    Faults {
        error_rate: 0.01,
        ..faults
    }
}

/// Slow (300 ms) for the first 4 s after the first request, as a fresh pod
/// with cold caches is.
fn cold() -> Faults {
    Faults {
        warmup: Some(sluice_loadtest::backend::Warmup {
            duration: Duration::from_secs(4),
            latency: Latency::Fixed(Duration::from_millis(300)),
        }),
        ..one_percent(Faults::default())
    }
}

struct Release {
    stable: BackendHandle,
    canary: BackendHandle,
    baseline: BackendHandle,
    proxy: ProxyHandle,
    dir: TempDir,
}

impl Release {
    async fn new(canary: Faults, baseline: Faults) -> Self {
        let start = |name: &'static str, faults: Faults, seed: u64| async move {
            sluice_loadtest::start_backend(BackendOptions {
                faults,
                seed,
                ..BackendOptions::new(name)
            })
            .await
            .unwrap()
        };
        let stable = start("stable", one_percent(Faults::default()), 21).await;
        let canary = start("canary", canary, 22).await;
        let baseline = start("baseline", baseline, 23).await;
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}' }}\n",
            stable.url()
        )))
        .await;
        Self {
            stable,
            canary,
            baseline,
            proxy,
            dir: TempDir::new("baseline-rollout"),
        }
    }

    fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin_addr)
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--admin",
            &self.admin(),
            "--route",
            "web",
            "--canary",
            &self.canary.url(),
            "--baseline-arm",
            &self.baseline.url(),
            "--steps",
            "20,50",
            "--interval",
            "3s",
            "--scrape-interval",
            "1s",
            "--min-requests",
            "50",
            "--rho-max",
            "2",
            "--max-duration",
            "150s",
            "--progress-deadline",
            "30s",
            "--baseline",
            "3s",
            "--control-socket",
            &self.dir.path.join("control.sock").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `extra` holds flag-value pairs; a flag already set gets the new value.
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(i) => args[i + 1] = pair[1].to_string(),
                None => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        args
    }

    async fn route(&self) -> serde_json::Value {
        let (_, _, body) = get(&format!("{}/routes/web", self.admin())).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Weighted requests each backend has answered so far.
    async fn weighted(&self) -> (f64, f64, f64) {
        let s = scrape(self.proxy.admin_addr).await;
        let count = |backend: &str| {
            s.sum(
                "sluice_requests_total",
                &[
                    ("route", "web"),
                    ("backend", backend),
                    ("decision", "weight"),
                ],
            )
        };
        (count("stable"), count("canary"), count("baseline"))
    }
}

/// What the proxy said while a release ran, sampled every 200 ms: (the
/// route's canary weight, its baseline, weighted stable, canary and
/// baseline counts).
type Sample = (f64, Option<String>, f64, f64, f64);

/// Runs the release under 800 req/s, sampling the route and the metrics
/// meanwhile; (exit code, events, samples, load report).
async fn run(
    r: &Release,
    args: Vec<String>,
) -> (
    i32,
    Vec<serde_json::Value>,
    Vec<Sample>,
    sluice_loadtest::Report,
) {
    let (load, report) = steady_load(&format!("http://{}/", r.proxy.addr), 800.0);
    let rollout = Rollout::start(&args);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = async {
        let mut samples = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let route = r.route().await;
            let (stable, canary, baseline) = r.weighted().await;
            // Only counts read while the route stayed as read (a promotion
            // removes the baseline arm in the same write that makes the
            // canary the stable; the canary's weight ends a moment later).
            if r.route().await != route {
                continue;
            }
            samples.push((
                route["canary_weight"].as_f64().unwrap_or(0.0),
                route["baseline"].as_str().map(str::to_string),
                stable,
                canary,
                baseline,
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples
    };
    let waiting = async {
        let out = rollout.wait(Duration::from_secs(300)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    let ((code, events), samples) = tokio::join!(waiting, sampling);
    load.stop();
    (code, events, samples, report.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_baseline_arm_gets_the_canarys_exact_share_and_leaves_the_route_at_promotion() {
    let _two = release_slot().await;
    let r = Release::new(
        one_percent(Faults::default()),
        one_percent(Faults::default()),
    )
    .await;
    let (code, events, samples, _) = run(&r, r.args(&[])).await;
    assert_eq!(code, 0, "{}", last_message(&events));
    // At every moment of the release, the baseline arm had answered as
    // many weighted requests as the canary, give or take those in flight.
    let with_baseline: Vec<&Sample> = samples.iter().filter(|s| s.1.is_some()).collect();
    assert!(
        with_baseline.iter().any(|s| s.0 == 20.0) && with_baseline.iter().any(|s| s.0 == 50.0),
        "both steps were seen with the baseline on the route: {samples:?}"
    );
    for s in &with_baseline {
        assert_eq!(s.1.as_deref(), Some(r.baseline.url().as_str()));
        assert!(
            (s.3 - s.4).abs() <= 4.0,
            "canary {} and baseline {} weighted requests differ by more than those in flight at {}%",
            s.3,
            s.4,
            s.0
        );
    }
    // And at each weight the pair had that share each: the counts grown
    // while the route stayed at 20% (50%) are 20% (50%) to each arm.
    for weight in [20.0, 50.0] {
        let at: Vec<&&Sample> = with_baseline.iter().filter(|s| s.0 == weight).collect();
        let (first, last) = (at.first().unwrap(), at.last().unwrap());
        let total = (last.2 + last.3 + last.4) - (first.2 + first.3 + first.4);
        let baseline = last.4 - first.4;
        assert!(total > 200.0, "traffic at {weight}%: {total}");
        let share = baseline / total * 100.0;
        assert!(
            (share - weight).abs() <= 2.0,
            "the baseline arm got {share:.2}% of {total} weighted requests at {weight}%"
        );
    }
    let (_, _, baseline) = r.weighted().await;
    assert!(baseline > 500.0, "the baseline arm served: {baseline}");
    // Promoted: the canary is the stable, the baseline arm is gone.
    let route = r.route().await;
    assert_eq!(route["stable"], r.canary.url(), "{route}");
    assert!(route.get("baseline").is_none(), "{route}");
    assert!(route.get("canary").is_none(), "{route}");
    let before = r.baseline.stats().requests;
    for _ in 0..50 {
        let (_, h, _) = get(&format!("http://{}/", r.proxy.addr)).await.unwrap();
        assert_eq!(h["x-backend"], "canary");
    }
    assert_eq!(
        r.baseline.stats().requests,
        before,
        "nothing reaches it now"
    );
    assert!(r.stable.stats().requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_worse_than_the_baseline_arm_is_rolled_back_and_the_arm_leaves_the_route() {
    let _two = release_slot().await;
    let worse = Faults {
        error_rate: 0.08,
        ..Faults::default()
    };
    let r = Release::new(worse, one_percent(Faults::default())).await;
    let (code, events, samples, _) = run(&r, r.args(&[])).await;
    let message = last_message(&events);
    assert_eq!(code, 1, "{message}");
    // The reason names what the canary was judged against.
    assert!(message.contains("worse than the baseline arm"), "{message}");
    assert!(
        samples.iter().any(|s| s.1.is_some()),
        "the baseline arm was on the route during the release"
    );
    let route = r.route().await;
    assert_eq!(route["stable"], r.stable.url(), "{route}");
    assert_eq!(route["canary_weight"], 0.0, "{route}");
    assert!(route.get("baseline").is_none(), "{route}");
    let before = r.baseline.stats().requests;
    for _ in 0..50 {
        let (_, h, _) = get(&format!("http://{}/", r.proxy.addr)).await.unwrap();
        assert_eq!(h["x-backend"], "stable");
    }
    assert_eq!(
        r.baseline.stats().requests,
        before,
        "nothing reaches it now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_canary_beside_an_equally_cold_baseline_arm_is_promoted_without_a_warmup() {
    let _two = release_slot().await;
    // Requests over 250 ms are slow: a cold pod's 300 ms answers are.
    let bound = ["--latency-bound", "250ms"];
    // The control: judged against the warm primary with no warm-up, the
    // same cold canary is rolled back; the cold start is a real threat.
    let control = Release::new(cold(), Faults::default()).await;
    let mut args = control.args(&bound);
    let at = args.iter().position(|a| a == "--baseline-arm").unwrap();
    args.drain(at..at + 2);
    args.extend(["--warmup".into(), "0s".into()]);
    let (code, events, _, _) = run(&control, args).await;
    assert_eq!(code, 1, "{}", last_message(&events));
    drop(control);
    // With a baseline arm as cold as the canary, the default warm-up (none).
    let r = Release::new(cold(), cold()).await;
    let (code, events, _, report) = run(&r, r.args(&bound)).await;
    assert_eq!(code, 0, "{}", last_message(&events));
    // Both really were slow at first: users saw 300 ms answers…
    assert!(
        report.latency.max_ms >= 300.0,
        "the cold start was slow: {:?}",
        report.latency
    );
    // …and the gate never waited for a warm-up: it judged the latency
    // against the baseline arm from the first scrape.
    assert!(
        !events
            .iter()
            .any(|e| e["checks"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["reason"].as_str().unwrap_or("").contains("warm-up")))),
        "no warm-up with a baseline arm: {}",
        last_message(&events)
    );
    assert!(r.route().await.get("baseline").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_the_baseline_arm_cannot_share_is_refused_before_anything_changes() {
    let r = Release::new(Faults::default(), Faults::default()).await;
    let before = r.route().await;
    let canary = r.canary.url();
    let stable = r.stable.url();
    for (extra, expected) in [
        (
            vec!["--baseline-arm", stable.as_str()],
            "is the route's stable; the baseline arm is a fresh copy",
        ),
        (
            vec!["--canary", stable.as_str()],
            "is the route's stable already",
        ),
        (
            vec!["--steps", "20,60"],
            "--baseline-arm: the baseline arm gets the canary's share too, so every weight must be at most 50, and --steps has 60",
        ),
        (
            vec!["--strategy", "blue-green"],
            "--baseline-arm: --strategy blue-green switches all traffic at once",
        ),
        (
            vec!["--baseline-arm", canary.as_str()],
            "is the canary (--canary)",
        ),
        (
            vec!["--baseline-arm", "ftp://127.0.0.1:9"],
            "--baseline-arm: `ftp://127.0.0.1:9`",
        ),
    ] {
        let mut args = r.args(&extra);
        if extra.contains(&"blue-green") {
            // One step, the switch: --steps is refused with blue-green.
            let at = args.iter().position(|a| a == "--steps").unwrap();
            args.drain(at..at + 2);
        }
        let out = std::process::Command::new(bin("sluice"))
            .arg("rollout")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    assert_eq!(r.route().await, before, "the route was not touched");
    assert_eq!(r.baseline.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_waits_at_weight_0_until_its_baseline_arm_accepts_connections() {
    let r = Release::new(Faults::default(), Faults::default()).await;
    // Nothing listens there (yet).
    let absent = format!("http://127.0.0.1:{}", free_port());
    let rollout = Rollout::start(&r.args(&["--baseline-arm", &absent]));
    let waiting = format!("waiting for the baseline arm {absent} to accept connections");
    let seen = eventually(
        "the release says what it waits for",
        Duration::from_secs(30),
        || {
            let events: Vec<serde_json::Value> = rollout.events.try_iter().collect();
            let found = events
                .iter()
                .find(|e| e["message"].as_str().is_some_and(|m| m.contains(&waiting)))
                .cloned();
            async move { found }
        },
    )
    .await;
    assert_eq!(seen["phase"], "Initializing", "{seen}");
    let route = r.route().await;
    assert_eq!(route["baseline"], absent.as_str(), "{route}");
    assert_eq!(
        route["canary_weight"], 0.0,
        "no weight while the arm is down: {route}"
    );
    drop(rollout);
}
