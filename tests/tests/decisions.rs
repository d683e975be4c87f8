//! Release decisions are never lost and never made without evidence, on
//! plain hosts: a rollback the router refuses is kept and re-applied, routes
//! with A/B rules promote and roll back, an interrupted `sluice rollout`
//! resumes where it was, and post-rollout webhooks hear about rollbacks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::machine::Phase;
use sluice_operator::plan::Plan;
use sluice_operator::provider::Provider;
use sluice_operator::router::{ProxyAdminRouter, Readiness, Router, RouterError};
use sluice_operator::runner::{Driver, TickReport};
use sluice_tests::*;

/// A router in front of a real proxy's admin API whose rollback calls fail
/// a set number of times first, as an unreachable admin API would.
struct FlakyRouter {
    inner: ProxyAdminRouter,
    rollback_failures: AtomicU32,
    rollback_calls: AtomicU32,
    initialize_failures: AtomicU32,
}

impl Router for FlakyRouter {
    async fn initialize(&self) -> Result<(), RouterError> {
        let left = self.initialize_failures.load(Ordering::SeqCst);
        if left > 0 {
            self.initialize_failures.store(left - 1, Ordering::SeqCst);
            return Err(RouterError::Other("injected: admin API unreachable".into()));
        }
        self.inner.initialize().await
    }
    async fn set_weight(&self, bp: u32) -> Result<(), RouterError> {
        self.inner.set_weight(bp).await
    }
    async fn promote(&self) -> Result<(), RouterError> {
        self.inner.promote().await
    }
    async fn finalise(&self) -> Result<(), RouterError> {
        self.inner.finalise().await
    }
    async fn rollback(&self) -> Result<(), RouterError> {
        self.rollback_calls.fetch_add(1, Ordering::SeqCst);
        let left = self.rollback_failures.load(Ordering::SeqCst);
        if left > 0 {
            self.rollback_failures.store(left - 1, Ordering::SeqCst);
            return Err(RouterError::Other("injected: admin API unreachable".into()));
        }
        self.inner.rollback().await
    }
    async fn ready(&self) -> Readiness {
        self.inner.ready().await
    }
}

fn scripted(outcomes: Vec<Outcome>) -> Provider {
    let script = Arc::new(Mutex::new(outcomes.into_iter()));
    Provider::Scripted(Box::new(move || Analysis {
        canary_requests: Some(100),
        checks: vec![CheckResult {
            name: "success-rate".into(),
            outcome: script.lock().unwrap().next().unwrap_or(Outcome::Pass),
            value: Some(99.0),
            threshold: ">= 99%".into(),
            reason: "scripted".into(),
            ..CheckResult::default()
        }],
        ..Analysis::default()
    }))
}

#[tokio::test]
async fn a_rollback_the_router_refuses_is_kept_and_applied_once_it_can_be() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let admin = format!("http://{}", proxy.admin_addr);
    let router = FlakyRouter {
        inner: ProxyAdminRouter::new(&admin, "web", &canary.url(), None),
        rollback_failures: AtomicU32::new(4),
        rollback_calls: AtomicU32::new(0),
        initialize_failures: AtomicU32::new(0),
    };
    let plan = Plan {
        steps_bp: vec![2000, 5000, 8000],
        interval: Duration::from_millis(100),
        failure_limit: 1,
        progress_deadline: Duration::from_secs(30),
        // Scripted verdicts: nothing to measure before the first step.
        gate: sluice_operator::plan::Gate::Sequential(sluice_operator::gate::GateSettings {
            baseline: Duration::ZERO,
            ..Default::default()
        }),
        ..Plan::default()
    };
    // Step 1 passes (weight 50), then a failure decides the rollback; every
    // later analysis would pass and advance, if a tick could still advance.
    let provider = scripted(vec![Outcome::Pass, Outcome::Fail]);
    let mut driver = Driver::new("web", &canary.url(), plan, router, provider);
    driver.poll = Duration::from_millis(20);
    let mut ticks: Vec<TickReport> = Vec::new();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        driver.run(|t| ticks.push(t.clone())),
    )
    .await
    .expect("the release ends");
    assert_eq!(ended.stopped, None, "unreachable is retried, not a stop");
    let status = ended.status;
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.unconfirmed, None, "the rollback was confirmed");
    let decided = ticks
        .iter()
        .position(|t| t.phase == Phase::Failed)
        .expect("a rollback was decided");
    let after = &ticks[decided..];
    assert!(
        after
            .iter()
            .all(|t| t.phase == Phase::Failed && t.canary_weight == 0.0),
        "nothing moved forward after the decision: {:?}",
        after
            .iter()
            .map(|t| (t.phase, t.canary_weight))
            .collect::<Vec<_>>()
    );
    let refused = after
        .iter()
        .filter(|t| t.message.contains("could not apply Rollback"))
        .count();
    assert_eq!(refused, 4, "each refusal is reported and retried");
    let route: serde_json::Value =
        serde_json::from_slice(&get(&format!("{admin}/routes/web")).await.unwrap().2).unwrap();
    assert_eq!(route["canary_weight"], 0.0, "{route}");
    assert_eq!(route["stable"], stable.url());
    // Traffic really is back on stable.
    for _ in 0..10 {
        let (_, h, _) = get(&format!("http://{}/", proxy.addr)).await.unwrap();
        assert_eq!(h["x-backend"], "stable");
    }
}

