//! `sluice`: progressive delivery from the command line.
//!
//! Exit codes of `sluice rollout`: 0 promoted, 1 rolled back, 2 usage or
//! config error, 3 proxy unreachable at the start.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_operator::clock::wall_clock;
use sluice_operator::control::{self, ControlSocket};
use sluice_operator::demo::{self, DemoOptions, Scenario};
use sluice_operator::machine::Phase;
use sluice_operator::plan::{self, Approval, Plan, Webhook, WebhookKind};
use sluice_operator::provider::{PrometheusProvider, Provider, ProxyProvider};
use sluice_operator::router::{ProxyAdminRouter, RouterError};
use sluice_operator::runner::{Driver, SavedRelease, StateFile};
use sluice_operator::view::{OutputMode, View};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Progressive delivery: metric-gated canary releases through the Sluice proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Release a canary through a running sluice-proxy (plain hosts).
    Rollout(Box<RolloutArgs>),
    /// Approve a release waiting for manual promotion (or held undecided); with --full,
    /// promote now, skipping the remaining steps and the analysis.
    Promote(PromoteArgs),
    /// Roll a running release back now.
    Abort(ControlArgs),
    /// Show the whole loop on this machine: backends, proxy, load and releases.
    Demo(DemoArgs),
    /// Run the Kubernetes operator (canaries Deployments annotated sluice.dev/canary: "enabled").
    Kube(KubeArgs),
    /// Run the gate and the state machine on simulated traffic, many times: how long a
    /// release takes at your traffic, how often it rolls back, what it catches.
    Simulate(Box<SimulateArgs>),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Requests per second on the route, both arms together.
    #[arg(long, allow_hyphen_values = true, default_value = "400")]
    rps: String,
    /// The primary's failure rate: `1%` or a fraction like `0.01`.
    #[arg(long, allow_hyphen_values = true, default_value = "1%")]
    primary_errors: String,
    /// The canary's failure rate.
    #[arg(long, allow_hyphen_values = true, default_value = "1%")]
    canary_errors: String,
    /// Both arms' durations: a lognormal `MEDIAN~SIGMA` (e.g. `20ms~0.5`),
    /// or a fixed duration (`20ms`).
    #[arg(long, allow_hyphen_values = true, default_value = "20ms~0.5")]
    durations: String,
    /// Delay the canary adds to every request, e.g. `+50ms`.
    #[arg(long, allow_hyphen_values = true, default_value = "+0ms")]
    canary_delay: String,
    /// The canary's durations as a multiple of the primary's, e.g. `1.05`.
    #[arg(long, allow_hyphen_values = true, default_value = "1")]
    canary_slower: String,
    /// Both arms' failure counts vary from scrape to scrape with this many
    /// times the binomial variance (1: none).
    #[arg(long, allow_hyphen_values = true, default_value = "1")]
    dispersion: String,
    /// Both arms' failures come in clumps of this many requests.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1)]
    clump: u32,
    /// A baseline arm: a fresh copy of the primary's version that gets the
    /// canary's exact share and that the canary is judged against (warm-up 0s
    /// unless --warmup is given). It draws the primary's traffic, or a trace's
    /// `baseline` values. Canary releases with weights of at most 50.
    #[arg(long)]
    baseline_arm: bool,
    /// A cold start, DURATION:FACTOR (e.g. `10s:3`): for its first DURATION the
    /// canary's durations are FACTOR times longer, and so are the baseline
    /// arm's (a fresh pod of either version starts cold); the primary's are not.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "trace")]
    cold_start: Option<String>,
    /// Replay this traffic instead of the flags above: a JSON-lines file, or a
    /// directory of *.jsonl files (run r uses the r-th, cycling).
    #[arg(long, allow_hyphen_values = true)]
    trace: Option<PathBuf>,
    /// Where the gate reads: `proxy` (its counters every scrape) or `prometheus`.
    #[arg(long, value_enum, default_value = "proxy")]
    provider: SimProviderArg,
    /// With --provider prometheus: how often Prometheus scrapes the proxy.
    #[arg(long, allow_hyphen_values = true, default_value = "15s")]
    prometheus_scrape: String,
    /// With --provider prometheus: the shortest window judged.
    #[arg(long, allow_hyphen_values = true, default_value = "30s")]
    prometheus_window: String,
    /// How long a run may go on (default: the maximum duration plus a minute);
    /// a release still running then counts as held.
    #[arg(long, allow_hyphen_values = true)]
    horizon: Option<String>,
    /// Releases to simulate.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1000)]
    runs: u32,
    /// Seed: the same seed gives the same runs.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object (every run's outcome and the summary) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum SimProviderArg {
    Proxy,
    Prometheus,
}

