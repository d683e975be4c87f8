//! `sluice-load run URL` drives load; `sluice-load backend` serves the demo app.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use http::header::{HeaderName, HeaderValue};
use sluice_loadtest::backend::{self, BackendOptions, Faults, Latency};
use sluice_loadtest::load::{self, LoadControl, LoadOptions};

#[derive(Parser)]
#[command(
    name = "sluice-load",
    version,
    about = "Load generator and demo backend for Sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load to URL and report throughput, statuses, errors and latency.
    Run(RunArgs),
    /// Serve the demo backend (answers every path; faults can be injected).
    Backend(BackendArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    url: String,
    /// Connections (closed loop: each sends as soon as it has its answer).
    #[arg(short = 'c', long, default_value_t = 10)]
    connections: usize,
    /// Open loop at this many requests per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this long (e.g. 30s). Default 10s when -n is not given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Prior-knowledge HTTP/2 (h2c).
    #[arg(long)]
    http2: bool,
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Request header, `K: V`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Send this file as the request body.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Count responses by this response header's value.
    #[arg(long)]
    count_header: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Send load for this long first and leave it out of the report (e.g.
    /// 1s), so that the report is of a steady state, not of the start.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print one JSON report instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BackendArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, default_value = "backend")]
    name: String,
    /// Fraction of requests answered with --error-status (0..=1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// Added delay: fixed (20ms) or uniform (10ms..200ms).
    #[arg(long, default_value = "0")]
    latency: String,
    /// Fraction of requests (0..=1) that take --slow-latency instead, spread
    /// exactly and evenly (e.g. 0.012: 12 of every 1,000, never bunched).
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    /// Delay of the slow requests (fixed or a range).
    #[arg(long, default_value = "0")]
    slow_latency: String,
    /// Failures come in runs of this many requests (the share failing stays --error-rate).
    #[arg(long, default_value_t = 1)]
    error_run: u32,
    /// Incidents start at random, on average one this often (e.g. 2m)...
    #[arg(long)]
    incident_every: Option<String>,
    /// ...last this long...
    #[arg(long, default_value = "10s")]
    incident_for: String,
    /// ...and fail this share of requests meanwhile (0..=1).
    #[arg(long, default_value_t = 0.1)]
    incident_error_rate: f64,
    /// For this long after its first request the backend is slower (a cold
    /// cache or JIT) by --warmup-latency.
    #[arg(long, default_value = "0s")]
    warmup: String,
    /// The delay added during the warm-up (fixed or a range).
    #[arg(long, default_value = "0")]
    warmup_latency: String,
    /// Serve prior-knowledge HTTP/2 only.
    #[arg(long)]
    http2: bool,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_proxy::config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Backend(args) => runtime.block_on(serve(args)),
    }
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

async fn run(args: RunArgs) -> ExitCode {
    let mut options = match LoadOptions::new(&args.url) {
        Ok(o) => o,
        Err(e) => return usage(e),
    };
    options.connections = args.connections;
    options.rate = args.rate;
    options.requests = args.requests;
    options.duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    options.http2 = args.http2;
    options.timeout = args.timeout;
    options.warmup = args.warmup;
    options.method = match args.method.to_ascii_uppercase().parse() {
        Ok(m) => m,
        Err(_) => {
            return usage(format!(
                "-m/--method: `{}` is not an HTTP method",
                args.method
            ));
        }
    };
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            return usage(format!("-H/--header: `{h}` is not `Name: value`"));
        };
        match (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            (Ok(k), Ok(v)) => options.headers.push((k, v)),
            _ => return usage(format!("-H/--header: `{h}` is not a valid header")),
        }
    }
    if let Some(path) = &args.body {
        match std::fs::read(path) {
            Ok(b) => options.body = b.into(),
            Err(e) => return usage(format!("--body: cannot read {}: {e}", path.display())),
        }
    }
    if let Some(name) = &args.count_header {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => options.count_header = Some(h),
            Err(_) => return usage(format!("--count-header: `{name}` is not a header name")),
        }
    }
    if let Err(e) = options.validate() {
        return usage(e);
    }
    let control = LoadControl::new();
    let progress = spawn_progress(&options, control.clone(), args.json);
    let report = match load::run(options, control).await {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if let Some(p) = progress {
        p.abort();
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}

/// A progress bar on a terminal, a plain line every 5 s otherwise.
fn spawn_progress(
    options: &LoadOptions,
    control: std::sync::Arc<LoadControl>,
    quiet: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    if quiet {
        return None;
    }
    let total = options.duration.map(|d| d + options.warmup);
    let terminal = std::io::stderr().is_terminal();
    Some(tokio::spawn(async move {
        let start = std::time::Instant::now();
        let bar = terminal.then(|| {
            let bar = match total {
                Some(d) => indicatif::ProgressBar::new(d.as_millis() as u64),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar
        });
        let mut last_line = start;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done = control.completed.load(Ordering::Relaxed);
            let errors = control.errors.load(Ordering::Relaxed);
            let elapsed = start.elapsed();
            let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
            let msg = format!("{done} requests, {rate:.0} req/s, {errors} errors");
            match &bar {
                Some(bar) => {
                    bar.set_position(elapsed.as_millis() as u64);
                    bar.set_message(msg);
                }
                None if last_line.elapsed() >= Duration::from_secs(5) => {
                    eprintln!("{:.0}s: {msg}", elapsed.as_secs_f64());
                    last_line = std::time::Instant::now();
                }
                None => {}
            }
        }
    }))
}

async fn serve(args: BackendArgs) -> ExitCode {
    if let Err(e) = backend::check_rate(args.error_rate) {
        return usage(format!("--error-rate: {e}"));
    }
    if http::StatusCode::from_u16(args.error_status).is_err() {
        return usage(format!(
            "--error-status: {} is not an HTTP status",
            args.error_status
        ));
    }
    let latency = match Latency::parse(&args.latency) {
        Ok(l) => l,
        Err(e) => return usage(format!("--latency: {e}")),
    };
    if let Err(e) = backend::check_rate(args.slow_rate) {
        return usage(format!("--slow-rate: {e}"));
    }
    let slow_latency = match Latency::parse(&args.slow_latency) {
        Ok(l) => l,
        Err(e) => return usage(format!("--slow-latency: {e}")),
    };
    let duration = |name: &str, text: &str| {
        sluice_proxy::config::parse_duration(text).map_err(|e| format!("--{name}: {e}"))
    };
    let incident_every = match args
        .incident_every
        .as_deref()
        .map(|t| duration("incident-every", t))
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return usage(e),
    };
    let incident_for = match duration("incident-for", &args.incident_for) {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let warmup = match duration("warmup", &args.warmup) {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let warmup_latency = match Latency::parse(&args.warmup_latency) {
        Ok(l) => l,
        Err(e) => return usage(format!("--warmup-latency: {e}")),
    };
    let faults = Faults {
        error_rate: args.error_rate,
        error_status: args.error_status,
        latency,
        slow_rate: args.slow_rate,
        slow_latency,
        stall: None,
        error_burst: backend::ErrorBurst {
            run: args.error_run,
            incident_every,
            incident_for,
            incident_error_rate: args.incident_error_rate,
        },
        warmup: (!warmup.is_zero()).then_some(backend::Warmup {
            duration: warmup,
            latency: warmup_latency,
        }),
    };
    if let Err(e) = faults.check() {
        return usage(format!("--{}", e.replacen('_', "-", 2)));
    }
    let options = BackendOptions {
        listen: args.listen,
        name: args.name,
        faults,
        http2_only: args.http2,
        seed: args.seed,
    };
    let handle = match backend::start_backend(options).await {
        Ok(h) => h,
        Err(e) => return usage(format!("--listen {}: {e}", args.listen)),
    };
    println!("listening on {}", handle.addr);
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    handle.stop().await;
    ExitCode::SUCCESS
}