/// An `Initialize` the proxy refuses, issued again until it lands, is the
/// same release: one record, not one a retry with the earlier ones closed
/// as superseded by their own revision.
#[tokio::test]
async fn an_initialize_issued_again_keeps_one_release_record() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let proxy = start_proxy(&proxy_yaml(&format!(
        "  - {{ name: web, stable: '{}' }}\n",
        stable.url()
    )))
    .await;
    let admin = format!("http://{}", proxy.admin_addr);
    let router = FlakyRouter {
        inner: ProxyAdminRouter::new(&admin, "web", &canary.url(), None),
        rollback_failures: AtomicU32::new(0),
        rollback_calls: AtomicU32::new(0),
        initialize_failures: AtomicU32::new(3),
    };
    let plan = Plan {
        steps_bp: vec![5000],
        interval: Duration::from_millis(100),
        progress_deadline: Duration::from_secs(30),
        gate: sluice_operator::plan::Gate::Sequential(sluice_operator::gate::GateSettings {
            baseline: Duration::ZERO,
            ..Default::default()
        }),
        ..Plan::default()
    };
    let dir = TempDir::new("initialize-again");
    let records = sluice_operator::record::RecordFile::beside(&dir.path.join("control.sock"));
    let mut driver = Driver::new("web", &canary.url(), plan, router, scripted(Vec::new()));
    driver.poll = Duration::from_millis(20);
    driver.records = Some(sluice_operator::record::RecordFile::beside(
        &dir.path.join("control.sock"),
    ));
    let ended = tokio::time::timeout(Duration::from_secs(30), driver.run(|_| {}))
        .await
        .expect("the release ends");
    assert_eq!(ended.status.phase, Phase::Succeeded, "{:?}", ended.status);
    let kept = records.load().unwrap();
    assert_eq!(
        kept.len(),
        1,
        "{:?}",
        kept.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>()
    );
}

