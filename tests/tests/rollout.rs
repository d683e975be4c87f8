//! `sluice rollout` end to end under the threshold gate (Flagger's way, kept
//! selectable): a real proxy, real backends with a 1% error baseline, steady
//! load, the `sluice` binary driving the release, and either the proxy's own
//! metrics or a real Prometheus scraping the proxy every second. The
//! sequential gate (the default) has its own end-to-end tests in `gate.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use sluice_tests::*;

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Proxy,
    Prometheus,
}

struct Setup {
    stable: BackendHandle,
    canary: BackendHandle,
    proxy: ProxyHandle,
    prometheus: Option<Prometheus>,
    dir: TempDir,
}

impl Setup {
    /// The canary gets `canary_faults` on top of the 1% error baseline both
    /// backends have.
    async fn new(source: Source, canary_faults: Faults) -> Self {
        let stable = sluice_loadtest::start_backend(BackendOptions {
            faults: baseline(),
            seed: 2,
            ..BackendOptions::new("stable")
        })
        .await
        .unwrap();
        let canary_faults = Faults {
            error_rate: canary_faults.error_rate.max(0.01),
            ..canary_faults
        };
        let canary = sluice_loadtest::start_backend(BackendOptions {
            faults: canary_faults,
            seed: 3,
            ..BackendOptions::new("canary")
        })
        .await
        .unwrap();
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - {{ name: web, stable: '{}' }}\n  - {{ name: other, path_prefix: /other, stable: '{}' }}\n",
            stable.url(),
            stable.url()
        )))
        .await;
        let prometheus = match source {
            Source::Proxy => None,
            Source::Prometheus => {
                let p = Prometheus::start(&[proxy.admin_addr]).await;
                p.wait_for_targets_up(1).await;
                Some(p)
            }
        };
        Self {
            stable,
            canary,
            proxy,
            prometheus,
            dir: TempDir::new("rollout"),
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
            "--steps",
            "20,50",
            "--interval",
            "2s",
            "--failure-limit",
            "2",
            "--min-requests",
            "20",
            "--progress-deadline",
            "10s",
            "--gate",
            "threshold",
            // Room for the 1% error baseline of a healthy release.
            "--success-rate",
            "95",
            "--latency",
            "p99<=300ms",
            "--control-socket",
            &self.dir.path.join("control.sock").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = &self.prometheus {
            args.extend([
                "--prometheus".to_string(),
                p.url.clone(),
                "--prometheus-window".into(),
                "2s".into(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn route(&self) -> serde_json::Value {
        let (_, _, body) = get(&format!("{}/routes/web", self.admin())).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

/// Runs the `sluice` binary with `args` (blocking; for short commands).
fn sluice<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(bin("sluice"))
        .args(args)
        .output()
        .unwrap()
}

fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn phases(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["phase"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn healthy_release_is_promoted(source: Source) {
    let s = Setup::new(source, Faults::default()).await;
    let (load, report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let (code, events) = Rollout::start(&s.args(&[]))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    let report = report.await.unwrap();
    assert_eq!(code, 0, "phases: {:?}", phases(&events));
    let weights: Vec<f64> = events
        .iter()
        .filter_map(|e| e["canary_weight"].as_f64())
        .collect();
    assert!(
        weights.iter().all(|w| [0.0, 20.0, 50.0].contains(w)),
        "unplanned weight in {weights:?}"
    );
    assert_eq!(phases(&events).last().unwrap(), "Succeeded");
    let route = s.route().await;
    assert_eq!(
        route["stable"],
        s.canary.url(),
        "promotion makes the canary stable"
    );
    assert!(
        route.get("canary").is_none() && route["canary_weight"] == 0.0,
        "{route}"
    );
    assert!(
        report.errors.is_empty(),
        "transport errors: {:?}",
        report.errors
    );
    assert!(
        report.server_errors() * 100 <= report.requests * 3,
        "users saw more than the 1% baseline of failures: {:?}",
        report.status_counts
    );
    // After promotion, all traffic reaches the new revision.
    let (_, h, _) = get(&format!("http://{}/", s.proxy.addr)).await.unwrap();
    assert_eq!(h["x-backend"], "canary");
    assert!(s.stable.stats().requests > 0);
}

async fn failing_release_is_rolled_back(
    source: Source,
    faults: Faults,
    reason: &str,
    max_failures: u64,
) {
    let s = Setup::new(source, faults).await;
    let (load, report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let (code, events) = Rollout::start(&s.args(&[]))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    let report = report.await.unwrap();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert!(
        last["message"].as_str().unwrap().contains(reason),
        "{}",
        last["message"]
    );
    assert!(phases(&events).iter().all(|p| p != "Promoting"));
    let route = s.route().await;
    assert_eq!(route["canary_weight"], 0.0);
    assert_eq!(
        route["stable"],
        s.stable.url(),
        "rollback leaves stable untouched"
    );
    let canary_failures: u64 = report
        .header_status_counts
        .get("canary")
        .map(|m| m.iter().filter(|(c, _)| **c >= 500).map(|(_, n)| n).sum())
        .unwrap_or(0);
    let stable = report.header_status_counts.get("stable");
    let stable_failures: u64 = stable
        .map(|m| m.iter().filter(|(c, _)| **c >= 500).map(|(_, n)| n).sum())
        .unwrap_or(0);
    let stable_requests: u64 = stable.map(|m| m.values().sum()).unwrap_or(0);
    assert!(
        stable_failures * 100 <= stable_requests * 3,
        "stable failed beyond its 1% baseline: {stable_failures} of {stable_requests}"
    );
    // The blast radius stays inside the first steps.
    assert!(
        canary_failures < max_failures,
        "{canary_failures} failed user requests before rollback"
    );
    // Traffic is back on stable.
    let before = s.canary.stats().requests;
    for _ in 0..20 {
        let (_, h, _) = get(&format!("http://{}/", s.proxy.addr)).await.unwrap();
        assert_eq!(h["x-backend"], "stable");
    }
    assert_eq!(s.canary.stats().requests, before);
}

async fn silent_release_is_never_promoted(source: Source) {
    let s = Setup::new(source, Faults::default()).await;
    // Users only call another route: the canary sees nothing.
    let (load, _report) = steady_load(&format!("http://{}/other", s.proxy.addr), 100.0);
    let (code, events) = Rollout::start(&s.args(&[]))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    assert!(
        phases(&events)
            .iter()
            .all(|p| p != "Promoting" && p != "Succeeded")
    );
    let weights: Vec<f64> = events
        .iter()
        .filter_map(|e| e["canary_weight"].as_f64())
        .collect();
    assert!(
        weights.iter().all(|w| *w <= 20.0),
        "an inconclusive tick advanced the weight: {weights:?}"
    );
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("no conclusive analysis")
    );
}

/// One test per metric provider for the same scenario.
macro_rules! with_both_providers {
    ($($proxy:ident, $prometheus:ident => $scenario:ident($($arg:expr),*);)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $proxy() {
            $scenario(Source::Proxy $(, $arg)*).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $prometheus() {
            $scenario(Source::Prometheus $(, $arg)*).await;
        }
    )+};
}

with_both_providers! {
    healthy_release_is_promoted_with_proxy_metrics, healthy_release_is_promoted_with_prometheus
        => healthy_release_is_promoted();
    release_with_ten_percent_errors_is_rolled_back_with_proxy_metrics, release_with_ten_percent_errors_is_rolled_back_with_prometheus
        => failing_release_is_rolled_back(ten_percent_errors(), "success-rate", 100);
    release_400ms_slower_is_rolled_back_with_proxy_metrics, release_400ms_slower_is_rolled_back_with_prometheus
        => failing_release_is_rolled_back(slow_by_400ms(), "p99", 100);
    release_failing_every_request_is_rolled_back_with_proxy_metrics, release_failing_every_request_is_rolled_back_with_prometheus
        => failing_release_is_rolled_back(all_errors(), "success-rate: 0.00%", 600);
    release_without_traffic_is_never_promoted_with_proxy_metrics, release_without_traffic_is_never_promoted_with_prometheus
        => silent_release_is_never_promoted();
    confirm_promotion_webhook_answering_500_holds_with_proxy_metrics, confirm_promotion_webhook_answering_500_holds_with_prometheus
        => confirm_promotion_webhook_holds_the_release();
}

/// What healthy backends do: 1% of requests fail.
fn baseline() -> Faults {
    Faults {
        error_rate: 0.01,
        error_status: 500,
        ..Faults::default()
    }
}

fn ten_percent_errors() -> Faults {
    Faults {
        error_rate: 0.10,
        error_status: 500,
        ..Faults::default()
    }
}

/// No request succeeds: PromQL's success numerator is an empty vector, which
/// must read as 0%, not as "no data".
fn all_errors() -> Faults {
    Faults {
        error_rate: 1.0,
        error_status: 503,
        ..Faults::default()
    }
}

fn slow_by_400ms() -> Faults {
    Faults {
        latency: Latency::Fixed(Duration::from_millis(400)),
        ..Faults::default()
    }
}

/// A canary that hangs until its callers give up: every one of its requests
/// is a client cancel (`499`, a failure), so the release rolls back instead
/// of holding on "no answers" or passing on the stable's traffic.
async fn hanging_release_is_rolled_back(source: Source) {
    let s = Setup::new(
        source,
        Faults {
            latency: Latency::Fixed(Duration::from_secs(5)),
            ..Faults::default()
        },
    )
    .await;
    let (load, report) = impatient_load(
        &format!("http://{}/", s.proxy.addr),
        100.0,
        Duration::from_secs(1),
    );
    let (code, events) = Rollout::start(&s.args(&[]))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    let report = report.await.unwrap();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert!(
        last["message"].as_str().unwrap().contains("success-rate"),
        "{}",
        last["message"]
    );
    assert!(report.errors.get("timeout").copied().unwrap_or(0) > 0);
    let m = scrape(s.proxy.admin_addr).await;
    assert!(
        m.sum(
            "sluice_requests_total",
            &[
                ("backend", "canary"),
                ("code", "499"),
                ("classification", "failure")
            ]
        ) >= 20.0
    );
    assert_eq!(s.route().await["canary_weight"], 0.0);
}

with_both_providers! {
    release_that_hangs_until_clients_give_up_is_rolled_back_with_proxy_metrics, release_that_hangs_until_clients_give_up_is_rolled_back_with_prometheus
        => hanging_release_is_rolled_back();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_stopped_mid_release_never_promotes() {
    let mut s = Setup::new(Source::Prometheus, Faults::default()).await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let mut args = s.args(&[]);
    let steps = args.iter().position(|a| a == "20,50").unwrap();
    args[steps] = "10,20,30,40,50".into();
    let rollout = Rollout::start(&args);
    // Let the release start, then take Prometheus away.
    let first = rollout
        .events
        .recv_timeout(Duration::from_secs(20))
        .expect("a first tick");
    assert_eq!(first["phase"], "Initializing");
    s.prometheus.as_mut().unwrap().stop();
    let (code, events) = rollout.wait(Duration::from_secs(60)).await;
    load.stop();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    assert!(
        phases(&events)
            .iter()
            .all(|p| p != "Promoting" && p != "Succeeded")
    );
    let unreachable = events.iter().any(|e| {
        e["checks"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("prometheus unreachable")
            })
        })
    });
    assert!(unreachable, "ticks should say prometheus is unreachable");
    assert_eq!(s.route().await["canary_weight"], 0.0);
}

/// A webhook receiver answering `status` (changeable), counting calls.
async fn start_webhook(status: Arc<AtomicU16>, calls: Arc<AtomicU64>) -> SocketAddr {
    serve_http(move |_req| {
        let code = status.load(Ordering::SeqCst);
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
            resp
        }
    })
    .await
}

async fn confirm_promotion_webhook_holds_the_release(source: Source) {
    let s = Setup::new(source, Faults::default()).await;
    let (status, calls) = (Arc::new(AtomicU16::new(500)), Arc::new(AtomicU64::new(0)));
    let hook = start_webhook(status.clone(), calls.clone()).await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let rollout = Rollout::start(&s.args(&[
        "--webhook",
        &format!("confirm-promotion=http://{hook}/confirm"),
    ]));
    let mut waiting_ticks = 0;
    while waiting_ticks < 3 {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(30))
            .expect("ticks keep coming");
        assert_ne!(
            e["phase"], "Promoting",
            "promoted although confirm-promotion answered 500"
        );
        assert_ne!(e["phase"], "Failed", "{e}");
        if e["phase"] == "WaitingPromotion" {
            waiting_ticks += 1;
            // It says which hook holds it, and how.
            let message = e["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("http://{hook}/confirm: answered 500")),
                "{message}"
            );
        }
    }
    assert_eq!(
        s.route().await["canary_weight"],
        50.0,
        "held at the last step"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    status.store(200, Ordering::SeqCst);
    let (code, events) = rollout.wait(Duration::from_secs(30)).await;
    load.stop();
    assert_eq!(code, 0, "phases: {:?}", phases(&events));
    assert_eq!(s.route().await["stable"], s.canary.url());
}

/// `sluice abort` acts at once, even while a slow webhook is being asked
/// (here a rollback hook that takes 8 s to say no on every tick).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_does_not_wait_for_a_slow_webhook() {
    let s = Setup::new(Source::Proxy, Faults::default()).await;
    let slow = serve_http(|_req| async {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp
    })
    .await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let socket = s.dir.path.join("control.sock").display().to_string();
    let rollout = Rollout::start(&s.args(&["--webhook", &format!("rollback=http://{slow}/stop")]));
    // Past the first tick's hook call: the next one is under way.
    loop {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(30))
            .expect("ticks keep coming");
        assert_ne!(e["phase"], "Failed", "{e}");
        if e["phase"] == "Progressing" {
            break;
        }
    }
    let asked = std::time::Instant::now();
    let out = sluice(["abort", "web", "--control-socket", &socket]);
    assert_exit(&out, 0);
    let (code, events) = rollout.wait(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    load.stop();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    assert!(
        took < Duration::from_secs(5),
        "the abort waited {took:?} for the webhook"
    );
    assert_eq!(s.route().await["canary_weight"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_approval_waits_for_sluice_promote_and_abort_rolls_back() {
    let s = Setup::new(Source::Proxy, Faults::default()).await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let socket = s.dir.path.join("control.sock").display().to_string();
    let rollout = Rollout::start(&s.args(&["--approve", "manual"]));
    loop {
        let e = rollout
            .events
            .recv_timeout(Duration::from_secs(30))
            .expect("ticks keep coming");
        if e["phase"] == "WaitingPromotion" {
            break;
        }
        assert_ne!(e["phase"], "Failed", "{e}");
    }
    // The CLI names the route and revision it means: a socket driving
    // another route's release, or a release of another revision than
    // the one named, does nothing (exit 1, saying why).
    let out = sluice(["promote", "other", "--control-socket", &socket]);
    assert_exit(&out, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "nothing was done: this socket steers the release on route `web`, not `other`"
        ),
        "{err}"
    );
    let wrong = format!("{}/older", s.canary.url());
    let out = sluice([
        "abort",
        "web",
        "--revision",
        &wrong,
        "--control-socket",
        &socket,
    ]);
    assert_exit(&out, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("not {wrong}")), "{err}");
    let e = rollout
        .events
        .recv_timeout(Duration::from_secs(30))
        .expect("the release goes on");
    assert_eq!(e["phase"], "WaitingPromotion", "{e}");
    let out = sluice(["promote", "web", "--control-socket", &socket]);
    assert_exit(&out, 0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "sent to release `web` of revision {}",
            s.canary.url()
        )),
        "{said}"
    );
    let (code, _) = rollout.wait(Duration::from_secs(30)).await;
    assert_eq!(code, 0);
    // With no release running, promote says so (exit 3).
    let out = sluice(["abort", "web", "--control-socket", &socket]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `sluice rollout` is running"));

    // A second release of another revision, aborted by hand mid-way.
    let next = backend("next").await;
    let mut args = s.args(&["--approve", "manual"]);
    let canary_at = args.iter().position(|a| a == "--canary").unwrap() + 1;
    args[canary_at] = next.url();
    let rollout = Rollout::start(&args);
    let e = rollout
        .events
        .recv_timeout(Duration::from_secs(30))
        .expect("a first tick");
    assert_eq!(e["phase"], "Initializing");
    let out = sluice(["abort", "web", "--control-socket", &socket]);
    assert_exit(&out, 0);
    let (code, events) = rollout.wait(Duration::from_secs(30)).await;
    load.stop();
    assert_eq!(code, 1);
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("aborted")
    );
    let route = s.route().await;
    assert_eq!(
        route["stable"],
        s.canary.url(),
        "abort keeps the promoted stable"
    );
    assert_eq!(route["canary_weight"], 0.0);
}

/// A rollout restarted mid-release answers its control socket with the
/// saved phase and weight from the moment the socket is up, not as
/// `Initializing` until its first tick (here held up for 5 s by a proxy
/// admin whose `/metrics` does not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_release_answers_its_socket_with_the_saved_phase_from_the_start() {
    use sluice_operator::machine::{Phase, Status};
    use sluice_operator::runner::{SavedRelease, StateFile};
    let canary = format!("http://127.0.0.1:{}", free_port());
    let route = serde_json::json!({
        "name": "web",
        "stable": format!("http://127.0.0.1:{}", free_port()),
        "canary": canary,
        "canary_weight": 20.0,
    })
    .to_string();
    let admin = serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let route = route.clone();
        async move {
            match req.uri().path() {
                "/routes/web" => http::Response::new(Full::new(Bytes::from(route))),
                "/metrics" => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    http::Response::new(Full::new(Bytes::new()))
                }
                _ => http::Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            }
        }
    })
    .await;
    let dir = TempDir::new("resumed-socket");
    let socket = dir.path.join("control.sock");
    let saved = Status {
        phase: Phase::Progressing,
        revision: canary.clone(),
        step: 0,
        canary_weight_bp: 2000,
        passed_steps: 0,
        failed_checks: 1,
        approved: false,
        started_at: 0.0,
        last_progress_at: 0.0,
        last_transition_at: 0.0,
        message: "advanced to 20%".into(),
        unconfirmed: None,
        queued_revision: None,
        step_started_at: 0.0,
        gate: None,
        undecided: false,
        failure_counted_at: None,
    };
    StateFile::beside(&socket)
        .save(&SavedRelease {
            route: "web".into(),
            revision: canary.clone(),
            saved_at: sluice_operator::clock::wall_clock(),
            status: saved,
        })
        .unwrap();
    let rollout = Rollout::start(&[
        "--admin".to_string(),
        format!("http://{admin}"),
        "--route".into(),
        "web".into(),
        "--canary".into(),
        canary.clone(),
        "--gate".into(),
        "threshold".into(),
        "--control-socket".into(),
        socket.display().to_string(),
    ]);
    // The first answer the socket gives.
    let path = socket.as_path();
    let answer = eventually(
        "the resumed rollout's socket answers",
        Duration::from_secs(20),
        || async move { sluice_operator::control::request(path, "status").await.ok() },
    )
    .await;
    assert!(
        rollout.events.try_recv().is_err(),
        "no tick yet: the first is held up by /metrics"
    );
    assert_eq!(answer["phase"], "Progressing", "{answer}");
    assert_eq!(answer["status"]["canary_weight_bp"], 2000, "{answer}");
    assert_eq!(answer["status"]["revision"], canary.as_str(), "{answer}");
    // And the CLI names that revision.
    let out = sluice([
        "abort",
        "web",
        "--control-socket",
        &socket.display().to_string(),
    ]);
    assert_exit(&out, 0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("of revision {canary} (phase Progressing)")),
        "{said}"
    );
    drop(rollout);
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_proxy_exits_3() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let base = [
        "rollout",
        "--admin",
        &dead,
        "--route",
        "web",
        "--canary",
        "http://127.0.0.1:9",
    ];
    for (extra, expected) in [
        (vec!["--steps", "50,10"], "--steps"),
        (vec!["--latency", "p95<500ms"], "--latency"),
        (vec!["--interval", "soon"], "--interval"),
        (vec!["--webhook", "deploy=http://x"], "--webhook"),
        (vec!["--success-rate", "101"], "--success-rate"),
        (vec!["--approve", "maybe"], "--approve"),
    ] {
        let out = sluice(base.iter().chain(&extra));
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    let out = sluice(base);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_usage_error() {
    let s = Setup::new(Source::Proxy, Faults::default()).await;
    let mut args = s.args(&[]);
    let route_at = args.iter().position(|a| a == "--route").unwrap() + 1;
    args[route_at] = "nope".into();
    let out = tokio::task::spawn_blocking(move || {
        sluice(std::iter::once("rollout".to_string()).chain(args))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_custom_promql_check_gates_the_release() {
    let s = Setup::new(Source::Prometheus, Faults::default()).await;
    let checks = s.dir.path.join("checks.yaml");
    // The built-in checks pass; this one cannot (the canary gets ~40 req/s).
    std::fs::write(
        &checks,
        "- name: canary-rate-cap\n  query: sum(rate(sluice_requests_total{route=\"{{route}}\",backend=\"{{backend}}\"}[{{interval}}]))\n  max: 1\n",
    )
    .unwrap();
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let checks_arg = checks.display().to_string();
    let (code, events) = Rollout::start(&s.args(&["--checks-file", &checks_arg]))
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    let message = events.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("canary-rate-cap") && message.contains("above the limit"),
        "{message}"
    );
    // Without Prometheus, custom checks are a usage error.
    let out = sluice([
        "rollout",
        "--admin",
        &s.admin(),
        "--route",
        "web",
        "--canary",
        &s.canary.url(),
        "--checks-file",
        &checks_arg,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--checks-file: custom PromQL checks need --prometheus")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_webhook_answering_2xx_aborts_and_a_failing_pre_rollout_never_starts() {
    let s = Setup::new(Source::Proxy, Faults::default()).await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    // rollback webhook: 200 means "roll back now".
    let (ok, calls) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicU64::new(0)));
    let hook = start_webhook(ok, calls.clone()).await;
    let (code, events) =
        Rollout::start(&s.args(&["--webhook", &format!("rollback=http://{hook}/stop")]))
            .wait(Duration::from_secs(60))
            .await;
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("a rollback webhook asked for it")
    );
    assert!(calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.route().await["canary_weight"], 0.0);
    // pre-rollout webhook answering 500: the weight never leaves 0.
    let (failing, calls) = (Arc::new(AtomicU16::new(500)), Arc::new(AtomicU64::new(0)));
    let hook = start_webhook(failing, calls.clone()).await;
    let (code, events) =
        Rollout::start(&s.args(&["--webhook", &format!("pre-rollout=http://{hook}/check")]))
            .wait(Duration::from_secs(60))
            .await;
    load.stop();
    assert_eq!(code, 1, "phases: {:?}", phases(&events));
    assert!(
        events.iter().all(|e| e["canary_weight"] == 0.0),
        "traffic moved before pre-rollout passed"
    );
    // It says which hook failed, and how.
    let last = events.last().unwrap()["message"].as_str().unwrap();
    assert!(last.contains("pre-rollout"), "{last}");
    assert!(
        last.contains(&format!("http://{hook}/check: answered 500")),
        "{last}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one call per attempt up to the failure limit"
    );
}