#[derive(clap::Args)]
struct KubeArgs {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Prometheus that scrapes the proxies; enables sluice.dev/metrics: prometheus (the default then).
    #[arg(long)]
    prometheus_url: Option<String>,
    /// YAML list of endpoints (URL prefix) with their CA bundle, bearer token, basic auth or
    /// headers, each read from a file: used by every outbound call (Prometheus, webhooks).
    #[arg(long, conflicts_with = "access_secret")]
    access_file: Option<PathBuf>,
    /// The same list from a Secret read through the API (NAMESPACE/NAME): its key access.yaml,
    /// whose *_file fields name other keys of that Secret.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    access_secret: Option<String>,
    #[command(flatten)]
    notify: NotifyArgs,
    /// Image of the proxy Deployments the operator creates.
    #[arg(long, default_value = concat!("ghcr.io/sluice-dev/sluice-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// Operator metrics and health.
    #[arg(long, default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else sluice-system).
    #[arg(long)]
    leader_namespace: Option<String>,
    /// This replica's name in the Lease (default: $HOSTNAME).
    #[arg(long)]
    identity: Option<String>,
    /// How the operator learns that every proxy replica serves the config it
    /// wrote before it scales anything down: `pods` asks each ready proxy
    /// pod's admin port (`sluice-admin`) at its IP; `off` takes readiness as enough
    /// (for clusters whose NetworkPolicies keep the operator from the proxies).
    #[arg(long, value_enum, default_value = "pods")]
    proxy_config_check: ProxyConfigCheck,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProxyConfigCheck {
    Pods,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum UndecidedArg {
    /// Wait for a person (`sluice promote` / `sluice abort`).
    Hold,
    /// Promote, with a warning.
    Promote,
    /// Roll back for lack of evidence.
    Rollback,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Live,
    Plain,
    Json,
}

fn output_mode(o: Option<Output>) -> OutputMode {
    match o {
        Some(Output::Live) => OutputMode::Live,
        Some(Output::Plain) => OutputMode::Plain,
        Some(Output::Json) => OutputMode::Json,
        None if std::io::stdout().is_terminal() => OutputMode::Live,
        None => OutputMode::Plain,
    }
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Canary weights in percent, e.g. 10,25,50 (default 10,20,30,40,50); an experiment's one
    /// weight (default 50; 0 to use only the route's A/B rules).
    #[arg(long, allow_hyphen_values = true)]
    steps: Option<String>,
    /// How the canary is judged: `sequential` (against the primary, continuously; the default)
    /// or `threshold` (its own numbers against fixed thresholds every interval, as Flagger).
    #[arg(long, default_value = "sequential", value_parser = ["sequential", "threshold"])]
    gate: String,
    /// Threshold gate: the analysis tick. Sequential gate: the least time a step lasts.
    #[arg(long, allow_hyphen_values = true, default_value = "1m")]
    interval: String,
    /// Sequential gate: how often the proxy's counters are read and the evidence updated.
    #[arg(long, allow_hyphen_values = true, default_value = "2s")]
    scrape_interval: String,
    /// Sequential gate: chance of rolling back a canary no worse than the primary.
    #[arg(long, allow_hyphen_values = true, default_value = "0.01")]
    alpha: String,
    /// Sequential gate: chance of promoting a canary rho-max times worse than the primary.
    #[arg(long, allow_hyphen_values = true, default_value = "0.05")]
    beta: String,
    /// Sequential gate: the ratio to the primary's failure rate still counted as no worse.
    #[arg(long, allow_hyphen_values = true, default_value = "1.0")]
    rho0: String,
    /// Sequential gate: a canary this many times worse than the primary is never promoted.
    #[arg(long, allow_hyphen_values = true, default_value = "1.5")]
    rho_max: String,
    /// Sequential gate: a canary failure rate under this percent is fine whatever the primary does.
    #[arg(long, allow_hyphen_values = true, default_value = "0.1")]
    failure_floor: String,
    /// Sequential gate: latency bounds (bucket bounds) compared with the primary, e.g. 300ms,1s;
    /// default: the bound just above the primary's p99, learnt over the baseline and the canary's
    /// warm-up (the lower median of the p99s of its parts of 500 requests).
    #[arg(long, allow_hyphen_values = true)]
    latency_bound: Option<String>,
    /// Sequential gate: how long a release may take to show the canary no worse
    /// (then --when-undecided applies).
    #[arg(long, allow_hyphen_values = true, default_value = "30m")]
    max_duration: String,
    /// Sequential gate: what happens when nothing is decided within --max-duration.
    #[arg(long, value_enum, default_value = "hold")]
    when_undecided: UndecidedArg,
    /// Sequential gate: an excursion of one arm shorter than this (an incident)
    /// never rolls back a release that was healthy before it.
    #[arg(long, allow_hyphen_values = true, default_value = "30s")]
    incident_allowance: String,
    /// Sequential gate: the canary's first seconds of traffic, when its latency
    /// is not judged (cold caches, JIT); default 10s, or 0s with a baseline arm
    /// (which starts as cold as the canary).
    #[arg(long, allow_hyphen_values = true)]
    warmup: Option<String>,
    /// Sequential gate: how much slower than the primary the canary may be and
    /// still be no worse, e.g. 10%.
    #[arg(long, allow_hyphen_values = true, default_value = "10%")]
    latency_tolerance: String,
    /// Sequential gate: how long the primary is measured before the first step.
    #[arg(long, allow_hyphen_values = true, default_value = "30s")]
    baseline: String,
    /// Failed ticks (of threshold checks and ceilings) before rollback.
    #[arg(long, allow_hyphen_values = true, default_value_t = 3)]
    failure_limit: u32,
    /// Minimum percent of canary answers classified success (threshold gate default 99;
    /// under the sequential gate a ceiling, off unless given).
    #[arg(long, allow_hyphen_values = true)]
    success_rate: Option<String>,
    /// Latency gates, e.g. 'p95<=500ms,p99<=1s' (threshold gate default p99<=500ms;
    /// under the sequential gate ceilings, off unless given).
    #[arg(long, allow_hyphen_values = true)]
    latency: Option<String>,
    /// Threshold gate: canary requests a tick needs. Sequential gate: canary requests a step
    /// needs before the weight may advance.
    #[arg(long, allow_hyphen_values = true, default_value_t = 20)]
    min_requests: u64,
    /// Roll back when no step passes for this long.
    #[arg(long, allow_hyphen_values = true, default_value = "10m")]
    progress_deadline: String,
    /// Webhook as KIND=URL (confirm-rollout, pre-rollout, rollout, confirm-traffic-increase,
    /// confirm-promotion, post-rollout, rollback, event); repeatable.
    #[arg(long = "webhook", allow_hyphen_values = true)]
    webhooks: Vec<String>,
    /// YAML list of webhooks as Flagger's analysis.webhooks writes them: [{name, type, url,
    /// timeout, metadata, retries, headers}].
    #[arg(long, allow_hyphen_values = true)]
    webhooks_file: Option<PathBuf>,
    /// `manual` holds before promotion until `sluice promote`.
    #[arg(long = "approve", default_value = "auto", value_parser = ["auto", "manual"])]
    approval: String,
    /// YAML list of custom PromQL checks: [{name, query, min, max}] (needs --prometheus).
    #[arg(long, allow_hyphen_values = true)]
    checks_file: Option<PathBuf>,
    /// The release's shape: `canary` (steps), `blue-green` (judged on mirrored traffic, then a
    /// switch 0 -> 100 and a soak) or `experiment` (both versions side by side for a fixed time,
    /// a report, no promotion).
    #[arg(long, default_value = "canary", value_parser = ["canary", "blue-green", "experiment"])]
    strategy: String,
    /// Blue/green: intervals the new version is judged on mirrored traffic before the switch (at least).
    #[arg(long, allow_hyphen_values = true, default_value = "1")]
    iterations: String,
    /// Blue/green: how long the new version is watched after the switch before promotion.
    #[arg(long, allow_hyphen_values = true, default_value = "5m")]
    soak: String,
    /// Experiment: how long both versions serve side by side.
    #[arg(long, allow_hyphen_values = true, default_value = "10m")]
    experiment_duration: String,
    /// Sticky sessions: the cookie that keeps a client on its backend.
    #[arg(long, allow_hyphen_values = true)]
    affinity_cookie: Option<String>,
    /// Lifetime of the affinity cookie (a session cookie when unset).
    #[arg(long, allow_hyphen_values = true)]
    affinity_max_age: Option<String>,
    /// Sticky sessions by a hash of this request header (e.g. a user id).
    #[arg(long, allow_hyphen_values = true)]
    affinity_header: Option<String>,
    /// Percent of the stable's requests copied to the new version (blue-green default 100).
    #[arg(long, allow_hyphen_values = true)]
    mirror: Option<String>,
    /// Requests with a larger body are not mirrored.
    #[arg(long, allow_hyphen_values = true)]
    mirror_max_body: Option<String>,
    /// Methods mirrored, comma-separated (default: the idempotent ones).
    #[arg(long, allow_hyphen_values = true)]
    mirror_methods: Option<String>,
    /// The flags given on the command line (not defaulted), by clap id:
    /// a flag of another gate or strategy is refused, not ignored.
    #[arg(skip)]
    given: Vec<String>,
}

/// Flags that only the sequential gate reads.
const SEQUENTIAL_ONLY: [&str; 13] = [
    "scrape_interval",
    "alpha",
    "beta",
    "rho0",
    "rho_max",
    "failure_floor",
    "latency_bound",
    "max_duration",
    "when_undecided",
    "incident_allowance",
    "warmup",
    "latency_tolerance",
    "baseline",
];

impl PlanArgs {
    /// A flag given for another gate or strategy than the one chosen: it
    /// would be ignored, so it is refused, naming what reads it.
    fn misplaced_flag(&self) -> Result<(), String> {
        let given = |id: &str| self.given.iter().any(|g| g == id);
        let refuse = |id: &str, reader: &str, chosen: &str| {
            Err(format!(
                "--{} applies to {reader}, not to {chosen}; it would be ignored",
                id.replace('_', "-")
            ))
        };
        if self.gate == "threshold"
            && let Some(id) = SEQUENTIAL_ONLY.iter().find(|id| given(id))
        {
            return refuse(id, "the sequential gate", "--gate threshold");
        }
        let strategy = format!("--strategy {}", self.strategy);
        for (id, reader, owner) in [
            ("iterations", "--strategy blue-green", "blue-green"),
            ("soak", "--strategy blue-green", "blue-green"),
            ("experiment_duration", "--strategy experiment", "experiment"),
        ] {
            if given(id) && self.strategy != owner {
                return refuse(id, reader, &strategy);
            }
        }
        // A blue/green release has one step, the switch to 100%.
        if given("steps") && self.strategy == "blue-green" {
            return refuse(
                "steps",
                "--strategy canary and experiment (blue-green switches all at once)",
                &strategy,
            );
        }
        Ok(())
    }

    fn plan(&self) -> Result<Plan, String> {
        let flag = |name: &str, e: String| format!("--{name}: {e}");
        let duration = |name: &str, text: &str| {
            sluice_proxy::config::parse_duration(text).map_err(|e| flag(name, e))
        };
        let interval = duration("interval", &self.interval)?;
        if interval < Duration::from_millis(100) {
            return Err("--interval: must be at least 100ms".into());
        }
        if self.failure_limit == 0 {
            return Err("--failure-limit: must be at least 1".into());
        }
        let mut webhooks = Vec::new();
        for w in &self.webhooks {
            let (kind, url) = w.split_once('=').ok_or_else(|| {
                flag(
                    "webhook",
                    format!("`{}` is not KIND=URL", sluice_operator::http::shown_url(w)),
                )
            })?;
            let kind = WebhookKind::parse(kind).map_err(|e| flag("webhook", e))?;
            if !is_http_url(url) {
                return Err(flag(
                    "webhook",
                    format!(
                        "`{}` is not an http:// or https:// URL",
                        sluice_operator::http::shown_url(url)
                    ),
                ));
            }
            webhooks.push(Webhook::new(kind, url));
        }
        if let Some(path) = &self.webhooks_file {
            let text =
                sluice_operator::input::read_text(path, sluice_operator::input::MAX_SETTINGS_BYTES)
                    .map_err(|e| flag("webhooks-file", e))?;
            webhooks.extend(
                sluice_operator::plan::parse_webhooks(&text, &path.display().to_string())
                    .map_err(|e| flag("webhooks-file", e))?,
            );
        }
        let queries = match &self.checks_file {
            None => Vec::new(),
            Some(path) => {
                let text = sluice_operator::input::read_text(
                    path,
                    sluice_operator::input::MAX_SETTINGS_BYTES,
                )
                .map_err(|e| flag("checks-file", e))?;
                plan::parse_checks(&text, &path.display().to_string())
                    .map_err(|e| flag("checks-file", e))?
            }
        };
        let mut gate = plan::Gate::parse(&self.gate).map_err(|e| flag("gate", e))?;
        if let plan::Gate::Sequential(settings) = &mut gate {
            let number =
                |name: &str, text: &str| plan::parse_number(text).map_err(|e| flag(name, e));
            settings.alpha = number("alpha", &self.alpha)?;
            settings.beta = number("beta", &self.beta)?;
            settings.rho0 = number("rho0", &self.rho0)?;
            settings.rho_max = number("rho-max", &self.rho_max)?;
            settings.failure_floor = plan::parse_percent(&self.failure_floor)
                .map_err(|e| flag("failure-floor", e))?
                / 100.0;
            if let Some(bounds) = &self.latency_bound {
                settings.latency_bounds =
                    plan::parse_bounds(bounds).map_err(|e| flag("latency-bound", e))?;
            }
            settings.incident_allowance = duration("incident-allowance", &self.incident_allowance)?;
            if let Some(warmup) = &self.warmup {
                settings.warmup = duration("warmup", warmup)?;
            }
            settings.baseline = duration("baseline", &self.baseline)?;
            settings.latency_tolerance = plan::parse_percent(&self.latency_tolerance)
                .map_err(|e| flag("latency-tolerance", e))?
                / 100.0;
            settings.validate(|field| format!("--{}", field.replace('_', "-")))?;
        }
        let sequential = matches!(gate, plan::Gate::Sequential(_));
        let success_rate_min = match &self.success_rate {
            Some(v) => Some(plan::parse_percent(v).map_err(|e| flag("success-rate", e))?),
            None if sequential => None,
            None => Some(plan::THRESHOLD_SUCCESS_RATE),
        };
        let latency = match &self.latency {
            Some(v) => plan::parse_latency(v).map_err(|e| flag("latency", e))?,
            None if sequential => Vec::new(),
            None => plan::threshold_latency(),
        };
        let scrape_interval = duration("scrape-interval", &self.scrape_interval)?;
        if scrape_interval < Duration::from_millis(100) {
            return Err("--scrape-interval: must be at least 100ms".into());
        }
        // The sequential gate reads every scrape interval; the threshold
        // gate once an interval, whatever the scrape interval.
        if sequential && scrape_interval > interval {
            return Err(format!(
                "--scrape-interval: {} is longer than --interval {}; the gate would read less than once a step",
                self.scrape_interval, self.interval
            ));
        }
        let strategy = plan::Strategy::parse(
            &self.strategy,
            &self.iterations,
            &self.soak,
            &self.experiment_duration,
        )
        .map_err(|(name, e)| flag(name, e))?;
        let traffic = plan::Traffic::parse(
            &plan::TrafficText {
                affinity_cookie: self.affinity_cookie.as_deref(),
                affinity_max_age: self.affinity_max_age.as_deref(),
                affinity_header: self.affinity_header.as_deref(),
                mirror: self.mirror.as_deref(),
                mirror_max_body: self.mirror_max_body.as_deref(),
                mirror_methods: self.mirror_methods.as_deref(),
            },
            &strategy,
        )
        .map_err(|(name, e)| flag(&name, e))?;
        let experiment = matches!(strategy, plan::Strategy::Experiment { .. });
        let steps_bp = match self.steps.as_deref() {
            Some(text) if experiment && text.trim() == "0" => vec![0],
            Some(text) => plan::parse_steps(text).map_err(|e| flag("steps", e))?,
            None if experiment => vec![5000],
            None => plan::parse_steps("10,20,30,40,50").map_err(|e| flag("steps", e))?,
        };
        // Deadlines shorter than a step's interval end every release before
        // its first analysis.
        let progress_deadline = duration("progress-deadline", &self.progress_deadline)?;
        if progress_deadline < interval {
            return Err(format!(
                "--progress-deadline: {} is shorter than --interval {}; every release would end before its first analysis",
                self.progress_deadline, self.interval
            ));
        }
        let max_duration = duration("max-duration", &self.max_duration)?;
        if max_duration < interval {
            return Err(format!(
                "--max-duration: {} is shorter than --interval {}; nothing could be decided in it",
                self.max_duration, self.interval
            ));
        }
        let mut plan = Plan {
            steps_bp,
            interval,
            failure_limit: self.failure_limit,
            min_requests: self.min_requests,
            progress_deadline,
            gate,
            scrape_interval,
            max_duration,
            success_rate_min,
            latency,
            queries,
            approval: Approval::parse(&self.approval).map_err(|e| flag("approve", e))?,
            webhooks,
            strategy,
            traffic,
            when_undecided: match self.when_undecided {
                UndecidedArg::Hold => plan::Undecided::Hold,
                UndecidedArg::Promote => plan::Undecided::Promote,
                UndecidedArg::Rollback => plan::Undecided::Rollback,
            },
        };
        plan.apply_strategy(|name| format!("--{name}"))?;
        // Last: a wrong value or a gate the strategy cannot take says more.
        self.misplaced_flag()?;
        Ok(plan)
    }
}

#[derive(clap::Args)]
struct RolloutArgs {
    /// The proxy's admin API, e.g. http://127.0.0.1:9901.
    #[arg(long)]
    admin: String,
    /// The route to release on.
    #[arg(long)]
    route: String,
    /// The new revision's upstream, e.g. http://127.0.0.1:9002.
    #[arg(long)]
    canary: String,
    /// A fresh copy of the stable's version, started with the canary, e.g.
    /// http://127.0.0.1:9003: the route gives it the canary's exact share at every
    /// step and the gate judges the canary against it instead of the stable (no
    /// warm-up needed). Removed from the route when the release ends. Every
    /// weight must then be at most 50.
    #[arg(long, value_name = "URL")]
    baseline_arm: Option<String>,
    /// File holding the admin bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Use this Prometheus (which scrapes the proxy) instead of reading the proxy's metrics.
    #[arg(long)]
    prometheus: Option<String>,
    /// Smallest range for PromQL rate() windows.
    #[arg(long, default_value = "30s")]
    prometheus_window: String,
    /// YAML list of endpoints (URL prefix) with their CA bundle, bearer token, basic auth or
    /// headers, each read from a file: used by every outbound call (Prometheus, webhooks).
    #[arg(long)]
    access_file: Option<PathBuf>,
    #[command(flatten)]
    notify: NotifyArgs,
    #[command(flatten)]
    plan: PlanArgs,
    /// live (terminal), plain (a line per tick) or json (an object per tick).
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// Where `sluice promote`/`abort` reach this release.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Write the release report (one self-contained HTML file) here when the release ends.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Serve the web dashboard on this address while the release runs, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<SocketAddr>,
    /// Let --dashboard listen beyond loopback (plain HTTP: anyone who can see its traffic can take the login token and act).
    #[arg(long, requires = "dashboard")]
    dashboard_allow_remote: bool,
}

#[derive(clap::Args)]
struct ControlArgs {
    /// The route whose release to act on; a control socket driving another route refuses the
    /// request and nothing is done.
    route: String,
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Act only if the running release is of this revision (its `--canary` URL); by default,
    /// the revision the release says it is of just before.
    #[arg(long, value_name = "CANARY_URL")]
    revision: Option<String>,
}

#[derive(clap::Args)]
struct PromoteArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Promote now: skip the remaining steps and the analysis and send all traffic to the
    /// new revision (a human override, evented as one), as `kubectl sluice promote --full`.
    #[arg(long)]
    full: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Which scenario to run, or all of them.
    #[arg(long, default_value = "all", value_parser = [
        "all", "healthy", "bursty", "cold", "noisy", "errors", "latency", "silent",
    ])]
    scenario: String,
    /// Use this Prometheus instead of the proxy provider; it must scrape --admin-listen every second.
    #[arg(long)]
    prometheus: Option<String>,
    /// The demo proxy's admin address (fixed so a Prometheus can scrape it).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// `canary` (steps) or `blue-green` (judged on mirrored copies, then one switch and a soak).
    #[arg(long, default_value = "canary", value_parser = ["canary", "blue-green", "experiment"])]
    strategy: String,
    /// Serve the web dashboard on this address (e.g. 127.0.0.1:8080); it stays up after the
    /// scenarios until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<SocketAddr>,
    /// Let --dashboard listen beyond loopback (plain HTTP: anyone who can see its traffic can take the login token and act).
    #[arg(long, requires = "dashboard")]
    dashboard_allow_remote: bool,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some((_, sub)) = matches.subcommand() {
        let given: Vec<String> = sub
            .ids()
            .filter(|id| {
                sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|id| id.as_str().to_string())
            .collect();
        match &mut cli.command {
            Command::Rollout(args) => args.plan.given = given,
            Command::Simulate(args) => args.plan.given = given,
            _ => {}
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: a file or a log collector gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Rollout(args) => rollout(*args).await,
            Command::Promote(args) => {
                let what = if args.full { "promote-full" } else { "promote" };
                control_request(args.control, what).await
            }
            Command::Abort(args) => control_request(args, "abort").await,
            Command::Demo(args) => run_demo(args).await,
            Command::Kube(args) => run_kube(args).await,
            Command::Simulate(args) => run_simulate(*args),
        }
    })
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// How `sluice rollout` was told to stop: Ctrl-C, or SIGTERM (systemd, a
/// CI job's timeout, `kill`). Either way the release's state is kept and
/// the same command resumes it.
#[derive(Clone, Copy)]
enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    fn what(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "interrupted",
            StopSignal::Terminate => "terminated (SIGTERM)",
        }
    }

    /// 128 + the signal's number, as a shell reports a process it killed.
    fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }
}