/// A proxy that refuses the release's next change (its route is gone from
/// the proxy's config mid-release: 404) is asked three times; then the
/// release is rolled back instead, and when the proxy refuses that three
/// times too, the run stops with the decision saved and how to take the
/// canary out by hand, rather than retry for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_proxy_keeps_refusing_is_rolled_back_then_stops_the_run() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let route = |name: &str| format!("  - {{ name: {name}, stable: '{}' }}\n", stable.url());
    let proxy = ChildProxy::start(&route("web"), &[]).await;
    let admin = format!("http://{}", proxy.admin);
    let router = ProxyAdminRouter::new(&admin, "web", &canary.url(), None);
    let plan = Plan {
        steps_bp: vec![2000, 5000, 8000],
        interval: Duration::from_millis(300),
        progress_deadline: Duration::from_secs(30),
        gate: sluice_operator::plan::Gate::Sequential(sluice_operator::gate::GateSettings {
            baseline: Duration::ZERO,
            ..Default::default()
        }),
        ..Plan::default()
    };
    let mut driver = Driver::new("web", &canary.url(), plan, router, scripted(Vec::new()));
    driver.poll = Duration::from_millis(20);
    let mut ticks: Vec<TickReport> = Vec::new();
    // Once the first step is on the proxy, the route leaves its config.
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let renamed = config.replace("name: web,", "name: shop,");
    let take_away = async {
        eventually(
            "the first step on the proxy",
            Duration::from_secs(10),
            || async {
                let (_, _, body) = get(&format!("{admin}/routes/web")).await.ok()?;
                let route: serde_json::Value = serde_json::from_slice(&body).ok()?;
                (route["canary_weight"] == 20.0).then_some(())
            },
        )
        .await;
        std::fs::write(&proxy.config_path, &renamed).unwrap();
    };
    let (ended, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(driver.run(|t| ticks.push(t.clone())), take_away)
    })
    .await
    .expect("the run ends");
    // The first tick that rolls back says why (its rollback was refused too).
    let gave_up = ticks
        .iter()
        .position(|t| t.phase == Phase::Failed)
        .unwrap_or_else(|| panic!("no rollback for the refused step: {ticks:?}"));
    assert!(
        ticks[gave_up]
            .message
            .contains("rolled back: the proxy refused SetWeight(5000) 3 times in a row"),
        "{:?}",
        ticks[gave_up]
    );
    let retried = ticks[..gave_up]
        .iter()
        .filter(|t| t.message.starts_with("could not apply SetWeight(5000)"))
        .count();
    assert_eq!(retried, 3, "three refusals before the rollback");
    let why = ended.stopped.expect("the run stopped");
    assert!(
        why.contains("refused Rollback 3 times in a row")
            && why.contains("no route named `web`")
            && why.contains("PUT /routes/web"),
        "{why}"
    );
    assert_eq!(ticks.last().unwrap().message, why);
    assert_eq!(ended.status.phase, Phase::Failed);
}

struct AbSetup {
    stable: BackendHandle,
    canary: BackendHandle,
    proxy: ProxyHandle,
    dir: TempDir,
}

impl AbSetup {
    async fn new(canary_faults: Faults) -> Self {
        let stable = backend("stable").await;
        let canary = sluice_loadtest::start_backend(BackendOptions {
            faults: canary_faults,
            seed: 5,
            ..BackendOptions::new("canary")
        })
        .await
        .unwrap();
        let proxy = start_proxy(&proxy_yaml(&format!(
            "  - name: web\n    stable: {}\n    canary: {}\n    canary_match:\n      - {{ header: x-tester, value: 'yes' }}\n",
            stable.url(),
            canary.url()
        )))
        .await;
        Self {
            stable,
            canary,
            proxy,
            dir: TempDir::new("ab-release"),
        }
    }

