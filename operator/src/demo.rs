//! `sluice demo`: the whole loop in one process. For each scenario it starts
//! a stable backend (`v1`) and a canary backend (`v2`, with the scenario's
//! faults), a proxy in front of them, steady open-loop load, and a release
//! driven by the same [`Driver`] and [`ProxyAdminRouter`] that
//! `sluice rollout` uses, under the sequential gate (the canary judged
//! against the primary). Both versions fail 1% of requests, as real
//! services do. Each scenario gets its own route name, so with
//! `--prometheus` no scenario's series leak into another's window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_loadtest::{BackendOptions, Faults, LoadControl, LoadOptions, start_backend};

use crate::gate::GateSettings;
use crate::machine::{Phase, Status};
use crate::plan::{Gate, Plan};
use crate::provider::{PrometheusProvider, Provider, ProxyProvider};
use crate::router::ProxyAdminRouter;
use crate::runner::{Driver, TickReport};

/// Turns the demo's plan into a blue/green one: every request copied to
/// the new version while it is judged, then one switch and a 6 s soak.
pub fn blue_green(plan: &mut Plan) {
    plan.strategy = crate::plan::Strategy::BlueGreen {
        iterations: 1,
        soak: Duration::from_secs(6),
    };
    plan.traffic = crate::plan::Traffic::parse(&Default::default(), &plan.strategy)
        .expect("the default blue/green traffic is valid");
    plan.apply_strategy(|f| format!("--{f}"))
        .expect("the demo plan is sequential");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Healthy,
    Bursty,
    Cold,
    Noisy,
    Errors,
    Latency,
    Silent,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Healthy,
        Scenario::Bursty,
        Scenario::Cold,
        Scenario::Noisy,
        Scenario::Errors,
        Scenario::Latency,
        Scenario::Silent,
    ];

    pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
        match text {
            "all" => Ok(Self::ALL.to_vec()),
            other => Self::ALL
                .into_iter()
                .find(|s| s.name() == other)
                .map(|s| vec![s])
                .ok_or_else(|| {
                    format!(
                        "`{other}` is not a scenario; use healthy, bursty, cold, noisy, errors, latency, silent or all"
                    )
                }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::Bursty => "bursty",
            Scenario::Cold => "cold",
            Scenario::Noisy => "noisy",
            Scenario::Errors => "errors",
            Scenario::Latency => "latency",
            Scenario::Silent => "silent",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Healthy => "both versions fail 1%",
            Scenario::Bursty => {
                "both versions fail 1%, each failure followed by a second (a client retrying)"
            }
            Scenario::Cold => "the canary is 300 ms slower for its first 4 s (a cold cache)",
            Scenario::Noisy => "primary fails 2%, canary 6% (3x)",
            Scenario::Errors => "canary fails 8% (primary 1%)",
            Scenario::Latency => "canary 400 ms slower",
            Scenario::Silent => "a release nobody calls",
        }
    }

    /// The primary's and the canary's faults.
    fn faults(self) -> (Faults, Faults) {
        let failing = |rate: f64| Faults {
            error_rate: rate,
            error_status: 500,
            ..Faults::default()
        };
        match self {
            Scenario::Healthy | Scenario::Silent => (failing(0.01), failing(0.01)),
            Scenario::Bursty => {
                // Pairs, not longer runs or incidents: on the demo's
                // 3 s baseline `sluice simulate --clump 2` promotes 99.8%
                // of such releases (seed 1, 500 runs); clumps of 3 need
                // the baseline a real release has to learn them.
                let bursty = Faults {
                    error_burst: sluice_loadtest::backend::ErrorBurst {
                        run: 2,
                        ..Default::default()
                    },
                    ..failing(0.01)
                };
                (bursty.clone(), bursty)
            }
            Scenario::Cold => (
                failing(0.01),
                Faults {
                    warmup: Some(sluice_loadtest::backend::Warmup {
                        duration: Duration::from_secs(4),
                        latency: sluice_loadtest::Latency::Fixed(Duration::from_millis(300)),
                    }),
                    ..failing(0.01)
                },
            ),
            Scenario::Noisy => (failing(0.02), failing(0.06)),
            Scenario::Errors => (failing(0.01), failing(0.08)),
            Scenario::Latency => (
                failing(0.01),
                Faults {
                    latency: sluice_loadtest::Latency::Fixed(Duration::from_millis(400)),
                    ..failing(0.01)
                },
            ),
        }
    }

    /// What must happen for the scenario to count as shown.
    pub fn expected(self) -> &'static str {
        match self {
            Scenario::Healthy | Scenario::Bursty | Scenario::Cold => "promoted",
            Scenario::Noisy | Scenario::Errors | Scenario::Latency => "rolled back",
            Scenario::Silent => "never promoted",
        }
    }

    fn met(self, phase: Phase) -> bool {
        match self {
            Scenario::Healthy | Scenario::Bursty | Scenario::Cold => phase == Phase::Succeeded,
            Scenario::Noisy | Scenario::Errors | Scenario::Latency => phase == Phase::Failed,
            Scenario::Silent => phase != Phase::Succeeded,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub scenarios: Vec<Scenario>,
    /// Use this Prometheus instead of the proxy provider. It must scrape
    /// `admin_listen` every second or so.
    pub prometheus: Option<String>,
    pub admin_listen: SocketAddr,
    /// Open-loop load on the proxy, requests per second.
    pub rate: f64,
    pub plan: Plan,
    /// The dashboard's store, filled with each scenario's release record.
    pub dashboard: Option<crate::dashboard::LocalSource>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            scenarios: Scenario::ALL.to_vec(),
            prometheus: None,
            admin_listen: "127.0.0.1:0".parse().expect("static address"),
            rate: 1000.0,
            plan: demo_plan(),
            dashboard: None,
        }
    }
}