async fn stop_signal() -> StopSignal {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops the release cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return StopSignal::Interrupt;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => StopSignal::Interrupt,
        _ = term.recv() => StopSignal::Terminate,
    }
}

async fn rollout(args: RolloutArgs) -> ExitCode {
    if let Some(path) = &args.access_file
        && let Err(e) = sluice_operator::http::install_access_file(path)
    {
        return usage(e);
    }
    let mut plan = match args.plan.plan() {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if let Some(url) = &args.baseline_arm
        && let Err(e) = check_baseline_arm(url, &args, &mut plan)
    {
        return usage(format!("--baseline-arm: {e}"));
    }
    if let Some(file) = &args.report
        && let Err(e) = sluice_operator::report_html::check_writable(file)
    {
        return usage(format!("--report: {e}"));
    }
    let notify_channels = match args.notify.channels() {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let dashboard_listener = match args.dashboard {
        Some(addr) => {
            match sluice_operator::dashboard::check_address(addr, args.dashboard_allow_remote) {
                Err(e) => return usage(format!("--dashboard: {e}")),
                Ok(()) => match sluice_operator::dashboard::bind(addr).await {
                    Ok(l) => Some(l),
                    Err(e) => return usage(format!("--dashboard: {e}")),
                },
            }
        }
        None => None,
    };
    if plan
        .queries
        .iter()
        .any(|c| !sluice_operator::external::is_external(c))
        && args.prometheus.is_none()
    {
        return usage("--checks-file: custom PromQL checks need --prometheus URL");
    }
    if let Err(e) = sluice_proxy::config::UpstreamUrl::parse(&args.canary) {
        return usage(format!("--canary: {e}"));
    }
    if !args.admin.starts_with("http://") {
        return usage(format!("--admin: `{}` is not an http:// URL", args.admin));
    }
    let token = match &args.token_file {
        None => None,
        // Never named in an error: the token itself may be given by mistake.
        Some(path) => match sluice_operator::input::read_secret_text(
            path,
            sluice_operator::input::MAX_SETTINGS_BYTES,
        ) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => return usage("--token-file: the file it names is empty"),
            Err(e) => return usage(format!("--token-file: {e}")),
        },
    };
    let mut router = ProxyAdminRouter::new(&args.admin, &args.route, &args.canary, token)
        .with_traffic(plan.traffic.clone());
    if let Some(url) = &args.baseline_arm {
        router = router.with_baseline_arm(url);
    }
    let current = match router.current().await {
        Ok(route) => route,
        Err(RouterError::Refused { status: 404, .. }) => {
            return usage(format!(
                "--route: the proxy at {} has no route named `{}`",
                args.admin, args.route
            ));
        }
        Err(RouterError::Refused {
            status: 401 | 403,
            message,
            ..
        }) => {
            return usage(format!(
                "--token-file: the proxy at {} refused the admin token ({message}); give the file holding the token of its admin.token_file",
                args.admin
            ));
        }
        Err(RouterError::Refused {
            status, message, ..
        }) => {
            return usage(format!("--admin: the proxy answered {status}: {message}"));
        }
        Err(e) => {
            eprintln!("error: --admin: the proxy is unreachable: {e}");
            return ExitCode::from(3);
        }
    };
    let provider = match &args.prometheus {
        Some(url) => {
            if !is_http_url(url) {
                return usage(format!(
                    "--prometheus: `{}` is not an http:// or https:// URL",
                    sluice_operator::http::shown_url(url)
                ));
            }
            let mut p = PrometheusProvider::new(url, &args.route);
            match sluice_proxy::config::parse_duration(&args.prometheus_window) {
                Ok(w) => p.window_floor = w,
                Err(e) => return usage(format!("--prometheus-window: {e}")),
            }
            Provider::Prometheus(p)
        }
        None => Provider::Proxy(ProxyProvider::new(&args.admin, &args.route)),
    };
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let socket_path = args
        .control_socket
        .clone()
        .unwrap_or_else(|| control::default_socket(&args.route));
    let state = StateFile::beside(&socket_path);
    let saved = match state.load() {
        Ok(s) => s,
        Err(e) => {
            return usage(format!(
                "--control-socket: {e}; remove it to start the release afresh"
            ));
        }
    };
    // A new release of the version already serving compares the stable
    // with itself (a release resumed after its promotion is told apart
    // by its saved state).
    let same = |a: &str, b: &str| {
        let parse = sluice_proxy::config::UpstreamUrl::parse;
        matches!((parse(a), parse(b)), (Ok(a), Ok(b)) if a == b)
    };
    let stable = current["stable"].as_str().unwrap_or_default();
    if saved.is_none() && same(&args.canary, stable) {
        return usage(format!(
            "--canary: `{}` is the route's stable already; give the new version's URL",
            args.canary
        ));
    }
    if let Some(arm) = &args.baseline_arm
        && same(arm, stable)
    {
        return usage(format!(
            "--baseline-arm: `{arm}` is the route's stable; the baseline arm is a fresh copy of the stable version, started with the canary"
        ));
    }
    let resume = match saved {
        Some(saved) => match resumable(&saved, &args, &router).await {
            Ok(()) => {
                let paused = (wall_clock() - saved.saved_at).max(0.0);
                eprintln!(
                    "resuming the release of {} on route `{}` where it was left {:.0}s ago: {} at {}% (state in {})",
                    saved.revision,
                    saved.route,
                    paused,
                    saved.status.phase.as_str(),
                    f64::from(saved.status.canary_weight_bp) / 100.0,
                    state.path.display()
                );
                Some((saved.status, paused))
            }
            Err(why) => {
                eprintln!(
                    "note: not resuming the release saved in {}: {why}; starting afresh",
                    state.path.display()
                );
                None
            }
        },
        None => None,
    };
    // A resumed release is answered with its saved phase and weight from
    // the start, not as `Initializing` until its first tick.
    status_tx.send_replace(resume.as_ref().map(|(status, _)| status.clone()));
    let target = control::Target {
        route: args.route.clone(),
        experiment: matches!(plan.strategy, plan::Strategy::Experiment { .. }),
    };
    let _socket = match ControlSocket::bind(&socket_path, target, commands_tx, status_rx).await {
        Ok(s) => s,
        Err(e) => return usage(format!("--control-socket: {e}")),
    };
    let mirrors = plan.traffic.mirror.is_some();
    let mut driver = Driver::new(&args.route, &args.canary, plan, router, provider);
    driver.commands = Some(commands_rx);
    driver.status_out = Some(status_tx);
    driver.state = Some(state.clone());
    driver.resume = resume;
    driver.records = Some(sluice_operator::record::RecordFile::beside(&socket_path));
    let (record_tx, record_rx) = tokio::sync::watch::channel(None);
    driver.record_out = Some(record_tx);
    let dashboard = dashboard_listener.map(|listener| {
        let store = sluice_operator::dashboard::LocalSource::new(Some(socket_path.clone()));
        // Earlier releases of the route, then this one as it runs.
        let records = sluice_operator::record::RecordFile::beside(&socket_path);
        for r in records.load().unwrap_or_default() {
            store.put(r);
        }
        store.follow(record_rx.clone());
        let bound = listener.local_addr().expect("bound");
        if !bound.ip().is_loopback() {
            eprintln!("{}", sluice_operator::dashboard::remote_warning(bound));
        }
        let served = sluice_operator::dashboard::serve(
            listener,
            sluice_operator::dashboard::Source::Local(store.clone()),
        );
        // The login URL: only a browser that opens it gets a session.
        eprintln!("dashboard on {}", served.url);
        (served, store)
    });
    let notifier = sluice_operator::notify::Notifier::start(
        notify_channels,
        args.notify.notify_steps,
        None,
        sluice_operator::http::HttpClient::default(),
    );
    driver.notifier = notifier.clone();
    let hooks = driver.hooks();
    let mut view = View::new(output_mode(args.output));
    let ended = tokio::select! {
        s = driver.run(|tick| view.show(tick)) => s,
        signal = stop_signal() => {
            let saved = state.load().ok().flatten();
            let at = saved
                .as_ref()
                .map(|s| format!(
                    "{} at {}%",
                    s.status.phase.as_str(),
                    f64::from(s.status.canary_weight_bp) / 100.0
                ))
                .unwrap_or_else(|| "before its first step".into());
            eprintln!(
                "{}: the release was {at}, and route `{}` keeps its current weights. Its state is saved in {}. Run the same `sluice rollout` command again to resume from there (the time until then does not count toward the progress deadline); or send all traffic to stable with `PUT {}/routes/{} {{\"canary_weight\": 0{}{}}}`.",
                signal.what(),
                args.route,
                state.path.display(),
                args.admin.trim_end_matches('/'),
                args.route,
                if args.baseline_arm.is_some() { ", \"baseline\": null" } else { "" },
                if mirrors { ", \"mirror\": null" } else { "" }
            );
            return ExitCode::from(signal.exit_code());
        }
    };
    // The last notes (promoted, rolled back) and the last event webhook
    // calls go out before the process ends.
    notifier.flush(Duration::from_secs(10)).await;
    hooks.flush(sluice_operator::hook_queue::FLUSH).await;
    if let Some(file) = &args.report {
        let record = record_rx.borrow().clone();
        match record {
            Some(r) => match std::fs::write(file, sluice_operator::report_html::report(&r)) {
                Ok(()) => eprintln!("report written to {}", file.display()),
                Err(e) => eprintln!("error: --report: cannot write {}: {e}", file.display()),
            },
            None => eprintln!("error: --report: the release recorded nothing to report"),
        }
    }
    // Pages open on the release are shown its end before the dashboard goes.
    if let Some((served, store)) = &dashboard
        && let Some(href) = store.driving_href()
    {
        served
            .linger(&href, sluice_operator::dashboard::LINGER)
            .await;
    }
    let status = ended.status;
    if let Some(why) = ended.stopped {
        eprintln!("{why}");
        return ExitCode::from(4);
    }
    if status.phase == Phase::Succeeded {
        eprintln!("promoted: {}", status.message);
        ExitCode::SUCCESS
    } else if status.phase == Phase::Concluded {
        eprintln!("{}", status.message);
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", status.message);
        ExitCode::from(1)
    }
}

/// What `--baseline-arm URL` needs, checked before anything changes: an
/// upstream URL other than the canary's, and a plan whose every weight is at
/// most 50 (the baseline gets the canary's share too, so a weight above 50
/// would give the two more than the whole route). A blue/green switch goes to
/// 100 at once, so it has no baseline arm. Under the sequential gate the
/// canary is then judged against the baseline arm, with no warm-up unless
/// `--warmup` gives one; the threshold gate judges the canary alone, so the
/// baseline arm only shares its traffic there.
fn check_baseline_arm(url: &str, args: &RolloutArgs, plan: &mut Plan) -> Result<(), String> {
    sluice_proxy::config::UpstreamUrl::parse(url).map_err(|e| e.to_string())?;
    if url.trim_end_matches('/') == args.canary.trim_end_matches('/') {
        return Err(format!(
            "`{url}` is the canary (--canary); the baseline arm is a fresh copy of the stable's version"
        ));
    }
    if matches!(plan.strategy, plan::Strategy::BlueGreen { .. }) {
        return Err(
            "--strategy blue-green switches all traffic at once; a baseline arm shares the canary's weight, so it needs weights of at most 50 (use --strategy canary)".into(),
        );
    }
    if let Some(over) = plan.steps_bp.iter().find(|bp| **bp > 5000) {
        return Err(format!(
            "the baseline arm gets the canary's share too, so every weight must be at most 50, and --steps has {}",
            sluice_proxy::config::bp_to_percent(*over)
        ));
    }
    if let plan::Gate::Sequential(settings) = &mut plan.gate {
        settings.use_baseline_arm(args.plan.warmup.is_some());
    }
    Ok(())
}

/// Whether a saved release can be resumed against the route as it is now:
/// same route and canary, and (unless a routing action is still pending,
/// which the resumed release re-applies) the route still has the weight the
/// release had set.
async fn resumable(
    saved: &SavedRelease,
    args: &RolloutArgs,
    router: &ProxyAdminRouter,
) -> Result<(), String> {
    if saved.route != args.route || saved.revision != args.canary {
        return Err(format!(
            "it is the release of {} on route `{}`",
            saved.revision, saved.route
        ));
    }
    if saved.status.phase.is_terminal() && saved.status.unconfirmed.is_none() {
        return Err(format!(
            "that release already ended ({})",
            saved.status.phase.as_str()
        ));
    }
    if saved.status.unconfirmed.is_some() {
        return Ok(());
    }
    let route = router
        .current()
        .await
        .map_err(|e| format!("cannot read the route: {e}"))?;
    let weight = route["canary_weight"].as_f64().unwrap_or(0.0);
    let expected = f64::from(saved.status.canary_weight_bp) / 100.0;
    if route["canary"].as_str() != Some(args.canary.as_str()) && saved.status.canary_weight_bp > 0 {
        return Err(format!(
            "the route's canary is now {}, not {}",
            route["canary"], args.canary
        ));
    }
    if (weight - expected).abs() > 1e-9 {
        return Err(format!(
            "the route's canary weight is now {weight}%, not the {expected}% the release had set"
        ));
    }
    let baseline = route["baseline"].as_str();
    if saved.status.canary_weight_bp > 0 && baseline != args.baseline_arm.as_deref() {
        return Err(format!(
            "the route's baseline arm is now {}, not {}",
            baseline.unwrap_or("none"),
            args.baseline_arm
                .as_deref()
                .unwrap_or("none (no --baseline-arm)")
        ));
    }
    Ok(())
}

async fn control_request(args: ControlArgs, what: &str) -> ExitCode {
    let path = args
        .control_socket
        .unwrap_or_else(|| control::default_socket(&args.route));
    // Named with its route and revision, as the dashboard's requests are:
    // a socket driving another release refuses it (see `control`).
    match control::command(&path, &args.route, args.revision.as_deref(), what).await {
        Ok((answer, revision)) => {
            println!(
                "{what}: sent to release `{}`{} (phase {}): {}",
                args.route,
                revision
                    .map(|r| format!(" of revision {r}"))
                    .unwrap_or_default(),
                answer["phase"].as_str().unwrap_or("?"),
                answer["message"].as_str().unwrap_or("accepted")
            );
            ExitCode::SUCCESS
        }
        Err(e @ control::ControlError::NotRunning { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_demo(args: DemoArgs) -> ExitCode {
    let scenarios = match Scenario::parse(&args.scenario) {
        Ok(s) => s,
        Err(e) => return usage(format!("--scenario: {e}")),
    };
    let mut options = DemoOptions {
        scenarios,
        prometheus: args.prometheus.clone(),
        ..DemoOptions::default()
    };
    match args.strategy.as_str() {
        "canary" => {}
        "blue-green" => demo::blue_green(&mut options.plan),
        other => {
            return usage(format!(
                "--strategy: `{other}` is not a strategy the demo shows; use canary or blue-green"
            ));
        }
    }
    if options.prometheus.is_some() {
        // Each tick judges its own window of Prometheus samples, and rate()
        // needs two scrapes in it: two-second ticks with a 1 s scrape.
        options.plan.scrape_interval = Duration::from_secs(2);
        options.plan.interval = Duration::from_secs(4);
        options.plan.progress_deadline = Duration::from_secs(16);
    }
    if let Some(addr) = args.admin_listen {
        options.admin_listen = addr;
    } else if options.prometheus.is_some() {
        options.admin_listen = "127.0.0.1:9901".parse().expect("static address");
    }
    let mut dashboard = None;
    if let Some(addr) = args.dashboard {
        if let Err(e) = sluice_operator::dashboard::check_address(addr, args.dashboard_allow_remote)
        {
            return usage(format!("--dashboard: {e}"));
        }
        if !addr.ip().is_loopback() {
            eprintln!("{}", sluice_operator::dashboard::remote_warning(addr));
        }
        let listener = match sluice_operator::dashboard::bind(addr).await {
            Ok(l) => l,
            Err(e) => return usage(format!("--dashboard: {e}")),
        };
        // No control socket: the demo's releases are shown, not steered.
        let store = sluice_operator::dashboard::LocalSource::new(None);
        options.dashboard = Some(store.clone());
        let served = sluice_operator::dashboard::serve(
            listener,
            sluice_operator::dashboard::Source::Local(store),
        );
        // The login URL: only a browser that opens it gets a session.
        eprintln!("dashboard on {}", served.url);
        dashboard = Some(served);
    }
    let mode = output_mode(args.output);
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for scenario in options.scenarios.clone() {
        if mode != OutputMode::Json {
            println!(
                "\n== {} ({}): expected {}",
                scenario.name(),
                scenario.describe(),
                scenario.expected()
            );
        }
        let mut view = View::new(mode);
        match demo::run_scenario(scenario, &options, |t| view.show(t)).await {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: scenario {}: {e}", scenario.name());
                return ExitCode::from(1);
            }
        }
    }
    let all_ok = results.iter().all(|r| r.as_expected);
    if mode == OutputMode::Json {
        println!(
            "{}",
            serde_json::json!({ "results": results, "seconds": started.elapsed().as_secs_f64(), "ok": all_ok })
        );
    } else {
        println!("\n{}", demo::table(&results));
        println!(
            "{} in {:.1}s",
            if all_ok {
                "every scenario ended as expected"
            } else {
                "SOME SCENARIOS DID NOT END AS EXPECTED"
            },
            started.elapsed().as_secs_f64()
        );
    }
    if dashboard.is_some() {
        eprintln!("the dashboard stays up; Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `1%` (percent) or `0.01` (a fraction).
fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        // One `%` only: `5%%` is not a rate.
        Some(p) => plan::parse_number(p).map_err(|_| format!("`{text}` is not a number"))? / 100.0,
        None => plan::parse_number(t)?,
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("`{text}` is not a rate in 0..=1 (or 0%..=100%)"));
    }
    Ok(value)
}

fn run_simulate(args: SimulateArgs) -> ExitCode {
    use sluice_operator::simulate::{ArmTraffic, Scenario, Segment, SimProvider, Trace, simulate};
    let flag = |name: &str, e: String| format!("--{name}: {e}");
    let parsed = (|| -> Result<Scenario, String> {
        let mut plan = args.plan.plan()?;
        if args.baseline_arm {
            if !matches!(plan.strategy, plan::Strategy::Canary) {
                return Err(
                    "--baseline-arm: only a canary release has one (it shares the canary's weight); use --strategy canary".into(),
                );
            }
            if let Some(over) = plan.steps_bp.iter().find(|bp| **bp > 5000) {
                return Err(format!(
                    "--baseline-arm: the baseline arm gets the canary's share too, so every weight must be at most 50, and --steps has {}",
                    sluice_proxy::config::bp_to_percent(*over)
                ));
            }
            if let plan::Gate::Sequential(settings) = &mut plan.gate {
                settings.use_baseline_arm(args.plan.warmup.is_some());
            }
        }
        // The bound a trace's `rps` has (`simulate::trace`).
        let rps = plan::parse_number(&args.rps)
            .ok()
            .filter(|r| (0.0..=1e7).contains(r))
            .ok_or_else(|| {
                flag(
                    "rps",
                    format!("`{}` is not a rate in 0..=10000000 per second", args.rps),
                )
            })?;
        let (median_ms, sigma) =
            parse_durations(&args.durations).map_err(|e| flag("durations", e))?;
        let delay = sluice_proxy::config::parse_duration(args.canary_delay.trim_start_matches('+'))
            .map_err(|e| flag("canary-delay", e))?;
        let slower = plan::parse_number(&args.canary_slower)
            .ok()
            .filter(|v| *v > 0.0)
            .ok_or_else(|| {
                flag(
                    "canary-slower",
                    format!("`{}` is not a positive factor", args.canary_slower),
                )
            })?;
        let dispersion = plan::parse_number(&args.dispersion)
            .ok()
            .filter(|v| *v >= 1.0)
            .ok_or_else(|| {
                flag(
                    "dispersion",
                    format!(
                        "`{}` is not a variance multiple of at least 1",
                        args.dispersion
                    ),
                )
            })?;
        if args.clump == 0 {
            return Err("--clump: must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&args.runs) {
            return Err(format!(
                "--runs: {} is not in 1..=1000000 (a million releases take minutes; split a larger study by --seed)",
                args.runs
            ));
        }
        let primary = ArmTraffic {
            fail: parse_rate(&args.primary_errors).map_err(|e| flag("primary-errors", e))?,
            clump: args.clump,
            median_ms,
            sigma,
            add_ms: 0.0,
            dispersion,
        };
        let canary = ArmTraffic {
            fail: parse_rate(&args.canary_errors).map_err(|e| flag("canary-errors", e))?,
            median_ms: median_ms * slower,
            add_ms: delay.as_secs_f64() * 1000.0,
            ..primary
        };
        let first = Segment {
            t: 0.0,
            rps,
            primary,
            canary,
            // A copy of the primary's version: the regression flags are the
            // canary's alone.
            baseline: primary,
        };
        let traces = match (&args.trace, &args.cold_start) {
            (Some(path), _) => Trace::load(path, first).map_err(|e| flag("trace", e))?,
            (None, Some(text)) => {
                let (seconds, factor) =
                    parse_cold_start(text).map_err(|e| flag("cold-start", e))?;
                vec![Trace::cold_start(first, seconds, factor)]
            }
            (None, None) => vec![Trace::constant(first)],
        };
        let duration = |name: &str, text: &str| {
            sluice_proxy::config::parse_duration(text).map_err(|e| flag(name, e))
        };
        let provider = match args.provider {
            SimProviderArg::Proxy => {
                // Flags only the Prometheus provider reads: refused, not ignored.
                if let Some(id) = ["prometheus_scrape", "prometheus_window"]
                    .iter()
                    .find(|id| args.plan.given.iter().any(|g| g == *id))
                {
                    return Err(format!(
                        "--{} applies to --provider prometheus, not to --provider proxy; it would be ignored",
                        id.replace('_', "-")
                    ));
                }
                SimProvider::Proxy
            }
            SimProviderArg::Prometheus => {
                let scrape = duration("prometheus-scrape", &args.prometheus_scrape)?;
                let window = duration("prometheus-window", &args.prometheus_window)?;
                if scrape < Duration::from_secs(1) {
                    return Err("--prometheus-scrape: must be at least 1s".into());
                }
                // `rate()` needs two samples in its window.
                if window < scrape * 2 {
                    return Err(format!(
                        "--prometheus-window: {} holds fewer than two scrapes of --prometheus-scrape {}; rate() would read nothing",
                        args.prometheus_window, args.prometheus_scrape
                    ));
                }
                SimProvider::Prometheus {
                    scrape_secs: scrape.as_secs_f64(),
                    window_secs: window.as_secs_f64(),
                }
            }
        };
        let horizon = match &args.horizon {
            Some(h) => duration("horizon", h)?,
            None => plan.max_duration + Duration::from_secs(60),
        };
        // A shorter horizon cuts runs the gate has not finished with, and
        // they would read as held.
        if horizon < plan.max_duration {
            return Err(format!(
                "--horizon: {horizon:?} is shorter than --max-duration {:?}; runs would be cut before the gate's own deadline",
                plan.max_duration
            ));
        }
        Ok(Scenario {
            plan,
            traces,
            provider,
            runs: args.runs,
            seed: args.seed,
            horizon,
        })
    })();
    let scenario = match parsed {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let started = std::time::Instant::now();
    let (summary, runs) = simulate(&scenario);
    let steps: Vec<String> = scenario
        .plan
        .steps_bp
        .iter()
        .map(|bp| sluice_proxy::config::bp_to_percent(*bp).to_string())
        .collect();
    let text = if args.json {
        format!(
            "{}",
            serde_json::json!({
                "steps": steps.join(","),
                "gate": args.plan.gate,
                "provider": scenario.provider,
                "traces": scenario.traces.iter().map(|t| t.source.clone()).collect::<Vec<_>>(),
                "seed": scenario.seed,
                "summary": summary,
                "rollback_rate": summary.rollback_rate(),
                "runs": runs,
                "wall_seconds": started.elapsed().as_secs_f64(),
            })
        )
    } else {
        sluice_operator::simulate::table(&scenario, &summary)
    };
    // A reader that stops early (`| head`) is no error of the simulation.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the result: {e}");
            ExitCode::from(1)
        }
    }
}

/// `10s:3`: a cold start's length and how many times slower it is.
fn parse_cold_start(text: &str) -> Result<(f64, f64), String> {
    let (length, factor) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not DURATION:FACTOR, e.g. 10s:3"))?;
    let length = sluice_proxy::config::parse_duration(length.trim())
        .map_err(|e| format!("`{text}`: {e}"))?;
    let factor = plan::parse_number(factor.trim().trim_end_matches('x'))
        .ok()
        .filter(|f| f.is_finite() && *f >= 1.0 && *f <= 1000.0)
        .ok_or_else(|| format!("`{text}`: the factor must be a number from 1 to 1000"))?;
    Ok((length.as_secs_f64(), factor))
}

/// `20ms~0.5` (a lognormal's median and sigma) or `20ms` (fixed).
fn parse_durations(text: &str) -> Result<(f64, f64), String> {
    let (median, sigma) = match text.split_once('~') {
        Some((m, s)) => (
            m,
            plan::parse_number(s).map_err(|e| format!("`{text}`: the sigma after `~`: {e}"))?,
        ),
        None => (text, 0.0),
    };
    if !(0.0..=5.0).contains(&sigma) {
        return Err(format!("`{text}`: sigma {sigma} is not in 0..=5"));
    }
    let median = sluice_proxy::config::parse_duration(median.trim())
        .map_err(|e| format!("`{text}`: {e}"))?;
    if median.is_zero() {
        return Err(format!("`{text}`: the median must be above 0"));
    }
    Ok((median.as_secs_f64() * 1000.0, sigma))
}

#[derive(clap::Args)]
struct NotifyArgs {
    /// Chat notifications as SERVICE=FILE (slack, teams, discord, rocket, gchat or webhook; the
    /// file holds the incoming-webhook URL); repeatable.
    #[arg(long = "notify")]
    notify: Vec<String>,
    /// Notify every weight step too (default: start, waiting, promoted, rolled back, undecided).
    #[arg(long)]
    notify_steps: bool,
}

impl NotifyArgs {
    fn channels(&self) -> Result<Vec<sluice_operator::notify::Channel>, String> {
        self.notify
            .iter()
            .map(|n| sluice_operator::notify::Channel::from_flag("--notify", n))
            .collect()
    }
}

/// Whether `url` is an `http://` or `https://` URL with a host.
fn is_http_url(url: &str) -> bool {
    sluice_operator::http::is_http_url(url)
}

async fn run_kube(args: KubeArgs) -> ExitCode {
    use sluice_operator::kube as op;
    if let Some(url) = &args.prometheus_url
        && !is_http_url(url)
    {
        return usage(format!(
            "--prometheus-url: `{}` is not an http:// or https:// URL",
            sluice_operator::http::shown_url(url)
        ));
    }
    if let Some(path) = &args.access_file
        && let Err(e) = sluice_operator::http::install_access_file(path)
    {
        return usage(e);
    }
    let notify_channels = match args.notify.channels() {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: no Kubernetes credentials (in-cluster or kubeconfig): {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(reference) = &args.access_secret {
        let what = format!("--access-secret {reference}");
        let Some((ns, name)) = reference.split_once('/') else {
            return usage(format!("{what}: not NAMESPACE/NAME"));
        };
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), ns);
        let secret = match secrets.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return usage(format!("{what}: no such Secret")),
            Err(e) => return usage(format!("{what}: cannot read it: {e}")),
        };
        let data: std::collections::BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        if let Err(e) = sluice_operator::http::install_access_data(&data, &what) {
            return usage(e);
        }
    }
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("sluice-{}", std::process::id()));
    let lease_ns = args
        .leader_namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "sluice-system".into());
    let mut ctx = op::Context::new(
        client.clone(),
        &identity,
        args.prometheus_url,
        args.proxy_image,
    );
    if let ProxyConfigCheck::Off = args.proxy_config_check {
        ctx.proxy_digests = None;
    }
    ctx.notifier = sluice_operator::notify::Notifier::start(
        notify_channels,
        args.notify.notify_steps,
        Some(ctx.metrics.notifications.clone()),
        sluice_operator::http::HttpClient::default(),
    );
    let ctx = std::sync::Arc::new(ctx);
    let listener = match tokio::net::TcpListener::bind(args.metrics_listen).await {
        Ok(l) => l,
        Err(e) => return usage(format!("--metrics-listen {}: {e}", args.metrics_listen)),
    };
    tokio::spawn(op::metrics::serve(listener, ctx.metrics.clone()));
    let leader = op::leader::LeaderConfig::new(&lease_ns, &identity);
    tokio::select! {
        _ = op::leader::run_as_leader(client, leader, op::run(ctx, args.namespace)) => {
            eprintln!("error: leadership lost or the controller stopped; exiting so the replica restarts");
            ExitCode::from(1)
        }
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}