    fn args(&self) -> Vec<String> {
        [
            "--admin",
            &format!("http://{}", self.proxy.admin_addr),
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
            // These tests are about decisions, not the gate: the threshold
            // gate on short ticks, with room for a 1% error baseline.
            "--gate",
            "threshold",
            "--success-rate",
            "95",
            "--progress-deadline",
            "10s",
            "--control-socket",
            &self.dir.path.join("control.sock").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn route(&self) -> serde_json::Value {
        let (_, _, body) = get(&format!("http://{}/routes/web", self.proxy.admin_addr))
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    async fn tester_backend(&self) -> String {
        let req = Request::get(format!("http://{}/", self.proxy.addr))
            .header("x-tester", "yes")
            .body(Full::<Bytes>::default())
            .unwrap();
        let (status, headers, _) = send(&h1_client(), req).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        headers["x-backend"].to_str().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_with_ab_rules_is_promoted_and_keeps_its_rules() {
    let s = AbSetup::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let (code, events) = Rollout::start(&s.args())
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    assert_eq!(code, 0, "phases: {phases:?}");
    assert_eq!(phases.last(), Some(&"Succeeded"));
    let route = s.route().await;
    assert_eq!(route["stable"], s.canary.url(), "{route}");
    assert_eq!(route["canary_weight"], 0.0);
    assert_eq!(
        route["canary_match"][0]["header"], "x-tester",
        "the rules are kept"
    );
    // Testers and everyone else now reach the promoted revision.
    assert_eq!(s.tester_backend().await, "canary");
    let (_, h, _) = get(&format!("http://{}/", s.proxy.addr)).await.unwrap();
    assert_eq!(h["x-backend"], "canary");
    assert!(s.stable.stats().requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_with_ab_rules_is_rolled_back_and_testers_reach_stable_again() {
    let s = AbSetup::new(Faults {
        error_rate: 0.3,
        ..Faults::default()
    })
    .await;
    assert_eq!(s.tester_backend().await, "canary");
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let (code, events) = Rollout::start(&s.args())
        .wait(Duration::from_secs(60))
        .await;
    load.stop();
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    assert_eq!(code, 1, "phases: {phases:?}");
    assert_eq!(phases.last(), Some(&"Failed"));
    let route = s.route().await;
    assert_eq!(route["stable"], s.stable.url(), "{route}");
    assert_eq!(route["canary_weight"], 0.0);
    assert_eq!(route["canary_match"][0]["header"], "x-tester");
    let before = s.canary.stats().requests;
    assert_eq!(
        s.tester_backend().await,
        "stable",
        "rule traffic left the rolled-back canary too"
    );
    assert_eq!(s.canary.stats().requests, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rollout_resumes_at_its_step_when_run_again() {
    let s = AbSetup::new(Faults {
        error_rate: 0.01,
        ..Faults::default()
    })
    .await;
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let mut args = s.args();
    let steps = args.iter().position(|a| a == "20,50").unwrap();
    args[steps] = "20,40,60,80".into();
    let deadline = args.iter().position(|a| a == "10s").unwrap();
    args[deadline] = "60s".into();
    let first = Rollout::start(&args);
    first.until(|_| {}, |e| e["canary_weight"] == 40.0);
    first.signal("INT");
    let (code, _) = first.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 130, "an interrupted rollout exits 130");
    assert_eq!(
        s.route().await["canary_weight"],
        40.0,
        "the route keeps its weight"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Stopped again, by SIGTERM (systemd, a CI job's timeout), it is the
    // same: 143, the weight kept, the state saved.
    let second = Rollout::start(&args);
    second.until(
        |e| assert_ne!(e["phase"], "Initializing", "resumed: {e}"),
        |e| e["canary_weight"] == 60.0,
    );
    second.signal("TERM");
    let (code, _) = second.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 143, "a terminated rollout exits 143");
    assert_eq!(s.route().await["canary_weight"], 60.0);
    let (code, events) = Rollout::start(&args).wait(Duration::from_secs(60)).await;
    load.stop();
    assert_eq!(code, 0, "{events:?}");
    let first_event = &events[0];
    assert_ne!(
        first_event["phase"], "Initializing",
        "the rerun resumed instead of starting over: {first_event}"
    );
    let weights: Vec<f64> = events
        .iter()
        .filter_map(|e| e["canary_weight"].as_f64())
        .filter(|w| *w > 0.0)
        .collect();
    assert!(
        weights.iter().all(|w| *w >= 60.0),
        "no step before 60% was repeated: {weights:?}"
    );
    assert_eq!(s.route().await["stable"], s.canary.url());
    assert!(
        !s.dir.path.join("control.sock.state.json").exists(),
        "the state file is removed once the release ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_rollout_webhooks_hear_about_a_rollback() {
    let s = AbSetup::new(Faults {
        error_rate: 0.3,
        ..Faults::default()
    })
    .await;
    let calls: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let hook = {
        let calls = calls.clone();
        serve_http(move |req: Request<hyper::body::Incoming>| {
            let calls = calls.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                calls
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                http::Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        })
        .await
    };
    let (load, _report) = steady_load(&format!("http://{}/", s.proxy.addr), 200.0);
    let mut args = s.args();
    args.extend([
        "--webhook".into(),
        format!("post-rollout=http://{hook}/done"),
    ]);
    let (code, _) = Rollout::start(&args).wait(Duration::from_secs(60)).await;
    load.stop();
    assert_eq!(code, 1);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["kind"], "post-rollout");
    assert_eq!(calls[0]["phase"], "Failed");
    assert_eq!(calls[0]["canary_weight"], 0.0);
}