/// The demo's release plan: the sequential gate with short steps and a
/// scrape a second, so the whole run fits in about a minute. `rho-max` 2
/// (a canary twice as bad is never promoted) lets a healthy canary be shown
/// no worse in seconds at the demo's 1,000 req/s.
pub fn demo_plan() -> Plan {
    Plan {
        steps_bp: vec![1000, 2500, 5000],
        interval: Duration::from_secs(2),
        scrape_interval: Duration::from_secs(1),
        failure_limit: 2,
        min_requests: 50,
        progress_deadline: Duration::from_secs(8),
        max_duration: Duration::from_secs(90),
        // Nobody is there to decide for an undecided release.
        when_undecided: crate::plan::Undecided::Rollback,
        gate: Gate::Sequential(GateSettings {
            rho_max: 2.0,
            // Long enough to measure the primary's traffic and p99 at
            // 1,000 req/s; the canary is up before the demo starts.
            baseline: Duration::from_secs(3),
            // The demo's backends answer at once, so a bound learnt from
            // their p99 would judge the laptop's scheduling noise, which
            // comes in bursts and takes long to show no worse.
            latency_bounds: vec![Duration::from_millis(250)],
            ..GateSettings::default()
        }),
        ..Plan::default()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub expected: &'static str,
    pub outcome: Phase,
    pub as_expected: bool,
    pub seconds: f64,
    /// Requests the canary answered (seen by the load generator).
    pub canary_requests: u64,
    /// 5xx answers users got from the canary: the blast radius.
    pub canary_failures: u64,
    /// The evidence at the decision, per sequential check: (check, against
    /// the canary, its threshold, for it, its threshold).
    pub evidence: Vec<(String, f64, f64, f64, f64)>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("could not start a demo backend: {0}")]
    Backend(std::io::Error),
    #[error("could not start the demo proxy: {0}")]
    Proxy(#[from] sluice_proxy::StartError),
}

/// Runs one scenario end to end.
pub async fn run_scenario(
    scenario: Scenario,
    options: &DemoOptions,
    mut on_tick: impl FnMut(&TickReport),
) -> Result<ScenarioResult, DemoError> {
    let (primary_faults, canary_faults) = scenario.faults();
    let v1 = start_backend(BackendOptions {
        faults: primary_faults,
        seed: 5,
        ..BackendOptions::new("v1")
    })
    .await
    .map_err(DemoError::Backend)?;
    let v2 = start_backend(BackendOptions {
        faults: canary_faults,
        seed: 7,
        ..BackendOptions::new("v2")
    })
    .await
    .map_err(DemoError::Backend)?;
    let route = scenario.name();
    // The silent scenario's users all call another route.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: {}\nroutes:\n  - name: {route}\n    path_prefix: /\n    stable: {}\n  - name: other\n    path_prefix: /other\n    stable: {}\n",
        options.admin_listen,
        v1.url(),
        v1.url()
    );
    let config = sluice_proxy::Config::from_yaml(&yaml).expect("the demo config is valid");
    let proxy = sluice_proxy::start(config, sluice_proxy::StartOptions::default()).await?;
    let admin = format!("http://{}", proxy.admin_addr);
    let path = if scenario == Scenario::Silent {
        "/other"
    } else {
        "/"
    };
    let mut load =
        LoadOptions::new(&format!("http://{}{path}", proxy.addr)).expect("the demo URL is valid");
    load.connections = 64;
    load.rate = Some(options.rate);
    load.duration = Some(Duration::from_secs(90));
    load.count_header = Some(http::HeaderName::from_static("x-backend"));
    let control = LoadControl::new();
    let load_task = tokio::spawn(sluice_loadtest::run(load, control.clone()));

    let provider = match &options.prometheus {
        Some(url) => {
            let mut p = PrometheusProvider::new(url, route);
            p.window_floor = Duration::from_secs(2);
            Provider::Prometheus(p)
        }
        None => Provider::Proxy(ProxyProvider::new(&admin, route)),
    };
    let router = ProxyAdminRouter::new(&admin, route, &v2.url(), None)
        .with_traffic(options.plan.traffic.clone());
    let mut driver = Driver::new(route, "v2", options.plan.clone(), router, provider);
    if let Some(store) = &options.dashboard {
        let (tx, rx) = tokio::sync::watch::channel(None);
        driver.record_out = Some(tx);
        store.follow(rx);
    }
    let started = Instant::now();
    let mut last_evidence = Vec::new();
    let ended = driver
        .run(|tick: &TickReport| {
            let evidence: Vec<_> = tick
                .checks
                .iter()
                .filter_map(|c| {
                    c.evidence
                        .as_ref()
                        .filter(|e| e.fail_threshold > 0.0)
                        .map(|e| {
                            (
                                c.name.clone(),
                                e.fail,
                                e.fail_threshold,
                                e.pass,
                                e.pass_threshold,
                            )
                        })
                })
                .collect();
            if !evidence.is_empty() {
                last_evidence = evidence;
            }
            on_tick(tick)
        })
        .await;
    // The demo's own proxy takes every change; a stop is a fault of the
    // demo, told as the run's message.
    let status = match ended.stopped {
        Some(why) => Status {
            message: why,
            ..ended.status
        },
        None => ended.status,
    };
    let seconds = started.elapsed().as_secs_f64();
    control.stop();
    let report = load_task
        .await
        .expect("load task")
        .expect("demo load options are valid");
    proxy.shutdown().await;
    v1.stop().await;
    v2.stop().await;
    let canary_requests = report.header_counts.get("v2").copied().unwrap_or(0);
    let canary_failures = report
        .header_status_counts
        .get("v2")
        .map(|by| by.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum())
        .unwrap_or(0);
    Ok(ScenarioResult {
        scenario,
        expected: scenario.expected(),
        outcome: status.phase,
        as_expected: scenario.met(status.phase),
        seconds,
        canary_requests,
        canary_failures,
        evidence: last_evidence,
        message: status.message,
    })
}

/// The closing table, and the evidence each decision rested on.
pub fn table(results: &[ScenarioResult]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<34} {:<15} {:<11} {:>7} {:>15} {:>17}  ok",
        "scenario", "release", "expected", "outcome", "time", "canary served", "canary failures"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<9} {:<34} {:<15} {:<11} {:>6.1}s {:>15} {:>17}  {}",
            r.scenario.name(),
            r.scenario.describe(),
            r.expected,
            r.outcome.as_str(),
            r.seconds,
            r.canary_requests,
            r.canary_failures,
            if r.as_expected { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(
        out,
        "\nevidence at the decision (likelihood ratios against and for the canary, from the sequential gate)"
    );
    for r in results {
        let evidence: Vec<String> = r
            .evidence
            .iter()
            .map(|(name, against, fail_at, for_it, pass_at)| {
                format!(
                    "{name}: against {} (rolls back at {fail_at:.0}), for {} (promotes at {pass_at:.0})",
                    crate::view::likelihood(*against),
                    crate::view::likelihood(*for_it)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<9} {}",
            r.scenario.name(),
            if evidence.is_empty() {
                "no weighted canary traffic".to_string()
            } else {
                evidence.join("; ")
            }
        );
    }
    out
}
